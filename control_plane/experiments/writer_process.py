"""The experiment writer in its own process, so recording never contends with serving for the GIL.

    request path --offer()--> deque --feeder thread, every feed_interval--> pipe (marshalled
        batches) --> writer process: BatchWriter (journal, then database; control_plane
        .experiments.writer) --status every status_interval--> parent (metrics, counts)

In a thread of the serving process the writer cost ~30-40 us of server CPU per decision under
load and multiplied p99 by ~10 (DESIGN.md); here the request path only appends a tuple to a
deque (`offer`, 0.4-0.6 us), and the serving process's share is the feeder sending what queued
as one marshalled batch every `feed_interval` (0.3-0.6 us per record; bench/exposures.py).
The writer process runs the same BatchWriter with the same durability rules: records are in the
journal before the database is tried, and it replays what earlier processes left there.

- The serving process is killed (`kill -9`): the writer process reads the pipe to its end (EOF),
  journals and writes what it got, and exits. Lost: what was still in the deque, at most one
  `feed_interval` of decisions.
- The writer process dies: the feeder starts another after `restart_delay`; what the dead one
  had journaled is replayed by the new one; what was in the pipe is lost and logged.
- Stop: the feeder sends everything queued, closes the pipe, and waits for the process to exit
  (it writes what the database takes and leaves the rest in the journal).

The writer process is a fresh interpreter (`python -c`, never a fork of the threaded server,
and unlike multiprocessing's spawn it never re-imports the server's `__main__`), connected by
a socketpair; its configuration is the first message. `database_up`, `buffered`, `unwritten`,
the counts and the Prometheus series stay on the serving process, fed by its status messages.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import logging
import marshal
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from control_plane.db.engine import DatabaseTimeouts
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.writer import WriterCounts

__all__ = ["ChildConfig", "ChildSink", "ProcessWriter", "WriterConfig"]

log = logging.getLogger(__name__)

_MAX_BATCH = 5000
#: The child process's scheduling policy by setting (CP_RECORD_PROCESS_PRIORITY).
_POLICIES = {"batch": "SCHED_BATCH", "idle": "SCHED_IDLE"}
#: The writer process's young-generation collection threshold (CPython's is 700): see
#: _settle_heap.
_YOUNG_COLLECTION = 10_000
#: The writer process's program: this module's child_main on the inherited socket.
_PROGRAM = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
    "from control_plane.experiments.writer_process import child_main; "
    "child_main(int(sys.argv[1]))"
)


class ChildSink(Protocol):
    """What a child process runs (built by its config's `open`): records in, status out."""

    def start(self) -> None: ...

    def offer(self, item: Any) -> bool: ...

    def flush(self, timeout: float) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class ChildConfig(Protocol):
    """A picklable configuration whose `open`, run in the child, builds what it runs."""

    def open(self, recorder: Any) -> ChildSink: ...


@dataclass(frozen=True)
class WriterConfig:
    """Everything the writer process needs to build its BatchWriter (picklable)."""

    database_url: str
    timeouts: DatabaseTimeouts
    journal_dir: Path
    options: dict[str, Any] = field(default_factory=dict)

    def open(self, recorder: Any) -> ChildSink:
        """In the child: the BatchWriter on this database and journal."""
        return _WriterChild(self, recorder)


class _WriterChild:
    def __init__(self, config: WriterConfig, recorder: Any) -> None:
        from control_plane.db.engine import Database
        from control_plane.experiments.journal import Journal
        from control_plane.experiments.sink import DatabaseSink
        from control_plane.experiments.writer import BatchWriter

        self._database = Database.from_url(config.database_url, timeouts=config.timeouts)
        self._writer = BatchWriter(
            DatabaseSink(self._database),
            Journal(config.journal_dir),
            prepare=recorder.prepare,
            ready=recorder.ready,
            **config.options,
        )
        #: The BatchWriter's own (one call less per record).
        self.offer: Callable[[Any], bool] = self._writer.offer

    def start(self) -> None:
        self._writer.start()

    def flush(self, timeout: float) -> bool:
        return self._writer.flush(timeout=timeout)

    def status(self) -> dict[str, Any]:
        writer = self._writer
        return {
            "database_up": writer.database_up,
            "buffered": writer.buffered,
            "unwritten": writer.unwritten,
            "counts": writer.counts.as_dict(),
            "tables": dict(writer.per_table),
        }

    def stop(self) -> None:
        self._writer.stop()
        self._database.dispose()


class _Flush:
    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class ProcessWriter:
    """The parent side: a queue, a feeder thread, a status reader, and the writer process.

    The plumbing is the child's config's business only in `open` (what the child runs) and in
    the status it reports: control_plane.events.publisher_process runs the JetStream publisher
    the same way, overriding the status and metrics parts."""

    #: What the child process is, for log lines.
    role = "the experiment writer process"

    def __init__(
        self,
        config: ChildConfig,
        *,
        key: Callable[[], bytes | None],
        queue_size: int = 100_000,
        feed_interval: float = 0.05,
        status_interval: float = 0.25,
        restart_delay: float = 1.0,
        metrics: ExperimentMetrics | None = None,
        priority: str = "batch",
    ) -> None:
        if priority not in _POLICIES:
            raise ValueError(f"priority must be one of {', '.join(_POLICIES)}, not {priority!r}")
        self._config = config
        self._priority = priority
        self._key = key
        self._queue_size = queue_size
        self._feed_interval = feed_interval
        self._status_interval = status_interval
        self._restart_delay = restart_delay
        self._metrics = metrics
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._feeder: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        #: Set by the status reader when the writer process's end of the pipe closed.
        self._gone = threading.Event()
        self._send_lock = threading.Lock()
        self._key_sent = False
        self._flushes: dict[int, _Flush] = {}
        self._flush_ids = 0
        #: Flush requests in the queue: while none is, the feeder takes items without looking.
        self._flush_marks = 0
        self._flush_lock = threading.Lock()
        # The child's last status.
        self._status: dict[str, Any] = {"database_up": True, "buffered": 0, "unwritten": 0}
        self._child_counts: dict[str, int] = {}
        self._child_tables: dict[tuple[str, str], int] = {}
        #: Counts of the writer processes so far plus the parent's own drops.
        self.counts = WriterCounts()
        self._base_counts: dict[str, int] = {}
        self._parent_dropped = 0
        self._last_drop_warning = 0.0
        if metrics is not None:
            metrics.buffered.set_function(lambda: float(self.buffered))
            metrics.spill_pending.set_function(lambda: float(self.unwritten))
            metrics.database_up.set_function(lambda: 1.0 if self.database_up else 0.0)

    # -- any thread ------------------------------------------------------------------------

    def offer(self, item: Any) -> bool:
        """Queue a raw item (its first element names the table); never blocks."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._drop(item[0])
            return False
        queue.append(item)
        return True

    @property
    def database_up(self) -> bool:
        return bool(self._status["database_up"])

    @property
    def buffered(self) -> int:
        return len(self._queue) + int(self._status["buffered"])

    @property
    def unwritten(self) -> int:
        return int(self._status["unwritten"])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything offered before this call is in the database (True), or
        `timeout` passes (False: the records are in the journal, or on their way there)."""
        request = _Flush()
        with self._flush_lock:  # counted before it is queued (see _drain)
            self._flush_marks += 1
        self._queue.append(request)
        self._wake.set()
        return request.done.wait(timeout) and request.ok

    def start(self) -> None:
        if self._feeder is not None:
            return
        self._stopping.clear()
        self._spawn()
        self._feeder = threading.Thread(
            target=self._feed_run, name="experiment-feeder", daemon=True
        )
        self._feeder.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Send everything queued, let the writer process write it out and exit."""
        feeder = self._feeder
        if feeder is None:
            return
        self._stopping.set()
        self._wake.set()
        feeder.join(timeout)
        process = self._process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error(
                    "%s did not finish within %.0fs; what it did not hand on is in the journal",
                    self.role,
                    timeout,
                )
                process.kill()
                process.wait(5)
        for request in list(self._flushes.values()):
            request.done.set()
        self._flushes.clear()
        self._feeder = None
        self._process = None

    # -- the feeder thread -----------------------------------------------------------------

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(  # noqa: S603 - our interpreter, our program
                [sys.executable, "-c", _PROGRAM, str(theirs.fileno()), json.dumps(sys.path)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        self._conn, self._process = conn, process
        self._gone.clear()
        self._key_sent = False
        self._send(("config", (self._config, self._status_interval, self._priority)))
        threading.Thread(
            target=self._read_run, args=(conn,), name="experiment-status", daemon=True
        ).start()

    def _feed_run(self) -> None:
        restart_at = 0.0
        while True:
            stopping = self._stopping.is_set()
            if not stopping:
                self._wake.wait(self._feed_interval)
                self._wake.clear()
            try:
                if self._conn is None:  # the writer process died: start another
                    if stopping or time.monotonic() < restart_at:
                        if stopping:
                            break
                        continue
                    self._spawn()
                if self._gone.is_set():
                    raise EOFError("the writer process closed the pipe")
                if not self._key_sent:
                    hasher = self._key()
                    if hasher is not None:
                        self._send(("key", hasher))
                        self._key_sent = True
                self._send_queue()
            except (OSError, EOFError, ValueError):
                self._lost()
                restart_at = time.monotonic() + self._restart_delay
                continue
            except Exception:  # the thread must outlive any surprise, or records pile up
                log.exception("experiment feeder: unexpected error; continuing")
            if stopping:
                self._close_pipe()
                break

    def _send_queue(self) -> None:
        queue = self._queue
        batch: list[Any] = []
        try:
            self._drain(queue, batch)
        except (OSError, EOFError, ValueError):
            queue.extendleft(reversed(batch))  # not sent: kept for the next writer process
            raise

    def _drain(self, queue: collections.deque[Any], batch: list[Any]) -> None:
        count = len(queue)
        if not self._flush_marks:  # read after len(): no flush request among those items
            popleft = queue.popleft
            for start in range(0, count, _MAX_BATCH):
                batch.extend([popleft() for _ in range(min(_MAX_BATCH, count - start))])
                self._send(("items", batch))
                batch.clear()
            return
        for _ in range(count):
            item = queue.popleft()
            if isinstance(item, _Flush):
                with self._flush_lock:
                    self._flush_marks -= 1
                if batch:
                    self._send(("items", batch))
                    batch.clear()
                self._flush_ids += 1
                self._flushes[self._flush_ids] = item
                self._send(("flush", self._flush_ids))
                continue
            batch.append(item)
            if len(batch) >= _MAX_BATCH:
                self._send(("items", batch))
                batch.clear()
        if batch:
            self._send(("items", batch))
            batch.clear()

    def _send(self, message: tuple[str, Any]) -> None:
        conn = self._conn
        if conn is None:
            raise EOFError("no writer process")
        data = _dumps(message)
        with self._send_lock:
            conn.send_bytes(data)

    def _close_pipe(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send_bytes(_dumps(("stop", None)))
            # The reader thread ends at the child's EOF; this end stays open until then.

    def _lost(self) -> None:
        """The writer process is gone (the pipe broke): account for it, restart later."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        process = self._process
        code = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(1)
        log.error(
            "%s exited (%s); records it had not journaled are lost; starting another",
            self.role,
            code,
        )

    # -- the status reader thread -----------------------------------------------------------

    def _read_run(self, conn: Connection) -> None:
        while True:
            try:
                kind, payload = pickle.loads(conn.recv_bytes())  # noqa: S301 - our own pipe
            except (EOFError, OSError):
                break
            if kind == "status":
                self._apply_status(payload)
            elif kind == "flushed":
                number, ok = payload
                request = self._flushes.pop(number, None)
                if request is not None:
                    request.ok = ok
                    request.done.set()
        if self._conn is conn and not self._stopping.is_set():
            self._gone.set()
            self._wake.set()  # the feeder restarts the writer process
        # A dead child's figures become the base the next one counts from.
        for name, value in self._child_counts.items():
            self._base_counts[name] = self._base_counts.get(name, 0) + value
        self._child_counts, self._child_tables = {}, {}
        self._status = {**self._status, "buffered": 0}
        self._refresh_counts()
        with contextlib.suppress(OSError):
            conn.close()

    def _apply_status(self, status: dict[str, Any]) -> None:
        tables: dict[tuple[str, str], int] = status.pop("tables")
        counts: dict[str, int] = status.pop("counts")
        counter = self._records_counter()
        if counter is not None:
            for key, value in tables.items():
                delta = value - self._child_tables.get(key, 0)
                if delta > 0:
                    counter.labels(*key).inc(delta)
        self._child_tables, self._child_counts = tables, counts
        self._status = status
        self._refresh_counts()

    def _records_counter(self) -> Any:
        """The Prometheus counter of records by (table, result), or None."""
        return self._metrics.records if self._metrics is not None else None

    def _refresh_counts(self) -> None:
        for name in vars(type(self.counts)()):
            value = self._base_counts.get(name, 0) + self._child_counts.get(name, 0)
            setattr(self.counts, name, value + (self._parent_dropped if name == "dropped" else 0))

    def _drop(self, table: str) -> None:
        self._parent_dropped += 1
        self.counts.dropped += 1
        counter = self._records_counter()
        if counter is not None:
            counter.labels(table, "dropped").inc()
        now = time.monotonic()
        if now - self._last_drop_warning > 10.0:
            self._last_drop_warning = now
            log.warning(
                "%s: dropping %s records: the in-memory queue is full (dropped so far: %d)",
                self.role,
                table,
                self.counts.dropped,
            )


# -- the pipe to the writer process -----------------------------------------------------------


def _dumps(message: tuple[str, Any]) -> bytes:
    """A message to the child: marshal for batches of plain values (a third of pickle's CPU
    in the feeder), pickle for what marshal cannot hold (the configuration)."""
    try:
        return b"m" + marshal.dumps(message)
    except ValueError:
        return b"p" + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes) -> Any:
    body = memoryview(data)[1:]
    if data[:1] == b"m":
        return marshal.loads(body)  # noqa: S302 - our own pipe, from our own parent
    return pickle.loads(body)  # noqa: S301 - our own pipe, from our own parent


# -- the writer process ---------------------------------------------------------------------


def _settle_heap() -> None:
    """Keep the cyclic garbage collector from costing the writer process ~1 us a record.

    Every record makes a few container objects (the unmarshalled tuples, the Record), so at
    CPython's threshold of 700 a young collection ran every ~250 records, and each tenth of
    those went on to older generations that held every module and every record kept in memory
    for the database (up to `buffer_limit`). What is alive once the process is set up (the
    modules, SQLAlchemy's tables and dialect) stays for its life: frozen (`gc.freeze`), no
    collection traverses it again; and young collections run every `_YOUNG_COLLECTION`
    allocations. Records hold no reference cycles (they are freed by reference counting), so
    the collector only ever finds the rare cycle of a traceback or a connection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_YOUNG_COLLECTION, *gc.get_threshold()[1:])


def _run_in_background(priority: str) -> None:
    """Give this process the scheduling policy `priority` names (Linux), before it starts any
    thread (threads inherit it).

    `batch` (SCHED_BATCH). Waking a process from a socket places it, by the scheduler's wake
    affinity, on the CPU of the thread that woke it: here the serving process's. As a normal
    task it then preempts the event loop for its whole batch (a few ms of journal and insert
    work, 20 times a second), until the load balancer moves one of them. A batch task has the
    same share of CPU time (the same nice weight, so it is never starved under overload) but
    never preempts a running task when it wakes: it waits for the next tick or a free CPU.
    bench/exposures.py on 2 cores, logging on against off: decisions/s 0.89-0.95 as a normal
    task, 0.96-0.99 as a batch task (docs/benchmarks.md).

    `idle` (SCHED_IDLE). A batch task still counts as load: a CPU it runs on is busy, so the
    scheduler wakes other tasks (a client's, a gateway's on the same node) onto the serving
    process's CPU instead, preempting the event loop (about 3,000 involuntary switches a
    second under bench/decide.py's wrk load, against 300 with the writer idle; ad-hoc runs in
    docs/benchmarks.md). A CPU running only
    idle tasks counts as free, and any other task preempts them at once: decisions never wait
    for records, which get only the CPU nothing else wants. An unprivileged process cannot
    leave SCHED_IDLE again, so this is chosen once, by the setting.

    Unprivileged; skipped where the policy does not exist."""
    setter = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, _POLICIES[priority], None)
    if setter is None or policy is None:
        return
    try:
        setter(0, policy, os.sched_param(0))
    except OSError as exc:
        log.debug("cannot make the child process %s: %s", _POLICIES[priority], exc)


def child_main(fd: int) -> None:
    """The child process: the ChildSink its config opens, fed from socket `fd` until the parent
    closes it (a BatchWriter for WriterConfig)."""
    # Ctrl-C and a group SIGTERM reach the parent, which stops this process by closing the
    # pipe; so does the parent's death. Either way the records it got are handled first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    kind, payload = _loads(conn.recv_bytes())
    if kind != "config":
        raise SystemExit(f"the child process expected its configuration, got {kind!r}")
    config, status_interval, priority = payload
    _run_in_background(priority)  # before the first thread: they inherit it
    from control_plane.experiments.hashing import UnitHasher
    from control_plane.experiments.recorder import ExperimentRecorder

    recorder = ExperimentRecorder(None)
    sink: ChildSink = config.open(recorder)
    _settle_heap()
    send_lock = threading.Lock()
    done = threading.Event()

    def send(message: tuple[str, Any]) -> None:
        with send_lock, contextlib.suppress(OSError, ValueError):
            conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def report() -> None:
        while not done.wait(status_interval):
            send(("status", sink.status()))

    def flush(number: int) -> None:
        send(("flushed", (number, sink.flush(60))))
        send(("status", sink.status()))

    sink.start()
    threading.Thread(target=report, name="child-status", daemon=True).start()
    try:
        while True:
            try:
                kind, payload = _loads(conn.recv_bytes())
            except (EOFError, OSError):
                break  # the parent is gone (or closed the pipe): handle what we got
            if kind == "items":
                offer = sink.offer
                for item in payload:
                    offer(item)
            elif kind == "key":
                recorder.hasher = UnitHasher(payload)
            elif kind == "flush":
                threading.Thread(target=flush, args=(payload,), daemon=True).start()
            elif kind == "stop":
                break
    finally:
        sink.stop()
        done.set()
        send(("status", sink.status()))
        with contextlib.suppress(OSError):
            conn.close()
