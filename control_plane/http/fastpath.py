"""A raw-ASGI fast path for `GET /v1/decide/{flag}`, the endpoint every gateway request hits.

FastAPI's routing, dependency resolution and response classes cost more than the flag evaluation
itself (see bench/decide.py). This wrapper answers exactly the same responses as the FastAPI
route in routing_api.py, sharing the mapper, decider and wire format, and passes every other
request through untouched. `CP_FAST_DECIDE=false` turns it off.

Without OpenFeature hooks (tracing off, none added to the client or the API) it decides on the
lean path: the compiled evaluator and prebuilt response parts (control_plane.routing
.compiled_decisions); with hooks, through the OpenFeature client, so the hooks run.
"""

from __future__ import annotations

from openfeature import api as openfeature_api
from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.errors import BadRequestInput, ControlPlaneError
from control_plane.http.components import RoutingComponents
from control_plane.http.decisions_wire import decision_headers, encode_headers, json_body
from control_plane.http.problems import send_problem
from control_plane.observability.tracing import remote_parent

__all__ = ["DecideFastPath"]

_PREFIX = "/v1/decide/"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class DecideFastPath:
    def __init__(self, app: ASGIApp, components: RoutingComponents) -> None:
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
        flag_key = scope["path"][len(_PREFIX) :].partition("/")[0]
        if not flag_key or scope["method"] not in _METHODS:
            await self.app(scope, receive, send)  # let the router answer its 404/405
            return
        components = self.components
        try:
            if components.gateway.enabled:
                components.gateway(_header(scope, b"authorization"))
            context = components.mapper.from_raw_headers(scope["headers"], flag_key)
            if not (
                components.tracing.enabled
                or components.openfeature_client.hooks
                or openfeature_api.get_hooks()
            ):
                answer = components.compiled_decider.decide(
                    flag_key,
                    context.targeting_key,
                    context.attributes,
                    ignored=context.ignored,
                    tester=context.tester,
                )
                body, headers = answer.body, answer.headers
            else:
                if components.tracing.enabled:
                    # No FastAPI server span here: hang the decision span on the caller's trace.
                    with remote_parent(scope["headers"]):
                        decision = components.decider.decide(
                            flag_key,
                            context.targeting_key,
                            context.attributes,
                            ignored=context.ignored,
                            tester=context.tester,
                        )
                else:
                    decision = components.decider.decide(
                        flag_key,
                        context.targeting_key,
                        context.attributes,
                        ignored=context.ignored,
                        tester=context.tester,
                    )
                body = json_body(decision)
                headers = encode_headers(decision_headers(decision), len(body))
        except ControlPlaneError as exc:
            if isinstance(exc, BadRequestInput):
                components.metrics.bad_requests.labels(exc.metric_source).inc()
            await send_problem(send, exc)
            return
        # One write: the server (control_plane.http.server) sends the head with this body.
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
