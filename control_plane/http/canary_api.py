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
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from control_plane.errors import EventQueueFull
from control_plane.experiments.canary.service import CanaryService
from control_plane.experiments.canary.spec import CanarySpec, parse_spec
from control_plane.http.bodies import read_json_body
from control_plane.http.deps import ExperimentsDep, OperatorDep, ViewerDep
from control_plane.http.experiments_api import MAX_BODY
from control_plane.http.schemas import OpenWireModel, json_body, parse_body, problems

__all__ = ["router"]

router = APIRouter(tags=["canaries"])

_MAX_MESSAGE = 2000


def _service(experiments: Any) -> CanaryService:
    service: CanaryService | None = experiments.service
    if service is None:
        raise EventQueueFull("the canary controller is not started yet; retry shortly")
    return service


class CanaryAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(
        default="",
        max_length=_MAX_MESSAGE,
        description="Why (kept in the run's events and the audit log)",
    )


class CanaryRun(OpenWireModel):
    """A canary run; `status` adds its events and, while it runs, the current numbers."""

    id: int
    flag: str
    state: str = Field(description="running, paused, promoted, rolled_back or aborted")
    weight: int | float
    step: int
    steps: list[int | float]
    spec: dict[str, Any]
    started_at: str
    step_started_at: str
    updated_at: str
    finished_at: str | None
    reason: str | None
    created_by: str | None


class CanaryStatus(CanaryRun):
    events: list[dict[str, Any]]
    controller: dict[str, Any] | None = Field(
        default=None, description='{"leader": true} on the control plane that steps canaries'
    )


class CanaryRuns(BaseModel):
    items: list[CanaryRun]


#: Reads: bad request (400), no token (401), controller not started (503).
_READ = problems(400, 401, 503)
#: Actions: also the role (403), no such run (404), not in a state for it (409), big body.
_ACT = problems(400, 401, 403, 404, 409, 413, 503)
_ACTION_BODY = json_body(CanaryAction, required=False, description='Optional: {"message": "why"}')


async def _message(request: Request) -> str:
    body = await read_json_body(request, required=False, limit=MAX_BODY)
    return "" if body is None else parse_body(CanaryAction, body).message


@router.get(
    "/v1/canaries", summary="Canary runs, newest first", response_model=CanaryRuns, responses=_READ
)
def list_canaries(
    principal: ViewerDep,
    experiments: ExperimentsDep,
    active: Annotated[bool, Query(description="only running or paused")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    return {"items": _service(experiments).list_runs(active_only=active, limit=limit)}


@router.post(
    "/v1/canaries/{flag_key}",
    status_code=201,
    summary="Start a progressive canary on a routing flag",
    response_model=CanaryStatus,
    # 422: a spec that cannot run on this flag (errors name each field)
    responses={**_ACT, **problems(422)},
    openapi_extra=json_body(
        CanarySpec, required=False, description="The canary spec; every field is optional"
    ),
)
async def start_canary(
    flag_key: str, request: Request, principal: OperatorDep, experiments: ExperimentsDep
) -> JSONResponse:
    spec = parse_spec(await read_json_body(request, required=False, limit=MAX_BODY))
    service = _service(experiments)
    body = await run_in_threadpool(service.start, flag_key, spec, principal.name)
    return JSONResponse(body, status_code=201)


@router.get(
    "/v1/canaries/{flag_key}",
    summary="A flag's canary: state, step, numbers, events",
    response_model=CanaryStatus,
    responses={**_READ, **problems(404)},
)
def canary_status(
    flag_key: str,
    principal: ViewerDep,
    experiments: ExperimentsDep,
    after: Annotated[int, Query(ge=0, description="only events after this id")] = 0,
) -> dict[str, Any]:
    body = _service(experiments).status(flag_key, after_event=after)
    # Whether this control plane is the one stepping canaries (canary/leadership.py).
    body["controller"] = {"leader": experiments.controller.leadership.leader}
    return body


async def _act(
    action: Callable[..., dict[str, Any]], flag_key: str, request: Request, principal_name: str
) -> dict[str, Any]:
    message = await _message(request)
    result: dict[str, Any] = await run_in_threadpool(action, flag_key, principal_name, message)
    return result


@router.post(
    "/v1/canaries/{flag_key}/pause",
    summary="Hold the canary at its current weight",
    response_model=CanaryStatus,
    responses=_ACT,
    openapi_extra=_ACTION_BODY,
)
async def pause_canary(
    flag_key: str, request: Request, principal: OperatorDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    return await _act(_service(experiments).pause, flag_key, request, principal.name)


@router.post(
    "/v1/canaries/{flag_key}/resume",
    summary="Continue a paused canary",
    response_model=CanaryStatus,
    responses=_ACT,
    openapi_extra=_ACTION_BODY,
)
async def resume_canary(
    flag_key: str, request: Request, principal: OperatorDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    return await _act(_service(experiments).resume, flag_key, request, principal.name)


@router.post(
    "/v1/canaries/{flag_key}/abort",
    summary="Stop the canary: its weight goes to 0",
    response_model=CanaryStatus,
    responses=_ACT,
    openapi_extra=_ACTION_BODY,
)
async def abort_canary(
    flag_key: str, request: Request, principal: OperatorDep, experiments: ExperimentsDep
) -> dict[str, Any]:
    return await _act(_service(experiments).abort, flag_key, request, principal.name)
