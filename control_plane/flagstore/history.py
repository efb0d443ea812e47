"""The seam between the flag store and where versions are recorded.

The store asks a `VersionRecorder` for the number of each accepted flag set. The in-memory
recorder ships for tests and tools; the database recorder (control_plane.db) keeps versions,
audit entries and diffs across restarts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

from control_plane.flagstore.flagset import FlagSet

__all__ = ["InMemoryRecorder", "RecordRequest", "VersionRecorder"]


@dataclass(frozen=True)
class RecordRequest:
    """An accepted flag set about to be served, before it has a version number."""

    flag_set: FlagSet  # its `version` is a placeholder (0) until recorded
    source: str  # "file", "api" or "rollback"
    actor: str  # who: "file-watcher", a token's name, ...
    message: str = ""


class VersionRecorder(Protocol):
    def latest(self) -> FlagSet | None:
        """The newest recorded flag set, if any (so a restart keeps numbering)."""
        ...

    def record(self, request: RecordRequest) -> int:
        """Store the flag set (and its audit entry) and return its new version number."""
        ...


class InMemoryRecorder:
    """Numbers versions 1, 2, 3... in memory; forgets everything on exit."""

    def __init__(self) -> None:
        self.records: list[RecordRequest] = []

    def latest(self) -> FlagSet | None:
        if not self.records:
            return None
        # The request holds the placeholder version 0; the recorded number is its position.
        return dataclasses.replace(self.records[-1].flag_set, version=len(self.records))

    def record(self, request: RecordRequest) -> int:
        self.records.append(request)
        return len(self.records)
