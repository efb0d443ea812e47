"""Shadow traffic endpoints: reports, promotion, and the gateway's mirrored copies.

    GET  /v1/shadows                       flags declaring shadows, with summaries (viewer)
    GET  /v1/shadows/{flag}                the report per shadow backend (viewer)
    POST /v1/shadows/{flag}/promote        {"backend": B, "variant"?: V, "canary"?: {spec}}
                                           (operator): the shadow becomes a canary
    ANY  /v1/shadow/{flag}/{path}          the gateway's mirrored copy (gateway token): nginx
                                           `mirror` sends it with X-Route-Variant and
                                           X-Route-Decision-Id; answered 202/204 at once

The mirror itself is a component (`Components.shadow`, built by `build_components`, hooked
into the dispatcher there and started by `lifecycle`); endpoints get it as `MirrorDep`. The app
includes `router` and, behind the gateway token, `gateway_router`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from control_plane.errors import BadRequestInput, FlagNotFound
from control_plane.experiments.canary.spec import parse_spec
from control_plane.http.bodies import read_body, read_json_body
from control_plane.http.components import Components
from control_plane.http.deps import ComponentsDep, MirrorDep, OperatorDep, ViewerDep
from control_plane.http.schemas import problems
from control_plane.routing.forwarding import ForwardPolicy, resolve_path
from control_plane.shadow.mirror import ShadowMirror
from control_plane.shadow.promote import promote_shadow

__all__ = ["gateway_router", "router"]

router = APIRouter(tags=["shadow traffic"])
_MAX_PROMOTE_BODY = 64 * 1024
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: Headers of the gateway's subrequest that describe the decision, not the client's request.
_DECISION_HEADERS = frozenset(
    {
        "x-route-variant",
        "x-route-decision-id",
        "authorization",
        "content-length",
        "host",
        "connection",
    }
)


def _report(flag_key: str, mirror: ShadowMirror, components: Components) -> dict[str, Any]:
    store = components.store
    serving = store.loaded and flag_key in store.current.flags
    if not serving and flag_key not in mirror.results.flags():
        raise FlagNotFound(f"no flag named {flag_key!r} is serving")
    return {
        "flag": flag_key,
        "storage": "memory (this process, since it started)",
        "queued": mirror.queued,
        "shadows": mirror.results.report(flag_key, mirror.declared(flag_key)),
    }


@router.get(
    "/v1/shadows",
    summary="Flags that declare shadows, with their numbers",
    responses=problems(400, 401),
)
def list_shadows(
    principal: ViewerDep, mirror: MirrorDep, components: ComponentsDep
) -> dict[str, Any]:
    store = components.store
    declared = {key for key in store.current.flags if mirror.plans(key)} if store.loaded else set()
    items = []
    for key in sorted(declared | set(mirror.results.flags())):
        rows = mirror.results.report(key, mirror.declared(key))
        items.append(
            {
                "flag": key,
                "declared": key in declared,
                "shadows": [
                    {
                        name: row[name]
                        for name in (
                            "variant",
                            "backend",
                            "sample",
                            "mirrored",
                            "compared",
                            "diffRate",
                            "statusMismatches",
                            "droppedTotal",
                        )
                    }
                    for row in rows
                ],
            }
        )
    return {"items": items}


@router.get(
    "/v1/shadows/{flag_key}",
    summary="Shadow report of a flag, per shadow backend",
    responses=problems(400, 401, 404),
)
def shadow_report(
    flag_key: str, principal: ViewerDep, mirror: MirrorDep, components: ComponentsDep
) -> dict[str, Any]:
    return _report(flag_key, mirror, components)


@router.post(
    "/v1/shadows/{flag_key}/promote",
    status_code=201,
    summary="Turn a shadow into a canary: new variant, shadow removed, canary started",
    responses=problems(400, 401, 403, 404, 409, 412, 413, 422, 503),
)
async def promote(
    flag_key: str, request: Request, principal: OperatorDep, components: ComponentsDep
) -> dict[str, Any]:
    body = await read_json_body(request, required=True, limit=_MAX_PROMOTE_BODY)
    if not isinstance(body, dict) or set(body) - {"backend", "variant", "canary"}:
        raise BadRequestInput(
            'the body must be {"backend": NAME, "variant"?: NAME, "canary"?: {canary spec}}',
            source="body",
        )
    backend = body.get("backend")
    variant = body.get("variant")
    if not isinstance(backend, str) or not backend:
        raise BadRequestInput("body.backend must name the shadow backend", source="body.backend")
    if variant is not None and not isinstance(variant, str):
        raise BadRequestInput("body.variant must be a string", source="body.variant")
    spec = parse_spec(body.get("canary"))
    store = components.store
    flags = store.current.flags if store.loaded else {}
    result: dict[str, Any] = await run_in_threadpool(
        lambda: promote_shadow(
            flag_key,
            backend,
            flags=flags,
            editor=components.editor,
            canaries=components.experiments.service,
            actor=principal.name,
            spec=spec,
            variant_name=variant,
        )
    )
    return result


gateway_router = APIRouter(tags=["shadow traffic"])
#: A copy is answered at once and without a body; `x-shadow` says what became of it.
_COPY_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Queued for the shadow backends (x-shadow: queued)"},
    204: {"description": "Not queued (x-shadow: no-decision, not-sampled, dropped, ...)"},
    **problems(400, 401, 413),
}


async def _gateway_copy(
    flag_key: str, path: str, request: Request, mirror: ShadowMirror, components: Components
) -> Response:
    variant = request.headers.get("x-route-variant", "")
    decision_id = request.headers.get("x-route-decision-id", "")
    if not variant or not decision_id:
        # The gateway had no decision (it fell back): nothing to compare against.
        return Response(status_code=204, headers={"x-shadow": "no-decision"})
    resolved = resolve_path(path)  # a path leaving the backend prefix is a 400, never sent
    body = await read_body(request, limit=components.settings.shadow_max_body)
    policy: ForwardPolicy = components.dispatcher.policy
    headers = [
        (k, v)
        for k, v in policy.filter(request.headers.items())
        if k.lower() not in _DECISION_HEADERS
    ]
    headers += [("x-route-decision-id", decision_id), ("x-route-variant", variant)]
    outcome = mirror.on_mirror(
        flag_key, variant, decision_id, request.method, resolved, request.url.query, headers, body
    )
    return Response(status_code=202 if outcome == "queued" else 204, headers={"x-shadow": outcome})


@gateway_router.api_route(
    "/v1/shadow/{flag_key}/{path:path}",
    methods=_METHODS,
    summary="A request copy mirrored by the gateway (nginx `mirror`)",
    status_code=202,
    response_class=Response,
    responses=_COPY_RESPONSES,
)
async def gateway_copy(
    flag_key: str, path: str, request: Request, mirror: MirrorDep, components: ComponentsDep
) -> Response:
    return await _gateway_copy(flag_key, path, request, mirror, components)


@gateway_router.api_route(
    "/v1/shadow/{flag_key}",
    methods=_METHODS,
    summary="A mirrored copy of a request to the backend's root",
    status_code=202,
    response_class=Response,
    responses=_COPY_RESPONSES,
)
async def gateway_copy_root(
    flag_key: str, request: Request, mirror: MirrorDep, components: ComponentsDep
) -> Response:
    return await _gateway_copy(flag_key, "", request, mirror, components)
