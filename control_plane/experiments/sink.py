"""The database end of the experiment writer: idempotent batch inserts into the record tables.

Inserts skip rows whose key exists (ON CONFLICT DO NOTHING on SQLite and PostgreSQL), so a
batch written twice, as a replayed spill file may be, is stored once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, Table, insert, text
from sqlalchemy.dialects import postgresql, sqlite

from control_plane.db.engine import Database
from control_plane.db.experiment_models import CallSample, Exposure, OutcomeEvent
from control_plane.experiments.records import Record

__all__ = ["DatabaseSink"]

#: Rows per executemany: one transaction per batch, but the GIL is released between chunks.
_CHUNK = 500

_TABLES: dict[str, Table] = {
    model.__tablename__: model.__table__  # type: ignore[misc]
    for model in (Exposure, OutcomeEvent, CallSample)
}


class DatabaseSink:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._dialect = database.engine.dialect.name

    def write(self, records: Sequence[Record]) -> None:
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            row = dict(record.row)
            row["at"] = datetime.fromtimestamp(row["at"], UTC)
            by_table[record.table].append(row)
        with self.database.engine.begin() as connection:
            for table, rows in by_table.items():
                statement = self._insert(_TABLES[table])
                for start in range(0, len(rows), _CHUNK):
                    if start:
                        time.sleep(0)  # let the event loop thread have the GIL between chunks
                    connection.execute(statement, rows[start:start + _CHUNK])

    def ping(self) -> None:
        with self.database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def _insert(self, table: Table) -> Insert:
        if self._dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        if self._dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        return insert(table)
