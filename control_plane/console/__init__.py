"""The operator console at `/console`: flags, traffic, experiments, canaries and history.

One call in the app factory wires it:

    install_console(app, components)

which registers the observed-split tracker as a decision listener, and includes the console's
JSON endpoints (`/v1/traffic`, `/v1/canaries/{flag}/timeline`) and its pages.
"""

from __future__ import annotations

from control_plane.console.install import install_console
from control_plane.console.traffic import TrafficTracker, TrafficWindow

__all__ = ["TrafficTracker", "TrafficWindow", "install_console"]
