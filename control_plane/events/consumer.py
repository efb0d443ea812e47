"""The storing end of the record pipeline: a durable pull consumer that writes batches of
records to the database and acknowledges them only after the commit.

    stream --fetch(about batch_size records)--> messages --unpack--> records
        --RecordSink.write (one transaction of about batch_size records, never splitting
        a message)--> commit --> ack every message of the transaction

So a consumer that dies between commit and ack (a `kill -9`, a lost connection) has its
messages delivered again after `ack_wait`, to itself restarted or to another control plane
fetching from the same durable consumer; the inserts skip keys already stored, so each record
is stored once. Delivery is at least once; storage is exactly once. A committed record whose key
the database already held (delivered again, or published twice by a publisher replaying its
journal) is counted as a duplicate, not as stored, so `stored` counts rows.

A message holds one record or a pack of them (control_plane.events.messages; one record a
message is a pack of one, so messages of publishers before packing read the same). Bad records
are handled one by one, whatever pack they came in:

- a line that is not a record is refused (logged with the message id and its line, counted);
  the other records of its message are stored;
- a transaction refused for its data (an integrity or data error, or a row the sink cannot
  convert: a missing column, a value of the wrong type) is written again one message at a
  time, and a message still refused one record at a time, so one bad record cannot block the
  rest; that record is refused;
- a message is acknowledged once each of its records is stored or refused, terminated (never
  redelivered) when every one was refused: a bad record never brings its pack back, and
  is never retried forever;
- any other error is an outage: nothing of the transaction is acknowledged, its messages and
  the later ones of the fetch are delivered again after `retry_interval` (a negative
  acknowledgement with that delay) and the consumer waits as long.

The sink runs in a worker thread, so the loop keeps answering the server's heartbeats.

Why one acknowledgement per message and not one per batch (an AckAll consumer acknowledges
every message up to the sequence acknowledged): the consumer is shared by every control plane,
and after a crash the dead one's messages come again only after `ack_wait`, behind newer ones;
an AckAll of a later sequence would acknowledge messages another fetch holds, or the dead
one's uncommitted batch, and those records would never be stored. nats-py queues the acks of
a batch and writes them to the socket together.

Batches come from control_plane.events._pull (one pull request per batch, messages collected
by a callback), not nats-py's `fetch`, which made two asyncio tasks per message. A fetch asks
for `batch_size` records' worth of messages at the records per message it saw last, and is
stored once it holds them or its request expires after `fetch_timeout`, so at a trickle a
record waits up to `fetch_timeout` (0.5 s) before it is written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from control_plane.events._pull import PullBatches, delivery_count
from control_plane.events.loop import LoopThread
from control_plane.events.messages import message_id, unpack
from control_plane.events.metrics import EventMetrics
from control_plane.events.stream import StreamSettings, ensure_consumer, ensure_stream
from control_plane.experiments.records import Record

__all__ = ["ConsumerCounts", "EventConsumer", "RecordSink"]

log = logging.getLogger(__name__)

#: Seconds between two warnings of one kind.
_WARN_EVERY = 10.0

#: A message and the records it holds.
_Unit = tuple[Msg, list[Record]]


class RecordSink(Protocol):
    """Where records are stored (control_plane.experiments.sink.DatabaseSink is one): `write`
    stores all of them in one transaction or raises, and returns the rows it added per table
    (keys it already held are skipped: records delivered again)."""

    def write(self, records: Sequence[Record]) -> Mapping[str, int]: ...

    def close(self) -> None: ...


class ConsumerCounts:
    def __init__(self) -> None:
        #: Records committed and acknowledged whose rows the database did not hold before.
        self.stored = 0
        #: Records committed and acknowledged whose keys the database already held.
        self.duplicates = 0
        self.redelivered = 0
        self.refused = 0
        self.batches = 0
        self.write_failures = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class EventConsumer:
    """Stores records from the stream through `sink`; see the module docstring."""

    def __init__(
        self,
        servers: str | list[str],
        sink: RecordSink,
        *,
        stream: StreamSettings | None = None,
        batch_size: int = 1000,
        fetch_timeout: float = 0.5,
        retry_interval: float = 1.0,
        metrics: EventMetrics | None = None,
        connect_options: dict[str, Any] | None = None,
        name: str = "event-consumer",
    ) -> None:
        self.servers = servers
        self.sink = sink
        self.stream = stream or StreamSettings()
        self.counts = ConsumerCounts()
        self._batch_size = batch_size
        self._fetch_timeout = fetch_timeout
        self._retry_interval = retry_interval
        self._metrics = metrics
        self._connect_options = connect_options or {}
        self._name = name
        self._loop = LoopThread(name)
        self._main: Any = None
        self._stop = threading.Event()
        self._nc: Client | None = None
        #: Records per message in the last fetch (publishers pack many into one).
        self._per_message = 1.0
        self._last_warning: dict[str, float] = {}
        if metrics is not None:
            metrics.connected.labels("consumer").set_function(
                lambda: 1.0 if self.connected else 0.0
            )

    @property
    def connected(self) -> bool:
        nc = self._nc
        return nc is not None and nc.is_connected

    def start(self) -> None:
        if self._main is not None:
            return
        self._stop.clear()
        self._loop.start()
        self._main = self._loop.submit(self._run())

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand (written and acknowledged, or left for redelivery)."""
        main = self._main
        if main is None:
            return
        self._stop.set()
        try:
            main.result(timeout)
        except Exception:
            log.exception("%s did not stop cleanly", self._name)
        self._loop.stop()
        self._main = None
        self.sink.close()

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        subscription: PullBatches | None = None
        while not self._stop.is_set():
            try:
                if subscription is None:
                    subscription = await self._subscribe()
                    if subscription is None:
                        await self._pause(self._retry_interval)
                        continue
                try:
                    messages = await subscription.fetch(self._fetch_size(), self._fetch_timeout)
                except NatsTimeoutError:
                    continue  # nothing to store
                await self._store(messages)
            except (NatsError, OSError) as exc:
                self._warn("nats", "%s: NATS: %s; retrying", self._name, exc or type(exc).__name__)
                await self._pause(self._retry_interval)
            except Exception:  # the loop must outlive any surprise
                log.exception("%s: unexpected error; continuing", self._name)
                await self._pause(self._retry_interval)
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _subscribe(self) -> PullBatches | None:
        if self._nc is None:

            async def quiet(exc: Exception) -> None:
                self._warn(
                    "error",
                    "%s: NATS at %s: %s",
                    self._name,
                    self.servers,
                    exc or type(exc).__name__,
                )

            # nats-py retries a first connection forever: wait for it, or for stop().
            connecting = asyncio.ensure_future(
                nats.connect(
                    self.servers,
                    name=self._name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._retry_interval,
                    error_cb=quiet,
                    **self._connect_options,
                )
            )
            while not connecting.done():
                await asyncio.wait({connecting}, timeout=0.1)
                if self._stop.is_set():
                    connecting.cancel()
                    await asyncio.gather(connecting, return_exceptions=True)
                    return None
            self._nc = connecting.result()
        js = self._nc.jetstream()
        await ensure_stream(js, self.stream)
        await ensure_consumer(js, self.stream)
        batches = PullBatches(self._nc, self.stream.stream, self.stream.consumer)
        await batches.subscribe()
        return batches

    async def _store(self, messages: list[Msg]) -> None:
        """Store the records of `messages`, in transactions of about `batch_size` records
        that never split a message, acknowledging each message after the commit of all its
        records."""
        units: list[_Unit] = []
        redelivered: list[Record] = []
        for msg in messages:
            records, refused = unpack(msg.data)
            for why in refused:
                self._refused(msg, "unknown", f"not an experiment record ({why})")
            if not records:
                await msg.term()
                continue
            units.append((msg, records))
            if delivery_count(msg) > 1:
                redelivered += records
        if messages:  # the next fetch asks for about `batch_size` records' worth
            self._per_message = max(1.0, sum(len(r) for _, r in units) / len(messages))
        if redelivered:
            self.counts.redelivered += len(redelivered)
            self._count(redelivered, "redelivered")
        groups = self._groups(units)
        for number, group in enumerate(groups):
            left = await self._store_group(group)
            if left:
                # An outage: what is not stored is delivered again after a pause.
                for msg, _ in [*left, *(unit for later in groups[number + 1 :] for unit in later)]:
                    with contextlib.suppress(NatsError):
                        await msg.nak(delay=self._retry_interval)
                await self._pause(self._retry_interval)
                return

    def _fetch_size(self) -> int:
        """Messages to ask for: about `batch_size` records at the records per message seen."""
        return max(1, min(self._batch_size, math.ceil(self._batch_size / self._per_message)))

    def _groups(self, units: list[_Unit]) -> list[list[_Unit]]:
        """`units` in transactions of up to `batch_size` records (or one message's)."""
        groups: list[list[_Unit]] = []
        group: list[_Unit] = []
        count = 0
        for unit in units:
            if group and count + len(unit[1]) > self._batch_size:
                groups.append(group)
                group, count = [], 0
            group.append(unit)
            count += len(unit[1])
        if group:
            groups.append(group)
        return groups

    async def _store_group(self, units: list[_Unit]) -> list[_Unit]:
        """One transaction for the records of `units`, then their acks; the units left
        neither stored nor refused by an outage (all of them, or none)."""
        records = [record for _, message_records in units for record in message_records]
        self.counts.batches += 1
        try:
            added = await asyncio.to_thread(self.sink.write, records)
        except Exception as exc:
            if _refuses_the_data(exc):
                return await self._store_one_by_one(units)
            self._outage(len(records), exc)
            return units
        for msg, _ in units:
            await msg.ack()
        self._committed(records, added)
        return []

    async def _store_one_by_one(self, units: list[_Unit]) -> list[_Unit]:
        """A group the database refused for its data: each message in a transaction of its
        own, and the records of a message it refuses again one at a time, so a bad record is
        refused alone. A message is acknowledged once each of its records is stored or
        refused (terminated when all were refused). Returns the units an outage left."""
        for index, (msg, records) in enumerate(units):
            try:
                committed, added = await self._write_each(msg, records)
            except Exception as exc:
                self._outage(len(records), exc)
                return units[index:]
            if committed:
                await msg.ack()
                self._committed(committed, added)
            else:
                await msg.term()
        return []

    async def _write_each(
        self, msg: Msg, records: list[Record]
    ) -> tuple[list[Record], collections.Counter[str]]:
        """The records of `msg` the database committed, and the rows that added per table:
        all in one transaction, or one at a time once it refused them together; refused ones
        are logged and counted."""
        added: collections.Counter[str] = collections.Counter()
        try:
            added.update(await asyncio.to_thread(self.sink.write, records))
            return records, added
        except Exception as exc:
            if not _refuses_the_data(exc):
                raise
            if len(records) == 1:
                self._refused(msg, records[0].table, f"cannot be stored: {_first_line(exc)}")
                return [], added
        committed: list[Record] = []
        for record in records:
            try:
                added.update(await asyncio.to_thread(self.sink.write, [record]))
            except Exception as exc:
                if not _refuses_the_data(exc):
                    raise
                self._refused(
                    msg,
                    record.table,
                    f"the record {message_id(record)} cannot be stored: {_first_line(exc)}",
                )
            else:
                committed.append(record)
        return committed, added

    def _committed(self, records: Sequence[Record], added: Mapping[str, int]) -> None:
        """Count acknowledged `records`: the rows `added` per table as stored, the rest of
        each table's records (keys the database held) as duplicates."""
        stored: collections.Counter[str] = collections.Counter()
        duplicates: collections.Counter[str] = collections.Counter()
        for table, count in collections.Counter(record.table for record in records).items():
            stored[table] = min(count, max(0, added.get(table, 0)))
            duplicates[table] = count - stored[table]
        self.counts.stored += stored.total()
        self.counts.duplicates += duplicates.total()
        self._count_tables(stored, "stored")
        self._count_tables(duplicates, "duplicate")

    def _outage(self, count: int, exc: Exception) -> None:
        self.counts.write_failures += 1
        self._warn(
            "database",
            "%s: cannot store %d records (%s); they are delivered again in %.1fs",
            self._name,
            count,
            exc,
            self._retry_interval,
        )

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, seconds))

    # -- counting --------------------------------------------------------------------------

    def _refused(self, msg: Msg, table: str, why: str) -> None:
        self.counts.refused += 1
        if self._metrics is not None:
            self._metrics.consumed.labels(table, "refused").inc()
        log.error(
            "%s: message %s on %s: a record refused: %s",
            self._name,
            (msg.headers or {}).get("Nats-Msg-Id", "?"),
            msg.subject,
            why,
        )

    def _count(self, records: Sequence[Record], result: str) -> None:
        self._count_tables(collections.Counter(r.table for r in records), result)

    def _count_tables(self, per_table: Mapping[str, int], result: str) -> None:
        if self._metrics is None:
            return
        for table, count in per_table.items():
            if count:
                self._metrics.consumed.labels(table, result).inc(count)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warning[kind] = now
            log.warning(message, *args)


def _refuses_the_data(exc: BaseException) -> bool:
    """Whether a write failed for the records' own sake: the database refused them (a
    constraint, a value it cannot store), or they failed before reaching it (a row without a
    column, a value the sink cannot convert: records come from any publisher on the stream).
    The sink reports every failure of the database itself as a SQLAlchemyError: an outage."""
    return isinstance(exc, IntegrityError | DataError) or not isinstance(exc, SQLAlchemyError)


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if isinstance(exc, SQLAlchemyError) else f"{type(exc).__name__}: {line}"
