"""The local spill file of the experiment writer: records the database could not take yet.

Records go to an open segment, `spill-<time>-<pid>-<n>.jsonl.part`, one JSON line each,
fsynced per batch; names start with the time, so they sort oldest first. The writing process
holds an exclusive `flock` on its open segment; replay seals the segment (renames it to
`.jsonl`) and writes sealed segments back oldest first, deleting each once all of it is
stored. Segments left by a process that died (its lock is gone) are sealed and replayed by the
next process using the directory, so records survive a crash or a shutdown while the database
is down. A line that cannot be parsed (a torn write at a crash) is logged and counted, never
silently skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from control_plane.experiments.records import Record

__all__ = ["SpillFiles"]

log = logging.getLogger(__name__)

_OPEN_SUFFIX = ".jsonl.part"
_SEALED_SUFFIX = ".jsonl"


class SpillFiles:
    """Append-only spill segments in one directory, replayed in order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._handle: IO[str] | None = None
        self._open_path: Path | None = None
        self._counter = itertools.count(1)
        #: Line offsets already stored, per sealed segment (a replay that failed half-way).
        self._done_lines: dict[Path, int] = {}
        #: Records in segments not yet replayed (known to this process).
        self.pending = 0
        #: Lines that could not be parsed during replay.
        self.unreadable = 0

    # -- writing ---------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        """Append records to the open segment and fsync; OSError when the disk refuses."""
        if not records:
            return
        handle = self._open_segment()
        handle.write("".join(record.to_line() + "\n" for record in records))
        handle.flush()
        os.fsync(handle.fileno())
        self.pending += len(records)

    def _open_segment(self) -> IO[str]:
        if self._handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Time first, so names sort in the order segments were started.
            name = f"spill-{time.time_ns():020d}-{os.getpid()}-{next(self._counter):06d}"
            path = self.directory / (name + _OPEN_SUFFIX)
            handle = path.open("a", encoding="utf-8")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._handle, self._open_path = handle, path
        return self._handle

    def seal(self) -> None:
        """Close the open segment so it can be replayed; later spills start a new one."""
        if self._handle is None or self._open_path is None:
            return
        sealed = self._open_path.with_name(self._open_path.name[:-len(_OPEN_SUFFIX)]
                                           + _SEALED_SUFFIX)
        os.replace(self._open_path, sealed)
        self._handle.close()  # closing drops the lock, after the rename
        self._handle = self._open_path = None
        self._done_lines[sealed] = 0  # its records are already counted in `pending`

    def close(self) -> None:
        self.seal()

    # -- reading back ----------------------------------------------------------------------

    def has_data(self) -> bool:
        return self.pending > 0 or self._handle is not None

    def adopt_orphans(self) -> int:
        """Seal segments left open by processes that are gone; count their records."""
        if not self.directory.is_dir():
            return 0
        adopted = 0
        for path in sorted(self.directory.glob("spill-*" + _OPEN_SUFFIX)):
            if path == self._open_path:
                continue
            with contextlib.suppress(FileNotFoundError), path.open("r+", encoding="utf-8") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process still writes it
                sealed = path.with_name(path.name[:-len(_OPEN_SUFFIX)] + _SEALED_SUFFIX)
                os.replace(path, sealed)
        for path in self._sealed_segments():
            if path not in self._done_lines:
                count = _count_lines(path)
                self._done_lines[path] = 0
                self.pending += count
                adopted += count
        if adopted:
            log.warning("found %d spilled experiment records in %s; replaying them", adopted,
                        self.directory)
        return adopted

    def replay(self, write: Callable[[list[Record]], None], batch_size: int) -> int:
        """Write every sealed segment back through `write`, oldest first; return records stored.

        An exception from `write` stops the replay (the segment stays, with its progress kept
        in memory, so already stored lines are not sent again) and propagates.
        """
        self.seal()
        stored = 0
        for path in self._sealed_segments():
            try:
                lock_handle = path.open("r", encoding="utf-8")
            except FileNotFoundError:
                continue  # replayed by another process meanwhile
            with lock_handle:
                try:
                    fcntl.flock(lock_handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another process is replaying it
                if path not in self._done_lines:
                    count = _count_lines(path)
                    self.pending += count
                    self._done_lines[path] = 0
                for batch, last_line in self._batches(path, lock_handle, batch_size):
                    write(batch)
                    stored += len(batch)
                    self.pending = max(0, self.pending - len(batch))
                    self._done_lines[path] = last_line
                path.unlink(missing_ok=True)
                self._done_lines.pop(path, None)
        return stored

    def _batches(self, path: Path, handle: IO[str], batch_size: int
                 ) -> Iterator[tuple[list[Record], int]]:
        skip = self._done_lines.get(path, 0)
        batch: list[Record] = []
        line_number = 0
        for line_number, line in enumerate(handle, start=1):
            if line_number <= skip or not line.strip():
                continue
            try:
                batch.append(Record.from_line(line))
            except ValueError:
                self.unreadable += 1
                self.pending = max(0, self.pending - 1)
                log.error("%s:%d: unreadable spilled record (torn write?); it is counted as "
                          "dropped", path, line_number)
                continue
            if len(batch) >= batch_size:
                yield batch, line_number
                batch = []
        if batch:
            yield batch, line_number

    def _sealed_segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("spill-*" + _SEALED_SUFFIX))


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0
