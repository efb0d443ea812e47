"""The worker process: `control-plane serve --worker-of HOST:PORT` (hidden; the pool runs it).

A routing replica of the primary (flags over the pool's internal flagd.sync.v1 port, the
primary's versions) that records its exposures (control_plane.workers.exposures), forwards
what it does not answer to the primary (control_plane.workers.front), and binds the public
port with SO_REUSEPORT only once it holds a flag set: asyncio listens on the socket after the
startup, which waits for the first sync (at most `_FIRST_SYNC` seconds, then it serves what
a replica without flags serves, 503). It ends with the primary: SIGTERM when the primary dies
(Linux PR_SET_PDEATHSIG; elsewhere a watcher thread sees the parent change).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from control_plane.http.app import create_app
from control_plane.http.components import RoutingComponents
from control_plane.http.server import bind_socket, head_limits, uvicorn_config
from control_plane.settings import Settings
from control_plane.workers.exposures import WorkerExposures
from control_plane.workers.forwarding import PrimaryForwarder
from control_plane.workers.front import WorkerFront
from control_plane.workers.lifespan import LifespanHooks
from control_plane.workers.supervisor import WORKER_TOKEN_ENV

__all__ = ["WorkerArgs", "run_worker"]

log = logging.getLogger(__name__)

_FIRST_SYNC = 30.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    primary: str  # 127.0.0.1:<the primary's internal HTTP port>
    index: int
    fd: int  # the internal socket the pool bound for this worker
    parent: int  # the primary's pid
    log_level: str
    access_log: bool


def run_worker(settings: Settings, args: WorkerArgs, log_config: Any) -> int:
    """Serve as worker `args.index` until SIGTERM (or the primary's death)."""
    _end_with_parent(args.parent)
    token = os.environ.get(WORKER_TOKEN_ENV)
    if not token or settings.replica_of is None:
        print(
            "control-plane serve --worker-of is started by `serve --workers N`, not by hand",
            file=sys.stderr,
        )
        return 2
    internal = socket.socket(fileno=args.fd)
    app = create_app(settings)  # replica components: CP_REPLICA_OF is the pool's sync port
    components: RoutingComponents = app.state.components
    # CP_EVENTS_URL: the replica's pipeline publishes this worker's records already.
    exposures = WorkerExposures(components) if components.events is None else None
    forwarder = PrimaryForwarder(f"http://{args.primary}")
    front = WorkerFront(
        app, components, forwarder, internal_port=internal.getsockname()[1], token=token
    )

    async def started() -> None:
        if exposures is not None:
            await asyncio.to_thread(exposures.start)
        await _first_flag_set(components)
        log.info(
            "worker %d (pid %d) serving port %d; forwarding the rest to %s",
            args.index,
            os.getpid(),
            settings.port,
            args.primary,
        )

    async def stopping() -> None:
        if exposures is not None:
            await asyncio.to_thread(exposures.stop)
        await forwarder.aclose()

    served = LifespanHooks(front, on_startup=started, on_shutdown=stopping)
    public = bind_socket(settings.host, settings.port, reuse_port=True)
    config = uvicorn_config(
        served,
        host=settings.host,
        port=settings.port,
        limits=head_limits(settings),
        # Decisions on the public port only: the internal one serves the primary's scrapes.
        fast_path=app.fast_path,
        decide_ports=frozenset({public.getsockname()[1]}),
        log_level=args.log_level,
        access_log=args.access_log,
        log_config=log_config,
    )
    uvicorn.Server(config).run(sockets=[public, internal])
    return 0


async def _first_flag_set(components: RoutingComponents) -> None:
    deadline = time.monotonic() + _FIRST_SYNC
    while not components.store.loaded and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if not components.store.loaded:
        log.warning(
            "worker: no flag set from the primary after %.0f s; listening anyway "
            "(not ready until one comes)",
            _FIRST_SYNC,
        )


def _end_with_parent(parent: int) -> None:
    """SIGTERM to this process when the primary ends (and now, if it already has)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            _watch_parent(parent)  # pragma: no cover - prctl does not fail on Linux
    else:  # pragma: no cover - Linux here
        _watch_parent(parent)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
