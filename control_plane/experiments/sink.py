"""The database end of the experiment writer: idempotent batch inserts into the record tables.

Inserts skip rows whose key exists (ON CONFLICT DO NOTHING on SQLite and PostgreSQL), so a
batch written twice, as a replayed spill file may be, is stored once.

Rows go in as multi-row `INSERT ... VALUES (...), (...)` statements of `ROWS_PER_STATEMENT`
rows, with values converted by the columns' own SQLAlchemy bind processors. Why not
`executemany`: the sqlite3 driver releases the GIL for every row, and while the event loop
thread is busy each re-acquisition waits for its switch interval (5 ms), so under load the
writer stored only ~600 rows/s (bench/exposures.py); one statement per 100 rows waits 100
times less. Other databases use SQLAlchemy's generic insert.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Dialect, Table, insert, text
from sqlalchemy.engine import Connection

from control_plane.db.engine import Database
from control_plane.db.experiment_models import CallSample, Exposure, OutcomeEvent
from control_plane.experiments.records import Record

__all__ = ["ROWS_PER_STATEMENT", "DatabaseSink"]

#: Rows per INSERT statement; 100 rows of 8 columns stay under SQLite's oldest limit of 999
#: bound parameters per statement.
ROWS_PER_STATEMENT = 100

_MODELS = (Exposure, OutcomeEvent, CallSample)


class _TableInsert:
    """The multi-row idempotent INSERT of one table, for one dialect."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        preparer = dialect.identifier_preparer
        self.columns = [column.name for column in table.columns]
        self.processors: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(dialect).bind_processor(dialect)
            for column in table.columns]
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        # Only quoted names of our own tables and bound-parameter markers: no data in the SQL.
        self._head = (f"INSERT INTO {preparer.format_table(table)} ("  # noqa: S608
                      + ", ".join(preparer.quote(name) for name in self.columns) + ") VALUES ")
        self._group = "(" + ", ".join([marker] * len(self.columns)) + ")"
        self._statements: dict[int, str] = {}

    def statement(self, rows: int) -> str:
        sql = self._statements.get(rows)
        if sql is None:
            sql = self._head + ", ".join([self._group] * rows) + " ON CONFLICT DO NOTHING"
            self._statements[rows] = sql
        return sql

    def parameters(self, rows: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
        values: list[Any] = []
        pairs = list(zip(self.columns, self.processors, strict=True))
        for row in rows:
            for name, process in pairs:
                value = row[name]
                values.append(process(value) if process is not None and value is not None
                              else value)
        return tuple(values)


class DatabaseSink:
    def __init__(self, database: Database) -> None:
        self.database = database
        dialect = database.engine.dialect
        self._tables: dict[str, Table] = {
            model.__tablename__: model.__table__  # type: ignore[misc]
            for model in _MODELS
        }
        self._inserts: dict[str, _TableInsert] | None = None
        if dialect.name in ("sqlite", "postgresql"):
            self._inserts = {name: _TableInsert(table, dialect)
                             for name, table in self._tables.items()}

    def write(self, records: Sequence[Record]) -> None:
        """Store every record in one transaction (rows already stored are skipped)."""
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            row = dict(record.row)
            row["at"] = datetime.fromtimestamp(row["at"], UTC)
            by_table[record.table].append(row)
        with self.database.engine.begin() as connection:
            for table, rows in by_table.items():
                self._insert(connection, table, rows)

    def ping(self) -> None:
        with self.database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def _insert(self, connection: Connection, table: str, rows: list[dict[str, Any]]) -> None:
        if self._inserts is None:
            connection.execute(insert(self._tables[table]), rows)
            return
        plan = self._inserts[table]
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start:start + ROWS_PER_STATEMENT]
            connection.exec_driver_sql(plan.statement(len(chunk)), plan.parameters(chunk))
