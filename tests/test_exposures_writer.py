"""The experiment writer against real databases that go away and come back: records are
buffered, then spilled to the local file, then replayed; none is lost or stored twice, and the
counters say where every record went."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import db_support
import pytest
from experiments_support import TcpProxy, wait_for
from prometheus_client import CollectorRegistry
from servers import free_port
from sqlalchemy import func, make_url, select

from control_plane.db import Database
from control_plane.db.experiment_models import Exposure
from control_plane.experiments.hashing import UnitHasher
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.recorder import ExperimentRecorder
from control_plane.experiments.records import EXPOSURES, Record
from control_plane.experiments.sink import DatabaseSink
from control_plane.experiments.spill import SpillFiles
from control_plane.experiments.writer import BatchWriter
from control_plane.routing.decisions import Decision

database_url = db_support.database_url
REPO = Path(__file__).resolve().parents[1]
KEY = b"writer-test-hmac-key-0123456789"


def _decision(index: int) -> Decision:
    return Decision(flag_key="exp", variant="a" if index % 2 else "b", backend="x",
                    url="http://127.0.0.1:1", reason="TARGETING_MATCH", flag_set_version=1,
                    decision_id=f"d{index:08d}", targeting_key=f"person-{index}@example.com",
                    metadata={"experiment": True})


@dataclass
class Outage:
    """A database that can be taken away and given back, honestly (no fakes)."""

    database: Database  # what the writer writes to
    direct: Database  # the same database, for checking what arrived
    down: Callable[[], None]
    up: Callable[[], None]


def _set_read_only(paths: list[Path], read_only: bool) -> None:
    if os.geteuid() != 0:
        for path in paths:
            path.chmod((0o555 if path.is_dir() else 0o444) if read_only
                       else (0o755 if path.is_dir() else 0o644))
        return
    # root ignores permission bits; the immutable attribute stops it too (ext4, xfs, btrfs).
    result = subprocess.run(["chattr", "+i" if read_only else "-i", *map(str, paths)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot make a directory read-only as root here: {result.stderr.strip()}")


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
            yield Outage(database, database, lambda: _set_read_only(paths, True),
                         lambda: _set_read_only(paths, False))
        finally:
            _set_read_only(paths, False)
            database.dispose()
        return
    direct = Database.from_url(database_url)
    direct.migrate()
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = Database.from_url(url.set(host="127.0.0.1", port=proxy.port)
                                .render_as_string(hide_password=False))
    try:
        yield Outage(proxied, direct, proxy.cut, proxy.restore)
    finally:
        proxy.close()
        proxied.dispose()
        direct.dispose()


def _writer(database: Database, spill_dir: Path, registry: CollectorRegistry | None = None,
            **options: object) -> tuple[BatchWriter, ExperimentRecorder]:
    recorder = ExperimentRecorder(UnitHasher(KEY))
    metrics = ExperimentMetrics(registry) if registry is not None else None
    settings: dict[str, object] = {"batch_size": 20, "flush_interval": 0.02,
                                   "buffer_limit": 50, "retry_interval": 0.05}
    settings.update(options)
    writer = BatchWriter(DatabaseSink(database), SpillFiles(spill_dir), prepare=recorder.prepare,
                         metrics=metrics, **settings)  # type: ignore[arg-type]
    recorder.attach(writer)
    return writer, recorder


def _stored(database: Database) -> list[str]:
    with database.session() as session:
        return list(session.scalars(select(Exposure.decision_id)))


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_database_down_buffers_spills_and_replays(outage: Outage, tmp_path: Path) -> None:
    """While the database refuses, 50 records stay in memory and the rest go to the spill file;
    when it is back, all of them are stored exactly once and the counters add up."""
    registry = CollectorRegistry()
    writer, recorder = _writer(outage.database, tmp_path / "spill", registry)
    writer.start()
    try:
        for index in range(30):
            recorder.on_decision(_decision(index), 0.0)
        assert writer.flush(timeout=15)
        assert len(_stored(outage.direct)) == 30

        outage.down()
        for index in range(30, 230):
            recorder.on_decision(_decision(index), 0.0)
        wait_for(lambda: writer.counts.spilled == 150, what="the overflow to be spilled")
        assert not writer.database_up
        assert not writer.flush(timeout=0.3)  # nothing more reaches the database meanwhile
        assert writer.buffered == 50
        assert _metric(registry, "control_plane_experiment_records_buffered") == 50
        assert _metric(registry, "control_plane_experiment_records_spill_pending") == 150
        assert _metric(registry, "control_plane_experiment_database_up") == 0
        spilled = "".join(path.read_text() for path in (tmp_path / "spill").iterdir())
        assert spilled.count("\n") == 150
        assert "example.com" not in spilled  # targeting keys are hashed before they spill

        outage.up()
        assert writer.flush(timeout=20)
    finally:
        writer.stop()
    stored = _stored(outage.direct)
    assert len(stored) == 230
    assert set(stored) == {f"d{index:08d}" for index in range(230)}
    assert writer.counts.as_dict() | {"write_failures": 0} == {
        "written": 230, "spilled": 150, "replayed": 150, "dropped": 0, "write_failures": 0}
    assert writer.counts.write_failures > 0
    assert _metric(registry, "control_plane_experiment_records_total", table=EXPOSURES,
                   result="written") == 230
    assert _metric(registry, "control_plane_experiment_records_total", table=EXPOSURES,
                   result="replayed") == 150
    assert _metric(registry, "control_plane_experiment_records_total", table=EXPOSURES,
                   result="dropped") == 0
    assert _metric(registry, "control_plane_experiment_database_up") == 1
    assert list((tmp_path / "spill").iterdir()) == []


def test_shutdown_with_database_down_spills_and_next_start_replays(
        outage: Outage, tmp_path: Path) -> None:
    """Stopping while the database is down spills everything queued; the next writer on the
    same spill directory stores it once the database answers."""
    writer, recorder = _writer(outage.database, tmp_path / "spill", buffer_limit=10_000)
    writer.start()
    outage.down()
    try:
        for index in range(120):
            recorder.on_decision(_decision(index), 0.0)
        wait_for(lambda: not writer.database_up, what="the writer to notice the outage")
    finally:
        writer.stop()
    assert writer.counts.spilled == 120
    assert writer.counts.written == 0
    assert _stored(outage.direct) == []

    outage.up()
    successor, _ = _writer(outage.database, tmp_path / "spill")
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
    from control_plane.experiments.sink import DatabaseSink
    from control_plane.experiments.spill import SpillFiles
    from control_plane.experiments.writer import BatchWriter
    from test_exposures_writer import KEY, _decision

    recorder = ExperimentRecorder(UnitHasher(KEY))
    sink = DatabaseSink(Database.from_url(sys.argv[1]))
    writer = BatchWriter(sink, SpillFiles(Path(sys.argv[2])), prepare=recorder.prepare,
                         flush_interval=0.02, buffer_limit=0, retry_interval=0.05)
    recorder.attach(writer)
    writer.start()
    for index in range(75):
        recorder.on_decision(_decision(index), 0.0)
    while writer.counts.spilled < 75:
        time.sleep(0.01)
    print("spilled", flush=True)
    time.sleep(600)
""")


def test_records_spilled_by_a_killed_process_are_replayed(tmp_path: Path) -> None:
    """A process whose PostgreSQL URL refuses spills its records and is killed (SIGKILL); the
    next process adopts the orphaned spill segment and stores every record in its database."""
    refused = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    script = tmp_path / "crashing_writer.py"
    script.write_text(_CRASHING_WRITER)
    spill_dir = tmp_path / "spill"
    process = subprocess.Popen([sys.executable, str(script), refused, str(spill_dir),
                                str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True,
                               cwd=REPO)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "spilled"
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert [path.suffix for path in spill_dir.iterdir()] == [".part"]

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
    assert _metric(registry, "control_plane_experiment_records_total", table=EXPOSURES,
                   result="dropped") == 50
    writer.start()
    try:
        assert writer.flush(timeout=15)
    finally:
        writer.stop()
        stored = _stored(database)
        database.dispose()
    assert len(stored) == 100


def test_a_record_the_database_refuses_does_not_block_the_others(tmp_path: Path) -> None:
    """A record the (working) database refuses is dropped and counted; the rest of its batch is
    stored and the writer does not treat the database as down."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.migrate()
    writer, recorder = _writer(database, tmp_path / "spill", flush_interval=0.5)
    for index in range(10):
        recorder.on_decision(_decision(index), 0.0)
    bad = Record(EXPOSURES, {"decision_id": "bad", "flag": None, "variant": "a", "unit": None,
                             "flag_set_version": 1, "reason": "STATIC", "at": time.time()})
    writer.offer((EXPOSURES, bad, 0.0))
    writer._prepare = lambda item: item[1] if isinstance(item[1], Record) \
        else recorder.prepare(item)
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


def test_unreadable_spill_lines_are_counted_not_silently_skipped(tmp_path: Path) -> None:
    """A torn line in a spill segment (a crash mid-write) is counted as dropped; the readable
    lines around it are stored."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.migrate()
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    recorder = ExperimentRecorder(UnitHasher(KEY))
    lines = [recorder.prepare((EXPOSURES, _decision(index), 1.0e9)).to_line()
             for index in range(3)]
    (spill_dir / "spill-00000000000000000001-1-000001.jsonl").write_text(
        "\n".join([lines[0], lines[1], '{"table": "exposures", "row": {"decis', lines[2]]) + "\n")
    registry = CollectorRegistry()
    writer, _ = _writer(database, spill_dir, registry)
    writer.start()
    try:
        assert writer.flush(timeout=15)
    finally:
        writer.stop()
        stored = _stored(database)
        database.dispose()
    assert sorted(stored) == ["d00000000", "d00000001", "d00000002"]
    assert writer.counts.dropped == 1
    assert _metric(registry, "control_plane_experiment_records_total", table="unreadable",
                   result="dropped") == 1


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
