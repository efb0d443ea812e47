"""Canary endpoints: start, pause, resume, abort (operator role) and read (viewer role).

    GET  /v1/canaries?active=true          runs, newest first
    POST /v1/canaries/{flag}               start (body: the canary spec, every field optional)
    GET  /v1/canaries/{flag}?after=ID      the active (else latest) run, events after ID
    POST /v1/canaries/{flag}/pause         body (optional): {"message": "why"}
    POST /v1/canaries/{flag}/resume
    POST /v1/canaries/{flag}/abort         canary weight to 0 at once

Every action is attributed to the token's name in the canary's events and the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from control_plane.errors import BadRequestInput, EventQueueFull
from control_plane.experiments.canary.service import CanaryService
from control_plane.experiments.canary.spec import parse_spec
from control_plane.http.bodies import read_json_body
from control_plane.http.deps import ExperimentsDep, OperatorDep, ViewerDep
from control_plane.http.experiments_api import MAX_BODY

__all__ = ["router"]

router = APIRouter(tags=["canaries"])

_MAX_MESSAGE = 2000


def _service(experiments: Any) -> CanaryService:
    service: CanaryService | None = experiments.service
    if service is None:
        raise EventQueueFull("the canary controller is not started yet; retry shortly")
    return service


async def _message(request: Request) -> str:
    body = await read_json_body(request, required=False, limit=MAX_BODY)
    if body is None:
        return ""
    if not isinstance(body, dict) or set(body) - {"message"}:
        raise BadRequestInput('the body must be {"message": "why"} or empty', source="body")
    message = body.get("message", "")
    if not isinstance(message, str) or len(message) > _MAX_MESSAGE:
        raise BadRequestInput(f"body.message must be a string of at most {_MAX_MESSAGE} "
                              "characters", source="body.message")
    return message


@router.get("/v1/canaries", summary="Canary runs, newest first")
def list_canaries(principal: ViewerDep, experiments: ExperimentsDep,
                  active: Annotated[bool, Query(description="only running or paused")] = False,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    return {"items": _service(experiments).list_runs(active_only=active, limit=limit)}


@router.post("/v1/canaries/{flag_key}", status_code=201,
             summary="Start a progressive canary on a routing flag")
async def start_canary(flag_key: str, request: Request, principal: OperatorDep,
                       experiments: ExperimentsDep) -> JSONResponse:
    spec = parse_spec(await read_json_body(request, required=False, limit=MAX_BODY))
    service = _service(experiments)
    body = await run_in_threadpool(service.start, flag_key, spec, principal.name)
    return JSONResponse(body, status_code=201)


@router.get("/v1/canaries/{flag_key}", summary="A flag's canary: state, step, numbers, events")
def canary_status(flag_key: str, principal: ViewerDep, experiments: ExperimentsDep,
                  after: Annotated[int, Query(ge=0, description="only events after this id")]
                  = 0) -> dict[str, Any]:
    return _service(experiments).status(flag_key, after_event=after)


async def _act(action: Callable[..., dict[str, Any]], flag_key: str, request: Request,
               principal_name: str) -> dict[str, Any]:
    message = await _message(request)
    result: dict[str, Any] = await run_in_threadpool(action, flag_key, principal_name, message)
    return result


@router.post("/v1/canaries/{flag_key}/pause", summary="Hold the canary at its current weight")
async def pause_canary(flag_key: str, request: Request, principal: OperatorDep,
                       experiments: ExperimentsDep) -> dict[str, Any]:
    return await _act(_service(experiments).pause, flag_key, request, principal.name)


@router.post("/v1/canaries/{flag_key}/resume", summary="Continue a paused canary")
async def resume_canary(flag_key: str, request: Request, principal: OperatorDep,
                        experiments: ExperimentsDep) -> dict[str, Any]:
    return await _act(_service(experiments).resume, flag_key, request, principal.name)


@router.post("/v1/canaries/{flag_key}/abort", summary="Stop the canary: its weight goes to 0")
async def abort_canary(flag_key: str, request: Request, principal: OperatorDep,
                       experiments: ExperimentsDep) -> dict[str, Any]:
    return await _act(_service(experiments).abort, flag_key, request, principal.name)
