"""Start and stop hooks around an ASGI app's own lifespan (the app's components first).

`serve --workers N` adds processes to an app that knows nothing about them: the primary starts
its workers once its own startup is complete (flag set loaded, experiments started) and stops
them before its own shutdown; a worker starts its exposure writer after the replica's startup
and waits for its first flag set before it listens. Wrapping the lifespan keeps those steps out
of `control_plane.http.lifecycle`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LifespanHooks"]

Hook = Callable[[], Awaitable[None]]


class LifespanHooks:
    """`app`, with `on_startup` after its startup and `on_shutdown` before its shutdown."""

    def __init__(self, app: ASGIApp, *, on_startup: Hook, on_shutdown: Hook) -> None:
        self.app = app
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def receive_hooked() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.on_shutdown()
            return message

        async def send_hooked(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.on_startup()
                except Exception as exc:  # the server must not start half-configured
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
            await send(message)

        await self.app(scope, receive_hooked, send_hooked)
