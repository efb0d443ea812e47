"""The publishing end of the record pipeline: records leave the request path at once and reach
JetStream from a thread of their own; while NATS cannot be reached they wait in a local journal.

    hot path --offer()--> bounded deque --publisher loop (own thread), every `interval`-->
        prepare (hash targeting keys) --> pack what is queued (up to `records_per_message`
        records of a table per message; control_plane.events.packing) --> publish, Nats-Msg-Id
        = the pack's id (a record's natural key for a pack of one) --> JetStream PubAck? yes:
        done / no (down, timeout, refused): journal, remembering the packs
        --> once connected again: journal segments republished (the same packs again),
        removed when all acknowledged

`offer` has the shape of `BatchWriter.offer` (a tuple whose first element is its table; never
blocks; False and counted when the queue is full), so the recorder feeds either one.

Acknowledgements are collected on one wildcard inbox subscription rather than one request per
message: nats-py's `JetStreamContext.publish` costs about 75 us of CPU per message here, a
core publish with a reply subject about 16 us (bench/events.py), and that CPU is taken from
the serving thread's share of the GIL. Packing pays that, and nats-server's 15-20 us a message,
once per pack; a round packs what it took and sends it at once, so nothing waits for a pack to
fill.

Deduplication, per record: a pack sent again as it was (its PubAck lost, its records
journaled: the journal segment's `Layout` re-forms it) has the same message id, and the stream
drops it within its duplicate window; records packed differently (a dead publisher's journal,
adopted by the next) get other ids, and the database insert skips the keys it holds. A record
whose message alone would exceed the server's max_payload (read from its INFO) is dropped,
counted and logged, never journaled (no retry could send it) and never in a pack with others.

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
from nats.aio.client import DEFAULT_MAX_PAYLOAD_SIZE, Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from control_plane.events.loop import LoopThread
from control_plane.events.messages import MSG_ID_HEADER, encode, message_id, subject
from control_plane.events.metrics import EventMetrics
from control_plane.events.packing import Layout, Pack, PackLimits, repack
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
        #: Messages JetStream acknowledged (new or duplicate): records are packed into fewer.
        self.messages = 0
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
    """One batch of messages waiting for their acknowledgements, by reply token."""

    packs: dict[int, Pack]
    failed: list[Pack] = field(default_factory=list)
    #: Records in packs the stream already held (acknowledged as duplicates).
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
        records_per_message: int = 100,
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
        if records_per_message < 1:
            raise ValueError(f"records_per_message must be at least 1, not {records_per_message}")
        self._queue_size = queue_size
        self._records_per_message = records_per_message
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
        #: How the records of this publisher's own backlog segments were packed when sent.
        self._layouts: dict[Segment, Layout] = {}
        #: The backlog segment being replayed and its packs not yet acknowledged.
        self._replaying: tuple[Segment, list[Pack]] | None = None
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
        self._layouts.clear()  # the journal outlives this publisher, its layouts do not
        self._replaying = None
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
        chunks: list[list[Pack]] = []
        sent = 0  # chunks published or journaled
        try:
            if records and (self._backlog or not self.connected):
                # Keep the order (older journaled records go first); packed at the replay.
                self._journal_records(records, [-len(records)])
            elif records:
                chunks = self._chunks(self._pack(records, self._limits()))
                for chunk in chunks:
                    if self._backlog or not self.connected:
                        failed = chunk
                    else:
                        failed = await self._publish(chunk, "published")
                    if failed:
                        self._journal_packs(failed)
                    sent += 1
        except BaseException:
            # Whatever went wrong (or cancelled the round), the records taken and not yet
            # published or journaled go to the backlog: republished later, never lost.
            if chunks:
                self._keep_in_memory(*_contents([p for c in chunks[sent:] for p in c]))
            elif not sent:
                self._keep_in_memory(records, [-len(records)])
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

    # -- packing ---------------------------------------------------------------------------

    def _limits(self) -> PackLimits:
        """This publisher's records per message, under the connected server's max_payload
        (its INFO; nats-py's default of 1 MiB before the first connection)."""
        nc = self._nc
        max_payload = nc.max_payload if nc is not None else DEFAULT_MAX_PAYLOAD_SIZE
        return PackLimits.for_server(self._records_per_message, max_payload)

    def _pack(
        self, records: Sequence[Record], limits: PackLimits, layout: Layout | None = None
    ) -> list[Pack]:
        """`records` in packs (as `layout` says they were sent, if known); a record too
        large for any message is dropped and counted: no retry could send it, and journaled
        it would hold back every record behind it for good."""
        packs, oversized = repack(records, layout, limits)
        for record in oversized:
            self._dropped(
                record.table,
                1,
                f"the message of the record {message_id(record)} alone ({len(encode(record))} B)"
                f" is larger than NATS's max_payload ({limits.max_payload} B)",
            )
        return packs

    def _chunks(self, packs: list[Pack]) -> list[list[Pack]]:
        """Packs in groups of about `batch_size` records: one wait for acknowledgements each."""
        chunks: list[list[Pack]] = []
        chunk: list[Pack] = []
        count = 0
        for item in packs:
            if chunk and count + len(item.records) > self._batch_size:
                chunks.append(chunk)
                chunk, count = [], 0
            chunk.append(item)
            count += len(item.records)
        if chunk:
            chunks.append(chunk)
        return chunks

    # -- publishing ------------------------------------------------------------------------

    async def _publish(self, packs: Sequence[Pack], result: str) -> list[Pack]:
        """Publish `packs` and wait for their acknowledgements: the packs not stored."""
        nc = self._nc
        if nc is None:
            return list(packs)
        batch = _Round({})
        tokens = self._inflight
        first = self._tokens
        self._tokens += len(packs)
        # Every pack is registered as awaiting its acknowledgement before the first send:
        # one the sends never reached stays in batch.packs and is journaled, never counted
        # as stored.
        for offset, item in enumerate(packs):
            batch.packs[first + offset] = item
            tokens[first + offset] = batch
        try:
            for offset, item in enumerate(packs):
                try:
                    await nc.publish(
                        subject(self.stream.subject_prefix, item.table),
                        item.payload,
                        reply=f"{self._inbox}.{first + offset}",
                        headers={MSG_ID_HEADER: item.msg_id},
                    )
                except MaxPayloadError:
                    # Packed for a server that took more (a reconnect reached one with a
                    # smaller max_payload): journaled, and packed anew for this one.
                    del batch.packs[first + offset]
                    tokens.pop(first + offset, None)
                    batch.failed.append(item)
            if not batch.packs:
                batch.done.set()
            await nc.flush(timeout=max(1, round(self._ack_timeout)))
            await asyncio.wait_for(batch.done.wait(), self._ack_timeout)
        except (NatsError, OSError, TimeoutError) as exc:
            self.counts.failed_publishes += 1
            self._warn(
                "publish",
                "%s: publishing to NATS failed (%s): %d of %d messages go to the local journal",
                self._name,
                exc or type(exc).__name__,
                len(batch.packs) + len(batch.failed),
                len(packs),
            )
        for token in list(batch.packs):
            tokens.pop(token, None)
        failed = [*batch.failed, *batch.packs.values()]
        if len(failed) < len(packs):
            self._count_stored(packs, failed, result)
            self.counts.messages += len(packs) - len(failed)
            self.counts.duplicates += batch.duplicates
        return failed

    async def _on_ack(self, msg: Msg) -> None:
        try:
            token = int(msg.subject.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return
        batch = self._inflight.pop(token, None)
        if batch is None:
            return  # late: its records were journaled already and will be republished
        item = batch.packs.pop(token)
        data = msg.data
        if not data or b'"error"' in data:  # no stream for the subject (503), full, ...
            batch.failed.append(item)
            self._warn(
                "refused",
                "%s: JetStream refused a message of %d records: %s",
                self._name,
                len(item.records),
                (data or (msg.headers or {}).get("Status", b"")) or "no answer",
            )
        elif b'"duplicate"' in data and json.loads(data).get("duplicate") is True:
            batch.duplicates += len(item.records)
        if not batch.packs:
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
        self._backlog.extend(segments)  # their layout died with their publisher

    def _journal_packs(self, packs: Sequence[Pack]) -> None:
        """Journal the records of packs that were sent and not acknowledged, remembering the
        packs, so that the replay sends the same messages again."""
        self._journal_records(*_contents(packs))

    def _journal_records(self, records: list[Record], layout: Layout) -> None:
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
            if not self._keep_in_memory(records, layout):
                return
        else:
            if segment is not self._current:
                self._backlog.append(segment)
                self._current = segment
            self._layouts.setdefault(segment, []).extend(layout)
        self.counts.journaled += len(records)
        self._count(records, "journaled")

    def _keep_in_memory(self, records: Sequence[Record], layout: Layout) -> bool:
        """Put `records` at the end of the backlog without the journal (False: no room, they
        are dropped and counted)."""
        if not records:
            return True
        if self._in_memory + len(records) > self._buffer_limit:
            for record in records:
                self._dropped(record.table, 1, "neither the journal nor memory has room")
            return False
        segment = Segment(None, len(records), records=list(records))
        self._backlog.append(segment)
        self._layouts[segment] = layout
        self._in_memory += len(records)
        self._current = None  # later failures go after these, not into an earlier segment
        return True

    async def _replay(self) -> None:
        """Republish journal segments, oldest first; a segment leaves once all of it is in.

        The head segment's packs are made once and kept until all are acknowledged: a replay
        cut short by NATS sends only the rest the next time, as the same messages."""
        self._current = None  # new failures go to a new segment, not one being replayed
        while self._backlog and self.connected:
            segment = self._backlog[0]
            if self._replaying is None or self._replaying[0] is not segment:
                records = segment.records
                if records is None:
                    records = self.journal.read(segment)
                packs = self._pack(records, self._limits(), self._layouts.get(segment))
                self._replaying = (segment, packs)
            packs = self._replaying[1]
            while packs:
                chunk = self._chunks(packs[: self._batch_size])[0]
                failed = await self._publish(chunk, "replayed")
                packs[: len(chunk)] = failed  # acknowledged ones are done for good
                if failed:
                    return  # NATS is in trouble again; the rest is retried later
            self._replaying = None
            self._backlog.pop(0)
            self._layouts.pop(segment, None)
            if segment.path is None:
                self._in_memory -= segment.count
            else:
                self.journal.remove(segment)

    # -- counting --------------------------------------------------------------------------

    def _count_stored(self, packs: Sequence[Pack], failed: list[Pack], result: str) -> None:
        counts: collections.Counter[str] = collections.Counter()
        for item in packs:
            counts[item.table] += len(item.records)
        for item in failed:
            counts[item.table] -= len(item.records)
        stored = sum(counts.values())
        if result == "published":
            self.counts.published += stored
        else:
            self.counts.replayed += stored
        if self._metrics is None:
            return
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


def _contents(packs: Sequence[Pack]) -> tuple[list[Record], Layout]:
    """The records of `packs`, and the layout that re-forms them."""
    return [record for item in packs for record in item.records], [
        len(item.records) for item in packs
    ]
