"""`install_console`: wire the console (tracker, JSON endpoints, pages) into one app."""

from __future__ import annotations

from fastapi import FastAPI

from control_plane.console import canary_timeline, pages, traffic_api
from control_plane.console.traffic import TrafficTracker
from control_plane.http.components import Components

__all__ = ["install_console"]


def install_console(app: FastAPI, components: Components) -> TrafficTracker:
    """Count decisions for the observed split and serve the console; returns the tracker."""
    tracker = TrafficTracker()
    components.decider.listeners.append(tracker.observe)
    app.state.traffic = tracker
    app.state.console_assets = pages.load_assets()
    app.include_router(traffic_api.router)
    app.include_router(canary_timeline.router)
    app.include_router(pages.router)
    return tracker
