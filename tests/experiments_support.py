"""Shared pieces of the experiment and canary tests: a full control plane app (routing, admin
API, experiments) on a real database, a traffic driver, and a TCP proxy that can cut a
database off and let it back in."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from servers import ServerThread

from control_plane.db import Database
from control_plane.experiments.journal import Journal
from control_plane.http.app import create_app
from control_plane.settings import Settings

__all__ = [
    "ADMIN",
    "OPERATOR",
    "VIEWER",
    "ControlPlane",
    "TcpProxy",
    "Traffic",
    "full_app",
    "make_settings",
    "running",
    "wait_for",
]

ADMIN = "admin-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"


def make_settings(flags_dir: Path, database_url: str, tmp_path: Path, **extra: Any) -> Settings:
    """Settings for a fast test app: short intervals, tokens for each role, a temp spill dir."""
    values: dict[str, Any] = {
        "flags_dir": flags_dir,
        "database_url": database_url,
        "sync_port": 0,
        "reload_interval": 0.05,
        "dispatch_timeout": 5.0,
        "admin_tokens": [
            f"root:admin:{ADMIN}",
            f"ops:operator:{OPERATOR}",
            f"dash:viewer:{VIEWER}",
        ],
        "exposure_flush_interval": 0.05,
        "exposure_retry_interval": 0.2,
        "exposure_spill_dir": tmp_path / "spill",
        "canary_tick_interval": 0.05,
    }
    values.update(extra)
    return Settings(**values)


def full_app(settings: Settings, database: Database) -> FastAPI:
    """The control plane app (`database` is the one `settings.database_url` names)."""
    return create_app(settings)


@dataclass
class ControlPlane:
    """A running control plane on loopback."""

    server: ServerThread
    app: FastAPI

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)

    @property
    def experiments(self) -> Any:
        return self.app.state.components.experiments

    def flush(self) -> None:
        """Wait until every record queued so far is in the database."""
        assert self.experiments.writer.flush(timeout=15), "the writer did not flush"


@contextlib.contextmanager
def running(settings: Settings, database: Database) -> Iterator[ControlPlane]:
    app = full_app(settings, database)
    with ServerThread(app) as server:
        yield ControlPlane(server, app)


@dataclass
class Traffic:
    """Requests through the dispatch proxy from background threads, distinct users each."""

    url: str
    path: str
    threads: int = 3
    statuses: dict[int, int] = field(default_factory=dict)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Traffic:
        for index in range(self.threads):
            worker = threading.Thread(target=self._loop, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)

    def _loop(self, index: int) -> None:
        counter = 0
        with httpx.Client(base_url=self.url, timeout=15) as client:
            while not self._stop.is_set():
                counter += 1
                user = f"user-{index}-{counter}"
                try:
                    status = client.get(self.path, headers={"x-user-id": user}).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    self.sent += 1


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    every: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class TcpProxy:
    """A loopback TCP proxy in front of a server; `cut()` refuses and drops connections
    (the database is down), `restore()` lets them through again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener: socket.socket | None = None
        self.port = 0
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    # cut() ran while this connection was being set up: it must not survive
                    # the outage (a pooled connection that did kept "the database" up).
                    for connection in (client, upstream):
                        connection.close()
                    continue
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def cut(self) -> None:
        """Stop listening (new connections are refused) and drop every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not, and
            # the socket would go on accepting.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._connections.clear()

    def restore(self) -> None:
        if self._listener is None:
            self._open()

    def close(self) -> None:
        self.cut()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def abandon(journal: Journal) -> None:
    """As if the journal's process died: its owner lock is released, its files stay."""
    assert journal._lock is not None
    journal._lock.close()
    journal._lock = None


def run_until_killed(script: str, tmp_path: Path, *args: str) -> int:
    """Run `script` (given the repository root, then `args`): it starts a child process,
    prints the child's pid and SIGKILLs itself. Returns the child's pid."""
    path = tmp_path / "serving.py"
    path.write_text(script)
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, str(path), root, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return int(done.stdout.split()[0])


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def thread_policies(pid: int) -> list[int]:
    """The scheduling policy of each live thread of `pid` (field 41 of its task's stat); a
    thread that ended while being read (a flush's) is left out."""
    policies = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        policies.append(int(stat.rsplit(")", 1)[1].split()[38]))
    return policies
