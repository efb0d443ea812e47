"""The database end of the experiment writer: idempotent batch inserts into the record tables.

Inserts skip rows whose key exists (ON CONFLICT DO NOTHING on SQLite and PostgreSQL; the keys
are natural: an exposure's decision id, a call sample's decision id and variant, an outcome
event's id), so a batch written twice, as a journal segment replayed after a crash may be, is
stored once.

The sink has its own connection pool (`Database.derive`), without the pre-ping of the app's
pool: a ping at checkout is a statement nobody could interrupt. Every write and ping runs on
a connection that `interrupt()` (called by the writer's watchdog from another thread) can
abort, and a connection that failed for anything but its data is discarded.

Rows go in as multi-row `INSERT ... VALUES (...), (...)` statements of `ROWS_PER_STATEMENT`
rows, with values taken from the row dicts in column order and converted by the columns' own
SQLAlchemy bind processors, on the columns that have one only (`at`, epoch seconds in the
record, becomes a UTC datetime; row dicts are never copied). Why not
`executemany`: the sqlite3 driver releases the GIL for every row, and while the event loop
thread is busy each re-acquisition waits for its switch interval (5 ms), so under load the
writer stored only ~600 rows/s (bench/exposures.py); one statement per 100 rows waits 100
times less. Other databases use SQLAlchemy's generic insert.
"""

from __future__ import annotations

import operator
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Dialect, Table, insert, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from control_plane.db.engine import Database, interrupt
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
        self.values = _Values(table, dialect)
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        # Only quoted names of our own tables and bound-parameter markers: no data in the SQL.
        self._head = (
            f"INSERT INTO {preparer.format_table(table)} ("  # noqa: S608
            + ", ".join(preparer.quote(name) for name in self.columns)
            + ") VALUES "
        )
        self._group = "(" + ", ".join([marker] * len(self.columns)) + ")"
        self._statements: dict[int, str] = {}

    def statement(self, rows: int) -> str:
        sql = self._statements.get(rows)
        if sql is None:
            sql = self._head + ", ".join([self._group] * rows) + " ON CONFLICT DO NOTHING"
            self._statements[rows] = sql
        return sql

    def parameters(self, rows: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
        """The rows' values, flat in statement order."""
        values: list[Any] = []
        for row in rows:
            values += self.values(row)
        return tuple(values)


class _Values:
    """One record row (a dict, times as epoch seconds) -> its column values in table order,
    ready for the driver: `at` becomes the time the driver takes, and the columns' own bind
    processors run on the other columns that have one (a float on SQLite)."""

    def __init__(self, table: Table, dialect: Dialect | None) -> None:
        columns = list(table.columns)
        self._get = operator.itemgetter(*(column.name for column in columns))
        self._convert: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(columns):
            process: Callable[[Any], Any] | None
            if column.name == "at":
                process = _sqlite_time if dialect is not None and dialect.name == "sqlite" else _utc
            elif dialect is not None:
                process = column.type.dialect_impl(dialect).bind_processor(dialect)
            else:
                process = None
            if process is not None:
                self._convert.append((index, process))

    def __call__(self, row: dict[str, Any]) -> list[Any]:
        values = list(self._get(row))
        for index, process in self._convert:
            value = values[index]
            if value is not None:
                values[index] = process(value)
        return values


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _sqlite_time(seconds: float) -> str:
    """Epoch seconds as SQLAlchemy's SQLite DATETIME stores them ("2026-12-02 05:06:07.123456",
    UTC), at 2/3 of the cost of its bind processor on a datetime."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(" ", "microseconds")[:26]


class DatabaseSink:
    """RecordSink (control_plane.experiments.writer) over the record tables of `database`."""

    def __init__(self, database: Database) -> None:
        self.database = database.derive(pool_pre_ping=False)
        self._active: object | None = None  # the DBAPI connection of the write in progress
        self._active_lock = threading.Lock()
        dialect = self.database.engine.dialect
        self._tables: dict[str, Table] = {
            model.__tablename__: model.__table__  # type: ignore[misc]
            for model in _MODELS
        }
        self._inserts: dict[str, _TableInsert] | None = None
        #: PostgreSQL through psycopg: COPY into a temporary table, then one INSERT ... SELECT.
        self._copy = dialect.name == "postgresql" and dialect.driver == "psycopg"
        if dialect.name in ("sqlite", "postgresql"):
            self._inserts = {
                name: _TableInsert(table, dialect) for name, table in self._tables.items()
            }
        #: COPY rows: psycopg adapts Python values itself, so only `at` is converted.
        self._copy_values = {name: _Values(table, None) for name, table in self._tables.items()}

    def write(self, records: Sequence[Record]) -> None:
        """Store every record in one transaction (rows already stored are skipped)."""
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            by_table[record.table].append(record.row)
        with self._connection() as connection, connection.begin():
            for table, rows in by_table.items():
                self._insert(connection, table, rows)

    def ping(self) -> None:
        with self._connection() as connection:
            connection.execute(text("SELECT 1"))

    def interrupt(self) -> None:
        """Abort the write or ping in progress (from another thread); it raises there."""
        with self._active_lock:
            active = self._active
        if active is not None:
            interrupt(active)

    def close(self) -> None:
        self.database.dispose()

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self.database.engine.connect() as connection:
            dbapi_connection = connection.connection.dbapi_connection
            with self._active_lock:
                self._active = dbapi_connection
            try:
                yield connection
            except (IntegrityError, DataError):
                raise
            except Exception:
                connection.invalidate()  # possibly half-dead (interrupted): never reuse it
                raise
            finally:
                with self._active_lock:
                    self._active = None

    def _insert(self, connection: Connection, table: str, rows: list[dict[str, Any]]) -> None:
        if self._copy:
            _copy_insert(connection, self._tables[table], rows, self._copy_values[table])
            return
        if self._inserts is None:
            connection.execute(
                insert(self._tables[table]), [{**row, "at": _utc(row["at"])} for row in rows]
            )
            return
        plan = self._inserts[table]
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start : start + ROWS_PER_STATEMENT]
            connection.exec_driver_sql(plan.statement(len(chunk)), plan.parameters(chunk))


def _copy_insert(
    connection: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    values: Callable[[dict[str, Any]], list[Any]],
) -> None:
    """Rows into `table` through COPY: psycopg formats COPY rows in C, where a multi-row
    INSERT adapts every bound value in Python (about 30 us of this process's CPU per exposure,
    taken from the event loop's GIL; bench/exposures.py). The staging table lives as long as
    the connection and empties at every commit; ON CONFLICT DO NOTHING keeps replays
    idempotent."""
    preparer = connection.dialect.identifier_preparer
    name = preparer.format_table(table)
    staging = preparer.quote(f"_staging_{table.name}")
    columns = [column.name for column in table.columns]
    column_list = ", ".join(preparer.quote(column) for column in columns)
    # Only quoted names of our own tables: no data in the SQL.
    insert_sql = (
        f"INSERT INTO {name} ({column_list}) SELECT {column_list} "  # noqa: S608
        f"FROM {staging} ON CONFLICT DO NOTHING"
    )
    dbapi = connection.dialect.loaded_dbapi
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
            f"(LIKE {name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY {staging} ({column_list}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(values(row))
        cursor.execute(insert_sql)
    # The raw cursor bypasses SQLAlchemy's error translation; the writer tells a refusal of
    # the data from an outage by SQLAlchemy's classes.
    except dbapi.IntegrityError as exc:
        raise IntegrityError(insert_sql, None, exc) from exc
    except dbapi.DataError as exc:
        raise DataError(insert_sql, None, exc) from exc
    except dbapi.Error as exc:
        raise OperationalError(insert_sql, None, exc) from exc
    finally:
        cursor.close()
