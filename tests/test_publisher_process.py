"""The JetStream publisher in a process of its own: records offered by the serving process reach
the database through a real nats-server and consumer, the publisher's series show on the
serving process, and neither process's death loses what the publisher process had been given
(real processes, real SIGKILL)."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import db_support
import pytest
from events_support import NATS_BINARY, consumer, nats_url, stream
from experiments_support import process_gone, run_until_killed, thread_policies, wait_for
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from control_plane.db import Database
from control_plane.db.experiment_models import Exposure
from control_plane.events.consumer import EventConsumer
from control_plane.events.metrics import EventMetrics
from control_plane.events.publisher_process import ProcessPublisher, PublisherConfig
from control_plane.events.stream import StreamSettings
from control_plane.experiments.records import EXPOSURES
from control_plane.experiments.sink import DatabaseSink

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database
__all__ = ["consumer", "database", "database_url", "empty_database", "nats_url", "stream"]

KEY = b"p" * 32
OPTIONS = {"interval": 0.02, "retry_interval": 0.2}


def _exposure(index: int) -> tuple[str, tuple[object, ...], float]:
    return (
        EXPOSURES,
        (f"p{index:08d}", "exp", "a", f"user-{index}", 1, "TARGETING_MATCH"),
        time.time(),
    )


def _stored(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Exposure)) or 0)


def _config(url: str, journal: Path, stream: StreamSettings) -> PublisherConfig:
    return PublisherConfig([url], journal, stream, options=OPTIONS)


def test_records_are_published_by_the_child_and_metrics_show_on_the_parent(
    nats_url: str,
    database: Database,
    stream: StreamSettings,
    consumer: EventConsumer,
    tmp_path: Path,
) -> None:
    """Offered exposures are hashed and published by the publisher process and stored by the
    consumer; counts, connected and the Prometheus series are read on the serving process."""
    registry = CollectorRegistry()
    publisher = ProcessPublisher(
        _config(nats_url, tmp_path / "journal", stream),
        key=lambda: KEY,
        metrics=EventMetrics(registry),
    )
    publisher.start()
    try:
        wait_for(lambda: publisher.connected, what="the publisher process to connect")
        for index in range(300):
            assert publisher.offer(_exposure(index))
        assert publisher.flush(timeout=30)
        wait_for(lambda: publisher.counts.published == 300, what="the counts to arrive")
        assert registry.get_sample_value("control_plane_events_connected", {"role": "publisher"})
    finally:
        publisher.stop()
    wait_for(lambda: _stored(database) == 300, what="the records to be stored")
    assert (
        registry.get_sample_value(
            "control_plane_events_published_total", {"table": EXPOSURES, "result": "published"}
        )
        == 300
    )
    assert publisher.pending == 0
    with database.session() as session:
        units = set(session.scalars(select(Exposure.unit)))
    assert None not in units
    assert all(len(unit) == 64 for unit in units)  # HMAC-SHA256 hex, never the user id


def test_a_killed_publisher_process_is_replaced_and_nothing_it_journaled_is_lost(
    tmp_path: Path, database: Database, stream: StreamSettings
) -> None:
    """With NATS away, the publisher process journals what it gets; SIGKILLed, it is
    replaced, and once NATS is there every record offered before and after the kill is
    stored."""
    if NATS_BINARY is None:
        pytest.skip("no nats-server binary: the test starts NATS late")
    from events_support import NatsServer

    server = NatsServer(tmp_path / "nats-store")
    publisher = ProcessPublisher(
        _config(server.url, tmp_path / "journal", stream), key=lambda: KEY, restart_delay=0.1
    )
    publisher.start()
    consumer = None
    try:
        for index in range(100):
            publisher.offer(_exposure(index))
        wait_for(lambda: publisher.counts.journaled == 100, what="the records journaled")
        first = publisher._process
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        for index in range(100, 200):
            publisher.offer(_exposure(index))
        wait_for(lambda: publisher._process is not first, what="a new publisher process")
        server.start()
        consumer = EventConsumer(
            server.url, DatabaseSink(database), stream=stream, retry_interval=0.2
        )
        consumer.start()
        assert publisher.flush(timeout=60)
        wait_for(lambda: _stored(database) == 200, what="every record stored", timeout=60)
    finally:
        publisher.stop()
        if consumer is not None:
            consumer.stop()
        server.stop()
    assert _stored(database) == 200


_SERVING = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from control_plane.events.publisher_process import ProcessPublisher, PublisherConfig
    from control_plane.events.stream import StreamSettings
    url, journal, name = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    stream = StreamSettings(stream=name, subject_prefix=name.lower() + ".records",
                            consumer=name.lower() + "-w")
    publisher = ProcessPublisher(PublisherConfig([url], journal, stream,
                                                 options={"interval": 5.0}),
                                 key=lambda: b"p" * 32)
    publisher.start()
    for index in range(500):
        publisher.offer(("exposures", (f"s{index:08d}", "exp", "a", f"u{index}", 1, "STATIC"),
                         time.time()))
    time.sleep(0.5)  # more than the feed interval: the publisher process has every record
    print(publisher._process.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_the_publisher_process_publishes_what_it_got_when_the_server_is_killed(
    nats_url: str, database: Database, tmp_path: Path
) -> None:
    """SIGKILL of the serving process: its publisher process (publishing every 5 s, so none
    was out yet) publishes every record it was sent, and then exits."""
    name = f"K{os.getpid()}{int(time.time() * 1000) % 100000}"
    stream = StreamSettings(
        stream=name, subject_prefix=name.lower() + ".records", consumer=name.lower() + "-w"
    )
    consumer = EventConsumer(
        nats_url, DatabaseSink(database), stream=stream, retry_interval=0.2, fetch_timeout=0.2
    )
    consumer.start()
    try:
        child = run_until_killed(_SERVING, tmp_path, nats_url, str(tmp_path / "journal"), name)
        wait_for(lambda: _stored(database) == 500, what="the orphaned publisher to publish")
        wait_for(lambda: process_gone(child), what="the publisher process to exit")
    finally:
        consumer.stop()


def test_an_idle_publisher_process_publishes_with_every_thread_idle(
    nats_url: str,
    database: Database,
    stream: StreamSettings,
    consumer: EventConsumer,
    tmp_path: Path,
) -> None:
    """priority="idle" (CP_RECORD_PROCESS_PRIORITY): every thread of the publisher process is
    SCHED_IDLE, and what it is given is still published and stored."""
    publisher = ProcessPublisher(
        _config(nats_url, tmp_path / "journal", stream), key=lambda: KEY, priority="idle"
    )
    publisher.start()
    try:
        wait_for(lambda: publisher.connected, what="the publisher process to connect")
        for index in range(50):
            assert publisher.offer(_exposure(index))
        assert publisher.flush(timeout=30)
        child = publisher._process.pid  # type: ignore[union-attr]
        policies = thread_policies(child)
        assert len(policies) >= 2
        assert set(policies) == {os.SCHED_IDLE}
    finally:
        publisher.stop()
    wait_for(lambda: _stored(database) == 50, what="the records to be stored")
