"""The experiment writer process: records reach the database from a process of its own, its
counts and database_up show on the serving process, and neither process's death loses what the
writer process had been given (real SQLite, real processes, real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from experiments_support import process_gone, run_until_killed, thread_policies, wait_for
from prometheus_client import CollectorRegistry
from serve_process import CLI, ServeProcess
from sqlalchemy import func, select

from control_plane.db import Database
from control_plane.db.engine import DatabaseTimeouts
from control_plane.db.experiment_models import Exposure
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.records import EXPOSURES
from control_plane.experiments.writer_process import ProcessWriter, WriterConfig

KEY = b"k" * 32
OPTIONS = {"journal_interval": 0.02, "flush_interval": 0.02, "retry_interval": 0.05}


def _database(tmp_path: Path) -> tuple[str, Database]:
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    database = Database.from_url(url)
    database.migrate()
    return url, database


def _exposure(index: int) -> tuple[str, tuple[object, ...], float]:
    return (
        EXPOSURES,
        (f"d{index:08d}", "exp", "a", f"user-{index}", 1, "TARGETING_MATCH"),
        time.time(),
    )


def _writer(url: str, tmp_path: Path, **options: Any) -> ProcessWriter:
    """A ProcessWriter on `url` with the tests' writer options, its journal in `tmp_path`."""
    return ProcessWriter(
        WriterConfig(url, DatabaseTimeouts(), tmp_path / "journal", OPTIONS),
        key=lambda: KEY,
        **options,
    )


def _stored(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Exposure)) or 0)


def test_records_reach_the_database_and_metrics_show_on_the_parent(tmp_path: Path) -> None:
    """Offered exposures are written by the writer process; counts, the Prometheus series and
    database_up are read on the serving process."""
    url, database = _database(tmp_path)
    registry = CollectorRegistry()
    writer = _writer(url, tmp_path, metrics=ExperimentMetrics(registry))
    writer.start()
    try:
        for index in range(300):
            assert writer.offer(_exposure(index))
        assert writer.flush(timeout=30)
        wait_for(lambda: writer.counts.written == 300, what="the counts to arrive")
    finally:
        writer.stop()
    assert _stored(database) == 300
    assert (
        registry.get_sample_value(
            "control_plane_experiment_records_total", {"table": EXPOSURES, "result": "written"}
        )
        == 300
    )
    assert registry.get_sample_value("control_plane_experiment_database_up") == 1
    assert writer.database_up
    database.dispose()


def test_each_flush_among_records_answers_once_those_offered_before_it_are_stored(
    tmp_path: Path,
) -> None:
    """Flush requests queued between records (the feeder takes records in bulk only while no
    flush is queued) each return True with every record offered before them in the database,
    while another thread keeps offering."""
    url, database = _database(tmp_path)
    writer = _writer(url, tmp_path)
    writer.start()
    offered = threading.Event()

    def offer_more() -> None:
        for index in range(1000, 3000):
            writer.offer(_exposure(index))
        offered.set()

    try:
        background = threading.Thread(target=offer_more)
        background.start()
        for chunk in range(5):
            for index in range(chunk * 100, (chunk + 1) * 100):
                assert writer.offer(_exposure(index))
            assert writer.flush(timeout=30)
            with database.session() as session:
                ids = set(session.scalars(select(Exposure.decision_id)))
            assert {f"d{index:08d}" for index in range((chunk + 1) * 100)} <= ids
        background.join()
        assert offered.is_set()
        assert writer.flush(timeout=30)
    finally:
        writer.stop()
    assert _stored(database) == 2500
    database.dispose()


def test_records_marshal_cannot_hold_still_arrive(tmp_path: Path) -> None:
    """Batches go marshalled; one holding a value marshal refuses (an int or str subclass, as
    an IntEnum would be) goes pickled instead and is stored all the same."""
    url, database = _database(tmp_path)
    writer = _writer(url, tmp_path)
    writer.start()
    try:
        assert writer.offer(_exposure(0))
        version = HTTPStatus.OK  # any importable int subclass
        assert writer.offer(
            (EXPOSURES, ("d00000001", "exp", "a", "user-1", version, "STATIC"), time.time())
        )
        assert writer.flush(timeout=30)
    finally:
        writer.stop()
    with database.session() as session:
        rows = session.execute(select(Exposure.decision_id, Exposure.flag_set_version)).all()
    versions = {row[0]: row[1] for row in rows}
    assert versions == {"d00000000": 1, "d00000001": 200}
    database.dispose()


def test_a_killed_writer_process_is_replaced_and_nothing_it_journaled_is_lost(
    tmp_path: Path,
) -> None:
    """SIGKILL of the writer process: another one starts, and every record offered before and
    after the kill reaches the database."""
    url, database = _database(tmp_path)
    writer = _writer(url, tmp_path, restart_delay=0.1)
    writer.start()
    try:
        for index in range(100):
            writer.offer(_exposure(index))
        assert writer.flush(timeout=30)
        first = writer._process
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        for index in range(100, 200):
            writer.offer(_exposure(index))
        wait_for(lambda: writer._process is not first, what="a new writer process")
        assert writer.flush(timeout=30)
    finally:
        writer.stop()
    assert _stored(database) == 200
    database.dispose()


_SERVING = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from control_plane.db.engine import DatabaseTimeouts
    from control_plane.experiments.writer_process import ProcessWriter, WriterConfig
    url, journal = sys.argv[2], Path(sys.argv[3])
    options = {"journal_interval": 0.5, "flush_interval": 30, "retry_interval": 0.05}
    writer = ProcessWriter(WriterConfig(url, DatabaseTimeouts(), journal, options),
                           key=lambda: b"k" * 32)
    writer.start()
    for index in range(500):
        writer.offer(("exposures", (f"d{index:08d}", "exp", "a", f"u{index}", 1, "STATIC"),
                      time.time()))
    time.sleep(0.5)  # more than the feed interval: the writer process has every record
    print(writer._process.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_the_writer_process_writes_out_what_it_got_when_the_server_is_killed(
    tmp_path: Path,
) -> None:
    """SIGKILL of the serving process: its writer process writes every record it was sent
    (here none had reached the database yet) and then exits."""
    url, database = _database(tmp_path)
    child = run_until_killed(_SERVING, tmp_path, url, str(tmp_path / "journal"))
    wait_for(lambda: _stored(database) == 500, what="the orphaned writer to write")
    wait_for(lambda: process_gone(child), what="the writer process to exit")
    database.dispose()


@pytest.mark.parametrize(
    ("priority", "policy"), [("batch", os.SCHED_BATCH), ("idle", os.SCHED_IDLE)]
)
def test_the_writer_process_runs_at_its_priority_and_the_serving_process_does_not(
    tmp_path: Path, priority: str, policy: int
) -> None:
    """Every thread of the writer process (its main thread, journal, database and status
    threads) has the policy CP_RECORD_PROCESS_PRIORITY names: SCHED_BATCH (the default:
    waking it never preempts the serving process) or SCHED_IDLE (it runs only on CPU
    nothing else wants); the serving process's own threads keep the normal policy. Records
    are stored either way."""
    url, database = _database(tmp_path)
    writer = _writer(url, tmp_path, priority=priority)
    writer.start()
    try:
        assert writer.offer(_exposure(1))
        assert writer.flush(timeout=30)
        child = writer._process.pid  # type: ignore[union-attr]
        policies = thread_policies(child)
        assert len(policies) >= 4  # main, journal, database, status
        assert set(policies) == {policy}
        assert set(thread_policies(os.getpid())) == {os.SCHED_OTHER}
    finally:
        writer.stop()
    assert _stored(database) == 1
    database.dispose()


def test_an_unknown_priority_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="priority must be one of batch, idle, not 'nice'"):
        _writer("sqlite://", tmp_path, priority="nice")


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in os.listdir(f"/proc/{pid}/task")
        for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
    ]


def test_serve_runs_its_writer_process_idle_when_told(flags_dir: Path, tmp_path: Path) -> None:
    """`control-plane serve` with CP_RECORD_PROCESS_PRIORITY=idle: its writer process runs
    SCHED_IDLE, the server itself does not, and an experiment decision's exposure is stored."""
    with ServeProcess(flags_dir, tmp_path, env={"CP_RECORD_PROCESS_PRIORITY": "idle"}) as server:
        response = httpx.get(
            f"{server.url}/v1/decide/ab-test-router", headers={"x-user-id": "alice"}
        )
        assert response.status_code == HTTPStatus.OK
        (child,) = _children(server.pid)
        # Set once the fresh interpreter has read its configuration, before its first thread;
        # main, journal, database and status threads, every one idle.
        wait_for(
            lambda: (policies := thread_policies(child)).count(os.SCHED_IDLE) == len(policies) >= 4,
            what="the writer process's threads, all idle",
        )
        assert set(thread_policies(server.pid)) == {os.SCHED_OTHER}
        written = 'control_plane_experiment_records_total{result="written",table="exposures"} 1.0'
        wait_for(
            lambda: written in httpx.get(f"{server.url}/metrics").text,
            what="the exposure to be written",
        )


def test_serve_refuses_an_unknown_priority(flags_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "serve", "--flags", str(flags_dir), "--port", "0", "--sync-port", "0"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "CP_RECORD_PROCESS_PRIORITY": "realtime"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid setting record_process_priority" in result.stderr
    assert "Traceback" not in result.stderr
