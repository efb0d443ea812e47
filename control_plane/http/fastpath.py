"""A raw-ASGI fast path for `GET /v1/decide/{flag}`, the endpoint every gateway request hits.

FastAPI's routing, dependency resolution and response classes cost more than the flag evaluation
itself (see bench/decide.py). This wrapper answers exactly the same responses as the FastAPI
route in routing_api.py, sharing the mapper, decider and wire format, and passes every other
request through untouched. `CP_FAST_DECIDE=false` turns it off.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.errors import BadRequestInput, ControlPlaneError
from control_plane.http.components import Components
from control_plane.http.decisions_wire import decision_headers
from control_plane.http.problems import send_problem
from control_plane.observability.tracing import remote_parent

__all__ = ["DecideFastPath"]

_PREFIX = "/v1/decide/"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: One encoder for all requests: json.dumps with options builds a new encoder per call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


class DecideFastPath:
    def __init__(self, app: ASGIApp, components: Components) -> None:
        self.app = app
        self.components = components

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        # scope["path"] is percent-decoded once by the server, as FastAPI's router sees it;
        # decoding again would turn `%2525` into `%` where the router sees `%25`. Any method
        # and anything after the flag key: Envoy's ext_authz keeps the client's method and
        # appends the client's path (`POST /v1/decide/<flag>/v1/chat`).
        flag_key = scope["path"][len(_PREFIX):].partition("/")[0]
        if not flag_key or scope["method"] not in _METHODS:
            await self.app(scope, receive, send)  # let the router answer its 404/405
            return
        components = self.components
        try:
            if components.gateway.enabled:
                components.gateway(_header(scope, b"authorization"))
            context = components.mapper.from_raw_headers(scope["headers"], flag_key)
            if components.tracing.enabled:
                # No FastAPI server span here: hang the decision span on the caller's trace.
                with remote_parent(scope["headers"]):
                    decision = components.decider.decide(
                        flag_key, context.targeting_key, context.attributes,
                        ignored=context.ignored, tester=context.tester)
            else:
                decision = components.decider.decide(
                    flag_key, context.targeting_key, context.attributes,
                    ignored=context.ignored, tester=context.tester)
        except ControlPlaneError as exc:
            if isinstance(exc, BadRequestInput):
                components.metrics.bad_requests.labels(exc.metric_source).inc()
            await send_problem(send, exc)
            return
        body = _ENCODE(decision.as_json()).encode()
        headers = [(k.encode(), v.encode("latin-1")) for k, v in decision_headers(decision)]
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


