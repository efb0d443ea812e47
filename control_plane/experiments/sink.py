"""The database end of the experiment writer: idempotent batch inserts into the record tables.

Inserts skip rows whose key exists (ON CONFLICT DO NOTHING on SQLite and PostgreSQL; the keys
are natural: an exposure's decision id, a call sample's decision id and variant, an outcome
event's id), so a batch written twice, as a journal segment replayed after a crash may be, is
stored once. `write` says how many rows of each table it added (the database's row count of
each insert), so a consumer of an at-least-once stream can tell stored from repeated.

The sink has its own connection pool (`Database.derive`), without the pre-ping of the app's
pool: a ping at checkout is a statement nobody could interrupt. Every write and ping runs on
a connection that `interrupt()` (called by the writer's watchdog from another thread) can
abort, and a connection that failed for anything but its data is discarded.

Rows go in as multi-row `INSERT ... VALUES (...), (...)` statements of `ROWS_PER_STATEMENT`
rows, with values taken from the row dicts in column order, flat, and converted column by
column where the column needs it (row dicts are never copied): `at`, epoch seconds in the
record, becomes the text SQLAlchemy's SQLite DATETIME stores, and the columns' own SQLAlchemy
bind processors run on the other columns that have one. Why not
`executemany`: the sqlite3 driver releases the GIL for every row, and while the event loop
thread is busy each re-acquisition waits for its switch interval (5 ms), so under load the
writer stored only ~600 rows/s (bench/exposures.py); one statement per 100 rows waits 100
times less. PostgreSQL through psycopg takes rows by COPY (`_copy_insert`); other databases use
SQLAlchemy's generic insert.

The time text is the writer's largest cost after the journal line: `datetime.fromtimestamp`
and `isoformat` took 1.2 us a row, more than the insert itself. `utc_text` makes the same text
(microseconds rounded half to even, as `fromtimestamp` rounds) with the date and time of day
formatted once per second, which the rows of a batch share, and the date, hour and minute
once per minute, for rows seconds apart.
"""

from __future__ import annotations

import math
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

__all__ = ["ROWS_PER_STATEMENT", "DatabaseSink", "utc_text"]

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


class _Values:
    """Record rows (dicts, times as epoch seconds) -> their column values in table order,
    ready for the driver: `at` becomes the time the driver takes (the text SQLAlchemy's SQLite
    DATETIME stores; PostgreSQL's COPY text; else a UTC datetime), and the columns' own bind
    processors run on the other columns that have one (a float on SQLite)."""

    def __init__(self, table: Table, dialect: Dialect | None, *, copy: bool = False) -> None:
        columns = list(table.columns)
        self.width = len(columns)
        self._get = operator.itemgetter(*(column.name for column in columns))
        self._convert: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(columns):
            process: Callable[[Any], Any] | None
            if column.name == "at":
                process = _utc
                if dialect is not None and dialect.name == "sqlite":
                    process = utc_text()
                elif copy:
                    process = utc_text("+00:00")
            elif dialect is not None and not copy:
                process = column.type.dialect_impl(dialect).bind_processor(dialect)
            else:
                process = None
            if process is not None:
                self._convert.append((index, process))

    def __call__(self, row: dict[str, Any]) -> list[Any]:
        """One row's values (a COPY row)."""
        values = list(self._get(row))
        for index, process in self._convert:
            value = values[index]
            if value is not None:
                values[index] = process(value)
        return values

    def flat(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """The rows' values, flat in statement order: taken row by row, converted column by
        column (one list comprehension per converted column, not a loop per value)."""
        values: list[Any] = []
        extend, get = values.extend, self._get
        for row in rows:
            extend(get(row))
        width = self.width
        for index, process in self._convert:
            values[index::width] = [
                None if value is None else process(value) for value in values[index::width]
            ]
        return values


#: The first second of the year 10000: datetime's range ends before it.
_END_OF_DATETIME = 253402300800.0
#: The seconds of a minute as utc_text writes them.
_SECONDS = tuple(f"{second:02d}" for second in range(60))


def utc_text(suffix: str = "") -> Callable[[float], str]:
    """A converter of epoch seconds to "YYYY-MM-DD HH:MM:SS.ffffff" (UTC) plus `suffix`: the
    text `datetime.fromtimestamp(seconds, UTC).isoformat(" ", "microseconds")` begins with,
    which SQLAlchemy's SQLite DATETIME stores, at under a third of its cost.

    The microseconds are rounded as `fromtimestamp` rounds them (the fraction times 10**6,
    half to even, carrying into the next second); the date and time of day are kept for the
    last second, since the rows of a batch share their second, and the date, hour and minute
    for the last minute, so rows a second or more apart (a journal replayed, a trickle,
    bench/events.py's records, one a second) take two digits from a table instead of
    `datetime`'s formatting: 2.1-2.4 us a row against 5.3-5.7 for rows a second apart, the
    same 0.7-1.2 us within a second (best of 20, two runs each, this machine). Times before
    1970 or from the year 10000 on, and what is not a finite number, take `datetime`'s own
    way (and its errors). A closure, not a class: a method call costs a third more. It can
    serve several threads: a kept second or minute and its text are replaced together."""
    kept: list[Any] = [math.nan, ""]  # [second, its text]; nothing is within a second of NaN
    minute: list[Any] = [math.nan, ""]  # [its first second, "YYYY-MM-DD HH:MM:"]

    def convert(seconds: float) -> str:
        second, text = kept
        # Exact whenever it is in [0, 1) (Sterbenz: two doubles this close subtract without
        # rounding), so it is then the fraction modf gives: the second is the kept one.
        fraction = seconds - second
        if 0.0 <= fraction < 1.0:
            micro = round(fraction * 1e6)
            if micro < 1_000_000:
                return f"{text}.{micro:06d}{suffix}"
        if not 0.0 <= seconds < _END_OF_DATETIME:  # NaN fails the comparison too
            return _iso_micro(datetime.fromtimestamp(seconds, UTC)) + suffix
        fraction, whole = math.modf(seconds)
        micro = round(fraction * 1e6)
        if micro >= 1_000_000:
            micro -= 1_000_000
            whole += 1.0
        start, head = minute
        # Unix time has no leap seconds: every minute starts at a multiple of 60.
        if 0.0 <= whole - start < 60.0:
            text = head + _SECONDS[int(whole - start)]
        else:
            text = datetime.fromtimestamp(whole, UTC).isoformat(" ", "seconds")[:19]
            minute[:] = (whole - whole % 60.0, text[:17])
        kept[:] = (whole, text)
        return f"{text}.{micro:06d}{suffix}"

    return convert


def _iso_micro(moment: datetime) -> str:
    return moment.isoformat(" ", "microseconds")[:26]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


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
        #: COPY rows: psycopg adapts Python values itself, so only `at` is converted (to the
        #: text COPY sends in any case, without a datetime in between).
        self._copy_values = {
            name: _Values(table, dialect, copy=True)
            for name, table in self._tables.items()
            if self._copy
        }

    def write(self, records: Sequence[Record]) -> dict[str, int]:
        """Store every record in one transaction (rows already stored are skipped); returns
        the rows it added, per table."""
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            by_table[record.table].append(record.row)
        with self._connection() as connection, connection.begin():
            return {
                table: self._insert(connection, table, rows) for table, rows in by_table.items()
            }

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

    def _insert(self, connection: Connection, table: str, rows: list[dict[str, Any]]) -> int:
        """Insert `rows` into `table`, skipping keys it holds; the rows added."""
        if self._copy:
            return _copy_insert(connection, self._tables[table], rows, self._copy_values[table])
        if self._inserts is None:
            # SQLAlchemy's generic insert: no ON CONFLICT, so no row is skipped; a repeat
            # fails as an IntegrityError.
            connection.execute(
                insert(self._tables[table]), [{**row, "at": _utc(row["at"])} for row in rows]
            )
            return len(rows)
        plan = self._inserts[table]
        values = plan.values.flat(rows)
        step = ROWS_PER_STATEMENT * plan.values.width
        added = 0
        for start in range(0, len(values), step):
            chunk = tuple(values[start : start + step])
            result = connection.exec_driver_sql(
                plan.statement(len(chunk) // plan.values.width), chunk
            )
            added += result.rowcount  # the rows inserted, not those ON CONFLICT skipped
        return added


def _copy_insert(
    connection: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    values: Callable[[dict[str, Any]], list[Any]],
) -> int:
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
        return int(cursor.rowcount)  # the rows inserted, not those ON CONFLICT skipped
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
