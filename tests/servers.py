"""Real servers on loopback for tests: uvicorn in a thread, and small model backends."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from control_plane.http.app import ControlPlaneApp, create_app
from control_plane.http.components import Components
from control_plane.http.server import uvicorn_config
from control_plane.settings import Settings

__all__ = ["BackendApp", "ControlPlaneThread", "RecordingTransport", "ServerThread", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a background thread (lifespan on)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self._run(config)

    def _run(self, config: uvicorn.Config) -> None:
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ControlPlaneThread(ServerThread):
    """The control plane's app on its own uvicorn configuration (control_plane.http.server),
    in a thread: bounded heads, one write per response and, with `inline` (what `serve`
    runs), lean decisions answered by the HTTP protocol itself. `wrap` puts an ASGI app
    around the control plane's (to see what reaches ASGI)."""

    def __init__(
        self,
        settings: Settings,
        *,
        inline: bool = True,
        wrap: Callable[[ControlPlaneApp], Any] | None = None,
        decide_ports: frozenset[int] | None = None,
        access_log: bool = False,
    ) -> None:
        self.app = create_app(settings)
        self.port = free_port()
        config = uvicorn_config(
            wrap(self.app) if wrap else self.app,
            host="127.0.0.1",
            port=self.port,
            fast_path=self.app.fast_path if inline else None,
            decide_ports=decide_ports,
            log_level="warning",
            lifespan="on",
            access_log=access_log,
        )
        self._run(config)

    @property
    def components(self) -> Components:
        components: Components = self.app.state.components
        return components


class RecordingTransport(asyncio.Transport):
    """A transport that keeps every write (one entry per transport.write call)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class BackendApp:
    """A model backend stand-in: answers with its name and what it received.

    `behaviour` may be set at run time: "ok", "error" (HTTP 503), "slow" (sleeps `delay`).
    """

    def __init__(self, name: str, behaviour: str = "ok", delay: float = 0.0) -> None:
        self.name = name
        self.behaviour = behaviour
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.on_request: Callable[[dict[str, Any]], None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = {
            "backend": self.name,
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": body.decode("utf-8", "replace"),
        }
        self.requests.append(seen)
        if self.behaviour == "slow":
            await asyncio.sleep(self.delay)
        status = 503 if self.behaviour == "error" else 200
        if scope["path"].endswith("/stream"):
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"x-backend", self.name.encode()),
                    ],
                }
            )
            for index in range(5):
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"chunk{index}\n".encode(),
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": b""})
            return
        payload = json.dumps(seen).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-backend", self.name.encode()),
                    (b"set-cookie", b"a=1"),
                    (b"set-cookie", b"b=2"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
