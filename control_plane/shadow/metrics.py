"""Prometheus metrics of shadow traffic (control_plane_shadow_*), in the app's registry.

Labels come only from the flag set (flag, variant, shadow backend) or a fixed list (reason,
role): field names come from response bodies and are in the report, never in a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ShadowMetrics"]


class ShadowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.mirrored = Counter(
            "control_plane_shadow_mirrored",
            "Request copies queued for a shadow backend.",
            ["flag", "variant", "backend"],
            registry=registry,
        )
        self.dropped = Counter(
            "control_plane_shadow_dropped",
            "Request copies not sent: queue full, body too large, or no primary answer.",
            ["flag", "backend", "reason"],
            registry=registry,
        )
        self.compared = Counter(
            "control_plane_shadow_compared",
            "Shadow answers compared with the primary's.",
            ["flag", "backend"],
            registry=registry,
        )
        self.differing = Counter(
            "control_plane_shadow_differing",
            "Compared answers with at least one differing field that is not (yet) known noise.",
            ["flag", "backend"],
            registry=registry,
        )
        self.status_mismatches = Counter(
            "control_plane_shadow_status_mismatches",
            "Compared answers whose status differed from the primary's (no answer counts).",
            ["flag", "backend"],
            registry=registry,
        )
        self.latency = Histogram(
            "control_plane_shadow_seconds",
            "Time to the response head of mirrored requests, primary and shadow.",
            ["flag", "backend", "role"],
            registry=registry,
        )
