"""The experiment writer against real databases that go away and come back: records are
journaled to local disk before the database is tried, wait there while it is down, and are
replayed when it is back or by the next process; none is lost or stored twice, and the
counters say where every record went."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import db_support
import pytest
from experiments_support import TcpProxy, abandon, wait_for
from outage_support import set_read_only
from prometheus_client import CollectorRegistry
from servers import free_port
from sqlalchemy import func, make_url, select

from control_plane.db import Database
from control_plane.db.experiment_models import Exposure
from control_plane.experiments.hashing import UnitHasher
from control_plane.experiments.journal import Journal
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.recorder import ExperimentRecorder
from control_plane.experiments.records import EXPOSURES, Record
from control_plane.experiments.sink import DatabaseSink
from control_plane.experiments.writer import BatchWriter
from control_plane.routing.decisions import Decision

database_url = db_support.database_url
REPO = Path(__file__).resolve().parents[1]
KEY = b"writer-test-hmac-key-0123456789"


def _decision(index: int) -> Decision:
    return Decision(
        flag_key="exp",
        variant="a" if index % 2 else "b",
        backend="x",
        url="http://127.0.0.1:1",
        reason="TARGETING_MATCH",
        flag_set_version=1,
        decision_id=f"d{index:08d}",
        targeting_key=f"person-{index}@example.com",
        metadata={"experiment": True},
    )


@dataclass
class Outage:
    """A database that can be taken away and given back, honestly (no fakes)."""

    database: Database  # what the writer writes to
    direct: Database  # the same database, for checking what arrived
    down: Callable[[], None]
    up: Callable[[], None]


@pytest.fixture
def outage(database_url: str, tmp_path: Path) -> Iterator[Outage]:
    """SQLite: the database file in a directory made read-only. PostgreSQL: a TCP proxy in
    front of the server that refuses and drops connections."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        directory = tmp_path / "dbdir"
        directory.mkdir()
        file = directory / "experiments.db"
        database = Database.from_url(f"sqlite:///{file}")
        database.migrate()
        paths = [file, directory]
        try:
            yield Outage(
                database,
                database,
                lambda: set_read_only(paths, True),
                lambda: set_read_only(paths, False),
            )
        finally:
            set_read_only(paths, False)
            database.dispose()
        return
    direct = Database.from_url(database_url)
    direct.migrate()
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = Database.from_url(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )
    try:
        yield Outage(proxied, direct, proxy.cut, proxy.restore)
    finally:
        proxy.close()
        proxied.dispose()
        direct.dispose()


def _writer(
    database: Database,
    spill_dir: Path,
    registry: CollectorRegistry | None = None,
    **options: object,
) -> tuple[BatchWriter, ExperimentRecorder]:
    recorder = ExperimentRecorder(UnitHasher(KEY))
    metrics = ExperimentMetrics(registry) if registry is not None else None
    settings: dict[str, object] = {
        "batch_size": 20,
        "journal_interval": 0.02,
        "flush_interval": 0.02,
        "buffer_limit": 50,
        "retry_interval": 0.05,
    }
    settings.update(options)
    writer = BatchWriter(
        DatabaseSink(database),
        Journal(spill_dir),
        prepare=recorder.prepare,
        metrics=metrics,
        **settings,
    )  # type: ignore[arg-type]
    recorder.attach(writer)
    return writer, recorder


def _stored(database: Database) -> list[str]:
    with database.session() as session:
        return list(session.scalars(select(Exposure.decision_id)))


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jsonl"))


def test_database_down_journals_and_replays(outage: Outage, tmp_path: Path) -> None:
    """While the database refuses, records wait in the journal and none in memory; when it is
    back, all of them are stored exactly once, the journal is emptied and the counters add up."""
    registry = CollectorRegistry()
    journal = tmp_path / "journal"
    writer, recorder = _writer(outage.database, journal, registry)
    writer.start()
    try:
        for index in range(30):
            recorder.on_decision(_decision(index), 0.0)
        assert writer.flush(timeout=15)
        assert len(_stored(outage.direct)) == 30
        assert _segments(journal) == []  # committed records leave the journal

        outage.down()
        for index in range(30, 230):
            recorder.on_decision(_decision(index), 0.0)
        wait_for(
            lambda: writer.counts.journaled == 230 and not writer.database_up,
            what="the records to be journaled and the outage noticed",
        )
        assert not writer.flush(timeout=0.3)  # nothing more reaches the database meanwhile
        wait_for(lambda: writer.buffered == 0, what="memory to let go of journaled records")
        assert writer.unwritten == 200
        assert _metric(registry, "control_plane_experiment_records_buffered") == 0
        assert _metric(registry, "control_plane_experiment_records_spill_pending") == 200
        assert _metric(registry, "control_plane_experiment_database_up") == 0
        journaled = "".join(path.read_text() for path in _segments(journal))
        assert journaled.count("\n") == 200
        assert "example.com" not in journaled  # targeting keys are hashed before the disk

        outage.up()
        assert writer.flush(timeout=20)
    finally:
        writer.stop()
    stored = _stored(outage.direct)
    assert len(stored) == 230
    assert set(stored) == {f"d{index:08d}" for index in range(230)}
    counts = writer.counts.as_dict()
    assert counts["write_failures"] > 0
    assert {key: counts[key] for key in ("journaled", "written", "replayed", "dropped")} == {
        "journaled": 230,
        "written": 230,
        "replayed": 200,
        "dropped": 0,
    }
    assert (
        _metric(
            registry, "control_plane_experiment_records_total", table=EXPOSURES, result="written"
        )
        == 230
    )
    assert (
        _metric(
            registry, "control_plane_experiment_records_total", table=EXPOSURES, result="replayed"
        )
        == 200
    )
    assert (
        _metric(
            registry, "control_plane_experiment_records_total", table=EXPOSURES, result="dropped"
        )
        == 0
    )
    assert _metric(registry, "control_plane_experiment_database_up") == 1
    assert list(journal.iterdir()) == []


def test_shutdown_with_database_down_leaves_the_journal_and_next_start_replays(
    outage: Outage, tmp_path: Path
) -> None:
    """Stopping while the database is down leaves everything in the journal; the next writer
    on the same directory stores it once the database answers."""
    writer, recorder = _writer(outage.database, tmp_path / "journal", buffer_limit=10_000)
    writer.start()
    outage.down()
    try:
        for index in range(120):
            recorder.on_decision(_decision(index), 0.0)
        wait_for(lambda: not writer.database_up, what="the writer to notice the outage")
    finally:
        writer.stop()
    assert writer.counts.journaled == 120
    assert writer.counts.written == 0
    assert _stored(outage.direct) == []

    outage.up()
    successor, _ = _writer(outage.database, tmp_path / "journal")
    successor.start()
    try:
        assert successor.flush(timeout=20)
    finally:
        successor.stop()
    assert sorted(_stored(outage.direct)) == [f"d{index:08d}" for index in range(120)]
    assert successor.counts.replayed == 120


_CRASHING_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from pathlib import Path
    from control_plane.db import Database
    from control_plane.experiments.hashing import UnitHasher
    from control_plane.experiments.recorder import ExperimentRecorder
    from control_plane.experiments.journal import Journal
    from control_plane.experiments.sink import DatabaseSink
    from control_plane.experiments.writer import BatchWriter
    from test_exposures_writer import KEY, _decision

    recorder = ExperimentRecorder(UnitHasher(KEY))
    sink = DatabaseSink(Database.from_url(sys.argv[1]))
    writer = BatchWriter(sink, Journal(Path(sys.argv[2])), prepare=recorder.prepare,
                         journal_interval=0.02, flush_interval=0.02, retry_interval=0.05)
    recorder.attach(writer)
    writer.start()
    for index in range(75):
        recorder.on_decision(_decision(index), 0.0)
    while writer.counts.journaled < 75:
        time.sleep(0.01)
    print("journaled", flush=True)
    time.sleep(600)
""")


def test_records_journaled_by_a_killed_process_are_replayed(tmp_path: Path) -> None:
    """A process whose PostgreSQL URL refuses journals its records and is killed (SIGKILL); the
    next process claims the orphaned segments and stores every record in its database."""
    refused = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    script = tmp_path / "crashing_writer.py"
    script.write_text(_CRASHING_WRITER)
    spill_dir = tmp_path / "journal"
    process = subprocess.Popen(
        [sys.executable, str(script), refused, str(spill_dir), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "journaled"
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    left = sorted(path.name.split("-")[0] for path in spill_dir.iterdir())
    assert set(left) == {"journal", "owner"}  # segments, and the dead owner's lock

    database = Database.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.migrate()
    writer, _ = _writer(database, spill_dir)
    writer.start()
    try:
        assert writer.flush(timeout=20)
    finally:
        writer.stop()
        stored = _stored(database)
        database.dispose()
    assert sorted(stored) == [f"d{index:08d}" for index in range(75)]
    assert list(spill_dir.iterdir()) == []


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    """When the in-memory queue is full, offer() refuses at once and every drop is counted."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.migrate()
    registry = CollectorRegistry()
    writer, _recorder = _writer(database, tmp_path / "spill", registry, queue_size=100)
    accepted = [writer.offer((EXPOSURES, _decision(index), time.time())) for index in range(150)]
    assert accepted.count(True) == 100
    assert writer.counts.dropped == 50
    assert (
        _metric(
            registry, "control_plane_experiment_records_total", table=EXPOSURES, result="dropped"
        )
        == 50
    )
    writer.start()
    try:
        assert writer.flush(timeout=15)
    finally:
        writer.stop()
        stored = _stored(database)
        database.dispose()
    assert len(stored) == 100


def test_a_record_the_database_refuses_does_not_block_the_others(
    database_url: str, tmp_path: Path
) -> None:
    """A record the (working) database refuses is dropped and counted; the rest of its batch is
    stored and the writer does not treat the database as down."""
    database = Database.from_url(database_url)
    database.migrate()
    writer, recorder = _writer(database, tmp_path / "spill", journal_interval=0.5)
    for index in range(10):
        recorder.on_decision(_decision(index), 0.0)
    bad = Record(
        EXPOSURES,
        {
            "decision_id": "bad",
            "flag": None,
            "variant": "a",
            "unit": None,
            "flag_set_version": 1,
            "reason": "STATIC",
            "at": time.time(),
        },
    )
    writer.offer((EXPOSURES, bad, 0.0))
    writer._prepare = lambda item: (
        item[1] if isinstance(item[1], Record) else recorder.prepare(item)
    )
    writer.start()
    try:
        assert writer.flush(timeout=15)
    finally:
        writer.stop()
        stored = _stored(database)
        database.dispose()
    assert len(stored) == 10
    assert writer.counts.dropped == 1
    assert writer.database_up


def test_unreadable_journal_lines_are_counted_not_silently_skipped(tmp_path: Path) -> None:
    """A torn line in an orphaned journal segment (a crash mid-write) is counted as dropped;
    the readable lines around it, and a spill file of the previous writer, are stored."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.migrate()
    spill_dir = tmp_path / "journal"
    spill_dir.mkdir()
    recorder = ExperimentRecorder(UnitHasher(KEY))
    lines = [recorder.prepare((EXPOSURES, _decision(index), 1.0e9)).to_line() for index in range(4)]
    # An owner with no lock file is gone.
    (spill_dir / "journal-00000000000000000001-999999.dead-000001.jsonl").write_text(
        "\n".join([lines[0], lines[1], '{"table": "exposures", "row": {"decis', lines[2]]) + "\n"
    )
    (spill_dir / "spill-00000000000000000002-1-000001.jsonl.part").write_text(lines[3] + "\n")
    registry = CollectorRegistry()
    writer, _ = _writer(database, spill_dir, registry)
    writer.start()
    try:
        assert writer.flush(timeout=15)
    finally:
        writer.stop()
        stored = _stored(database)
        database.dispose()
    assert sorted(stored) == ["d00000000", "d00000001", "d00000002", "d00000003"]
    assert writer.counts.dropped == 1
    assert (
        _metric(
            registry, "control_plane_experiment_records_total", table="unreadable", result="dropped"
        )
        == 1
    )


def test_hashing_needs_a_long_enough_key() -> None:
    """A short HMAC key is refused instead of weakly hashing targeting keys."""
    with pytest.raises(ValueError, match="at least 16 bytes"):
        UnitHasher(b"short")


def test_rows_count_query_sees_all(tmp_path: Path) -> None:
    """Batches larger than the batch size are split and all rows arrive (count query)."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.migrate()
    writer, recorder = _writer(database, tmp_path / "spill", batch_size=7)
    writer.start()
    try:
        for index in range(100):
            recorder.on_decision(_decision(index), 0.0)
        assert writer.flush(timeout=15)
    finally:
        writer.stop()
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Exposure)) == 100
    database.dispose()


def test_the_lock_of_an_owner_that_died_with_nothing_journaled_is_removed(tmp_path: Path) -> None:
    """A crashed process leaves its owner lock even when it had no segment; the next journal
    on the directory removes it (one stale file per crash would pile up), never a live one."""
    directory = tmp_path / "journal"
    dead, alive = Journal(directory), Journal(directory)
    dead.open()
    alive.open()
    abandon(dead)  # the process is gone: its lock is released, the file stays
    successor = Journal(directory)
    assert successor.adopt_orphans() == []
    locks = sorted(path.name for path in directory.glob("owner-*.lock"))
    assert locks == sorted([f"owner-{alive.owner}.lock", f"owner-{successor.owner}.lock"])
    alive.close()
    successor.close()


def test_the_sink_stores_every_table_as_the_orm_reads_it(database_url: str) -> None:
    """Rows written by the sink (values taken in column order, epoch seconds made UTC times
    for the driver) read back through the ORM unchanged: times to the microsecond, floats,
    None; a batch written twice is stored once."""
    from datetime import UTC, datetime

    from control_plane.db.experiment_models import CallSample, OutcomeEvent

    database = Database.from_url(database_url)
    database.migrate()
    at = 1764650000.654321
    exposure = {
        "decision_id": "d1",
        "flag": "exp",
        "variant": "a",
        "unit": None,
        "flag_set_version": 2,
        "reason": "STATIC",
        "at": at,
    }
    event = {
        "id": "e1",
        "decision_id": "d1",
        "flag": None,
        "unit": None,
        "metric": "revenue",
        "kind": "value",
        "value": 12.25,
        "at": at + 1,
    }
    sample = {
        "decision_id": "d1",
        "variant": "a",
        "flag": "exp",
        "backend": "model-a",
        "status": None,
        "seconds": 0.0125,
        "error": "timeout",
        "at": 0.000001,
    }
    records = [
        Record(EXPOSURES, exposure),
        Record("outcome_events", event),
        Record("call_samples", sample),
    ]
    sink = DatabaseSink(database)
    try:
        sink.write(records)
        sink.write(records)
    finally:
        sink.close()
    with database.session() as session:
        stored = [
            session.scalars(select(model)).one() for model in (Exposure, OutcomeEvent, CallSample)
        ]
    for row, model in zip((exposure, event, sample), stored, strict=True):
        for name, value in row.items():
            expected = datetime.fromtimestamp(value, UTC) if name == "at" else value
            assert getattr(model, name) == expected, name
    database.dispose()
