"""A raw-ASGI fast path for `GET /v1/decide/{flag}`, the endpoint every gateway request hits.

FastAPI's routing, dependency resolution and response classes cost more than the flag evaluation
itself (see bench/decide.py). This wrapper answers exactly the same responses as the FastAPI
route in routing_api.py, sharing the mapper, decider and wire format, and passes every other
request through untouched. `CP_FAST_DECIDE=false` turns it off.

Without OpenFeature hooks (tracing off, none added to the client or the API) it decides on the
lean path: the compiled evaluator and prebuilt response parts (control_plane.routing
.compiled_decisions); with hooks, through the OpenFeature client, so the hooks run.

The control plane's HTTP server answers most lean decisions before ASGI sees them
(control_plane.http.inline_decide, through `wire_answer`); what it leaves (errors, hooks on,
a busy connection) comes here.
"""

from __future__ import annotations

from openfeature import api as openfeature_api
from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.errors import BadRequestInput, ControlPlaneError
from control_plane.http.components import RoutingComponents
from control_plane.http.decisions_wire import decision_answer
from control_plane.http.problems import send_problem
from control_plane.http.request_target import unsafe_target
from control_plane.observability.tracing import remote_parent
from control_plane.routing.compiled_decisions import WireAnswer
from control_plane.routing.context import RequestContext

__all__ = ["DecideFastPath", "decided_flag"]

_PREFIX = "/v1/decide/"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class DecideFastPath:
    def __init__(self, app: ASGIApp, components: RoutingComponents) -> None:
        self.app = app
        self.components = components

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        flag_key = decided_flag(scope) if scope["type"] == "http" else None
        if flag_key is None:
            await self.app(scope, receive, send)  # other paths, and the router's 404/405
            return
        components = self.components
        try:
            context = self._context(scope, flag_key)
            if self.lean:
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
                body, headers = decision_answer(decision)
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

    @property
    def lean(self) -> bool:
        """Whether decisions take the lean path: no OpenFeature hook would see them."""
        components = self.components
        return not (
            components.tracing.enabled
            or components.openfeature_client.hooks
            or openfeature_api.get_hooks()
        )

    def wire_answer(self, scope: Scope) -> WireAnswer | None:
        """The lean answer to a request the app would route here, for the HTTP server to write.

        None when it must go through ASGI instead: not a decide request, hooks on, or a
        request to refuse (its problem answer is ASGI's; nothing was decided or counted yet).
        """
        flag_key = decided_flag(scope)
        if flag_key is None or not self.lean or unsafe_target(scope) is not None:
            return None
        try:
            context = self._context(scope, flag_key)
            return self.components.compiled_decider.decide_wire(
                flag_key,
                context.targeting_key,
                context.attributes,
                ignored=context.ignored,
                tester=context.tester,
            )
        except ControlPlaneError:
            return None

    def _context(self, scope: Scope, flag_key: str) -> RequestContext:
        """The gateway's credential checked, the evaluation context from the headers."""
        components = self.components
        if components.gateway.enabled:
            components.gateway(_header(scope, b"authorization"))
        return components.mapper.from_raw_headers(scope["headers"], flag_key)


def decided_flag(scope: Scope) -> str | None:
    """The flag a request to /v1/decide/ decides, None for any other (the router answers)."""
    path: str = scope["path"]
    if not path.startswith(_PREFIX):
        return None
    # scope["path"] is percent-decoded once by the server, as FastAPI's router sees it;
    # decoding again would turn `%2525` into `%` where the router sees `%25`. Any method
    # and anything after the flag key: Envoy's ext_authz keeps the client's method and
    # appends the client's path (`POST /v1/decide/<flag>/v1/chat`).
    flag_key = path[len(_PREFIX) :].partition("/")[0]
    if not flag_key or scope["method"] not in _METHODS:
        return None  # the router answers its 404/405
    return flag_key


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
