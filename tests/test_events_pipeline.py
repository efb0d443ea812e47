"""The record pipeline on a real NATS JetStream server and a real database: records published by
an EventPublisher are stored by an EventConsumer exactly once, through republishes, a consumer
killed between commit and acknowledgement, a NATS server restarted mid-run and one that is not
there at start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import db_support
import nats
import pytest
from events_support import (
    NatsServer,
    consumer,
    exposure,
    nats_server,
    nats_url,
    stream,
    stream_settings,
)
from events_support import item as _item
from events_support import publisher as _publisher
from events_support import stored as _stored
from events_support import wait_stored as _wait_stored
from experiments_support import abandon, wait_for
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import RetentionPolicy
from prometheus_client import CollectorRegistry

from control_plane.db import Database
from control_plane.events._pull import PullBatches, delivery_count
from control_plane.events.consumer import EventConsumer
from control_plane.events.messages import MSG_ID_HEADER, decode, encode, message_id, subject
from control_plane.events.metrics import EventMetrics
from control_plane.events.stream import StreamSettings, ensure_consumer, ensure_stream
from control_plane.experiments.journal import Journal
from control_plane.experiments.sink import DatabaseSink

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database
__all__ = [
    "consumer",
    "database",
    "database_url",
    "empty_database",
    "nats_server",
    "nats_url",
    "stream",
]


@pytest.mark.parametrize("per_message", [1, 100])
def test_every_record_is_stored_once_even_when_published_twice(
    nats_url: str,
    database: Database,
    stream: StreamSettings,
    consumer: EventConsumer,
    tmp_path: Path,
    per_message: int,
) -> None:
    """N records offered twice each reach the database exactly once: the second publish sends
    the same messages (one record each, or the same packs), duplicates by message id that
    JetStream drops, so the consumer never sees a record twice."""
    gate = threading.Event()  # each time, one round takes all the records: the same packs
    publisher = _publisher(
        nats_url, tmp_path / "journal", stream, ready=gate.is_set, records_per_message=per_message
    )
    publisher.start()
    try:
        records = [exposure(index) for index in range(2000)]
        for _ in range(2):
            gate.clear()
            time.sleep(0.1)  # a round that asked before the gate closed is over
            for record in records:
                assert publisher.offer(_item(record))
            gate.set()
            assert publisher.flush(timeout=20)
    finally:
        publisher.stop()
    _wait_stored(database, 2000)
    assert _stored(database) == (2000, 2000)
    assert publisher.counts.published + publisher.counts.replayed == 4000  # all acknowledged
    assert publisher.counts.messages == 2 * 2000 // per_message
    assert publisher.counts.duplicates == 2000
    assert publisher.counts.dropped == 0
    assert consumer.counts.stored == 2000


_KILLING_CONSUMER = textwrap.dedent("""
    import os, signal, sys, time
    from control_plane.db import Database
    from control_plane.events.consumer import EventConsumer
    from control_plane.events.stream import StreamSettings
    from control_plane.experiments.sink import DatabaseSink

    class CommitThenDie(DatabaseSink):
        '''Commits a batch, then the process dies before the consumer can acknowledge it.'''
        def write(self, records):
            added = super().write(records)
            print(len(records), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            return added

    url, database_url, stream, subjects, durable = sys.argv[1:6]
    settings = StreamSettings(stream=stream, subject_prefix=subjects, consumer=durable,
                              ack_wait=2.0)
    EventConsumer(url, CommitThenDie(Database.from_url(database_url)), stream=settings,
                  batch_size=300, fetch_timeout=0.2).start()
    time.sleep(60)
""")


def test_consumer_killed_between_commit_and_ack_stores_nothing_twice(
    nats_url: str, database: Database, database_url: str, stream: StreamSettings, tmp_path: Path
) -> None:
    """A consumer process killed (SIGKILL) after committing a batch and before acknowledging it
    gets that batch delivered again to the next consumer, which stores nothing twice and counts
    the batch as duplicates (`control_plane_events_consumed_total{result="duplicate"}`)."""
    publisher = _publisher(nats_url, tmp_path / "journal", stream)
    publisher.start()
    try:
        for index in range(1000):
            publisher.offer(_item(exposure(index)))
        assert publisher.flush(timeout=20)
    finally:
        publisher.stop()
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLING_CONSUMER,
            nats_url,
            database_url,
            stream.stream,
            stream.subject_prefix,
            stream.consumer,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    committed = int(killed.stdout.split()[0])
    assert _stored(database) == (committed, committed)  # committed, never acknowledged

    registry = CollectorRegistry()
    consumer = EventConsumer(
        nats_url,
        DatabaseSink(database),
        stream=stream,
        retry_interval=0.2,
        fetch_timeout=0.2,
        metrics=EventMetrics(registry),
    )
    consumer.start()
    try:
        _wait_stored(database, 1000)
        # The killed batch comes again once its ack_wait has passed, and is skipped.
        wait_for(lambda: consumer.counts.duplicates >= committed, what="the redelivery")
        time.sleep(0.3)
    finally:
        consumer.stop()
    assert _stored(database) == (1000, 1000)
    counts = consumer.counts
    assert (counts.stored, counts.duplicates) == (1000 - committed, committed)
    assert counts.redelivered >= committed  # and whatever else the killed one had fetched

    def consumed(result: str) -> float | None:
        return registry.get_sample_value(
            "control_plane_events_consumed_total", {"table": "exposures", "result": result}
        )

    assert (consumed("stored"), consumed("duplicate")) == (1000 - committed, committed)


def test_nats_restart_mid_run_loses_and_duplicates_nothing(
    nats_server: NatsServer, database: Database, stream: StreamSettings, tmp_path: Path
) -> None:
    """Records offered steadily while the NATS server is stopped and started again are kept in
    the publisher's journal meanwhile and republished; the database holds each exactly once."""
    publisher = _publisher(nats_server.url, tmp_path / "journal", stream)
    consumer = EventConsumer(
        nats_server.url,
        DatabaseSink(database),
        stream=stream,
        retry_interval=0.2,
        fetch_timeout=0.2,
    )
    publisher.start()
    consumer.start()
    total = 3000
    offered = threading.Event()

    def offer_steadily() -> None:
        for index in range(total):
            publisher.offer(_item(exposure(index)))
            if index % 100 == 99:
                time.sleep(0.02)
        offered.set()

    feeder = threading.Thread(target=offer_steadily)
    try:
        feeder.start()
        wait_for(lambda: publisher.counts.published >= 500, what="records before the outage")
        nats_server.restart(down_for=1.0)
        feeder.join()
        assert offered.is_set()
        assert publisher.flush(timeout=30)
        _wait_stored(database, total)
    finally:
        publisher.stop()
        consumer.stop()
    assert _stored(database) == (total, total)
    assert publisher.counts.journaled > 0  # the outage was seen and ridden out
    assert publisher.counts.dropped == 0
    assert publisher.pending == 0


def test_records_offered_before_nats_exists_arrive_once_it_does(
    database: Database, stream: StreamSettings, tmp_path: Path
) -> None:
    """A publisher started while no NATS server runs journals its records, and publishes them
    once the server comes up; none is lost."""
    server = NatsServer(tmp_path / "late-nats")
    publisher = _publisher(server.url, tmp_path / "journal", stream)
    publisher.start()
    try:
        for index in range(500):
            publisher.offer(_item(exposure(index)))
        wait_for(lambda: publisher.counts.journaled == 500, what="the records journaled")
        assert list((tmp_path / "journal").glob("journal-*.jsonl"))
        server.start()
        assert publisher.flush(timeout=30)
        consumer = EventConsumer(
            server.url, DatabaseSink(database), stream=stream, fetch_timeout=0.2
        )
        consumer.start()
        try:
            _wait_stored(database, 500)
        finally:
            consumer.stop()
    finally:
        publisher.stop()
        server.stop()
    assert _stored(database) == (500, 500)
    assert publisher.counts.replayed == 500
    assert not list((tmp_path / "journal").glob("journal-*.jsonl"))


def test_a_dead_publishers_journal_is_replayed_by_the_next(
    nats_url: str,
    database: Database,
    stream: StreamSettings,
    consumer: EventConsumer,
    tmp_path: Path,
) -> None:
    """Records left in the journal directory by a publisher that is gone are published by the
    next publisher that opens the directory."""
    journal_dir = tmp_path / "journal"
    dead = Journal(journal_dir)
    dead.append([exposure(index, run="dead") for index in range(200)])
    # Its owner lock goes with it, as at a crash: the file stays, the lock is released.
    abandon(dead)
    publisher = _publisher(nats_url, journal_dir, stream)
    publisher.start()
    try:
        wait_for(lambda: publisher.counts.replayed == 200, what="the orphan replayed")
    finally:
        publisher.stop()
    _wait_stored(database, 200)
    assert _stored(database) == (200, 200)


def test_a_stop_right_after_start_replays_the_journal_it_found(
    nats_url: str,
    database: Database,
    stream: StreamSettings,
    consumer: EventConsumer,
    tmp_path: Path,
) -> None:
    """A publisher stopped while it still holds a journal (here: stopped at once, before its
    first replay) publishes it on the way out while NATS answers, instead of leaving it on a
    disk that a scaled-in replica never comes back to."""
    journal_dir = tmp_path / "journal"
    dead = Journal(journal_dir)
    dead.append([exposure(index, run="left") for index in range(300)])
    abandon(dead)  # its owner is gone, as after a crash
    publisher = _publisher(nats_url, journal_dir, stream)
    publisher.start()
    publisher.stop()
    assert publisher.counts.replayed == 300
    assert not list(journal_dir.glob("journal-*.jsonl"))
    _wait_stored(database, 300)
    assert _stored(database) == (300, 300)


def test_full_queue_drops_and_counts(tmp_path: Path, stream: StreamSettings) -> None:
    """`offer` never blocks: past the queue size it returns False and counts the drop."""
    publisher = _publisher("nats://127.0.0.1:1", tmp_path / "journal", stream, queue_size=100)
    results = [publisher.offer(_item(exposure(index))) for index in range(150)]
    assert results.count(False) == 50
    assert publisher.counts.dropped == 50


def test_refused_messages_are_terminated_not_retried(
    nats_url: str, database: Database, stream: StreamSettings, consumer: EventConsumer
) -> None:
    """A message on the stream that is not a record is terminated and counted; the records
    around it are stored."""

    async def publish() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_stream(js, stream)
        good = [exposure(1), exposure(2)]
        await js.publish(f"{stream.subject_prefix}.exposures", good[0].to_line().encode())
        await js.publish(f"{stream.subject_prefix}.exposures", b"not json")
        await js.publish(f"{stream.subject_prefix}.exposures", good[1].to_line().encode())
        await nc.close()

    asyncio.run(publish())
    _wait_stored(database, 2)
    wait_for(lambda: consumer.counts.refused == 1, what="the bad message refused")
    assert _stored(database) == (2, 2)


def test_stream_and_consumer_setup_is_idempotent(nats_url: str) -> None:
    """Setting up the stream and consumer twice works, and changed limits update the stream."""
    settings = stream_settings()

    async def setup() -> Any:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for _ in range(2):
            await ensure_stream(js, settings)
            await ensure_consumer(js, settings)
        changed = StreamSettings(**{**vars(settings), "max_bytes": 1 << 20})
        await ensure_stream(js, changed)
        info = await js.stream_info(settings.stream)
        await js.delete_stream(settings.stream)
        await nc.close()
        return info.config

    config = asyncio.run(setup())
    assert config.max_bytes == 1 << 20
    assert RetentionPolicy(config.retention) is RetentionPolicy.WORK_QUEUE
    assert config.subjects == [f"{settings.subject_prefix}.>"]


def test_a_message_is_encoded_as_its_spill_line() -> None:
    """A message's payload is the record's spill line, and decodes to the same record."""
    record = exposure(7)
    assert encode(record) == record.to_line().encode("utf-8")
    assert decode(encode(record)) == record


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff",
        b"[1]",
        b'{"table": "nope", "row": {}}',
        b'{"table": "exposures", "row": 1}',
        b'{"table": "exposures", "row": {}} {}',
    ],
)
def test_a_payload_that_is_not_one_record_is_refused(payload: bytes) -> None:
    """decode refuses, with ValueError, anything but one JSON record of a known table."""
    with pytest.raises(ValueError, match=r"."):
        decode(payload)


def test_whitespace_around_a_record_is_accepted() -> None:
    """decode takes a record with whitespace around it, as json.loads does."""
    record = exposure(3)
    assert decode(b" \n" + encode(record) + b"\n") == record


def test_pull_batches_fetch_what_is_there_and_count_deliveries_from_the_reply(
    nats_url: str, stream: StreamSettings
) -> None:
    """A fetch asking for more than the stream holds returns what it holds once its request
    expires; a message not acknowledged comes again after ack_wait, and its delivery count read
    from the reply subject is the one nats-py's metadata parses; an empty stream answers with a
    timeout."""

    async def run() -> tuple[list[int], list[int], list[int]]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_stream(js, stream)
        await ensure_consumer(js, stream)
        for index in range(3):
            record = exposure(index)
            await js.publish(
                subject(stream.subject_prefix, record.table),
                encode(record),
                headers={MSG_ID_HEADER: message_id(record)},
            )
        batches = PullBatches(nc, stream.stream, stream.consumer)
        await batches.subscribe()
        first = await batches.fetch(10, 0.3)
        again = await batches.fetch(10, stream.ack_wait + 1.0)  # none acknowledged: redelivered
        counts = [delivery_count(msg) for msg in again]
        parsed = [msg.metadata.num_delivered for msg in again]
        for msg in again:
            await msg.ack()
        with pytest.raises(NatsTimeoutError):
            await batches.fetch(10, 0.3)
        await nc.close()
        return [delivery_count(msg) for msg in first], counts, parsed

    first, again, parsed = asyncio.run(run())
    assert first == [1, 1, 1]
    assert again == parsed == [2, 2, 2]
