"""A worker's ASGI front: the routing API here, every other request to the primary.

    public socket:   /v1/decide/*, /v1/route/*, /v1/dispatch/*, /ofrep/*, /healthz, /readyz
                     -> this worker's replica app; anything else -> the primary (forwarding)
    internal socket: /-/worker/metrics, /-/worker/traffic (pool token) -> this worker's own
                     registry and traffic windows, for the primary's merged views

A dispatch on a flag that declares shadow backends goes to the primary too: the shadow mirror
and its comparisons live in the primary's memory (control_plane.shadow), so the copies and
reports stay whole. Which socket a request came in on is the server address in its scope.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.console.traffic import TrafficTracker
from control_plane.http.components import RoutingComponents
from control_plane.http.health import refresh_metrics
from control_plane.shadow.spec import flag_shadows
from control_plane.workers.peers import METRICS_PATH, TRAFFIC_PATH
from control_plane.workers.traffic_merge import window_json

__all__ = ["WorkerFront"]

_LOCAL_PREFIXES = ("/v1/decide/", "/v1/route/", "/ofrep/")
_LOCAL_PATHS = frozenset({"/healthz", "/readyz"})
_DISPATCH = "/v1/dispatch/"


class WorkerFront:
    def __init__(
        self,
        app: ASGIApp,
        components: RoutingComponents,
        forward: ASGIApp,
        *,
        internal_port: int,
        token: str,
    ) -> None:
        self.app = app
        self.components = components
        self.forward = forward
        self.internal_port = internal_port
        self._token = f"Bearer {token}".encode()
        self._shadowed: tuple[int, frozenset[str]] = (-1, frozenset())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # the lifespan
            return
        server = scope.get("server")
        if server is not None and server[1] == self.internal_port:
            await self._internal(scope, send)
            return
        path: str = scope["path"]
        if path.startswith(_LOCAL_PREFIXES) or path in _LOCAL_PATHS or self._dispatch_here(path):
            await self.app(scope, receive, send)
        else:
            await self.forward(scope, receive, send)

    def _dispatch_here(self, path: str) -> bool:
        if not path.startswith(_DISPATCH):
            return False
        store = self.components.store
        if not store.loaded:
            return True  # the replica answers its 503
        flag_set = store.current
        version, shadowed = self._shadowed
        if version != flag_set.version:
            shadowed = frozenset(
                key for key, flag in flag_set.flags.items() if flag_shadows(key, flag)
            )
            self._shadowed = (flag_set.version, shadowed)
        return path[len(_DISPATCH) :].partition("/")[0] not in shadowed

    # -- the internal socket ---------------------------------------------------------------

    async def _internal(self, scope: Scope, send: Send) -> None:
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self._token):
            await _answer(send, 401, {"detail": "the worker pool's token is required"})
            return
        if scope["path"] == METRICS_PATH:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            refresh_metrics(self.components)
            body = generate_latest(self.components.metrics.registry)
            await _send(send, 200, body, CONTENT_TYPE_LATEST)
        elif scope["path"] == TRAFFIC_PATH:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            try:
                seconds = int(query["seconds"][0])
                buckets = int(query.get("buckets", ["30"])[0])
                flags = _windows(self.components.traffic, seconds, buckets)
            except (KeyError, ValueError) as exc:
                await _answer(send, 400, {"detail": f"seconds and buckets: {exc}"})
                return
            await _answer(send, 200, {"flags": flags})
        else:
            await _answer(send, 404, {"detail": "not an internal endpoint of this worker"})


def _windows(tracker: TrafficTracker, seconds: int, buckets: int) -> dict[str, Any]:
    return {flag: window_json(tracker.window(flag, seconds, buckets)) for flag in tracker.flags()}


async def _answer(send: Send, status: int, document: dict[str, Any]) -> None:
    await _send(send, status, json.dumps(document).encode(), "application/json")


async def _send(send: Send, status: int, body: bytes, media_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
