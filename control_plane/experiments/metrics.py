"""Prometheus metrics of experiments and canaries, registered on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ExperimentMetrics"]


class ExperimentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "control_plane_experiment_records",
            "Experiment records (exposures, outcome events, backend call samples) by table and "
            "what happened to them: journaled (appended to the local journal), written to the "
            "database, replayed (read back from the journal after a restart or an outage; "
            "also counted as written), or dropped.",
            ["table", "result"],
            registry=registry,
        )
        self.buffered = Gauge(
            "control_plane_experiment_records_buffered",
            "Experiment records held in memory (queued, or journaled and kept for the "
            "database), not yet in the database.",
            registry=registry,
        )
        self.spill_pending = Gauge(
            "control_plane_experiment_records_spill_pending",
            "Experiment records in the local journal, not yet committed to the database.",
            registry=registry,
        )
        self.database_up = Gauge(
            "control_plane_experiment_database_up",
            "1 while the experiment writer's database writes and pings work, 0 once one failed "
            "or has run past the write timeout.",
            registry=registry,
        )
        self.canary_weight = Gauge(
            "control_plane_canary_weight",
            "Percent of traffic the running canary of a flag gets.",
            ["flag"],
            registry=registry,
        )
        self.canary_actions = Counter(
            "control_plane_canary_actions",
            "Canary controller actions (step, promoted, rolled_back, ...) per flag.",
            ["flag", "action"],
            registry=registry,
        )
