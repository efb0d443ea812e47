"""Prometheus metrics of one app instance, in its own registry (so tests can run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from control_plane.http.decision_metrics import DecisionMetrics

__all__ = ["RouterMetrics"]

_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        #: control_plane_decisions_total, control_plane_decision_seconds and
        #: control_plane_anonymous_decisions_total: counted on the decide path, so plain numbers.
        self.decisions = DecisionMetrics(self.registry, _LATENCY_BUCKETS)
        self.fallbacks = Counter(
            "control_plane_dispatch_fallbacks",
            "Dispatched requests retried on the flag's default variant after the chosen "
            "backend failed.",
            ["flag", "from_variant", "cause"],
            registry=self.registry,
        )
        self.dispatches = Counter(
            "control_plane_dispatch_requests",
            "Requests proxied to a backend.",
            ["flag", "variant", "status_class"],
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "control_plane_dispatch_seconds",
            "Backend response time of proxied requests.",
            ["flag", "variant"],
            registry=self.registry,
        )
        self.dispatch_client_disconnects = Counter(
            "control_plane_dispatch_client_disconnects",
            "Dispatched requests whose client left before sending its whole body (nothing to "
            "answer; a streamed body is cut off at the backend).",
            ["flag"],
            registry=self.registry,
        )
        self.bad_requests = Counter(
            "control_plane_bad_requests",
            "Routing requests refused for a malformed input.",
            ["source"],
            registry=self.registry,
        )
        self.flag_set_version = Gauge(
            "control_plane_flag_set_version",
            "Version of the serving flag set.",
            registry=self.registry,
        )
        self.replica_connected = Gauge(
            "control_plane_replica_connected",
            "Replica mode: 1 while the sync stream from the primary is open.",
            registry=self.registry,
        )
        self.replica_stale = Gauge(
            "control_plane_replica_stale_seconds",
            "Replica mode: seconds since the sync stream from the primary broke (0 while open; "
            "the replica serves its last flag set meanwhile).",
            registry=self.registry,
        )
        self.flag_reloads = Counter(
            "control_plane_flag_reloads",
            "Flag set reload attempts, by result.",
            ["result"],
            registry=self.registry,
        )
