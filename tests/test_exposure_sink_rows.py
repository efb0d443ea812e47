"""The experiment sink's own insert paths (SQLite: flat multi-row INSERTs with the time text
made once per second; PostgreSQL: COPY with the time sent as text) store exactly what
SQLAlchemy's insert of the same rows stores: the same columns, values and types, read back
raw from the database, for fresh rows, rows already stored and a batch with a refused row."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import db_support
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Table, insert, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from control_plane.db import Database
from control_plane.db.experiment_models import CallSample, Exposure, OutcomeEvent
from control_plane.db.models import UtcDateTime
from control_plane.experiments.journal import Journal
from control_plane.experiments.records import CALL_SAMPLES, EXPOSURES, OUTCOME_EVENTS, Record
from control_plane.experiments.sink import DatabaseSink, utc_text
from control_plane.experiments.writer import BatchWriter

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

_TABLES: dict[str, Table] = {
    model.__tablename__: model.__table__  # type: ignore[misc]
    for model in (Exposure, OutcomeEvent, CallSample)
}
_NOW = math.floor(time.time())
#: Times that share a second, cross one, sit on half a microsecond (rounded to even), round
#: up into the next second, are whole seconds, tiny, far away, or come out of order.
TIMES = [
    _NOW + 0.1,
    _NOW + 0.1000005,
    _NOW + 0.1000015,
    _NOW + 0.9999994,
    _NOW + 0.9999996,
    _NOW + 1.0,
    _NOW + 1.5,
    _NOW - 3.25,
    time.time(),
    1764650000.654321,
    1764650000.0000005,
    1764650000.0000025,
    0.000001,
    0.0,
    4102444800.123456,
    253402300799.0,
]


def _records(prefix: str, times: Sequence[float] = TIMES) -> list[Record]:
    """Rows of all three tables, one of each per time, in the recorder's shapes."""
    records = []
    for index, at in enumerate(times):
        records.append(
            Record(
                EXPOSURES,
                {
                    "decision_id": f"{prefix}{index:06d}",
                    "flag": "ab-test-router",
                    "variant": "model-a" if index % 2 else "modèle-b",
                    "unit": None if index % 3 == 0 else f"{index:064x}",
                    "flag_set_version": index,
                    "reason": "TARGETING_MATCH",
                    "at": at,
                },
            )
        )
        records.append(
            Record(
                OUTCOME_EVENTS,
                {
                    "id": f"{prefix}e{index:06d}",
                    "decision_id": f"{prefix}{index:06d}" if index % 2 else None,
                    "flag": "ab-test-router" if index % 2 else None,
                    "unit": None,
                    "metric": "revenue",
                    "kind": "continuous",
                    "value": index * 0.1 + 1e-9,
                    "at": at,
                },
            )
        )
        records.append(
            Record(
                CALL_SAMPLES,
                {
                    "decision_id": f"{prefix}{index:06d}",
                    "variant": "model-a",
                    "flag": "ab-test-router",
                    "backend": "m",
                    "status": None if index % 4 == 0 else 200,
                    "seconds": index / 7,
                    "error": "timeout" if index % 4 == 0 else None,
                    "at": at,
                },
            )
        )
    return records


def _reference_insert(database: Database, records: Sequence[Record]) -> None:
    """The rows inserted the ORM's way: SQLAlchemy's insert, times as UTC datetimes."""
    with database.engine.begin() as connection:
        for name, table in _TABLES.items():
            rows = [
                {**record.row, "at": datetime.fromtimestamp(record.row["at"], UTC)}
                for record in records
                if record.table == name
            ]
            if rows:
                connection.execute(insert(table), rows)


def _raw(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables as the database holds it: each column's value as the
    driver returns it, and its type (SQLite's typeof; PostgreSQL's text form of the value)."""
    stored = {}
    with database.engine.connect() as connection:
        for name, table in _TABLES.items():
            columns = [column.name for column in table.columns]
            if database.is_sqlite:
                shown = [f'"{column}", typeof("{column}") AS "{column}_type"' for column in columns]
            else:
                shown = [f'"{column}", "{column}"::text AS "{column}_text"' for column in columns]
            keys = ", ".join(f'"{column.name}"' for column in table.primary_key.columns)
            query = f'SELECT {", ".join(shown)} FROM "{name}" ORDER BY {keys}'  # noqa: S608
            stored[name] = [tuple(row) for row in connection.exec_driver_sql(query)]
    return stored


def _clear(database: Database) -> None:
    with database.engine.begin() as connection:
        for name in _TABLES:
            connection.execute(text(f'DELETE FROM "{name}"'))  # noqa: S608 - our table names


def _sink_insert(database: Database, *batches: Sequence[Record]) -> list[dict[str, int]]:
    """The batches written by one sink; the rows each write says it added, per table."""
    sink = DatabaseSink(database)
    try:
        return [dict(sink.write(batch)) for batch in batches]
    finally:
        sink.close()


def test_the_sink_stores_what_sqlalchemys_insert_stores(database: Database) -> None:
    """Rows of every table, with times that share a second, cross one, round half to even or
    up into the next second, are stored by the sink exactly as SQLAlchemy's insert stores them
    (value and type of every column)."""
    records = _records("d")
    _reference_insert(database, records)
    expected = _raw(database)
    _clear(database)
    _sink_insert(database, records)
    assert _raw(database) == expected
    assert len(expected[EXPOSURES]) == len(TIMES)


def test_rows_already_stored_are_skipped_and_left_as_they_were(database: Database) -> None:
    """A second batch that repeats stored keys (with other values) stores only its new rows;
    the stored ones keep their first values, as a replayed journal segment needs."""
    first = _records("d")
    repeated = [
        Record(record.table, {**record.row, "at": record.row["at"] + 0.5, "flag": "changed"})
        for record in first[: 3 * 5]
    ]
    new = _records("n", [_NOW + 2.75, _NOW + 2.7500005])
    _reference_insert(database, first + new)
    expected = _raw(database)
    _clear(database)
    added = _sink_insert(database, first, repeated + new)
    assert _raw(database) == expected
    every = len(TIMES)
    assert added == [
        {EXPOSURES: every, OUTCOME_EVENTS: every, CALL_SAMPLES: every},
        {EXPOSURES: 2, OUTCOME_EVENTS: 2, CALL_SAMPLES: 2},  # the repeats added nothing
    ]


def test_rows_added_are_counted_across_statements(database: Database) -> None:
    """A batch of more rows than one INSERT statement takes says how many it added in all:
    250 exposures, then 150 of them again with 100 new (a replay beside fresh records)."""
    times = [_NOW + index / 1000 for index in range(350)]
    exposures = [record for record in _records("x", times) if record.table == EXPOSURES]
    assert len(exposures) == 350
    added = _sink_insert(database, exposures[:250], exposures[100:])
    assert added == [{EXPOSURES: 250}, {EXPOSURES: 100}]
    assert len(_raw(database)[EXPOSURES]) == 350


def test_a_batch_with_a_refused_row_stores_the_others_through_the_writer(
    database: Database, tmp_path: Path
) -> None:
    """A refused row (no flag: NOT NULL) fails the sink's batch as a data error and stores
    nothing of it; the writer then stores the other rows one by one, exactly as SQLAlchemy's
    insert stores them, and counts the refused one as dropped."""
    good = [record for record in _records("d") if record.table == EXPOSURES]
    bad = Record(EXPOSURES, {**good[0].row, "decision_id": "bad", "flag": None})
    batch = [*good[:4], bad, *good[4:]]
    sink = DatabaseSink(database)
    try:
        with pytest.raises(IntegrityError):
            sink.write(batch)
    finally:
        sink.close()
    assert _raw(database)[EXPOSURES] == []

    writer = BatchWriter(
        DatabaseSink(database),
        Journal(tmp_path / "journal"),
        prepare=lambda item: item[1],
        journal_interval=0.02,
        flush_interval=0.02,
        retry_interval=0.05,
    )
    for record in batch:
        writer.offer((record.table, record, 0.0))
    writer.start()
    try:
        assert writer.flush(timeout=15)
    finally:
        writer.stop()
    assert writer.counts.dropped == 1
    assert writer.database_up
    stored = _raw(database)
    _clear(database)
    _reference_insert(database, good)
    assert stored == _raw(database)


_SQLITE = sqlite.dialect()
#: SQLAlchemy's own conversion of a time for the exposures table's `at` on SQLite.
_SQLITE_BIND = UtcDateTime().dialect_impl(_SQLITE).bind_processor(_SQLITE)


def _sqlalchemy_text(seconds: float) -> Any:
    assert _SQLITE_BIND is not None
    return _SQLITE_BIND(datetime.fromtimestamp(seconds, UTC))


@given(st.lists(st.floats(min_value=0.0, max_value=253402300799.0), min_size=1, max_size=50))
def test_time_text_is_sqlalchemys_for_any_time_in_any_order(times: list[float]) -> None:
    """One converter fed any times in any order (its kept second changing or not) gives
    SQLAlchemy's SQLite DATETIME text of datetime.fromtimestamp for each."""
    convert = utc_text()
    assert [convert(seconds) for seconds in times] == [_sqlalchemy_text(s) for s in times]


@given(
    st.integers(min_value=0, max_value=253402300000),
    st.lists(st.floats(min_value=0.0, max_value=300.0), min_size=1, max_size=50),
)
def test_time_text_is_sqlalchemys_for_times_minutes_apart(base: int, offsets: list[float]) -> None:
    """Times within a few minutes of each other, in any order (the kept minute used, left and
    come back to, across hours and days), give SQLAlchemy's text."""
    convert = utc_text()
    times = [base + offset for offset in offsets]
    assert [convert(seconds) for seconds in times] == [_sqlalchemy_text(s) for s in times]


def test_time_text_of_every_second_of_a_day_is_sqlalchemys() -> None:
    """Each second of a day, in order, across each minute's and hour's end, and a new day."""
    convert = utc_text()
    times = [1_700_006_400.0 - 1 + second + 0.5 for second in range(86_402)]
    assert [convert(seconds) for seconds in times] == [_sqlalchemy_text(s) for s in times]


@given(st.integers(min_value=0, max_value=4102444800), st.integers(min_value=0, max_value=10**7))
def test_time_text_rounds_tenths_of_microseconds_as_fromtimestamp(second: int, tenths: int) -> None:
    """Times a tenth of a microsecond apart within a second (halves, and the last ones, which
    round up into the next second) give SQLAlchemy's text, after the converter kept a second."""
    convert = utc_text(suffix="+00:00")
    seconds = second + tenths / 1e7
    convert(float(second))
    assert convert(seconds) == f"{_sqlalchemy_text(seconds)}+00:00"


@pytest.mark.parametrize(
    "seconds", [-1.5, -0.0, float("nan"), float("inf"), 253402300800.0, 1e20, 7, True]
)
def test_time_text_outside_the_fast_range_is_datetimes_own(seconds: float) -> None:
    """Times before 1970, from the year 10000, not finite, or not floats give what datetime
    gives: the same text, or the same error."""
    convert = utc_text()
    try:
        expected = _sqlalchemy_text(seconds)
    except (ValueError, OverflowError) as exc:
        with pytest.raises(type(exc)):
            convert(seconds)
        return
    assert convert(seconds) == expected
