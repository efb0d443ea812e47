"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from control_plane.http.deps import ComponentsDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready once a valid flag set is loaded")
async def readyz(components: ComponentsDep) -> Response:
    store = components.store
    if not store.loaded:
        detail = store.last_error.detail if store.last_error else "flags are loading"
        return JSONResponse({"status": "not ready", "detail": detail}, status_code=503)
    flag_set = store.current
    return JSONResponse({"status": "ready", "flagSetVersion": flag_set.version,
                         "flagSetHash": flag_set.content_hash})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(components: ComponentsDep) -> Response:
    registry = components.metrics.registry
    if components.store.loaded:
        components.metrics.flag_set_version.set(components.store.current.version)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
