"""Progress in the CLI: `simulate`, `experiments report` and `canary watch` redraw a status line
in a terminal (run here in a real pseudo-terminal) and print only their plain result when piped
(no carriage returns or escape sequences)."""

from __future__ import annotations

import contextlib
import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write_flags
from experiments_support import OPERATOR, VIEWER, Traffic, make_settings, running, wait_for
from servers import BackendApp, ServerThread

from control_plane.cli.progress import Progress, format_duration
from control_plane.db import Database
from flags import FLAGS_DIR

CLI = [str(Path(sys.executable).with_name("control-plane"))]
CONTROL = ("\r", "\x1b")
FLAG = "chat-router"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


#: The commands run in a temp directory, which has no ./flags: point them at the shipped set.
_FLAGS = {"CP_FLAGS_DIR": str(FLAGS_DIR)}


def run_in_terminal(
    args: list[str], cwd: Path, timeout: float = 60, on_output: Callable[[str], None] | None = None
) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a new pseudo-terminal; (status, output).

    `on_output` is called with all output so far each time more arrives.
    """
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*CLI, *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=cwd,
        env={**os.environ, "TERM": "xterm", **_FLAGS},
        close_fds=True,
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            output += chunk
            if on_output is not None:
                on_output(output.decode(errors="replace"))
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()  # reaped here, never left to the garbage collector
        os.close(controller)
    return status, output.decode()


def run_piped(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, **_FLAGS},
        timeout=60,
    )


def test_progress_redraws_one_line_on_a_terminal() -> None:
    """On a terminal: the line starts drawn, redraws in place with count, percent, rate and
    ETA, lasting lines go above it, and close leaves only the summary."""
    stream, out = _Terminal(), io.StringIO()
    progress = Progress("evaluating", 200, unit="users", stream=stream, out=out, interval=0)
    assert stream.getvalue() == "\r\x1b[Kevaluating: 0/200 users (0%)"
    progress.update(50)
    assert "\r\x1b[Kevaluating: 50/200 users (25%)  " in stream.getvalue()
    assert "/s  ETA " in stream.getvalue()
    progress.line("a lasting line")
    assert out.getvalue() == "a lasting line\n"
    progress.close("done in 1s")
    assert stream.getvalue().endswith("\r\x1b[Kdone in 1s\n")


def test_progress_is_silent_when_piped() -> None:
    """Not a terminal: nothing drawn, no summary; lasting lines are printed plainly."""
    stream, out = io.StringIO(), io.StringIO()
    with Progress("evaluating", 10, stream=stream, out=out, interval=0, tick=True) as progress:
        progress.update(5, status="half")
        progress.line("result")
        progress.close("summary")
    assert stream.getvalue() == ""
    assert out.getvalue() == "result\n"


def test_progress_without_a_total_spins_with_a_clock() -> None:
    """An unknown total shows a spinner and the elapsed time, and the status text."""
    stream = _Terminal()
    progress = Progress("waiting", stream=stream, interval=0)
    progress.update(status="step 1/2")
    assert progress.render().startswith("waiting ")
    assert progress.render().endswith("0s  step 1/2")
    assert [format_duration(s) for s in (4.2, 65, 7380)] == ["4s", "1m05s", "2h03m"]


def test_simulate_piped_prints_only_the_report(tmp_path: Path) -> None:
    """Piped, simulate writes its report to stdout and nothing to stderr, with no control
    characters."""
    result = run_piped(["simulate", "ab-test-router", "--users", "3000"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("flag ab-test-router")
    assert not any(char in result.stdout for char in CONTROL)


def test_simulate_in_a_terminal_shows_progress_then_the_report(tmp_path: Path) -> None:
    """In a terminal, simulate redraws a progress line through both passes, leaves a summary,
    and prints the same report."""
    status, output = run_in_terminal(["simulate", "ab-test-router", "--users", "3000"], tmp_path)
    assert status == 0, output
    assert "\r\x1b[Kevaluating ab-test-router: 0/3,000 users (0%)" in output
    assert "\r\x1b[Kreading the configured split: " in output
    assert "\r\x1b[Ksimulated 3,000 users in " in output
    report = output[output.index("flag ab-test-router") :]
    assert "chi-square" in report
    assert not any(char in report.replace("\r\n", "\n") for char in CONTROL)


@pytest.fixture
def plane(flags_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """A running control plane with experiments, and an experiment flag over two healthy
    backends with traffic already sent through it."""
    database_url = f"sqlite:///{tmp_path / 'cp.db'}"
    database = Database.from_url(database_url)
    database.migrate()
    stable, canary = BackendApp("stable"), BackendApp("canary")
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(
            flags_dir,
            "chat.flagd.json",
            {
                FLAG: {
                    "state": "ENABLED",
                    "metadata": {"experiment": True},
                    "variants": {
                        "stable": {"backend": "chat-v1", "url": stable_server.url},
                        "canary": {"backend": "chat-v2", "url": canary_server.url},
                    },
                    "defaultVariant": "stable",
                    "targeting": {"fractional": [["canary", 0], ["stable", 100]]},
                }
            },
        )
        with running(make_settings(flags_dir, database_url, tmp_path), database) as cp:
            with cp.client() as client:
                for index in range(20):
                    client.get(f"/v1/dispatch/{FLAG}/v1/chat", headers={"x-user-id": f"u{index}"})
            cp.flush()
            yield cp
    database.dispose()


def test_experiments_report_shows_a_clock_in_a_terminal_only(plane: Any, tmp_path: Path) -> None:
    """In a terminal the report is preceded by a waiting line (erased); piped it is the plain
    report, identical in content."""
    args = ["experiments", "report", FLAG, "--url", plane.url, "--token", VIEWER]
    status, output = run_in_terminal(args, tmp_path)
    assert status == 0, output
    assert f"\r\x1b[Kcomputing the report of {FLAG} on {plane.url} " in output
    piped = run_piped(args, tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    assert piped.stdout.startswith(f"Experiment {FLAG}")
    assert not any(char in piped.stdout for char in CONTROL)
    erased = output.split("\r\x1b[K")[-1]  # what is left after the waiting line is erased
    assert erased.replace("\r\n", "\n") == piped.stdout


def test_canary_watch_keeps_a_live_line_in_a_terminal(plane: Any, tmp_path: Path) -> None:
    """Watching a canary that gets promoted: in a terminal, events and summaries are lines and
    a live status line shows state, step and weight as they change; piped, the same lines come
    out plain."""
    with plane.client(OPERATOR) as client:
        started = client.post(
            f"/v1/canaries/{FLAG}",
            json={
                "steps": [50, 100],
                "intervalSeconds": 0.3,
                "minRequests": 3,
                "maxP99LatencyRatio": 200,
                # Few samples suffice here: the gates may not promote before they judged.
                "checks": {"errorRate": {"minSamples": 20}, "latency": {"minSamples": 20}},
            },
        )
        assert started.status_code == 201, started.text
    args = ["canary", "watch", FLAG, "--every", "0.1", "--url", plane.url, "--token", VIEWER]
    with contextlib.ExitStack() as stack:
        traffic: list[Traffic] = []

        def start_traffic_once_watched(output: str) -> None:
            # No traffic, no progress: the canary waits in step 1 until the watcher shows it.
            if not traffic and "running, step 1/2, weight 50%" in output:
                traffic.append(
                    stack.enter_context(
                        Traffic(plane.url, f"/v1/dispatch/{FLAG}/v1/chat", threads=2)
                    )
                )

        status, output = run_in_terminal(args, tmp_path, on_output=start_traffic_once_watched)
    assert status == 0, output  # promoted
    # The live line (spinner, clock, status) redrawn in place, first running, at the end done.
    running = re.search(rf"\r\x1b\[Kcanary {FLAG} . \d+s  running, step 1/2, weight 50%", output)
    done = re.search(rf"\r\x1b\[Kcanary {FLAG} . \d+s  promoted, step 2/2, weight 100%", output)
    assert running is not None, output
    assert done is not None, output
    assert running.start() < done.start()
    with plane.client(VIEWER) as client:
        wait_for(lambda: client.get(f"/v1/canaries/{FLAG}").json()["state"] == "promoted")
    piped = run_piped(args, tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    assert not any(char in piped.stdout for char in CONTROL)
    for action in ("started", "promoted"):
        assert f"  {action}" in piped.stdout
        assert f"  {action}" in output
