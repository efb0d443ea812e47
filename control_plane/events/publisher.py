"""The publishing end of the record pipeline: records leave the request path at once and reach
JetStream from a thread of their own; while NATS cannot be reached they wait in a local journal.

    hot path --offer()--> bounded deque --publisher loop (own thread), every `interval`-->
        prepare (hash targeting keys) --> publish, one message per record, Nats-Msg-Id =
        natural key --> JetStream PubAck? yes: done / no (down, timeout, refused): journal
        --> once connected again: journal segments republished, removed when all acknowledged

`offer` has the shape of `BatchWriter.offer` (a tuple whose first element is its table; never
blocks; False and counted when the queue is full), so the recorder feeds either one.

Acknowledgements are collected on one wildcard inbox subscription rather than one request per
message: nats-py's `JetStreamContext.publish` costs about 75 us of CPU per message here, a
core publish with a reply subject about 16 us (bench/events.py), and that CPU is taken from
the serving thread's share of the GIL.

What a crash loses: a `kill -9` loses what was queued or in flight (at most about `interval`
of records plus one round trip); everything journaled is replayed by the next publisher that
opens the same journal directory (its own restart, or a sibling on the host: orphan segments
are adopted as in control_plane.experiments.journal). A republished record that JetStream
already holds is dropped by its duplicate window, or later by the database insert.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from control_plane.events.loop import LoopThread
from control_plane.events.messages import MSG_ID_HEADER, encode, message_id, subject
from control_plane.events.metrics import EventMetrics
from control_plane.events.stream import StreamSettings, ensure_stream
from control_plane.experiments.journal import Journal, Segment
from control_plane.experiments.records import Record

__all__ = ["EventPublisher", "PublisherCounts"]

log = logging.getLogger(__name__)

#: How often the journal directory is searched for segments of processes that are gone.
_ADOPT_EVERY = 30.0
#: Seconds between two warnings of one kind (every record is counted either way).
_WARN_EVERY = 10.0


class PublisherCounts:
    """Plain counters of one publisher (the Prometheus counters carry the same numbers)."""

    def __init__(self) -> None:
        self.published = 0
        self.duplicates = 0
        self.journaled = 0
        self.replayed = 0
        self.dropped = 0
        self.failed_publishes = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _FlushRequest:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


@dataclass(eq=False)
class _Round:
    """One batch of messages waiting for their acknowledgements."""

    records: dict[int, Record]
    failed: list[Record] = field(default_factory=list)
    duplicates: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class EventPublisher:
    """Publishes experiment records to JetStream; see the module docstring."""

    def __init__(
        self,
        servers: str | list[str],
        journal: Journal,
        *,
        prepare: Callable[[Any], Record],
        ready: Callable[[], bool] | None = None,
        stream: StreamSettings | None = None,
        queue_size: int = 100_000,
        batch_size: int = 1000,
        interval: float = 0.02,
        ack_timeout: float = 5.0,
        retry_interval: float = 1.0,
        buffer_limit: int = 50_000,
        stop_replay_seconds: float = 3.0,
        metrics: EventMetrics | None = None,
        connect_options: dict[str, Any] | None = None,
        name: str = "event-publisher",
    ) -> None:
        self.servers = servers
        self.journal = journal
        self.stream = stream or StreamSettings()
        self.counts = PublisherCounts()
        self._prepare = prepare
        self._ready = ready
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = interval
        self._ack_timeout = ack_timeout
        self._retry_interval = retry_interval
        self._buffer_limit = buffer_limit
        #: How long a stop may spend replaying the journal while NATS answers.
        self.stop_replay_seconds = stop_replay_seconds
        self._metrics = metrics
        self._connect_options = connect_options or {}
        self._name = name
        self._queue: collections.deque[Any] = collections.deque()
        self._loop = LoopThread(name)
        self._main: Any = None
        self._stop = threading.Event()
        self._nc: Client | None = None
        self._inbox = ""
        self._tokens = 0
        self._inflight: dict[int, _Round] = {}
        #: Journal segments not yet acknowledged by JetStream, oldest first.
        self._backlog: list[Segment] = []
        self._current: Segment | None = None  # the segment new failures are appended to
        self._in_memory = 0  # records of backlog segments the journal could not take
        self._flushes: list[_FlushRequest] = []
        self._last_warning: dict[str, float] = {}
        if metrics is not None:
            metrics.queued.set_function(lambda: len(self._queue))
            metrics.journal_pending.set_function(lambda: self.pending)
            metrics.connected.labels("publisher").set_function(
                lambda: 1.0 if self.connected else 0.0
            )

    # -- any thread ------------------------------------------------------------------------

    def offer(self, item: Any) -> bool:
        """Queue a raw item (a tuple whose first element is its table); never blocks.

        False when the queue is full: the item is dropped and counted.
        """
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._dropped(item[0], 1, "the in-memory queue is full")
            return False
        queue.append(item)
        return True

    @property
    def connected(self) -> bool:
        nc = self._nc
        return nc is not None and nc.is_connected

    @property
    def queued(self) -> int:
        """Records offered and not yet taken by a publishing round."""
        return len(self._queue)

    @property
    def pending(self) -> int:
        """Records in the local journal (or memory) waiting for NATS."""
        return sum(segment.count for segment in self._backlog)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything offered before this call is acknowledged by JetStream (True),
        or until `timeout` passes (False: NATS is unreachable; the records are journaled)."""
        request = _FlushRequest()
        self._queue.append(request)
        return request.done.wait(timeout) and request.ok

    def start(self) -> None:
        if self._main is not None:
            return
        self._stop.clear()
        self._loop.start()
        self._main = self._loop.submit(self._run())

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is queued if NATS takes it, replay the journal for up to
        `stop_replay_seconds`, journal the rest, then end the thread."""
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
        self._journal_leftovers()
        for request in self._flushes:
            request.done.set()
        self._flushes.clear()

    def _journal_leftovers(self) -> None:
        """After the loop is gone: what is still queued (a stop that timed out) and what the
        backlog holds only in memory go to the journal, for the next start to replay."""
        queued, _ = self._take()
        records = [
            record
            for segment in self._backlog
            if segment.path is None and segment.records
            for record in segment.records
        ]
        records += queued
        self._backlog = [segment for segment in self._backlog if segment.path is not None]
        self._in_memory = 0
        if not records:
            return
        try:
            self.journal.append(records)
        except OSError as exc:
            for table, count in collections.Counter(r.table for r in records).items():
                self._dropped(table, count, f"the journal refused them at stop ({exc})")
            return
        finally:
            self.journal.close()
        self.counts.journaled += len(queued)  # the rest were counted when they were kept
        self._count(queued, "journaled")
        log.warning(
            "%s: %d records journaled at stop in %s; the next start publishes them",
            self._name,
            len(records),
            self.journal.directory,
        )

    # -- the publisher loop ----------------------------------------------------------------

    async def _run(self) -> None:
        self._adopt()
        next_adoption = time.monotonic() + _ADOPT_EVERY
        # nats-py retries a first connection forever; meanwhile the rounds journal records.
        connecting = asyncio.ensure_future(self._connect())
        while True:
            stopping = self._stop.is_set()
            try:
                await self._round(stopping)
                if stopping:
                    await self._replay_before_stop(connecting)
                if time.monotonic() >= next_adoption:
                    next_adoption = time.monotonic() + _ADOPT_EVERY
                    self._adopt()
            except Exception:  # the loop must outlive any surprise, or records pile up
                log.exception("%s: unexpected error; continuing", self._name)
            if stopping:
                break
            await asyncio.sleep(self._interval)
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        await self._close()

    async def _replay_before_stop(self, connecting: asyncio.Future[None]) -> None:
        """Replay the journal while NATS answers, for at most `stop_replay_seconds` (waiting
        for a connection still being made); what is left stays journaled for the next start,
        which may be long in coming for a replica that is scaled in."""
        if not self._backlog:
            return
        deadline = time.monotonic() + self.stop_replay_seconds
        while not self.connected and not connecting.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        remaining = deadline - time.monotonic()
        if self.connected and remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replay(), remaining)

    async def _connect(self) -> None:
        """Connect (retrying forever), make the stream, subscribe to the acknowledgements."""

        async def quiet(exc: Exception) -> None:
            self._warn(
                "error",
                "%s: NATS at %s: %s; records go to the local journal %s",
                self._name,
                self.servers,
                exc or type(exc).__name__,
                self.journal.directory,
            )

        async def reconnected() -> None:  # a server that lost its store has no stream
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await ensure_stream(nc.jetstream(), self.stream)

        nc = await nats.connect(
            self.servers,
            name=self._name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._retry_interval,
            error_cb=quiet,
            reconnected_cb=reconnected,
            **self._connect_options,
        )
        while True:
            try:
                await ensure_stream(nc.jetstream(), self.stream)
                self._inbox = nc.new_inbox()
                await nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
                break
            except (NatsError, OSError, TimeoutError) as exc:
                self._warn(
                    "connect",
                    "%s: cannot set up the stream %s: %s",
                    self._name,
                    self.stream.stream,
                    exc or type(exc).__name__,
                )
                await asyncio.sleep(self._retry_interval)
        self._nc = nc

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
        self.journal.close()

    async def _round(self, stopping: bool) -> None:
        """Publish what was queued (journal what NATS did not take), then replay the journal."""
        records, flushes = self._take()
        handled = 0
        try:
            for start in range(0, len(records), self._batch_size):
                chunk = records[start : start + self._batch_size]
                if self._backlog or not self.connected:
                    failed = chunk  # keep the order: older journaled records go first
                else:
                    failed = await self._publish(chunk, "published")
                if failed:
                    self._journal_records(failed)
                handled = start + len(chunk)
        except BaseException:
            # Whatever went wrong (or cancelled the round), the records taken and not yet
            # published or journaled go to the backlog: republished later, never lost.
            self._keep_in_memory(records[handled:])
            self._flushes.extend(flushes)
            raise
        if self._backlog and self.connected and not stopping:
            await self._replay()
        self._flushes.extend(flushes)
        if self._flushes and not self._backlog:  # all taken so far is acknowledged
            for request in self._flushes:
                request.ok = True
                request.done.set()
            self._flushes.clear()

    def _take(self) -> tuple[list[Record], list[_FlushRequest]]:
        queue = self._queue
        records: list[Record] = []
        flushes: list[_FlushRequest] = []
        if self._ready is not None and not self._ready():
            return records, flushes
        for _ in range(len(queue)):
            item = queue.popleft()
            if isinstance(item, _FlushRequest):
                flushes.append(item)
                continue
            try:
                records.append(self._prepare(item))
            except Exception:
                log.exception("%s: cannot make a record of %r", self._name, item[0])
                self._dropped(item[0], 1, "the record could not be prepared")
        return records, flushes

    async def _publish(self, records: Sequence[Record], result: str) -> list[Record]:
        """Publish `records` and wait for their acknowledgements: the records not stored."""
        nc = self._nc
        if nc is None:
            return list(records)
        batch = _Round({})
        tokens = self._inflight
        first = self._tokens
        self._tokens += len(records)
        # Every record is registered as awaiting its acknowledgement before the first send:
        # one the sends never reached stays in batch.records and is journaled, never counted
        # as stored.
        for offset, record in enumerate(records):
            batch.records[first + offset] = record
            tokens[first + offset] = batch
        oversized: list[Record] = []
        try:
            for offset, record in enumerate(records):
                try:
                    await nc.publish(
                        subject(self.stream.subject_prefix, record),
                        encode(record),
                        reply=f"{self._inbox}.{first + offset}",
                        headers={MSG_ID_HEADER: message_id(record)},
                    )
                except MaxPayloadError:
                    # No retry could ever send it: journaled, it would hold back every
                    # record behind it for good.
                    del batch.records[first + offset]
                    tokens.pop(first + offset, None)
                    oversized.append(record)
                    self._dropped(
                        record.table, 1, f"larger than NATS's max_payload ({nc.max_payload} B)"
                    )
            if not batch.records:
                batch.done.set()
            await nc.flush(timeout=max(1, round(self._ack_timeout)))
            await asyncio.wait_for(batch.done.wait(), self._ack_timeout)
        except (NatsError, OSError, TimeoutError) as exc:
            self.counts.failed_publishes += 1
            self._warn(
                "publish",
                "%s: publishing to NATS failed (%s): %d of %d records go to the local journal",
                self._name,
                exc or type(exc).__name__,
                len(batch.records) + len(batch.failed),
                len(records),
            )
        for token in list(batch.records):
            tokens.pop(token, None)
        failed = [*batch.failed, *batch.records.values()]
        stored = len(records) - len(failed) - len(oversized)
        if stored:
            self._count_stored(records, [*failed, *oversized], result)
            self.counts.duplicates += batch.duplicates
            if result == "published":
                self.counts.published += stored
            else:
                self.counts.replayed += stored
        return failed

    async def _on_ack(self, msg: Msg) -> None:
        try:
            token = int(msg.subject.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return
        batch = self._inflight.pop(token, None)
        if batch is None:
            return  # late: its record was journaled already and will be republished
        record = batch.records.pop(token)
        data = msg.data
        if not data or b'"error"' in data:  # no stream for the subject (503), full, ...
            batch.failed.append(record)
            self._warn(
                "refused",
                "%s: JetStream refused a record: %s",
                self._name,
                (data or (msg.headers or {}).get("Status", b"")) or "no answer",
            )
        elif b'"duplicate"' in data and json.loads(data).get("duplicate") is True:
            batch.duplicates += 1
        if not batch.records:
            batch.done.set()

    # -- the journal -----------------------------------------------------------------------

    def _adopt(self) -> None:
        try:
            segments = self.journal.adopt_orphans()
        except OSError as exc:
            self._warn(
                "journal",
                "%s: cannot use the journal directory %s: %s",
                self._name,
                self.journal.directory,
                exc,
            )
            return
        self._backlog.extend(segments)

    def _journal_records(self, records: list[Record]) -> None:
        try:
            segment = self.journal.append(records, self._current)
        except OSError as exc:
            self._warn(
                "journal",
                "%s: cannot write the journal in %s (%s); records are kept "
                "in memory only, up to %d",
                self._name,
                self.journal.directory,
                exc,
                self._buffer_limit,
            )
            if not self._keep_in_memory(records):
                return
        else:
            if segment is not self._current:
                self._backlog.append(segment)
                self._current = segment
        self.counts.journaled += len(records)
        self._count(records, "journaled")

    def _keep_in_memory(self, records: Sequence[Record]) -> bool:
        """Put `records` at the end of the backlog without the journal (False: no room, they
        are dropped and counted)."""
        if not records:
            return True
        if self._in_memory + len(records) > self._buffer_limit:
            for record in records:
                self._dropped(record.table, 1, "neither the journal nor memory has room")
            return False
        self._backlog.append(Segment(None, len(records), records=list(records)))
        self._in_memory += len(records)
        self._current = None  # later failures go after these, not into an earlier segment
        return True

    async def _replay(self) -> None:
        """Republish journal segments, oldest first; a segment leaves once all of it is in."""
        self._current = None  # new failures go to a new segment, not one being replayed
        while self._backlog and self.connected:
            segment = self._backlog[0]
            records = segment.records if segment.records is not None else self.journal.read(segment)
            for start in range(0, len(records), self._batch_size):
                if await self._publish(records[start : start + self._batch_size], "replayed"):
                    return  # NATS is in trouble again; the whole segment is retried later
            self._backlog.pop(0)
            if segment.path is None:
                self._in_memory -= segment.count
            else:
                self.journal.remove(segment)

    # -- counting --------------------------------------------------------------------------

    def _count_stored(self, records: Sequence[Record], failed: list[Record], result: str) -> None:
        if self._metrics is None:
            return
        counts = collections.Counter(record.table for record in records)
        counts.subtract(record.table for record in failed)
        for table, count in counts.items():
            if count:
                self._metrics.published.labels(table, result).inc(count)

    def _count(self, records: Sequence[Record], result: str) -> None:
        if self._metrics is None:
            return
        for table, count in collections.Counter(r.table for r in records).items():
            self._metrics.published.labels(table, result).inc(count)

    def _dropped(self, table: str, count: int, why: str) -> None:
        self.counts.dropped += count
        if self._metrics is not None:
            self._metrics.published.labels(table, "dropped").inc(count)
        self._warn(
            "dropped",
            "%s: dropping %s records: %s (dropped so far: %d)",
            self._name,
            table,
            why,
            self.counts.dropped,
        )

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._last_warning[kind] = now
            log.warning(message, *args)
