"""Prometheus metrics of the record pipeline, registered on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["EventMetrics"]


class EventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "control_plane_events_published",
            "Experiment records by table and what the publisher did with them: published "
            "(acknowledged by JetStream), duplicate (acknowledged as a duplicate of a message "
            "id it holds), journaled (kept in the local journal while NATS is unreachable), "
            "replayed (published from the journal), dropped.",
            ["table", "result"],
            registry=registry,
        )
        self.consumed = Counter(
            "control_plane_events_consumed",
            "Experiment records taken from the stream by table and result: stored (committed "
            "and acknowledged, a new row), duplicate (committed and acknowledged, its key "
            "already stored: the database kept the row it had), redelivered (seen before: a "
            "delivery count above 1), refused (not a record, or refused by the database for "
            "its data; never retried).",
            ["table", "result"],
            registry=registry,
        )
        self.connected = Gauge(
            "control_plane_events_connected",
            "1 while this process is connected to NATS, by role (publisher, consumer).",
            ["role"],
            registry=registry,
        )
        self.queued = Gauge(
            "control_plane_events_queued",
            "Experiment records waiting in the publisher's memory queue.",
            registry=registry,
        )
        self.journal_pending = Gauge(
            "control_plane_events_journal_pending",
            "Experiment records in the publisher's local journal, not yet acknowledged by "
            "JetStream.",
            registry=registry,
        )
