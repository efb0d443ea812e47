"""The operator console at `/console`: flags, traffic, experiments, canaries and history.

The app factory includes its routers (`pages`, `traffic_api`, `canary_timeline`: the page,
`/v1/traffic` and `/v1/canaries/{flag}/timeline`); the observed-split tracker is a decision
listener attached by `build_components`.
"""

from __future__ import annotations

from control_plane.console.traffic import TrafficTracker, TrafficWindow

__all__ = ["TrafficTracker", "TrafficWindow"]
