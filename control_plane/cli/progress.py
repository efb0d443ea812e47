"""Progress and live status for long CLI commands: one line on stderr, redrawn in place.

On a terminal (stderr is a TTY and TERM is not `dumb`) a `Progress` keeps one status line at
the bottom of stderr and redraws it with a carriage return, at most every `interval` seconds:
done/total, percent, rate and ETA when the total is known, else a spinner with the elapsed time;
plus an optional status text. Lines that stay are written above it with `line()`. When stderr is
a pipe or a file it draws nothing at all, so piped output is exactly the command's plain result
(`line()` then just prints).

    with Progress("evaluating", total=users, unit="users") as progress:
        for index, user in enumerate(users, 1):
            ...
            progress.update(index)
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "format_duration", "is_terminal"]

_SPINNER = "|/-\\"
_CLEAR = "\r\x1b[K"  # back to the line start, erase to its end


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal that understands redrawing a line."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80


def format_duration(seconds: float) -> str:
    """4s, 1m05s, 2h03m: short enough for a status line."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _rate(per_second: float) -> str:
    return f"{per_second:,.1f}" if per_second < 10 else f"{per_second:,.0f}"


class Progress:
    """A redrawn status line on a terminal; silent (but `line()`) anywhere else."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "",
        stream: TextIO | None = None,
        out: TextIO | None = None,
        interval: float = 0.1,
        tick: bool = False,
        enabled: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.out = out  # where line() writes; None: sys.stdout at the time of the call
        self.enabled = is_terminal(self.stream) if enabled is None else enabled
        self.interval = interval
        self.unit = unit
        self.status = ""
        self._tick = tick
        self._lock = threading.RLock()
        self._spinner = itertools.cycle(_SPINNER)
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()
        self._shown = False
        self._last_draw = 0.0
        self.phase(label, total)

    # -- what is shown ----------------------------------------------------------------------

    def phase(self, label: str, total: int | None = None) -> None:
        """Start a new stage of the work: new label, total and clock; drawn at once."""
        with self._lock:
            self.label = label
            self.total = total
            self.done = 0
            self.started = time.monotonic()
            self._draw(force=True)

    def update(self, done: int | None = None, *, status: str | None = None) -> None:
        """Set the count done and/or the status text; redrawn if `interval` has passed."""
        if not self.enabled:
            return
        with self._lock:
            if done is not None:
                self.done = done
            if status is not None:
                self.status = status
            self._draw(force=status is not None)

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def line(self, text: str) -> None:
        """Print `text` (to stdout) as lasting output, above the status line."""
        out = self.out or sys.stdout
        with self._lock:
            if self._shown:
                self.stream.write(_CLEAR)
                self.stream.flush()
                self._shown = False
            print(text, file=out, flush=True)
            self._draw(force=True)

    def render(self) -> str:
        """The status line's text (without control characters)."""
        elapsed = time.monotonic() - self.started
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            parts = [
                f"{self.label}: {self.done:,}/{self.total:,}{unit} ({self.done / self.total:.0%})"
            ]
            if self.done and elapsed > 0:
                rate = self.done / elapsed
                parts.append(f"{_rate(rate)}/s")
                if self.done < self.total:
                    parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        else:
            parts = [f"{self.label} {next(self._spinner)} {format_duration(elapsed)}"]
        if self.status:
            parts.append(self.status)
        return "  ".join(parts)

    # -- drawing ----------------------------------------------------------------------------

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled or self._stopped.is_set():
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        # Cut to the terminal's width: a wrapped line could not be redrawn in place.
        self.stream.write(_CLEAR + self.render()[: max(10, _width(self.stream) - 1)])
        self.stream.flush()
        self._shown = True

    def _run_ticker(self) -> None:
        while not self._stopped.wait(self.interval):
            with self._lock:
                self._draw(force=True)

    # -- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        if self.enabled and self._tick and self._ticker is None:
            # Redraws while the caller blocks (a request, a sleep): spinner and clock move.
            self._ticker = threading.Thread(target=self._run_ticker, name="progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self, summary: str | None = None) -> None:
        """Erase the status line; on a terminal, leave `summary` (on stderr) in its place."""
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._shown:
                self.stream.write(_CLEAR)
                self._shown = False
            if summary and self.enabled:
                self.stream.write(summary + "\n")
            if self.enabled:
                self.stream.flush()
