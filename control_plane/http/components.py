"""The parts one app instance is wired from; created by `create_app`, kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openfeature.client import OpenFeatureClient
from openfeature.provider import FeatureProvider

from control_plane.auth import GatewayTokenChecker
from control_plane.db import Database
from control_plane.flagstore import FlagStore
from control_plane.http.metrics import RouterMetrics
from control_plane.observability.tracing import Tracing
from control_plane.routing.context import ContextMapper
from control_plane.routing.decisions import Decider, Decision
from control_plane.routing.dispatch import Dispatcher, DispatchOutcome
from control_plane.routing.tester_tokens import TesterTokens
from control_plane.settings import Settings

__all__ = ["Components"]


@dataclass
class Components:
    settings: Settings
    store: FlagStore
    openfeature_domain: str
    openfeature_client: OpenFeatureClient
    mapper: ContextMapper
    decider: Decider
    metrics: RouterMetrics
    database: Database
    gateway: GatewayTokenChecker
    #: Issues and verifies tester tokens (pins); None when no tester token key is set.
    tester_tokens: TesterTokens | None = None
    provider: FeatureProvider | None = None
    dispatcher: Dispatcher | None = None
    #: OpenTelemetry tracing of decisions and dispatches (off: no tracer).
    tracing: Tracing = field(default_factory=Tracing)
    #: Started services to stop on shutdown (sync server, background loops).
    closers: list[Any] = field(default_factory=list)
    _decision_children: dict[tuple[str, str, str], tuple[Any, Any]] = field(
        default_factory=dict)

    def observe_decision(self, decision: Decision, seconds: float) -> None:
        """Decider listener: count the decision (label children cached: hot path)."""
        key = (decision.flag_key, decision.variant, decision.reason)
        children = self._decision_children.get(key)
        if children is None:
            children = (self.metrics.decisions.labels(*key),
                        self.metrics.decision_latency.labels(decision.flag_key))
            self._decision_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if decision.targeting_key is None:
            self.metrics.anonymous_decisions.labels(decision.flag_key).inc()

    def observe_dispatch(self, outcome: DispatchOutcome) -> None:
        flag = outcome.decision.flag_key
        status_class = f"{outcome.status // 100}xx" if outcome.status else outcome.error or "none"
        self.metrics.dispatches.labels(flag, outcome.variant, status_class).inc()
        self.metrics.dispatch_latency.labels(flag, outcome.variant).observe(outcome.seconds)
