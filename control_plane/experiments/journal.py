"""The local append-only journal of the experiment writer: every record is on disk before the
database is tried, and leaves the disk only once the database has committed it.

Layout of the journal directory (`CP_EXPOSURE_SPILL_DIR`, shared by processes on one host):

    owner-<owner>.lock                    held (flock) by a live writer for its whole life
    journal-<time ns>-<owner>-<n>.jsonl   one segment: JSON lines, one record each, fsynced

`<owner>` is `<pid>.<random>`, unique per process. A segment belongs to its owner while the
owner's lock is held; once the owner is gone (a crash, `kill -9`) its segments are orphans, and
the next writer using the directory claims each by renaming it into its own name (a rename
happens once, so two claimants never both take one) and replays it. Replays may store a record
the dead process had already committed: the inserts skip existing keys, so it is stored once.

Segments of the writer that came before (`spill-*.jsonl[.part]`, locked per file) are claimed
the same way. A line that cannot be parsed (a torn write at a crash) is counted and logged,
never silently skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from control_plane.experiments.records import Record

__all__ = ["Journal", "Segment"]

log = logging.getLogger(__name__)

_SEGMENT_GLOB = "journal-*.jsonl"
_LEGACY_GLOBS = ("spill-*.jsonl.part", "spill-*.jsonl")


@dataclass(eq=False)
class Segment:
    """One journal file and what is known of it in memory."""

    #: None when the journal could not be written (the records live only in memory).
    path: Path | None
    count: int
    #: The records, while kept in memory; None: read them back from `path`.
    records: list[Record] | None = field(default=None, repr=False)
    #: Claimed from a process that is gone (its records are replayed, not fresh).
    adopted: bool = False
    size: int = 0


class Journal:
    """Append-only segments in one directory; see the module docstring."""

    def __init__(self, directory: Path, *, segment_bytes: int = 16 << 20) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.owner = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._lock: IO[bytes] | None = None
        self._lock_path = directory / f"owner-{self.owner}.lock"
        self._counter = itertools.count(1)
        #: Lines that could not be parsed on reading back, since start.
        self.unreadable = 0

    # -- life ------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory and take this process's owner lock (OSError if impossible)."""
        if self._lock is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Made under a temporary name and locked before it is visible, so nobody ever sees
        # this owner's lock file unlocked and takes it for a dead one.
        staging = self.directory / f".owner-{self.owner}.tmp"
        handle = staging.open("wb")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(staging, self._lock_path)
        self._lock = handle

    def close(self) -> None:
        """Release the owner lock: what is left in the journal becomes an orphan to replay."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self._lock_path.unlink()
        self._lock.close()
        self._lock = None

    # -- writing ---------------------------------------------------------------------------

    def append(self, records: Sequence[Record], into: Segment | None = None) -> Segment:
        """Write `records` durably (write + fsync) to `into`, or to a new segment when `into`
        is None or full; returns the segment written. OSError when the disk refuses."""
        if self._lock is None:
            self.open()
        data = ("\n".join([record.to_line() for record in records]) + "\n").encode("utf-8")
        if (
            into is not None
            and into.path is not None
            and into.size + len(data) <= self.segment_bytes
        ):
            _write_all(into.path, data, create=False)
            into.size += len(data)
            into.count += len(records)
            return into
        name = f"journal-{time.time_ns():020d}-{self.owner}-{next(self._counter):06d}.jsonl"
        path = self.directory / name
        _write_all(path, data, create=True)
        _fsync_directory(self.directory)  # the new name survives a power cut, too
        return Segment(path, len(records), size=len(data))

    def remove(self, segment: Segment) -> None:
        """Forget a segment whose records are all committed to the database."""
        if segment.path is not None:
            segment.path.unlink(missing_ok=True)

    # -- reading back ----------------------------------------------------------------------

    def read(self, segment: Segment) -> list[Record]:
        """The records of a segment; unreadable lines are counted (`unreadable`) and logged."""
        if segment.path is None:
            return []
        try:
            text = segment.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(Record.from_line(line))
            except ValueError:
                self.unreadable += 1
                log.error(
                    "%s:%d: unreadable journal record (torn write?); counted as dropped",
                    segment.path,
                    number,
                )
        return records

    def adopt_orphans(self) -> list[Segment]:
        """Claim the segments of writers that are gone, oldest first."""
        if self._lock is None:
            self.open()
        claimed: list[Segment] = []
        alive: dict[str, bool] = {}
        for path in sorted(self.directory.glob(_SEGMENT_GLOB)):
            parts = path.name.split("-")
            owner = parts[2] if len(parts) > 3 else ""
            if owner == self.owner:
                continue
            if owner not in alive:
                alive[owner] = self._owner_alive(owner)
            if not alive[owner]:
                self._claim(path, f"{parts[1]}-{self.owner}-{owner}.{parts[3]}", claimed)
        for pattern in _LEGACY_GLOBS:
            for path in sorted(self.directory.glob(pattern)):
                self._claim_legacy(path, claimed)
        # The locks of owners that died with nothing journaled: each crash would leave one.
        for lock_path in self.directory.glob("owner-*.lock"):
            owner = lock_path.name[len("owner-") : -len(".lock")]
            if owner != self.owner and owner not in alive:
                self._owner_alive(owner)  # removes the lock of an owner that is gone
        if claimed:
            log.warning(
                "found %d experiment records of a process that is gone in %s; replaying them",
                sum(s.count for s in claimed),
                self.directory,
            )
        return claimed

    def _owner_alive(self, owner: str) -> bool:
        lock_path = self.directory / f"owner-{owner}.lock"
        try:
            handle = lock_path.open("rb")
        except FileNotFoundError:
            return False
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(OSError):
                lock_path.unlink()  # its owner is gone; its segments are claimed next
        return False

    def _claim(self, path: Path, new_name: str, claimed: list[Segment]) -> None:
        target = path.with_name(f"journal-{new_name}")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return  # another writer claimed it first
        claimed.append(
            Segment(target, _count_lines(target), adopted=True, size=target.stat().st_size)
        )

    def _claim_legacy(self, path: Path, claimed: list[Segment]) -> None:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a writer of the previous version still holds it
            stamp = path.name.split("-")[1] if path.name.count("-") >= 1 else "0"
            self._claim(
                path, f"{stamp}-{self.owner}-legacy.{next(self._counter):06d}.jsonl", claimed
            )


def _write_all(path: Path, data: bytes, *, create: bool) -> None:
    flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0
