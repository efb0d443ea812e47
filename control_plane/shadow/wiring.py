"""Building an app's shadow mirror from the settings (called by the composition root)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from control_plane.flagstore.store import FlagStore
from control_plane.settings import Settings
from control_plane.shadow.metrics import ShadowMetrics
from control_plane.shadow.mirror import ShadowMirror
from control_plane.shadow.results import ShadowResults
from control_plane.shadow.sender import ShadowSender

__all__ = ["build_mirror"]


def build_mirror(
    settings: Settings, *, store: FlagStore, registry: CollectorRegistry
) -> ShadowMirror:
    """The mirror of one app, unstarted: its queue, workers and sender come with `start()`."""
    return ShadowMirror(
        store,
        ShadowResults(latency_window=settings.shadow_window, examples=settings.shadow_examples),
        ShadowMetrics(registry),
        lambda: ShadowSender(
            timeout=settings.shadow_timeout,
            max_connections=settings.shadow_workers * 4,
            max_body=settings.shadow_max_body,
        ),
        queue_size=settings.shadow_queue_size,
        workers=settings.shadow_workers,
        max_body=settings.shadow_max_body,
        primary_wait=settings.shadow_timeout,
    )
