"""The experiment writer: records leave the request path at once and reach the database in
batches, from one background thread.

    hot path --offer()--> bounded queue --thread--> pending (memory) --batch--> database
                              | full: dropped,           | over the buffer limit,
                              | counted and logged       | or at shutdown with the
                              v                          v database down: spill file
                                                     replayed (oldest first) when it is back

`offer` never blocks and never touches the database: it appends to a deque and returns. The
thread drains the queue every `flush_interval` (sooner when a batch is ready), turns raw items
into records (`prepare`, which also hashes targeting keys, off the hot path), and writes them.
While the database refuses, records stay in memory up to `buffer_limit`, the rest goes to the
spill file, and writes are retried every `retry_interval`; when the database answers again the
spill file is replayed first. A batch refused for its data (an integrity or data error while
the database answers a ping) is retried one record at a time so one bad record cannot block
the rest; every other error counts as an outage and keeps the records. Every record ends up
written, spilled (and later written) or counted as dropped, by table, in Prometheus; nothing
is lost silently. `stop()` drains and writes what it can, spills the rest.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy.exc import DataError, IntegrityError

from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.records import Record
from control_plane.experiments.spill import SpillFiles

__all__ = ["BatchWriter", "RecordSink", "WriterCounts"]

log = logging.getLogger(__name__)

#: Seconds between two "queue full" warnings (the drops themselves are all counted).
_WARN_EVERY = 10.0


class RecordSink(Protocol):
    """Where records are stored; `write` stores all of them or raises."""

    def write(self, records: Sequence[Record]) -> None: ...

    def ping(self) -> None:
        """Raise when the store cannot be reached."""
        ...


class WriterCounts:
    """Plain counters of one writer (the Prometheus counters carry the same numbers)."""

    def __init__(self) -> None:
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.dropped = 0
        self.write_failures = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _FlushRequest:
    __slots__ = ("done", "ok", "target")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.target = -1


class BatchWriter:
    """Batches records from any thread into a RecordSink, from one writer thread."""

    def __init__(self, sink: RecordSink, spill: SpillFiles, *,
                 prepare: Callable[[Any], Record], queue_size: int = 100_000,
                 batch_size: int = 500, flush_interval: float = 0.2,
                 buffer_limit: int = 50_000, retry_interval: float = 1.0,
                 metrics: ExperimentMetrics | None = None, name: str = "experiment-writer"
                 ) -> None:
        self.sink = sink
        self.spill = spill
        self.counts = WriterCounts()
        self._prepare = prepare
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._buffer_limit = buffer_limit
        self._retry_interval = retry_interval
        self._metrics = metrics
        self._name = name
        self._queue: collections.deque[Any] = collections.deque()
        self._pending: collections.deque[Record] = collections.deque()
        self._consumed = 0  # records that left `pending` (written or spilled)
        self._waiters: list[_FlushRequest] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._up = True
        self._retry_at = 0.0
        self._last_drop_warning = 0.0
        self._unreadable_counted = 0
        if metrics is not None:
            metrics.buffered.set_function(lambda: len(self._queue) + len(self._pending))
            metrics.spill_pending.set_function(lambda: self.spill.pending)
            metrics.database_up.set_function(lambda: 1.0 if self._up else 0.0)

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
        if len(queue) >= self._batch_size:
            self._wake.set()
        return True

    @property
    def database_up(self) -> bool:
        return self._up

    @property
    def buffered(self) -> int:
        return len(self._queue) + len(self._pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything offered before this call is in the database (True), or until
        `timeout` passes (False: the database is down and the records are kept or spilled)."""
        request = _FlushRequest()
        self._queue.append(request)
        self._wake.set()
        return request.done.wait(timeout) and request.ok

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write out (or spill) everything queued, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error("%s did not finish within %.0fs; %d records still in memory",
                      self._name, timeout, self.buffered)
        self._thread = None

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.spill.adopt_orphans()
        except OSError as exc:
            log.error("cannot read the spill directory %s: %s", self.spill.directory, exc)
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
            try:
                self._drain()
                self._write_out(force=stopping)
                if stopping:
                    self._spill_pending(len(self._pending))
                else:
                    self._spill_pending(len(self._pending) - self._buffer_limit)
                self._answer_flushes()
            except Exception:  # the thread must outlive any surprise, or records pile up
                log.exception("%s: unexpected error; continuing", self._name)
            if stopping:
                break
        try:
            self.spill.close()
        except OSError as exc:
            log.error("cannot close the spill file: %s", exc)
        self._answer_flushes()
        for waiter in self._waiters:  # stopped with records not in the database: say so
            waiter.done.set()
        self._waiters.clear()

    def _drain(self) -> None:
        queue, pending, prepare = self._queue, self._pending, self._prepare
        for _ in range(len(queue)):
            item = queue.popleft()
            if isinstance(item, _FlushRequest):
                item.target = self._consumed + len(pending)
                self._waiters.append(item)
                continue
            try:
                pending.append(prepare(item))
            except Exception:
                log.exception("%s: cannot make a record of %r", self._name, item[0])
                self._dropped(item[0], 1, "the record could not be prepared")

    def _write_out(self, *, force: bool) -> None:
        if not self._up and not force and time.monotonic() < self._retry_at:
            return
        try:
            if self.spill.has_data():
                try:
                    self.spill.replay(self._write_replayed, self._batch_size)
                finally:
                    self._count_unreadable()
            pending = self._pending
            while pending:
                batch = list(itertools.islice(pending, 0, self._batch_size))
                self._write_batch(batch)
                for _ in batch:
                    pending.popleft()
                self._consumed += len(batch)
                self._count(batch, "written")
        except Exception as exc:
            self.counts.write_failures += 1
            self._retry_at = time.monotonic() + self._retry_interval
            if self._up:
                log.error("%s: the database refused a write (%s); keeping records in memory "
                          "(up to %d), then in %s, and retrying every %.1fs", self._name,
                          _first_line(exc), self._buffer_limit, self.spill.directory,
                          self._retry_interval)
            self._up = False
            return
        if not self._up:
            log.warning("%s: the database is back; buffered records written", self._name)
        self._up = True

    def _count_unreadable(self) -> None:
        torn = self.spill.unreadable - self._unreadable_counted
        if torn > 0:
            self._unreadable_counted += torn
            self._dropped("unreadable", torn, "spilled lines could not be read back")

    def _write_replayed(self, batch: list[Record]) -> None:
        self._write_batch(batch)
        self._count(batch, "written")
        self._count(batch, "replayed")

    def _write_batch(self, batch: list[Record]) -> None:
        """Write a batch. If the database refuses the data itself (a constraint or a value it
        cannot store) while it still answers, write the records one by one and drop (counting)
        only those it refuses; any other error is an outage and keeps the whole batch."""
        try:
            self.sink.write(batch)
            return
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            try:
                self.sink.ping()
            except Exception:
                raise exc from None
            failure = exc
        log.error("%s: the database refused a batch of %d (%s); retrying record by record",
                  self._name, len(batch), _first_line(failure))
        for record in batch:
            try:
                self.sink.write([record])
            except Exception as exc:
                if not _is_data_error(exc):
                    raise  # the database went away meanwhile: keep the batch (ids dedupe)
                log.error("%s: dropping a %s record the database refuses: %s", self._name,
                          record.table, _first_line(exc))
                self._dropped(record.table, 1, "the database refused the record")

    def _spill_pending(self, count: int) -> None:
        """Move the `count` oldest pending records to the spill file (over the buffer limit)."""
        if count <= 0:
            return
        batch = [self._pending.popleft() for _ in range(count)]
        self._consumed += len(batch)
        try:
            self.spill.append(batch)
        except OSError as exc:
            log.error("%s: cannot spill %d records to %s: %s", self._name, len(batch),
                      self.spill.directory, exc)
            for record in batch:
                self._dropped(record.table, 1, "the spill file could not be written")
            return
        self._count(batch, "spilled")

    def _answer_flushes(self) -> None:
        if not self._waiters:
            return
        settled = not self.spill.pending
        remaining = []
        for waiter in self._waiters:
            if settled and waiter.target <= self._consumed:
                waiter.ok = True
                waiter.done.set()
            else:
                remaining.append(waiter)
        self._waiters = remaining

    # -- counting --------------------------------------------------------------------------

    def _count(self, batch: Sequence[Record], result: str) -> None:
        setattr(self.counts, result, getattr(self.counts, result) + len(batch))
        if self._metrics is None:
            return
        per_table = collections.Counter(record.table for record in batch)
        for table, count in per_table.items():
            self._metrics.records.labels(table, result).inc(count)

    def _dropped(self, table: str, count: int, why: str) -> None:
        self.counts.dropped += count
        if self._metrics is not None:
            self._metrics.records.labels(table, "dropped").inc(count)
        now = time.monotonic()
        if now - self._last_drop_warning > _WARN_EVERY:
            self._last_drop_warning = now
            log.warning("%s: dropping %s records: %s (dropped so far: %d)", self._name, table,
                        why, self.counts.dropped)


def _is_data_error(exc: BaseException) -> bool:
    """A refusal of the data (constraint, value out of range), not of the connection."""
    return isinstance(exc, IntegrityError | DataError)


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
