"""Many records in one JetStream message, on a real NATS server and a real database: packs are
made per table and unpacked by the consumer; a pack sent again (its PubAck lost) is dropped by
the stream, a re-pack after a publisher crash by the database's keys; a bad or huge record is
handled alone, never taking its pack with it; one-record messages (the format before packing)
are still read."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import db_support
import nats
import pytest
from events_support import (
    NATS_BINARY,
    LossyProxy,
    NatsServer,
    consumer,
    exposure,
    item,
    nats_server,
    nats_url,
    publisher,
    stored,
    stream,
    stream_messages,
    wait_stored,
)
from experiments_support import abandon, wait_for
from sqlalchemy import text

from control_plane.db import Database
from control_plane.events._pull import PullBatches
from control_plane.events.consumer import EventConsumer
from control_plane.events.messages import (
    MSG_ID_HEADER,
    encode,
    header_bytes,
    message_id,
    pack_id,
    subject,
    unpack,
)
from control_plane.events.packing import PackLimits, pack, repack
from control_plane.events.publisher import EventPublisher
from control_plane.events.stream import StreamSettings, ensure_consumer, ensure_stream
from control_plane.experiments.journal import Journal
from control_plane.experiments.records import EXPOSURES, OUTCOME_EVENTS, Record
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

LIMITS = PackLimits.for_server(100, 1 << 20)


def _outcome(index: int) -> Record:
    return Record(
        OUTCOME_EVENTS,
        {
            "id": f"{index:032x}",
            "decision_id": f"r-{index:08d}",
            "flag": "chat-router",
            "unit": None,
            "metric": "clicked",
            "kind": "binary",
            "value": 1.0,
            "at": 1_700_000_000.0 + index,
        },
    )


def _outcomes_stored(database: Database) -> int:
    with database.session() as session:
        return int(session.execute(text("SELECT count(*) FROM outcome_events")).scalar_one())


def _offer_in_one_round(
    publisher: EventPublisher, gate: threading.Event, records: list[Record]
) -> None:
    """Offer `records` so that one publishing round takes them all (`gate` is its `ready`)."""
    gate.clear()
    time.sleep(0.1)  # a round that asked before the gate closed is over
    for record in records:
        assert publisher.offer(item(record))
    gate.set()


def _publish_raw(url: str, stream: StreamSettings, messages: list[tuple[str, bytes]]) -> None:
    """Publish (message id, payload) pairs on the exposures subject, as any publisher could."""

    async def run() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await ensure_stream(js, stream)
        for msg_id, payload in messages:
            await js.publish(
                subject(stream.subject_prefix, EXPOSURES), payload, headers={MSG_ID_HEADER: msg_id}
            )
        await nc.close()

    asyncio.run(run())


# -- packing and unpacking, without a server -------------------------------------------------


def test_records_are_packed_per_table_up_to_the_count_and_the_byte_limit() -> None:
    """Packs hold up to `records` records of one table, in their order, under the byte limit;
    a record larger than the byte limit goes alone, one larger than max_payload is refused."""
    records = [exposure(i) for i in range(250)] + [_outcome(i) for i in range(30)]
    packs, oversized = pack(records, LIMITS)
    assert [(p.table, len(p.records)) for p in packs] == [
        (EXPOSURES, 100),
        (EXPOSURES, 100),
        (EXPOSURES, 50),
        (OUTCOME_EVENTS, 30),
    ]
    assert [r for p in packs for r in p.records] == records
    assert oversized == []

    small = PackLimits.for_server(100, 4096)  # packs of at most 1024 bytes
    line = len(encode(exposure(0)))
    large = Record(EXPOSURES, {**exposure(5).row, "variant": "v" * 2000})
    huge = Record(EXPOSURES, {**exposure(6).row, "variant": "v" * 5000})
    packs, oversized = pack([*(exposure(i) for i in range(5)), large, huge], small)
    assert [len(p.records) for p in packs] == [1024 // (line + 1), 5 - 1024 // (line + 1), 1]
    assert packs[-1].records == [large]
    assert all(len(p.payload) <= 1024 for p in packs[:-1])
    assert oversized == [huge]


def test_a_record_whose_headers_push_it_over_max_payload_is_refused() -> None:
    """nats-server counts headers and payload against max_payload: a record whose payload alone
    fits but whose message does not is refused before it is sent."""
    base = exposure(1)
    length = (
        4096 - header_bytes(message_id(base)) + 1 - len(encode(base)) + len(base.row["variant"])
    )
    edge = Record(EXPOSURES, {**base.row, "variant": "v" * length})
    assert len(encode(edge)) <= 4096 < len(encode(edge)) + header_bytes(message_id(edge))
    assert pack([edge], PackLimits.for_server(100, 4096)) == ([], [edge])


def test_a_pack_id_is_its_keys_and_a_one_record_pack_is_the_record_s_key() -> None:
    """A pack's message id depends only on its records' keys, in order; a pack of one has the
    record's own id (the message of one record per message), and no pack id is a record id."""
    records = [exposure(i) for i in range(100)]
    keys = [message_id(r) for r in records]
    again = [Record(EXPOSURES, {**r.row, "variant": "other"}) for r in records]
    assert pack(records, LIMITS)[0][0].msg_id == pack(again, LIMITS)[0][0].msg_id
    assert pack_id(EXPOSURES, keys) != pack_id(EXPOSURES, keys[::-1])
    assert pack_id(EXPOSURES, keys[:50]) != pack_id(EXPOSURES, keys)
    assert pack_id(EXPOSURES, keys[:1]) == keys[0] == f"{EXPOSURES}:{records[0].row['decision_id']}"
    assert pack_id(EXPOSURES, keys).startswith(f"{EXPOSURES}/100/")
    one = pack(records[:1], LIMITS)[0][0]
    assert (one.msg_id, one.payload) == (keys[0], encode(records[0]))


def test_repack_re_forms_the_packs_that_were_sent_and_packs_the_rest_anew() -> None:
    """The journal's layout re-forms the packs sent (same ids); records never sent are packed
    anew; a layout that does not add up (a torn journal line) or a pack that no longer fits the
    server's max_payload is packed anew."""
    records = [exposure(i) for i in range(300)]
    sent = [pack(records[:37], LIMITS)[0][0], pack(records[37:137], LIMITS)[0][0]]
    layout = [37, 100, -163]
    packs, oversized = repack(records, layout, LIMITS)
    assert [p.msg_id for p in packs[:2]] == [p.msg_id for p in sent]
    assert [len(p.records) for p in packs] == [37, 100, 100, 63]
    assert oversized == []
    assert [len(p.records) for p in repack(records[1:], layout, LIMITS)[0]] == [100, 100, 99]
    smaller = PackLimits.for_server(100, 16384)  # 4 KiB packs
    assert [p.msg_id for p in repack(records[:37], [37], smaller)[0]] != [sent[0].msg_id]


def test_unpack_reads_every_line_and_refuses_bad_ones_alone() -> None:
    """A payload of record lines unpacks to its records; a bad line is refused with its number,
    the others kept; blank lines are none; an empty payload is refused."""
    good = [exposure(1), exposure(2)]
    payload = b"\n".join([encode(good[0]), b"not json", b"", encode(good[1]), b"\xff"])
    records, refused = unpack(payload)
    assert records == good
    assert [why.split(":")[0] for why in refused] == ["line 2", "line 5"]
    assert unpack(b" \n" + encode(good[0]) + b"\n") == ([good[0]], [])
    assert unpack(b"") == ([], ["an empty message"])


def test_records_per_message_below_one_is_refused(tmp_path: Path) -> None:
    """A publisher asked to pack fewer than one record per message refuses to be made."""
    with pytest.raises(ValueError, match="records_per_message"):
        publisher("nats://127.0.0.1:1", tmp_path, StreamSettings(), records_per_message=0)


# -- on a real server and database -----------------------------------------------------------


def test_packed_records_of_two_tables_are_stored(
    nats_url: str,
    database: Database,
    stream: StreamSettings,
    consumer: EventConsumer,
    tmp_path: Path,
) -> None:
    """250 exposures and 30 outcome events taken in one round travel as 4 messages (100, 100, 50
    and 30 records, one table each) and are all stored."""
    gate = threading.Event()
    sender = publisher(nats_url, tmp_path / "journal", stream, ready=gate.is_set)
    sender.start()
    try:
        _offer_in_one_round(
            sender, gate, [*(exposure(i) for i in range(250)), *(_outcome(i) for i in range(30))]
        )
        assert sender.flush(timeout=20)
    finally:
        sender.stop()
    wait_stored(database, 250)
    wait_for(lambda: _outcomes_stored(database) == 30, what="the outcome events stored")
    assert stored(database) == (250, 250)
    assert (sender.counts.messages, sender.counts.published) == (4, 280)
    assert consumer.counts.stored == 280


def test_a_pack_whose_puback_was_lost_is_sent_again_as_the_same_message(
    nats_server: NatsServer, database: Database, stream: StreamSettings, tmp_path: Path
) -> None:
    """Packs that reached the stream but whose PubAcks were lost (100 and 50 records, then the
    connection) are journaled, and sent again after the reconnect as the same messages: the
    stream acknowledges them as duplicates and holds each once. Records journaled while NATS
    was away, never sent, are packed anew. The consumer stores each record once, none
    delivered twice."""
    proxy = LossyProxy(nats_server.port)
    proxy.start()
    gate = threading.Event()
    sender = publisher(proxy.url, tmp_path / "journal", stream, ready=gate.is_set, ack_timeout=1.0)
    sender.start()
    try:
        wait_for(lambda: sender.connected, what="the publisher connecting")
        proxy.drop_replies()
        _offer_in_one_round(sender, gate, [exposure(i) for i in range(150)])
        wait_for(lambda: stream_messages(nats_server.url, stream) == 2, what="the packs stored")
        proxy.cut(refuse=True)
        wait_for(lambda: sender.counts.journaled == 150, what="the packs journaled")
        # Journaled behind them, in the same journal segment: packing the 300 records anew
        # would make packs of 100, 100 and 100, other messages than the 100 and 50 sent.
        _offer_in_one_round(sender, gate, [exposure(i) for i in range(150, 300)])
        wait_for(lambda: sender.counts.journaled == 300, what="the next records journaled")
        assert stream_messages(nats_server.url, stream) == 2
        proxy.accept()
        assert sender.flush(timeout=20)
    finally:
        sender.stop()
        proxy.stop()
    assert (sender.counts.replayed, sender.counts.duplicates, sender.counts.messages) == (
        300,
        150,
        4,
    )
    assert stream_messages(nats_server.url, stream) == 4  # 2 resent and dropped, 2 new
    storing = EventConsumer(
        nats_server.url, DatabaseSink(database), stream=stream, fetch_timeout=0.2
    )
    storing.start()
    try:
        wait_stored(database, 300)
    finally:
        storing.stop()
    assert stored(database) == (300, 300)
    assert (storing.counts.stored, storing.counts.redelivered) == (300, 0)


def test_a_re_pack_after_a_publisher_crash_is_stored_once_by_the_database_keys(
    nats_url: str, database: Database, stream: StreamSettings, tmp_path: Path
) -> None:
    """A publisher that dies after its packs reached the stream and before their PubAcks came
    back leaves them in its journal; the next publisher packs them anew (its own grouping, so
    other message ids the stream does not drop) and the database's keys store each record
    once."""
    records = [exposure(index, run="crash") for index in range(1000)]
    first = publisher(nats_url, tmp_path / "first", stream)
    first.start()
    try:
        for record in records:
            assert first.offer(item(record))
        assert first.flush(timeout=20)
    finally:
        first.stop()
    # What it left: all of those records (as if unacknowledged), and 200 it never sent.
    journal_dir = tmp_path / "journal"
    dead = Journal(journal_dir)
    dead.append([*records, *(exposure(index, run="crash") for index in range(1000, 1200))])
    abandon(dead)
    second = publisher(nats_url, journal_dir, stream, records_per_message=30)
    second.start()
    try:
        wait_for(lambda: second.counts.replayed == 1200, what="the orphan replayed")
    finally:
        second.stop()
    assert second.counts.duplicates == 0  # other packs: the stream keeps both
    assert stream_messages(nats_url, stream) == first.counts.messages + 40
    storing = EventConsumer(nats_url, DatabaseSink(database), stream=stream, fetch_timeout=0.2)
    storing.start()
    try:
        wait_for(
            lambda: storing.counts.stored + storing.counts.duplicates == 2200,
            what="every message stored",
        )
    finally:
        storing.stop()
    assert stored(database) == (1200, 1200)  # the inserts skipped the 1000 repeats
    assert (storing.counts.stored, storing.counts.duplicates) == (1200, 1000)


def test_a_line_that_is_not_a_record_is_refused_and_its_pack_stored(
    nats_url: str, database: Database, stream: StreamSettings, consumer: EventConsumer
) -> None:
    """A message with lines that are not records has those refused and counted, its records
    stored, and is acknowledged: it never comes again."""
    good = [exposure(1), exposure(2), exposure(3)]
    payload = b"\n".join([encode(good[0]), b"not json", encode(good[1]), b"\xff", encode(good[2])])
    _publish_raw(nats_url, stream, [("some-pack", payload), ("empty", b"")])
    wait_stored(database, 3)
    wait_for(lambda: consumer.counts.refused == 3, what="two bad lines and an empty message")
    time.sleep(stream.ack_wait + 0.5)  # an unacknowledged message would be delivered again
    assert stored(database) == (3, 3)
    assert (consumer.counts.stored, consumer.counts.redelivered) == (3, 0)
    assert stream_messages(nats_url, stream) == 0


def test_a_record_the_database_refuses_is_refused_alone_and_its_pack_stored(
    nats_url: str,
    database: Database,
    stream: StreamSettings,
    consumer: EventConsumer,
    tmp_path: Path,
) -> None:
    """In a pack of 100, a record the database refuses (no variant: NOT NULL) and one the sink
    cannot convert (no `at` column) are refused one by one; the other 98 are stored, and every
    message is acknowledged, none retried."""
    records = [exposure(index) for index in range(100)]
    records[37] = Record(EXPOSURES, {**records[37].row, "variant": None})
    records[60] = Record(EXPOSURES, {k: v for k, v in records[60].row.items() if k != "at"})
    gate = threading.Event()
    sender = publisher(nats_url, tmp_path / "journal", stream, ready=gate.is_set)
    sender.start()
    try:
        _offer_in_one_round(sender, gate, records)
        assert sender.flush(timeout=20)
    finally:
        sender.stop()
    assert sender.counts.messages == 1
    wait_stored(database, 98)
    wait_for(lambda: consumer.counts.refused == 2, what="the two bad records refused")
    time.sleep(stream.ack_wait + 0.5)
    assert stored(database) == (98, 98)
    assert (consumer.counts.stored, consumer.counts.redelivered) == (98, 0)
    assert stream_messages(nats_url, stream) == 0


def test_a_huge_record_is_dropped_alone_and_a_large_one_sent_alone(
    tmp_path: Path, database: Database, stream: StreamSettings
) -> None:
    """On a server with max_payload 2048: small records go in packs of at most 512 bytes, a
    record of 750 bytes in a message of its own, and a record over max_payload (payload alone,
    or with its headers) is dropped and counted, never journaled, without the server ever
    seeing a message over its limit; every other record is stored."""
    if NATS_BINARY is None:
        pytest.skip("no nats-server binary: the test needs a server with a small max_payload")
    server = NatsServer(tmp_path / "nats-store", config="max_payload: 2048")
    server.start()
    storing = EventConsumer(
        server.url, DatabaseSink(database), stream=stream, retry_interval=0.2, fetch_timeout=0.2
    )
    storing.start()
    gate = threading.Event()
    sender = publisher(server.url, tmp_path / "journal", stream, ready=gate.is_set)
    try:
        sender.start()
        wait_for(lambda: sender.connected, what="the publisher connecting")
        records = [exposure(index) for index in range(100)]
        # As long as its columns allow (PostgreSQL enforces them), past the pack limit.
        large = Record(EXPOSURES, {**exposure(100).row, "flag": "f" * 256, "variant": "v" * 256})
        huge = Record(EXPOSURES, {**exposure(101).row, "variant": "v" * 5000})
        over = 2048 - len(encode(exposure(102))) + len(exposure(102).row["variant"]) - 10
        edge = Record(EXPOSURES, {**exposure(102).row, "variant": "v" * over})
        assert 512 < len(encode(large)) < 2048 - header_bytes(message_id(large))
        assert len(encode(edge)) <= 2048 < len(encode(edge)) + header_bytes(message_id(edge))
        _offer_in_one_round(sender, gate, [*records[:50], huge, large, edge, *records[50:]])
        assert sender.flush(timeout=20)
        wait_stored(database, 101)
    finally:
        sender.stop()
        storing.stop()
        server.stop()
    assert stored(database) == (101, 101)
    assert (sender.counts.dropped, sender.counts.published, sender.counts.journaled) == (2, 101, 0)
    assert 1 < sender.counts.messages < 101
    assert sender.counts.failed_publishes == 0
    assert "Maximum Payload" not in server.log.read_text()


def test_one_record_messages_are_what_they_were_and_still_stored(
    nats_url: str, database: Database, stream: StreamSettings, tmp_path: Path
) -> None:
    """With one record per message, each message is the record's line with its natural key as
    message id, as before packing; packs of 100 carry the pack id and the records' lines; a
    consumer stores both kinds."""
    ones = [exposure(index, run="one") for index in range(5)]
    packed = [exposure(index, run="pack") for index in range(100)]
    for records, per_message in ((ones, 1), (packed, 100)):
        gate = threading.Event()
        sender = publisher(
            nats_url,
            tmp_path / f"journal-{per_message}",
            stream,
            ready=gate.is_set,
            records_per_message=per_message,
        )
        sender.start()
        try:
            _offer_in_one_round(sender, gate, records)
            assert sender.flush(timeout=20)
        finally:
            sender.stop()

    async def read() -> list[tuple[str, bytes]]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_consumer(js, stream)
        batches = PullBatches(nc, stream.stream, stream.consumer)
        await batches.subscribe()
        messages = await batches.fetch(10, 0.5)
        await nc.close()  # not acknowledged: delivered again after ack_wait
        return [((msg.headers or {})[MSG_ID_HEADER], msg.data) for msg in messages]

    seen = asyncio.run(read())
    assert seen == [
        *((message_id(record), encode(record)) for record in ones),
        (pack_id(EXPOSURES, [message_id(r) for r in packed]), b"\n".join(map(encode, packed))),
    ]
    storing = EventConsumer(nats_url, DatabaseSink(database), stream=stream, fetch_timeout=0.2)
    storing.start()
    try:
        wait_stored(database, 105)
    finally:
        storing.stop()
    assert stored(database) == (105, 105)
