"""Starting and stopping one app's components, in the app's lifespan.

Startup order matters: the database migrates (in the background when it does not answer:
routing never waits for it), the flag set loads, the OpenFeature provider is registered with it,
then the services that serve others start (flag watcher, sync port, gateway outcome listener,
experiment writer and canary controller). Shutdown runs the closers in reverse, then releases
the rest.
"""

from __future__ import annotations

import logging

from openfeature import api as openfeature_api

from control_plane.db.migrator import BackgroundMigrator
from control_plane.distribution.sync_client import ReplicaSync
from control_plane.distribution.sync_server import serve_from_settings
from control_plane.errors import FlagValidationError
from control_plane.http.components import Components, RoutingComponents
from providers import quiet_anonymous_fractional

__all__ = ["start", "stop"]

log = logging.getLogger(__name__)


async def start(components: RoutingComponents) -> None:
    settings = components.settings
    store = components.store
    components.tracing.start()  # the OTLP exporter, when configured
    reloads = components.metrics.flag_reloads
    for result in ("ok", "refused"):
        # Exported at 0 from the start, so that increase() in alerts sees the first refusal.
        reloads.labels(result)
    # A reload that went live but refused some flags (partial acceptance) counts as refused:
    # the alert on refused edits must fire whether the whole edit or one flag was refused.
    store.subscribe_reloads(
        lambda outcome: reloads.labels(
            "ok" if outcome.ok and not outcome.refused else "refused"
        ).inc()
    )
    quiet_anonymous_fractional()  # requests without a user id are traffic, not errors
    if components.events is not None:  # CP_EVENTS_URL: the JetStream record pipeline
        components.events.start()
        components.closers.append(components.events.stop)
    if components.replica is not None:
        await _start_replica(components, components.replica)
        return
    if not isinstance(components, Components):  # pragma: no cover - built by build_components
        raise TypeError("a control plane needs the full Components")
    # Migrate before the first reload records a version when the database answers within
    # its connect timeout; else serve without it (DatabaseRecorder serves the first flag set
    # unrecorded) and keep migrating in the background.
    migrator = BackgroundMigrator(components.database)
    migrator.start(wait=settings.database_connect_timeout + 1.0)
    components.closers.append(migrator.stop)
    try:
        store.reload()
    except FlagValidationError as exc:
        log.error("flags in %s are invalid; not ready until fixed: %s", store.directory, exc.detail)
    openfeature_api.set_provider_and_wait(components.provider, domain=components.openfeature_domain)
    store.start()
    components.closers.append(store.stop)
    # Replicas (any flagd in-process provider) sync flags from here over flagd.sync.v1, on
    # settings.sync_host (loopback by default), with TLS and tokens when configured.
    sync = serve_from_settings(store, settings)
    if sync is not None:
        components.closers.append(sync.stop)
    # Gateway outcomes (control_plane.gateway): nginx's JSON access log over UDP syslog, one
    # backend call per line, fed to the dispatcher's listeners (metrics, canaries,
    # experiments) as if the dispatch proxy had made the call. Off unless CP_GATEWAY_LOG_PORT.
    if settings.gateway_log_port:
        from control_plane.gateway.syslog_listener import start_gateway_log

        closer = await start_gateway_log(components)
        if closer is not None:
            components.closers.append(closer)
    components.experiments.start()
    components.closers.append(components.experiments.stop)
    await components.shadow.start()  # shadow workers; stopped first, before the rest
    components.closers.append(components.shadow.aclose)


async def _start_replica(components: RoutingComponents, replica: ReplicaSync) -> None:
    """Serve what the replica kept from its last sync, then follow the primary."""
    replica.start()
    components.closers.append(replica.stop)
    openfeature_api.set_provider_and_wait(components.provider, domain=components.openfeature_domain)
    if components.events is not None:
        exposures = "published to JetStream"
    elif any(
        getattr(listener, "__name__", "") == "on_decision"
        for listener in components.decider.listeners
    ):
        exposures = "recorded by this process's writer"  # a --workers decide worker
    else:
        exposures = "not recorded (set CP_EVENTS_URL to publish them)"
    log.info(
        "routing replica of %s: flags in %s; exposures %s",
        replica.target.address,
        components.store.directory,
        exposures,
    )


async def stop(components: RoutingComponents) -> None:
    for closer in reversed(components.closers):
        try:
            result = closer()
            if hasattr(result, "__await__"):
                await result
        except Exception:  # one failing closer must not keep the others from running
            log.exception("error while shutting down")
    components.closers.clear()
    if isinstance(components, Components):
        components.database.dispose()
    await components.dispatcher.aclose()
    components.provider.shutdown()
    components.tracing.shutdown()  # flushes spans still queued for export
