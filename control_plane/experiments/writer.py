"""The experiment writer: records leave the request path at once, are on local disk within
`journal_interval`, and reach the database in batches; a crash loses none of them once they
are on disk.

    hot path --offer()--> bounded queue --journal thread, every journal_interval-->
        journal segment (write + fsync) --handoff--> database thread --commit--> segment deleted

`offer` never blocks and never touches the disk or the database: it appends to a deque. The
journal thread drains the queue, turns raw items into records (`prepare`, which also hashes
targeting keys, off the hot path), appends them to the journal (control_plane.experiments
.journal) and hands the segment to the database thread, keeping the records in memory too
while the database keeps up (at most `buffer_limit` of them). The database thread writes each
segment (from memory, or read back from disk) and deletes it only once committed. So:
- a `kill -9` loses at most what was offered in the last `journal_interval` (plus the time to
  prepare and fsync it); the next process replays what the dead one left in the journal;
- while the database is down nothing is kept in memory but the queue: records wait on disk,
  and writes are retried every `retry_interval`;
- a write that takes longer than `write_timeout` (a database that stopped answering without
  closing the connection) is interrupted from the journal thread, and `database_up` says 0
  from that moment on; with no traffic the database thread pings every few seconds, so the
  gauge follows the database rather than the last write.

A batch refused for its data (an integrity or data error while the database answers a ping)
is retried one record at a time, so one bad record cannot block the rest; every other error
counts as an outage and keeps the records. Every record ends up written or counted as
dropped, by table, in Prometheus; nothing is lost silently. `stop()` journals the queue, writes
what the database takes, and leaves the rest in the journal for the next start.
"""

from __future__ import annotations

import collections
import functools
import logging
import operator
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy.exc import DataError, IntegrityError

from control_plane.experiments.journal import Journal, Segment
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.records import Record

__all__ = ["BatchWriter", "RecordSink", "WriterCounts"]

log = logging.getLogger(__name__)

#: Seconds between two "dropping" warnings (the drops themselves are all counted).
_WARN_EVERY = 10.0
#: With nothing to write, the database is pinged this often (so database_up stays true).
_PING_EVERY = 2.0
#: How often the journal directory is searched for segments of processes that are gone (a
#: writer process finishing after its server was killed releases its segments a little later).
_ADOPT_EVERY = 5.0


class RecordSink(Protocol):
    """Where records are stored; `write` stores all of them or raises, and returns the rows
    it added per table (keys it already held are skipped)."""

    def write(self, records: Sequence[Record]) -> Mapping[str, int]: ...

    def ping(self) -> None:
        """Raise when the store cannot be reached."""
        ...

    def interrupt(self) -> None:
        """Make a `write` or `ping` blocked in another thread fail now."""
        ...

    def close(self) -> None:
        """Release connections (the writer has stopped)."""
        ...


class WriterCounts:
    """Plain counters of one writer (the Prometheus counters carry the same numbers)."""

    def __init__(self) -> None:
        self.journaled = 0
        self.written = 0
        self.replayed = 0
        self.dropped = 0
        self.write_failures = 0
        self.interrupted = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _FlushRequest:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class _Ping:
    """The database thread's cue to check the database while there is nothing to write."""


_PING = _Ping()
_table_of = operator.attrgetter("table")


class BatchWriter:
    """Journals records from any thread, then batches them into a RecordSink."""

    def __init__(
        self,
        sink: RecordSink,
        journal: Journal,
        *,
        prepare: Callable[[Any], Record],
        queue_size: int = 100_000,
        batch_size: int = 500,
        journal_interval: float = 0.2,
        flush_interval: float = 0.2,
        buffer_limit: int = 50_000,
        retry_interval: float = 1.0,
        write_timeout: float = 10.0,
        metrics: ExperimentMetrics | None = None,
        ready: Callable[[], bool] | None = None,
        name: str = "experiment-writer",
    ) -> None:
        self.sink = sink
        self.journal = journal
        self.counts = WriterCounts()
        #: The same counts by (table, result), as the Prometheus counter has them.
        self.per_table: collections.Counter[tuple[str, str]] = collections.Counter()
        self._prepare = prepare
        self._ready = ready
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._journal_interval = journal_interval
        self._flush_interval = flush_interval
        self._buffer_limit = buffer_limit
        self._retry_interval = retry_interval
        self._write_timeout = write_timeout
        self._metrics = metrics
        self._name = name
        self._queue: collections.deque[Any] = collections.deque()
        # Shared by the two threads, under `_cond`.
        self._cond = threading.Condition()
        self._handoff: collections.deque[Segment | _FlushRequest] = collections.deque()
        self._current: Segment | None = None
        self._in_memory = 0  # records kept in memory by segments not yet committed
        self._unwritten = 0  # records in segments not yet committed
        self._flushes_waiting = 0
        self._closing = False
        self._closing_failed = False
        self._up = True
        self._retry_at = 0.0
        self._last_write = 0.0
        self._last_contact = -_PING_EVERY  # ping at once: database_up is known from the start
        # The database thread's write in progress, for the watchdog in the journal thread.
        self._busy_since: float | None = None
        self._interrupted = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._journal_thread: threading.Thread | None = None
        self._database_thread: threading.Thread | None = None
        self._last_drop_warning = 0.0
        self._last_journal_error = 0.0
        self._unreadable_counted = 0
        if metrics is not None:
            metrics.buffered.set_function(lambda: len(self._queue) + self._in_memory)
            metrics.spill_pending.set_function(lambda: self._unwritten)
            metrics.database_up.set_function(lambda: 1.0 if self.database_up else 0.0)

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
    def database_up(self) -> bool:
        """False once a write failed, or while one has taken longer than the write timeout."""
        busy = self._busy_since
        overdue = busy is not None and time.monotonic() - busy > self._write_timeout
        return self._up and not overdue

    @property
    def buffered(self) -> int:
        """Records held in memory (the queue, and journaled records kept for the database)."""
        return len(self._queue) + self._in_memory

    @property
    def unwritten(self) -> int:
        """Records in the journal that are not yet committed to the database."""
        return self._unwritten

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything offered before this call is in the database (True), or until
        `timeout` passes (False: the database is down; the records are in the journal)."""
        request = _FlushRequest()
        self._queue.append(request)
        self._wake.set()
        return request.done.wait(timeout) and request.ok

    def start(self) -> None:
        if self._journal_thread is not None:
            return
        self._stop.clear()
        self._closing = self._closing_failed = False
        self._journal_thread = threading.Thread(
            target=self._journal_run, name=f"{self._name}-journal", daemon=True
        )
        self._database_thread = threading.Thread(
            target=self._database_run, name=f"{self._name}-database", daemon=True
        )
        self._journal_thread.start()
        self._database_thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Journal everything queued, write what the database takes, then end the threads;
        what the database did not take stays in the journal for the next start."""
        journal_thread, database_thread = self._journal_thread, self._database_thread
        if journal_thread is None or database_thread is None:
            return
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        journal_thread.join(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        database_thread.join(max(0.1, deadline - time.monotonic()))
        if database_thread.is_alive():
            log.error(
                "%s did not finish within %.0fs; %d records are left in the journal",
                self._name,
                timeout,
                self._unwritten,
            )
        else:
            self.journal.close()
            self.sink.close()
        with self._cond:
            for item in self._handoff:  # stopped with records not in the database: say so
                if isinstance(item, _FlushRequest):
                    item.done.set()
        self._journal_thread = self._database_thread = None

    # -- the journal thread ----------------------------------------------------------------

    def _journal_run(self) -> None:
        self._adopt()
        next_adoption = time.monotonic() + _ADOPT_EVERY
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self._journal_interval)
                self._wake.clear()
            try:
                self._watch_write()
                if self._ready is None or self._ready():
                    self._journal_queue()
                elif stopping:
                    self._drop_unprepared()
                if time.monotonic() >= next_adoption:
                    next_adoption = time.monotonic() + _ADOPT_EVERY
                    self._adopt()
            except Exception:  # the thread must outlive any surprise, or records pile up
                log.exception("%s: unexpected error in the journal thread; continuing", self._name)
            if stopping:
                break

    def _adopt(self) -> None:
        try:
            segments = self.journal.adopt_orphans()
        except OSError as exc:
            log.error(
                "%s: cannot use the journal directory %s: %s",
                self._name,
                self.journal.directory,
                exc,
            )
            return
        if segments:
            with self._cond:
                self._handoff.extend(segments)
                self._unwritten += sum(segment.count for segment in segments)
                self._cond.notify_all()

    def _watch_write(self) -> None:
        """Interrupt a database write that has taken longer than the write timeout."""
        busy = self._busy_since
        if busy is None or self._interrupted or time.monotonic() - busy <= self._write_timeout:
            return
        self._interrupted = True
        self.counts.interrupted += 1
        log.error(
            "%s: a database write has not finished in %.1fs; interrupting it (the "
            "records stay in the journal)",
            self._name,
            self._write_timeout,
        )
        self.sink.interrupt()

    def _journal_queue(self) -> None:
        queue, prepare = self._queue, self._prepare
        records: list[Record] = []
        flushes: list[_FlushRequest] = []
        for _ in range(len(queue)):
            item = queue.popleft()
            if isinstance(item, _FlushRequest):
                flushes.append(item)
                continue
            try:
                records.append(prepare(item))
            except Exception:
                log.exception("%s: cannot make a record of %r", self._name, item[0])
                self._dropped(item[0], 1, "the record could not be prepared")
        if not records and not flushes:
            return
        journaled = False
        with self._cond:
            if records:
                journaled = self._append(records)
            self._handoff.extend(flushes)
            self._flushes_waiting += len(flushes)
            self._cond.notify_all()
        if journaled:
            self._count(records, "journaled")

    def _append(self, records: list[Record]) -> bool:
        """Journal `records` and hand them to the database thread (under `_cond`)."""
        last = self._handoff[-1] if self._handoff else None
        into = (
            last
            if isinstance(last, Segment) and last.path is not None and not last.adopted
            else None
        )
        count = len(records)
        fits = self._in_memory + count <= self._buffer_limit
        try:
            segment = self.journal.append(records, into)
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_journal_error > _WARN_EVERY:
                self._last_journal_error = now
                log.error(
                    "%s: cannot write the journal in %s (%s); records are kept in "
                    "memory only, up to %d",
                    self._name,
                    self.journal.directory,
                    exc,
                    self._buffer_limit,
                )
            if not fits:
                for record in records:
                    self._dropped(record.table, 1, "neither the journal nor memory has room")
                return False
            self._handoff.append(Segment(None, count, records=records))
            self._in_memory += count
            self._unwritten += count
            return False
        keep = fits and self._up
        if segment is into:
            if into.records is not None and keep:
                into.records.extend(records)
                self._in_memory += count
            elif into.records is not None:  # no room for all of it: read it back from disk
                self._in_memory -= len(into.records)
                into.records = None
        else:
            if keep:
                segment.records = records
                self._in_memory += count
            self._handoff.append(segment)
        self._unwritten += count
        return True

    def _drop_unprepared(self) -> None:
        """At stop, before records could ever be prepared (no targeting key HMAC key)."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _FlushRequest):
                item.done.set()
            else:
                self._dropped(item[0], 1, "the targeting key HMAC key never became available")

    # -- the database thread ---------------------------------------------------------------

    def _database_run(self) -> None:
        while True:
            try:
                item = self._next_item()
                if item is None:
                    break
                if isinstance(item, _FlushRequest):
                    item.ok = True
                    item.done.set()
                elif isinstance(item, _Ping):
                    self._ping()
                else:
                    self._store(item)
            except Exception:  # the thread must outlive any surprise
                log.exception("%s: unexpected error in the database thread; continuing", self._name)
                time.sleep(self._retry_interval)

    def _next_item(self) -> Segment | _FlushRequest | _Ping | None:
        """Block until there is something to do: a segment to write, a flush to answer, a
        ping; None when stopping and nothing is left that the database takes."""
        with self._cond:
            while True:
                now = time.monotonic()
                work = self._current is not None or bool(self._handoff)
                closing = self._closing
                if closing and (not work or self._closing_failed):
                    return None
                if not work:
                    every = _PING_EVERY if self._up else self._retry_interval
                    wait = self._last_contact + every - now
                    if wait <= 0:
                        return _PING
                elif not self._up and not closing and now < self._retry_at:
                    wait = self._retry_at - now
                elif (
                    not closing
                    and not self._flushes_waiting
                    and now < self._last_write + self._flush_interval
                ):
                    wait = self._last_write + self._flush_interval - now
                else:
                    if self._current is not None:
                        return self._current
                    item = self._handoff.popleft()
                    if isinstance(item, _FlushRequest):
                        self._flushes_waiting -= 1
                        return item
                    self._current = item
                    return item
                self._cond.wait(wait)

    def _store(self, segment: Segment) -> None:
        records = segment.records
        from_disk = records is None
        if records is None:
            records = self.journal.read(segment)
            self._count_unreadable()
        try:
            for start in range(0, len(records), self._batch_size):
                self._write_batch(records[start : start + self._batch_size])
        except Exception as exc:
            self._failed(exc)
            return
        self.journal.remove(segment)
        with self._cond:
            self._current = None
            if not from_disk:
                self._in_memory -= len(records)
            self._unwritten -= segment.count
            self._last_write = self._last_contact = time.monotonic()
            self._cond.notify_all()
        self._count(records, "written")
        if from_disk:
            self._count(records, "replayed")
        self._back_up()

    def _ping(self) -> None:
        try:
            self._guarded(self.sink.ping)
        except Exception as exc:
            self._failed(exc)
            return
        with self._cond:
            self._last_contact = time.monotonic()
        self._back_up()

    def _back_up(self) -> None:
        if not self._up:
            log.warning("%s: the database is back; writing the journal", self._name)
            self._up = True

    def _failed(self, exc: BaseException) -> None:
        """A write or ping failed: the database is down; memory keeps nothing the journal
        has (the records are read back from disk once it answers)."""
        self.counts.write_failures += 1
        with self._cond:
            if self._closing:
                self._closing_failed = True
            self._retry_at = time.monotonic() + self._retry_interval
            self._last_contact = time.monotonic()
            for item in (self._current, *self._handoff):
                if isinstance(item, Segment) and item.path is not None and item.records:
                    self._in_memory -= len(item.records)
                    item.records = None
            if self._up:
                log.error(
                    "%s: the database refused a write (%s); records wait in the "
                    "journal %s; retrying every %.1fs",
                    self._name,
                    _first_line(exc),
                    self.journal.directory,
                    self._retry_interval,
                )
            self._up = False

    def _guarded(self, call: Callable[[], object]) -> None:
        """Run a database call under the watchdog of the journal thread (`_watch_write`)."""
        self._interrupted = False
        self._busy_since = time.monotonic()
        try:
            call()
        finally:
            self._busy_since = None

    def _write_batch(self, batch: list[Record]) -> None:
        """Write a batch. If the database refuses the data itself (a constraint or a value it
        cannot store) while it still answers, write the records one by one and drop (counting)
        only those it refuses; any other error is an outage and keeps the whole batch."""
        try:
            self._guarded(functools.partial(self.sink.write, batch))
            return
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            try:
                self._guarded(self.sink.ping)
            except Exception:
                raise exc from None
            failure = exc
        log.error(
            "%s: the database refused a batch of %d (%s); retrying record by record",
            self._name,
            len(batch),
            _first_line(failure),
        )
        for record in batch:
            try:
                self._guarded(functools.partial(self.sink.write, [record]))
            except Exception as exc:
                if not _is_data_error(exc):
                    raise  # the database went away meanwhile: keep the batch (ids dedupe)
                log.error(
                    "%s: dropping a %s record the database refuses: %s",
                    self._name,
                    record.table,
                    _first_line(exc),
                )
                self._dropped(record.table, 1, "the database refused the record")

    # -- counting --------------------------------------------------------------------------

    def _count_unreadable(self) -> None:
        torn = self.journal.unreadable - self._unreadable_counted
        if torn > 0:
            self._unreadable_counted += torn
            self._dropped("unreadable", torn, "journal lines could not be read back")

    def _count(self, batch: Sequence[Record], result: str) -> None:
        setattr(self.counts, result, getattr(self.counts, result) + len(batch))
        per_table = collections.Counter(map(_table_of, batch))
        for table, count in per_table.items():
            self.per_table[table, result] += count
            if self._metrics is not None:
                self._metrics.records.labels(table, result).inc(count)

    def _dropped(self, table: str, count: int, why: str) -> None:
        self.counts.dropped += count
        self.per_table[table, "dropped"] += count
        if self._metrics is not None:
            self._metrics.records.labels(table, "dropped").inc(count)
        now = time.monotonic()
        if now - self._last_drop_warning > _WARN_EVERY:
            self._last_drop_warning = now
            log.warning(
                "%s: dropping %s records: %s (dropped so far: %d)",
                self._name,
                table,
                why,
                self.counts.dropped,
            )


def _is_data_error(exc: BaseException) -> bool:
    """A refusal of the data (constraint, value out of range), not of the connection."""
    return isinstance(exc, IntegrityError | DataError)


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
