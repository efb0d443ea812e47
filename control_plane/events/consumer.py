"""The storing end of the record pipeline: a durable pull consumer that writes batches of
records to the database and acknowledges them only after the commit.

    stream --fetch(batch_size)--> records --RecordSink.write (one transaction)--> commit
        --> ack every message of the batch

So a consumer that dies between commit and ack (a `kill -9`, a lost connection) has its
messages delivered again after `ack_wait`, to itself restarted or to another control plane
fetching from the same durable consumer; the inserts skip keys already stored, so each record
is stored once. Delivery is at least once; storage is exactly once.

A batch the database refuses for its data (an integrity or data error) is written one
message at a time, so one bad record cannot block the rest; a message that is still refused,
or is not a record at all, is terminated (never redelivered) and counted as refused. Any other
error is an outage: nothing is acknowledged, the batch is delivered again after
`retry_interval` (a negative acknowledgement with that delay) and the consumer waits as long.
The sink runs in a worker thread, so the loop keeps answering the server's heartbeats.

Why one acknowledgement per message and not one per batch (an AckAll consumer acknowledges
every message up to the sequence acknowledged): the consumer is shared by every control plane,
and after a crash the dead one's messages come again only after `ack_wait`, behind newer ones;
an AckAll of a later sequence would acknowledge messages another fetch holds, or the dead
one's uncommitted batch, and those records would never be stored. nats-py queues the acks of
a batch and writes them to the socket together.

Batches come from control_plane.events._pull (one pull request per batch, messages collected
by a callback), not nats-py's `fetch`, which made two asyncio tasks per message. A batch is
stored once it holds `batch_size` messages or its request expires after `fetch_timeout`, so at
a trickle a record waits up to `fetch_timeout` (0.5 s) before it is written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from sqlalchemy.exc import DataError, IntegrityError

from control_plane.events._pull import PullBatches, delivery_count
from control_plane.events.loop import LoopThread
from control_plane.events.messages import decode
from control_plane.events.metrics import EventMetrics
from control_plane.events.stream import StreamSettings, ensure_consumer, ensure_stream
from control_plane.experiments.records import Record

__all__ = ["ConsumerCounts", "EventConsumer", "RecordSink"]

log = logging.getLogger(__name__)

#: Seconds between two warnings of one kind.
_WARN_EVERY = 10.0


class RecordSink(Protocol):
    """Where records are stored (control_plane.experiments.sink.DatabaseSink is one): `write`
    stores all of them in one transaction or raises."""

    def write(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


class ConsumerCounts:
    def __init__(self) -> None:
        self.stored = 0
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
                    messages = await subscription.fetch(self._batch_size, self._fetch_timeout)
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
        records: list[Record] = []
        good: list[Msg] = []
        redelivered: list[Record] = []
        for msg in messages:
            try:
                record = decode(msg.data)
            except ValueError:
                self._refused(msg, "unknown", "not an experiment record")
                await msg.term()
                continue
            records.append(record)
            good.append(msg)
            if delivery_count(msg) > 1:
                redelivered.append(record)
        if redelivered:
            self.counts.redelivered += len(redelivered)
            self._count(redelivered, "redelivered")
        if not records:
            return
        self.counts.batches += 1
        try:
            await asyncio.to_thread(self.sink.write, records)
        except (IntegrityError, DataError):
            await self._store_one_by_one(good, records)
            return
        except Exception as exc:
            self.counts.write_failures += 1
            self._warn(
                "database",
                "%s: cannot store %d records (%s); they are delivered again in %.1fs",
                self._name,
                len(records),
                exc,
                self._retry_interval,
            )
            for msg in good:
                with contextlib.suppress(NatsError):
                    await msg.nak(delay=self._retry_interval)
            await self._pause(self._retry_interval)
            return
        await self._ack(good, records)

    async def _store_one_by_one(self, messages: list[Msg], records: list[Record]) -> None:
        for msg, record in zip(messages, records, strict=True):
            try:
                await asyncio.to_thread(self.sink.write, [record])
            except (IntegrityError, DataError) as exc:
                self._refused(msg, record.table, f"refused by the database: {exc}")
                await msg.term()
                continue
            await self._ack([msg], [record])

    async def _ack(self, messages: Sequence[Msg], records: Sequence[Record]) -> None:
        for msg in messages:
            await msg.ack()
        self.counts.stored += len(records)
        self._count(records, "stored")

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
            "%s: message %s on %s terminated: %s",
            self._name,
            (msg.headers or {}).get("Nats-Msg-Id", "?"),
            msg.subject,
            why,
        )

    def _count(self, records: Sequence[Record], result: str) -> None:
        if self._metrics is None:
            return
        for table, count in collections.Counter(r.table for r in records).items():
            self._metrics.consumed.labels(table, result).inc(count)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warning[kind] = now
            log.warning(message, *args)
