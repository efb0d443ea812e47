"""The composition root: every component of one app instance, built complete by one function.

`build_components(settings)` creates everything an app uses, unstarted (no thread, no socket,
no file read beyond the console's static assets): nothing is None until startup and nothing is
created inside a request. The decision and dispatch listeners are attached here, in one place.
`control_plane.http.lifecycle` starts and stops what needs it; `create_app` keeps the container
on `app.state.components`, the only app state there is, and endpoints reach it through the
dependency aliases in `control_plane.http.deps`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openfeature import api as openfeature_api
from openfeature.client import OpenFeatureClient
from openfeature.provider import FeatureProvider

from control_plane.auth import Authenticator, GatewayTokenChecker
from control_plane.console.assets import Asset, load_assets
from control_plane.console.traffic import TrafficTracker
from control_plane.db import Database
from control_plane.db.engine import DatabaseTimeouts
from control_plane.distribution.ofrep_eval import OfrepEvaluator
from control_plane.distribution.rate_limit import TokenBucketLimiter
from control_plane.distribution.sync_client import PrimaryVersions, ReplicaSync, ReplicaTarget
from control_plane.events.wiring import EventPipeline, build_pipeline, build_replica_pipeline
from control_plane.experiments.runtime import Experiments
from control_plane.flagstore import FlagStore
from control_plane.flagstore.db_recorder import DatabaseRecorder
from control_plane.flagstore.editor import FlagEditor
from control_plane.http.metrics import RouterMetrics
from control_plane.observability.request_log import log_decision, log_dispatch
from control_plane.observability.tracing import Tracing, tracing_from_settings
from control_plane.routing.compiled_decisions import CompiledDecider
from control_plane.routing.context import ContextMapper
from control_plane.routing.decisions import Decider, Decision, DecisionIds
from control_plane.routing.dispatch import Dispatcher, DispatchOutcome
from control_plane.routing.forwarding import ForwardPolicy
from control_plane.routing.tester_tokens import TesterTokens
from control_plane.settings import Settings
from control_plane.shadow.mirror import ShadowMirror
from control_plane.shadow.wiring import build_mirror
from control_plane.workers.supervisor import WorkerPool
from providers.compiled import CompiledProvider

__all__ = ["Components", "RoutingComponents", "build_components", "build_replica_components"]

_app_ids = itertools.count(1)


@dataclass(frozen=True, eq=False, kw_only=True)
class RoutingComponents:
    """What routes requests: all a replica has, and the part of a control plane it shares."""

    settings: Settings
    store: FlagStore
    #: One OpenFeature domain per app instance, so several apps (tests) never share a provider.
    openfeature_domain: str
    openfeature_client: OpenFeatureClient
    #: The OpenFeature provider fed by `store` (the compiled flagd evaluator, which answers as
    #: flagd-core does: tests/test_compiled_*); registered for the domain at startup. Not
    #: flagd-core itself: it loads the whole document at every edit (0.3 s at 10,000 flags).
    provider: FeatureProvider
    tracing: Tracing
    metrics: RouterMetrics
    mapper: ContextMapper
    decider: Decider
    #: The lean /v1/decide path (compiled evaluator, prebuilt answers); same listeners.
    compiled_decider: CompiledDecider
    dispatcher: Dispatcher
    #: Admin API tokens (settings first, then the database when there is one).
    authenticator: Authenticator
    #: The routing API's gateway token check, shared by the FastAPI routes and the fast path.
    gateway: GatewayTokenChecker
    ofrep: OfrepEvaluator
    #: OFREP's per-client rate limit (CP_OFREP_RATE_LIMIT; off at 0).
    ofrep_limiter: TokenBucketLimiter
    traffic: TrafficTracker
    #: Issues and verifies tester tokens (pins); None when no tester token key is set.
    tester_tokens: TesterTokens | None = None
    #: Replica mode: the stream that keeps `store` following the primary (None on a primary).
    replica: ReplicaSync | None = None
    #: CP_EVENTS_URL: experiment records go to NATS JetStream (control_plane.events).
    events: EventPipeline | None = None
    #: Started services to stop on shutdown (sync server, listeners), filled at startup.
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def observe_decision(self, decision: Decision, seconds: float) -> None:
        """Decider listener: count and time the decision (control_plane.http.decision_metrics)."""
        self.metrics.decisions.observe(
            decision.flag_key,
            decision.variant,
            decision.reason,
            seconds,
            anonymous=decision.targeting_key is None,
        )

    def observe_dispatch(self, outcome: DispatchOutcome) -> None:
        flag = outcome.decision.flag_key
        status_class = f"{outcome.status // 100}xx" if outcome.status else outcome.error or "none"
        self.metrics.dispatches.labels(flag, outcome.variant, status_class).inc()
        self.metrics.dispatch_latency.labels(flag, outcome.variant).observe(outcome.seconds)


@dataclass(frozen=True, eq=False, kw_only=True)
class Components(RoutingComponents):
    """A control plane: routing plus the flag store's history, edits, experiments, console."""

    database: Database
    #: The one flag editor: operators' and canaries' writes are serialised by it.
    editor: FlagEditor
    experiments: Experiments
    console_assets: Mapping[str, Asset]
    #: Shadow traffic: copies of sampled dispatches to candidate backends, compared.
    shadow: ShadowMirror
    #: serve --workers N (N > 1): the decide workers this primary starts (control_plane
    #: .workers); started by `control-plane serve`, None with one process.
    workers: WorkerPool | None = None


def _routing_parts(
    settings: Settings, tracing: Tracing, tester_tokens: TesterTokens | None
) -> dict[str, Any]:
    """The request mapper and the dispatch proxy, built alike for a control plane and a replica."""
    return {
        "mapper": ContextMapper(
            settings.header_rules,
            max_header_bytes=settings.max_header_bytes,
            tester_tokens=tester_tokens,
        ),
        "dispatcher": Dispatcher(
            timeout=settings.dispatch_timeout,
            max_connections=settings.dispatch_max_connections,
            tracer=tracing.tracer,
            # which headers reach backends (dispatch_strip_headers)
            policy=ForwardPolicy.from_settings(settings),
        ),
    }


def build_components(settings: Settings) -> Components:
    """Every component for `settings`, unstarted."""
    database = Database.from_url(
        settings.database_url, timeouts=DatabaseTimeouts.from_settings(settings)
    )
    store = FlagStore(
        settings.flags_dir,
        reload_interval=settings.reload_interval,
        recorder=DatabaseRecorder(database),
        deletion_settle=settings.deletion_settle,
        strict=settings.flags_strict,
    )  # CP_FLAGS_STRICT: all-or-nothing reloads
    domain = f"control-plane-{next(_app_ids)}"
    client = openfeature_api.get_client(domain)
    tracing = tracing_from_settings(settings)  # no tracer (and no hook) unless configured
    client.add_hooks(tracing.openfeature_hooks())
    metrics = RouterMetrics()
    tester_tokens = (
        TesterTokens(settings.tester_token_key.get_secret_value())
        if settings.tester_token_key
        else None
    )
    editor = FlagEditor(store)
    decider = Decider(client, store, tracer=tracing.tracer, ids=DecisionIds())
    compiled_decider = CompiledDecider(store, ids=decider.ids, listeners=decider.listeners)
    store.subscribe(compiled_decider.update)  # compiles each flag set the store loads
    experiments = Experiments.build(
        settings, database=database, store=store, editor=editor, registry=metrics.registry
    )
    components = Components(
        settings=settings,
        database=database,
        store=store,
        openfeature_domain=domain,
        openfeature_client=client,
        provider=CompiledProvider(store),
        tracing=tracing,
        metrics=metrics,
        **_routing_parts(settings, tracing, tester_tokens),
        decider=decider,
        compiled_decider=compiled_decider,
        authenticator=Authenticator.from_settings(settings, database),
        gateway=GatewayTokenChecker.from_settings(settings),
        editor=editor,
        experiments=experiments,
        # CP_EVENTS_URL: the recorder feeds JetStream, and this control plane stores from it.
        events=build_pipeline(
            settings,
            experiments.recorder,
            keys=experiments.keys,
            database=database,
            registry=metrics.registry,
        ),
        ofrep=OfrepEvaluator(client, store),
        ofrep_limiter=TokenBucketLimiter(settings.ofrep_rate_limit, settings.ofrep_rate_burst),
        traffic=TrafficTracker(),
        console_assets=load_assets(),
        shadow=build_mirror(settings, store=store, registry=metrics.registry),
        tester_tokens=tester_tokens,
        workers=WorkerPool(settings, metrics.registry) if settings.workers > 1 else None,
    )
    # Every listener, in one place. Decision listeners run on the request path: each only
    # counts or queues (see their docstrings).
    components.decider.listeners.extend(
        [
            components.observe_decision,
            log_decision,
            components.traffic.observe,
            components.experiments.recorder.on_decision,
        ]
    )
    components.dispatcher.listeners.extend(
        [
            components.observe_dispatch,
            log_dispatch,
            components.experiments.recorder.on_dispatch,
        ]
    )
    components.dispatcher.mirror = components.shadow.on_dispatch  # queues copies, never waits
    return components


def build_replica_components(settings: Settings) -> RoutingComponents:
    """A routing replica following `settings.replica_of`: no database, no admin API.

    The synced flags live in `settings.replica_dir`; exposures are not recorded here (a
    replica has no database), which the startup log says.
    """
    if settings.replica_of is None:
        raise ValueError("build_replica_components needs settings.replica_of")
    versions = PrimaryVersions()
    store = FlagStore(
        settings.replica_dir,
        reload_interval=settings.reload_interval,
        recorder=versions,
        deletion_settle=0,
    )
    domain = f"control-plane-replica-{next(_app_ids)}"
    client = openfeature_api.get_client(domain)
    tracing = tracing_from_settings(settings)
    client.add_hooks(tracing.openfeature_hooks())
    tester_tokens = (
        TesterTokens(settings.tester_token_key.get_secret_value())
        if settings.tester_token_key
        else None
    )
    decider = Decider(client, store, tracer=tracing.tracer, ids=DecisionIds())
    compiled_decider = CompiledDecider(store, ids=decider.ids, listeners=decider.listeners)
    store.subscribe(compiled_decider.update)
    token = settings.replica_token.get_secret_value() if settings.replica_token else None
    metrics = RouterMetrics()
    components = RoutingComponents(
        settings=settings,
        store=store,
        openfeature_domain=domain,
        openfeature_client=client,
        provider=CompiledProvider(store),
        tracing=tracing,
        metrics=metrics,
        # CP_EVENTS_URL: this replica publishes its records to JetStream (control_plane.events).
        events=build_replica_pipeline(settings, registry=metrics.registry),
        **_routing_parts(settings, tracing, tester_tokens),
        decider=decider,
        compiled_decider=compiled_decider,
        authenticator=Authenticator.from_settings(settings, None),
        gateway=GatewayTokenChecker.from_settings(settings),
        ofrep=OfrepEvaluator(client, store),
        traffic=TrafficTracker(),
        ofrep_limiter=TokenBucketLimiter(settings.ofrep_rate_limit, settings.ofrep_rate_burst),
        tester_tokens=tester_tokens,
        replica=ReplicaSync(
            store,
            versions,
            ReplicaTarget(settings.replica_of, token=token, ca_file=settings.replica_ca_file),
        ),
    )
    components.decider.listeners.extend(
        [components.observe_decision, log_decision, components.traffic.observe]
    )
    components.dispatcher.listeners.extend([components.observe_dispatch, log_dispatch])
    if components.events is not None:  # the replica's exposures and call samples, published
        components.decider.listeners.append(components.events.recorder.on_decision)
        components.dispatcher.listeners.append(components.events.recorder.on_dispatch)
    return components
