"""An in-memory RecordSink: the fake that ships with the seam (control_plane.experiments.writer).

Stores records in a list, keyed like the database (a record written twice is stored once), and
can be told to fail like an unreachable database (`down = True`: every write and ping raises
ConnectionError, which the writer treats as an outage and retries) or to refuse one record's
data (`refuse`: a predicate; matching records raise DataError, which the writer treats as bad
data and sets aside). Tests and services embedding the writer use it instead of a mock.

    sink = MemorySink()
    writer = BatchWriter(sink, Journal(tmp_dir), prepare=..., ...)
    sink.down = True      # an outage: records wait in the journal
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DataError

from control_plane.experiments.records import Record

__all__ = ["MemorySink"]


def _key(record: Record) -> tuple[Any, ...]:
    """The natural key a database row of the record has (see experiments.sink)."""
    values = record.row
    if record.table == "call_samples":
        return (record.table, values.get("decision_id"), values.get("variant"))
    return (record.table, values.get("decision_id") or values.get("id"), None)


class MemorySink:
    """RecordSink in memory; `records` holds what was stored, in order, each key once."""

    def __init__(self, refuse: Callable[[Record], bool] | None = None) -> None:
        self.records: list[Record] = []
        self.down = False
        self.refuse = refuse
        self.writes = 0
        self._keys: set[tuple[Any, ...]] = set()
        self._lock = threading.Lock()

    def write(self, records: Sequence[Record]) -> dict[str, int]:
        added: dict[str, int] = {}
        with self._lock:
            if self.down:
                raise ConnectionError("the memory sink is down")
            if self.refuse is not None:
                for record in records:
                    if self.refuse(record):
                        raise DataError("INSERT", {}, ValueError(f"refused {record.table}"))
            self.writes += 1
            for record in records:
                key = _key(record)
                added.setdefault(record.table, 0)
                if key not in self._keys:
                    self._keys.add(key)
                    self.records.append(record)
                    added[record.table] += 1
        return added

    def ping(self) -> None:
        if self.down:
            raise ConnectionError("the memory sink is down")

    def interrupt(self) -> None:
        """Nothing blocks in memory, so there is nothing to interrupt."""

    def close(self) -> None:
        """No connections to release."""

    def stored(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record.row) for record in self.records if record.table == table]


if TYPE_CHECKING:  # the fake keeps up with the Protocol it stands in for
    from control_plane.experiments.writer import RecordSink

    _conforms: RecordSink = MemorySink()
