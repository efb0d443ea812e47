"""The app factory: wires settings into components and routers. Nothing is built at import."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from openfeature import api as openfeature_api
from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.auth import GatewayTokenChecker, Role
from control_plane.console import install_console
from control_plane.db import Database
from control_plane.db.engine import DatabaseTimeouts
from control_plane.db.migrator import BackgroundMigrator
from control_plane.distribution.sync_server import serve_from_settings
from control_plane.errors import FlagValidationError
from control_plane.experiments.wiring import install_experiments
from control_plane.flagstore import FlagStore
from control_plane.flagstore.db_recorder import DatabaseRecorder
from control_plane.http import flags_status, health, ofrep, routing_api, tester_api
from control_plane.http.admin_api import install_admin_api, require_gateway_token, require_role
from control_plane.http.components import Components
from control_plane.http.fastpath import DecideFastPath
from control_plane.http.metrics import RouterMetrics
from control_plane.http.problems import install_problem_handlers, send_problem
from control_plane.http.request_target import unsafe_target
from control_plane.observability.request_log import log_decision, log_dispatch
from control_plane.observability.tracing import tracing_from_settings
from control_plane.routing.context import ContextMapper
from control_plane.routing.decisions import Decider
from control_plane.routing.tester_tokens import TesterTokens
from control_plane.routing.dispatch import Dispatcher
from control_plane.routing.forwarding import ForwardPolicy
from control_plane.settings import Settings
from providers import quiet_anonymous_fractional, source_fed_provider

__all__ = ["build_components", "create_app"]

log = logging.getLogger(__name__)
_app_ids = itertools.count(1)


def build_components(settings: Settings) -> Components:
    """Everything an app instance needs, unstarted (no threads, no files read yet)."""
    database = Database.from_url(settings.database_url,
                                 timeouts=DatabaseTimeouts.from_settings(settings))
    store = FlagStore(settings.flags_dir, reload_interval=settings.reload_interval,
                      recorder=DatabaseRecorder(database),
                      deletion_settle=settings.deletion_settle)
    # One OpenFeature domain per app instance, so several apps (tests) never share a provider.
    domain = f"control-plane-{next(_app_ids)}"
    client = openfeature_api.get_client(domain)
    tracing = tracing_from_settings(settings)  # no tracer (and no hook) unless configured
    client.add_hooks(tracing.openfeature_hooks())
    metrics = RouterMetrics()
    tester_tokens = (TesterTokens(settings.tester_token_key.get_secret_value())
                     if settings.tester_token_key else None)
    components = Components(
        settings=settings, store=store, openfeature_domain=domain,
        openfeature_client=client,
        mapper=ContextMapper(settings.header_rules, max_header_bytes=settings.max_header_bytes,
                             tester_tokens=tester_tokens),
        tester_tokens=tester_tokens,
        decider=Decider(client, store, tracer=tracing.tracer), metrics=metrics, database=database,
        gateway=GatewayTokenChecker.from_settings(settings), tracing=tracing,
    )
    components.decider.listeners.append(components.observe_decision)
    components.decider.listeners.append(log_decision)
    return components


async def _start(components: Components) -> None:
    settings = components.settings
    store = components.store
    components.tracing.start()  # the OTLP exporter, when configured
    # Routing never waits for the database (issue 9): migrate before the first reload records
    # a version when the database answers within its connect timeout; else serve without it
    # (DatabaseRecorder serves the first flag set unrecorded) and keep migrating in the
    # background. A minimal change; the app wiring is being restructured.
    migrator = BackgroundMigrator(components.database)
    migrator.start(wait=settings.database_connect_timeout + 1.0)
    components.closers.append(migrator.stop)
    reloads = components.metrics.flag_reloads
    for result in ("ok", "refused"):
        # Exported at 0 from the start, so that increase() in alerts sees the first refusal.
        reloads.labels(result)
    store.subscribe_reloads(lambda outcome: reloads.labels("ok" if outcome.ok else "refused").inc())
    try:
        store.reload()
    except FlagValidationError as exc:
        log.error("flags in %s are invalid; not ready until fixed: %s", store.directory,
                  exc.detail)
    quiet_anonymous_fractional()  # requests without a user id are traffic, not errors
    components.provider = source_fed_provider(store)
    openfeature_api.set_provider_and_wait(components.provider,
                                          domain=components.openfeature_domain)
    store.start()
    # Replicas (any flagd in-process provider) sync flags from here over flagd.sync.v1, on
    # settings.sync_host (loopback by default), with TLS and tokens when configured.
    sync = serve_from_settings(store, settings)
    if sync is not None:
        components.closers.append(sync.stop)
    components.dispatcher = Dispatcher(timeout=settings.dispatch_timeout,
                                       max_connections=settings.dispatch_max_connections,
                                       tracer=components.tracing.tracer,
                                       # which headers reach backends (dispatch_strip_headers)
                                       policy=ForwardPolicy.from_settings(settings))
    components.dispatcher.listeners.append(components.observe_dispatch)
    components.dispatcher.listeners.append(log_dispatch)
    # -- gateway outcomes (control_plane.gateway): nginx's JSON access log over UDP syslog,
    # one backend call per line, fed to the dispatcher's listeners (metrics, canaries,
    # experiments) as if the dispatch proxy had made the call. Off unless CP_GATEWAY_LOG_PORT.
    if settings.gateway_log_port:
        from control_plane.gateway.syslog_listener import start_gateway_log

        closer = await start_gateway_log(components)
        if closer is not None:
            components.closers.append(closer)


async def _stop(components: Components) -> None:
    for closer in reversed(components.closers):
        try:
            result = closer()
            if hasattr(result, "__await__"):
                await result
        except Exception:  # one failing closer must not keep the others from running
            log.exception("error while shutting down")
    components.store.stop()
    components.database.dispose()
    if components.dispatcher is not None:
        await components.dispatcher.aclose()
    if components.provider is not None:
        components.provider.shutdown()
    components.tracing.shutdown()  # flushes spans still queued for export


def create_app(settings: Settings | None = None) -> FastAPI:
    """The control plane's ASGI app for `settings` (environment and defaults when None)."""
    settings = settings or Settings()
    components = build_components(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _start(components)
        try:
            yield
        finally:
            await _stop(components)

    app = ControlPlaneApp(title="Model routing control plane", version="0.1.0",
                          lifespan=lifespan, telemetry=components.tracing.fastapi_telemetry(),
                          # No /x -> /x/ redirects: Starlette builds their absolute Location
                          # from the client's Host header. Routes that need both forms
                          # register both (/console, /v1/dispatch/{flag}); others are a 404.
                          redirect_slashes=False)
    app.state.components = components
    app.state.settings = settings
    app.state.store = components.store
    app.state.openfeature_client = components.openfeature_client
    install_problem_handlers(app)
    app.include_router(health.router)
    gateway_only = [Depends(require_gateway_token)]
    app.include_router(routing_api.router, dependencies=gateway_only)
    app.include_router(ofrep.router, dependencies=gateway_only)
    # The status route must precede the admin router's /v1/flags/{key}.
    app.include_router(flags_status.router, dependencies=[Depends(require_role(Role.VIEWER))])
    install_admin_api(app, settings=settings, store=components.store,
                      database=components.database)
    app.include_router(tester_api.router)  # operators issue tester tokens (pins)
    # /v1/events, /v1/experiments, /v1/canaries; starts (writer, controller) after _start.
    install_experiments(app, components, database=components.database)
    install_console(app, components)  # /console, /v1/traffic, canary timelines
    if settings.fast_decide:
        app.fast_path = DecideFastPath(super(ControlPlaneApp, app).__call__, components)
    return app


class ControlPlaneApp(FastAPI):
    """FastAPI, with the decide fast path in front of its whole middleware stack.

    Installed as a Starlette middleware, the fast path would still pay for the error,
    telemetry and body-limit middleware on every gateway request; here it pays for nothing.
    """

    fast_path: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refused := unsafe_target(scope)) is not None:
            await send_problem(send, refused)  # a NUL in the path never reaches a route
            return
        if self.fast_path is not None:
            await self.fast_path(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
