"""The primary's worker pool: N-1 worker processes started, watched, restarted and stopped.

Each worker is `control-plane serve --worker-of ...` (hidden options) in a session of its own,
so a terminal's Ctrl-C reaches the primary only and the primary stops the workers in order.
What a worker gets:
- the primary's settings, as environment variables (the explicit options too), plus replica
  mode against an internal flagd.sync.v1 server on 127.0.0.1:<port 0> (plaintext, a per-run
  token): the public sync port may be off, on TLS or on another address, workers never use it;
- its own exposure journal and synced flags under `<exposure_spill_dir>/worker-<i>`;
- an internal loopback socket, bound here and passed as a file descriptor, on which it serves
  its metrics and traffic windows to the primary (control_plane.workers.peers);
- the parent's pid: it asks Linux for SIGTERM when the thread that started it ends
  (PR_SET_PDEATHSIG), so a primary killed with -9 leaves no worker behind.

One supervisor thread starts every worker (PDEATHSIG follows the starting thread) and polls
them; a worker that exits while the pool runs is started again after a backoff that grows
with consecutive quick deaths, and counted in control_plane_worker_restarts_total.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from control_plane.console.traffic import TrafficTracker, TrafficWindow
from control_plane.distribution.sync_server import SyncServerHandle, start_sync_server
from control_plane.flagstore import FlagStore
from control_plane.settings import Settings
from control_plane.workers.metrics_merge import PRIMARY, merge_expositions
from control_plane.workers.peers import Peer, PeerClient
from control_plane.workers.traffic_merge import sum_windows

__all__ = ["WORKER_TOKEN_ENV", "WorkerPool", "worker_command"]

log = logging.getLogger(__name__)

#: Environment variable carrying the pool's token to a worker (not argv: /proc/*/cmdline is
#: world-readable, a process's environment is not).
WORKER_TOKEN_ENV = "CP_WORKER_TOKEN"  # noqa: S105 - a variable name, not a secret
_POLL = 0.1
_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
#: A worker that lived this long before dying restarts without backoff.
_HEALTHY_AFTER = 10.0


@dataclass(frozen=True, slots=True)
class ServePlan:
    """What serve.py bound: the public port (resolved when 0) and the primary's internal port."""

    public_port: int
    primary_port: int
    log_level: str
    access_log: bool


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.started_at = 0.0
        self.failures = 0  # consecutive quick deaths
        self.next_start = 0.0


def worker_command(plan: ServePlan, index: int, fd: int, primary_pid: int) -> list[str]:
    """argv of worker `index`: this interpreter and package, never the working directory's
    modules (-P: a `flags/` folder there must not shadow the installed `flags` package)."""
    command = [
        sys.executable,
        "-P",
        "-m",
        "control_plane.cli.entry",
        "serve",
        "--worker-of",
        f"127.0.0.1:{plan.primary_port}",
        "--worker-index",
        str(index),
        "--worker-fd",
        str(fd),
        "--worker-parent",
        str(primary_pid),
        "--log-level",
        plan.log_level,
    ]
    return [*command, "--access-log"] if plan.access_log else command


class WorkerPool:
    """`settings.workers - 1` workers of this primary; built unstarted by build_components."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.size = settings.workers - 1
        self._token = secrets.token_urlsafe(32)
        self.peer_client = PeerClient(self._token)
        self._plan: ServePlan | None = None
        self._sync: SyncServerHandle | None = None
        self._workers = [_Worker(index) for index in range(1, self.size + 1)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = Counter(
            "control_plane_worker_restarts",
            "serve --workers: worker processes started again after they exited.",
            ["worker"],
            registry=registry,
        )
        self.running = Gauge(
            "control_plane_workers_running",
            "serve --workers: processes running (the primary included; a starting worker counts).",
            registry=registry,
        )
        self.running.set_function(lambda: 1 + len(self.peers()))
        scrape_errors = Counter(
            "control_plane_worker_scrape_errors",
            "serve --workers: reads of a worker's metrics or traffic that failed.",
            registry=registry,
        )
        scrape_errors.inc(0)
        self._scrape_errors = scrape_errors
        self._counted_errors = 0

    # -- life ------------------------------------------------------------------------------

    def plan(self, plan: ServePlan) -> None:
        """serve.py: where the primary listens (before the app starts)."""
        self._plan = plan

    def start(self, store: FlagStore) -> None:
        """Serve the workers' sync port and start every worker (the primary is up)."""
        if self._plan is None or self._thread is not None or self.size < 1:
            return
        self._sync = start_sync_server(
            store, "127.0.0.1", 0, tokens=[self._token], context=self.settings.sync_context
        )
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._supervise, name="worker-supervisor", daemon=True
        )
        self._thread.start()
        log.info(
            "serve --workers %d: starting %d decide workers on port %d",
            self.size + 1,
            self.size,
            self._plan.public_port,
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every worker, wait up to `grace` seconds, then SIGKILL what is left."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)
            self._thread = None
        if self._sync is not None:
            self._sync.stop()
            self._sync = None

    # -- the supervisor thread -------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            for worker in self._workers:
                process = worker.process
                if process is not None and process.poll() is not None:
                    self._exited(worker, process.returncode, now)
                if worker.process is None and now >= worker.next_start:
                    self._spawn(worker)
            self._stopping.wait(_POLL)
        self._terminate_all()

    def _exited(self, worker: _Worker, code: int, now: float) -> None:
        lived = now - worker.started_at
        worker.failures = 0 if lived >= _HEALTHY_AFTER else worker.failures + 1
        delay = _BACKOFF[min(worker.failures, len(_BACKOFF)) - 1] if worker.failures else 0.0
        log.warning(
            "worker %d (pid %s) exited with status %s after %.1f s; starting it again in %.1f s",
            worker.index,
            worker.process.pid if worker.process else "?",
            code,
            lived,
            delay,
        )
        with self._lock:
            worker.process = None
            worker.port = 0
        worker.next_start = now + delay
        self.restarts.labels(str(worker.index)).inc()

    def _spawn(self, worker: _Worker) -> None:
        plan = self._plan
        if plan is None or self._sync is None:
            return
        directory = self.settings.exposure_spill_dir.resolve() / f"worker-{worker.index}"
        directory.mkdir(parents=True, exist_ok=True)
        internal = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            internal.bind(("127.0.0.1", 0))
            fd = internal.fileno()
            process = subprocess.Popen(  # noqa: S603 - our interpreter, our program
                worker_command(plan, worker.index, fd, os.getpid()),
                env=self._environment(plan, directory),
                pass_fds=(fd,),
                start_new_session=True,
            )
        except OSError as exc:
            log.error("cannot start worker %d: %s", worker.index, exc)
            worker.next_start = time.monotonic() + _BACKOFF[-1]
            return
        finally:
            port = internal.getsockname()[1]
            internal.close()  # the worker holds it now
        with self._lock:
            worker.process, worker.port = process, port
        worker.started_at = time.monotonic()

    def _environment(self, plan: ServePlan, directory: Path) -> dict[str, str]:
        settings = self.settings
        if self._sync is None:  # pragma: no cover - _spawn checked
            raise RuntimeError("the workers' sync server is not running")
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("CP_REPLICA_CA_FILE", "CP_DATABASE_URL")
        }
        env.update(
            {
                "CP_HOST": settings.host,
                "CP_PORT": str(plan.public_port),
                "DATABASE_URL": settings.database_url,
                "CP_FLAGS_DIR": str(settings.flags_dir),
                "CP_LOG_FORMAT": settings.log_format,
                "CP_WORKERS": "1",
                "CP_SYNC_PORT": "0",
                "CP_REPLICA_OF": f"127.0.0.1:{self._sync.port}",
                "CP_REPLICA_TOKEN": self._token,
                "CP_REPLICA_DIR": str(directory / "flags"),
                "CP_EXPOSURE_SPILL_DIR": str(directory),
                WORKER_TOKEN_ENV: self._token,
            }
        )
        return env

    def _terminate_all(self, grace: float = 10.0) -> None:
        with self._lock:
            processes = [w.process for w in self._workers if w.process is not None]
            for worker in self._workers:
                worker.process, worker.port = None, 0
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0f s; killing it", process.pid, grace)
                process.kill()
                process.wait()

    # -- what the primary's endpoints read -------------------------------------------------

    def peers(self) -> list[Peer]:
        """The workers running now (a starting one may not answer yet)."""
        with self._lock:
            return [
                Peer(w.index, w.process.pid, w.port)
                for w in self._workers
                if w.process is not None and w.port and w.process.poll() is None
            ]

    async def exposition(self, registry: CollectorRegistry) -> bytes:
        """The primary's metrics and every worker's, merged (control_plane.workers
        .metrics_merge); the scrape error count includes this scrape's failures."""
        pages = await self.peer_client.expositions(self.peers())
        self._sync_errors()
        own = generate_latest(registry).decode("utf-8")
        return merge_expositions([(PRIMARY, own), *pages])

    def windows(
        self, tracker: TrafficTracker, seconds: int, buckets: int
    ) -> Callable[[str], TrafficWindow]:
        """flag -> this process's window plus every worker's (read once, on the thread pool)."""
        theirs = self.peer_client.windows(self.peers(), seconds, buckets)
        self._sync_errors()

        def window(flag_key: str) -> TrafficWindow:
            mine = tracker.window(flag_key, seconds, buckets)
            return sum_windows(mine, [w[flag_key] for w in theirs if flag_key in w])

        return window

    def _sync_errors(self) -> None:
        errors = self.peer_client.errors
        if errors > self._counted_errors:
            self._scrape_errors.inc(errors - self._counted_errors)
            self._counted_errors = errors
