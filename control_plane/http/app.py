"""The app factory: one container of components, the routers, the lifespan. Nothing at import.

    app = create_app(settings)     # builds every component (control_plane.http.components)
    app.state.components           # the container: the only app state

The lifespan starts the components (control_plane.http.lifecycle) and stops them on shutdown.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from control_plane.auth import Role
from control_plane.console import canary_timeline, pages, traffic_api
from control_plane.http import (
    admin_api,
    canary_api,
    experiments_api,
    flags_status,
    health,
    lifecycle,
    ofrep,
    routing_api,
    shadow_api,
    tester_api,
)
from control_plane.http.components import (
    Components,
    RoutingComponents,
    build_components,
    build_replica_components,
)
from control_plane.http.deps import require_gateway_token, require_role
from control_plane.http.fastpath import DecideFastPath
from control_plane.http.problems import install_problem_handlers, send_problem
from control_plane.http.request_target import unsafe_target
from control_plane.http.schemas import complete_openapi
from control_plane.settings import Settings

__all__ = ["ControlPlaneApp", "create_app"]


def create_app(settings: Settings | None = None) -> ControlPlaneApp:
    """The control plane's ASGI app for `settings` (environment and defaults when None)."""
    settings = settings or Settings()
    # A replica (CP_REPLICA_OF) routes from flags it syncs; it has no database and no admin API.
    components: RoutingComponents = (
        build_replica_components(settings) if settings.replica_of else build_components(settings)
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await lifecycle.start(components)
        try:
            yield
        finally:
            await lifecycle.stop(components)

    app = ControlPlaneApp(
        title="Model routing control plane",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=components.tracing.fastapi_telemetry(),
        # No /x -> /x/ redirects: Starlette builds their absolute Location
        # from the client's Host header. Routes that need both forms
        # register both (/console, /v1/dispatch/{flag}); others are a 404.
        redirect_slashes=False,
        # operationIds are the endpoint names (unique in the app; methods of
        # a multi-method route get a suffix in ControlPlaneApp.openapi).
        generate_unique_id_function=_operation_id,
    )
    app.state.components = components
    install_problem_handlers(app)
    app.include_router(health.router)
    gateway_only = [Depends(require_gateway_token)]
    app.include_router(routing_api.router, dependencies=gateway_only)
    app.include_router(ofrep.router)  # OFREP checks Bearer or X-API-Key itself
    if isinstance(components, Components):  # the control plane's own APIs (not on replicas)
        # The status route must precede the admin router's /v1/flags/{key}.
        app.include_router(flags_status.router, dependencies=[Depends(require_role(Role.VIEWER))])
        app.include_router(admin_api.router)
        app.include_router(tester_api.router)  # operators issue tester tokens (pins)
        app.include_router(experiments_api.router)  # /v1/events, /v1/experiments
        app.include_router(canary_api.router)
        app.include_router(traffic_api.router)  # the console's JSON: /v1/traffic, timelines
        app.include_router(canary_timeline.router)
        app.include_router(pages.router)  # /console
        # -- shadow traffic (control_plane.shadow): reports and promotion, and the gateway's
        # mirrored copies (the mirror itself is Components.shadow).
        app.include_router(shadow_api.router)
        app.include_router(shadow_api.gateway_router, dependencies=gateway_only)
    if settings.fast_decide:
        app.fast_path = DecideFastPath(super(ControlPlaneApp, app).__call__, components)
    return app


def _operation_id(route: APIRoute) -> str:
    return route.name


class ControlPlaneApp(FastAPI):
    """FastAPI, with the decide fast path in front of its whole middleware stack.

    Installed as a Starlette middleware, the fast path would still pay for the error,
    telemetry and body-limit middleware on every gateway request; here it pays for nothing.
    """

    fast_path: DecideFastPath | None = None

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, finished by `control_plane.http.schemas.complete_openapi`."""
        fresh = self.openapi_schema is None
        with warnings.catch_warnings():
            # FastAPI gives every method of a multi-method route one id and warns about it;
            # complete_openapi suffixes those with the method (the contract test checks that
            # the finished document has no duplicate left).
            warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
            document = super().openapi()
        return complete_openapi(document) if fresh else document

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refused := unsafe_target(scope)) is not None:
            await send_problem(send, refused)  # a NUL in the path never reaches a route
            return
        if self.fast_path is not None:
            await self.fast_path(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
