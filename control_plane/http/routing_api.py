"""Routing endpoints: JSON decisions, gateway decisions as headers, and the dispatch proxy."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse

from control_plane.errors import BadRequestInput
from control_plane.http.bodies import read_json_body
from control_plane.http.decisions_wire import decision_headers
from control_plane.http.deps import ComponentsDep
from control_plane.http.schemas import DecisionBody, RouteRequest, json_body, problems
from control_plane.routing.decisions import Decision
from control_plane.routing.forwarding import resolve_path

__all__ = ["router"]

router = APIRouter(tags=["routing"])
log = logging.getLogger(__name__)

_MAX_ROUTE_BODY = 64 * 1024

#: What a decision can answer besides 200: a bad header/path (400), no gateway token (401), no
#: such flag (404), not a routing flag (422), no flag set loaded yet (503).
_DECISION_PROBLEMS = problems(400, 401, 404, 422, 503)
_DECISION_HEADERS = {
    "X-Route-Upstream": {"description": "URL of the chosen backend", "schema": {"type": "string"}},
    "X-Route-Variant": {"description": "The variant served", "schema": {"type": "string"}},
    "X-Route-Decision-Id": {"description": "The decision's id", "schema": {"type": "string"}},
}
_DECISION_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The decision, in the body and in X-Route-* headers",
        "headers": _DECISION_HEADERS,
    },
    **_DECISION_PROBLEMS,
}


def _decide(
    components: ComponentsDep, flag_key: str, request: Request, body: Any = None
) -> Decision:
    try:
        context = components.mapper.from_raw_headers(request.headers.raw, flag_key)
        components.mapper.merge_body_context(context, body)
    except BadRequestInput as exc:
        components.metrics.bad_requests.labels(exc.metric_source).inc()
        raise
    return components.decider.decide(
        flag_key,
        context.targeting_key,
        context.attributes,
        ignored=context.ignored,
        tester=context.tester,
    )


@router.post(
    "/v1/route/{flag_key}",
    summary="Decide which backend serves a request (JSON)",
    response_model=DecisionBody,
    responses={**_DECISION_RESPONSES, **problems(413)},
    openapi_extra=json_body(
        RouteRequest, required=False, description='Optional: {"context": {...}} attributes'
    ),
)
async def route(flag_key: str, request: Request, components: ComponentsDep) -> JSONResponse:
    """Evaluate the routing flag for the request's headers plus an optional `{"context": {}}`."""
    body = await read_json_body(request, required=False, limit=_MAX_ROUTE_BODY)
    decision = _decide(components, flag_key, request, body)
    return JSONResponse(decision.as_json(), headers=dict(decision_headers(decision)))


#: Envoy's HTTP ext_authz service forwards the client's own method.
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# Answered by control_plane.http.fastpath in front of FastAPI (the same answers) unless
# CP_FAST_DECIDE=false; this route documents them and serves when the fast path is off.
@router.api_route(
    "/v1/decide/{flag_key}",
    methods=_ANY_METHOD,
    summary="Decide which backend serves a request (answer in headers, for gateways)",
    response_model=DecisionBody,
    responses=_DECISION_RESPONSES,
)
async def decide(flag_key: str, request: Request, components: ComponentsDep) -> Response:
    """For nginx `auth_request` and Envoy `ext_authz`: 200 with X-Route-* headers."""
    decision = _decide(components, flag_key, request)
    return JSONResponse(decision.as_json(), headers=dict(decision_headers(decision)))


@router.api_route(
    "/v1/decide/{flag_key}/{original_path:path}",
    methods=_ANY_METHOD,
    summary="The same decision, as Envoy's ext_authz asks for it",
    response_model=DecisionBody,
    responses=_DECISION_RESPONSES,
    description="Envoy's HTTP ext_authz filter appends the original request path "
    "to `path_prefix` (`/v1/decide/<flag>`) and keeps its method; the "
    "original path does not change the decision.",
)
async def decide_for_envoy(
    flag_key: str, original_path: str, request: Request, components: ComponentsDep
) -> Response:
    decision = _decide(components, flag_key, request)
    return JSONResponse(decision.as_json(), headers=dict(decision_headers(decision)))


#: What nginx logs for a client that closed the request: never seen by the client itself.
_CLIENT_CLOSED = 499
_DISPATCH_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: A proxy answers whatever the backend answers: any status, any content type, any body. Its
#: own refusals (bad path or headers, no token, no flag, not routing, backend down) are problems.
_DISPATCH_RESPONSES: dict[int | str, dict[str, object]] = {
    "default": {
        "description": "The backend's own answer (any status, content type and body), "
        "with X-Route-Variant, X-Route-Backend and X-Route-Decision-Id",
        "content": {"*/*": {"schema": {}}},
    },
    **problems(400, 401, 404, 422, 502, 503),
}
_DISPATCH_BODY = {
    "requestBody": {
        "required": False,
        "description": "Forwarded to the backend as it is",
        "content": {"*/*": {"schema": {}}},
    }
}


@router.api_route(
    "/v1/dispatch/{flag_key}/{path:path}",
    methods=_DISPATCH_METHODS,
    summary="Proxy the request to the backend the routing flag chooses",
    response_class=Response,
    responses=_DISPATCH_RESPONSES,
    openapi_extra=_DISPATCH_BODY,
)
async def dispatch(
    flag_key: str, path: str, request: Request, components: ComponentsDep
) -> Response:
    return await _dispatch(flag_key, path, request, components)


# The app does not redirect /x to /x/ (a redirect would echo the client's Host), so the
# backend's root without a trailing slash is a route of its own.
@router.api_route(
    "/v1/dispatch/{flag_key}",
    methods=_DISPATCH_METHODS,
    summary="Proxy the request to the root of the backend the flag chooses",
    response_class=Response,
    responses=_DISPATCH_RESPONSES,
    openapi_extra=_DISPATCH_BODY,
)
async def dispatch_root(flag_key: str, request: Request, components: ComponentsDep) -> Response:
    return await _dispatch(flag_key, "", request, components)


async def _dispatch(
    flag_key: str, path: str, request: Request, components: ComponentsDep
) -> Response:
    try:
        # Refused before the decision, so a bad path is neither an exposure nor a backend call.
        resolve_path(path)
    except BadRequestInput as exc:
        components.metrics.bad_requests.labels(exc.source).inc()
        raise
    decision = _decide(components, flag_key, request)
    dispatcher = components.dispatcher
    fallback = components.decider.routing_table(flag_key).get(decision.default_variant)
    client = request.client
    try:
        result = await dispatcher.dispatch(
            decision,
            fallback,
            method=request.method,
            path=path,
            query=request.url.query,
            headers=request.headers.items(),
            body=request.stream(),
            client_host=client.host if client else None,
            original_host=request.headers.get("host"),
            scheme=request.url.scheme,
        )
    except ClientDisconnect:
        # The client left before its body was in: nobody to answer, and not an error of
        # ours or the backend's (no backend outcome is reported). Counted, logged quietly.
        components.metrics.dispatch_client_disconnects.labels(flag_key).inc()
        log.debug(
            "client left mid-body on %s %s (decision %s)",
            request.method,
            request.url.path,
            decision.decision_id,
        )
        return Response(status_code=_CLIENT_CLOSED)
    headers = [(k, v) for k, v in result.headers]
    headers += [
        ("x-route-variant", result.variant),
        ("x-route-backend", result.backend.name),
        ("x-route-decision-id", decision.decision_id),
    ]
    if result.fallback_from:
        headers.append(
            ("x-route-fallback", f"{result.fallback_from}; cause={result.fallback_cause}")
        )
        components.metrics.fallbacks.labels(
            flag_key, result.fallback_from, result.fallback_cause or ""
        ).inc()
    response = StreamingResponse(
        result.body,
        status_code=result.status,
        background=BackgroundTask(result.close) if result.close else None,
    )
    response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return response
