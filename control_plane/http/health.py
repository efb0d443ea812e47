"""Liveness, readiness and Prometheus metrics.

`/healthz` and `/readyz` are always open (orchestrators probe them without credentials; they
say only up/ready and the flag set version). `/metrics` is open by default too, and needs a
viewer (or higher) admin token when `Settings.metrics_require_auth` is on: Prometheus sends
it with `authorization: {credentials_file: ...}` in its scrape config.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from control_plane.auth import Role
from control_plane.http.components import Components, RoutingComponents
from control_plane.http.deps import ComponentsDep
from control_plane.http.schemas import WireModel, problems

__all__ = ["refresh_metrics", "router"]

router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: Literal["ok"]


class Ready(WireModel):
    status: Literal["ready"]
    flag_set_version: int
    flag_set_hash: str


class NotReady(BaseModel):
    status: Literal["not ready"]
    detail: str


@router.get("/healthz", summary="The process is up", responses=problems(400))
async def healthz() -> Alive:
    return Alive(status="ok")


@router.get(
    "/readyz",
    summary="Ready once a valid flag set is loaded",
    response_model=Ready,
    responses={503: {"model": NotReady, "description": "No valid flag set yet"}, **problems(400)},
)
async def readyz(components: ComponentsDep) -> Response:
    store = components.store
    replica = components.replica
    # A replica says where it syncs from and how stale it is (it keeps serving its last set).
    extra = {"replica": replica.status()} if replica is not None else {}
    if not store.loaded:
        detail = store.last_error.detail if store.last_error else "flags are loading"
        if replica is not None and not replica.documents:
            detail = f"waiting for the first flag set from {replica.target.address}"
        return JSONResponse({"status": "not ready", "detail": detail, **extra}, status_code=503)
    flag_set = store.current
    return JSONResponse(
        {
            "status": "ready",
            "flagSetVersion": flag_set.version,
            "flagSetHash": flag_set.content_hash,
            **extra,
        }
    )


def metrics_access(request: Request, components: ComponentsDep) -> None:
    """Pass, or (with `metrics_require_auth`) 401/403 unless a viewer+ token is presented.

    A sync dependency, so a database-held token is looked up on the thread pool.
    """
    if not components.settings.metrics_require_auth:
        return
    authenticator = components.authenticator
    principal = authenticator.authenticate(request.headers.get("authorization"))
    authenticator.authorize(principal, Role.VIEWER)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(metrics_access)],
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        },
        # 401/403 only with CP_METRICS_REQUIRE_AUTH on
        **problems(400, 401, 403),
    },
)
async def metrics(components: ComponentsDep) -> Response:
    registry = components.metrics.registry
    refresh_metrics(components)
    # -- workers (control_plane.workers): with `serve --workers N`, every process's metrics
    # on one page, with a `worker` label (the primary is "0").
    if isinstance(components, Components) and components.workers is not None:
        return Response(
            await components.workers.exposition(registry), media_type=CONTENT_TYPE_LATEST
        )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def refresh_metrics(components: RoutingComponents) -> None:
    """Set the gauges read at scrape time (also for a worker's internal scrape)."""
    if components.replica is not None:
        components.metrics.replica_connected.set(1 if components.replica.connected else 0)
        components.metrics.replica_stale.set(components.replica.stale_seconds())
    if components.store.loaded:
        components.metrics.flag_set_version.set(components.store.current.version)
