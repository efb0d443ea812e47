"""The primary of `serve --workers N`: its sockets, its pool, its uvicorn server.

The primary binds the public host:port with SO_REUSEPORT (before any worker, so a port in use
fails here, at once) and an internal loopback port, the one workers forward to (forwarding to
the public port would land on a worker again). Its pool starts once the app's own startup is
done (flag set loaded, experiments started, the database migrated or migrating) and stops
before the app's shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from control_plane.http.app import ControlPlaneApp
from control_plane.http.components import Components
from control_plane.http.server import HeadLimits, bind_socket, uvicorn_config
from control_plane.workers.lifespan import LifespanHooks
from control_plane.workers.supervisor import ServePlan

__all__ = ["run_primary"]


def run_primary(
    app: ControlPlaneApp,
    *,
    host: str,
    port: int,
    limits: HeadLimits,
    log_level: str,
    access_log: bool,
    log_config: Any,
) -> None:
    """Serve `app` (built with settings.workers > 1) with its workers until SIGTERM."""
    components: Components = app.state.components
    pool = components.workers
    if pool is None:
        raise ValueError("run_primary needs an app built with settings.workers > 1")
    public = bind_socket(host, port, reuse_port=True)
    internal = bind_socket("127.0.0.1", 0)
    pool.plan(
        ServePlan(
            public_port=public.getsockname()[1],
            primary_port=internal.getsockname()[1],
            log_level=log_level,
            access_log=access_log,
        )
    )

    async def started() -> None:
        await asyncio.to_thread(pool.start, components.store)

    async def stopping() -> None:
        await asyncio.to_thread(pool.stop)

    served = LifespanHooks(app, on_startup=started, on_shutdown=stopping)
    config = uvicorn_config(
        served,
        host=host,
        port=port,
        limits=limits,
        # Decisions on the public port only: the internal one is the workers' way in.
        fast_path=app.fast_path,
        decide_ports=frozenset({public.getsockname()[1]}),
        log_level=log_level,
        access_log=access_log,
        log_config=log_config,
    )
    uvicorn.Server(config).run(sockets=[public, internal])
