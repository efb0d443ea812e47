"""The routing answer on the wire: headers and JSON shared by every decision endpoint.

The header list itself lives in control_plane.routing.wire, where the lean decide path
(control_plane.routing.compiled_decisions) prebuilds it per flag-set version.
"""

from __future__ import annotations

from control_plane.routing.compiled_decisions import decision_answer, encode_headers, json_body
from control_plane.routing.wire import decision_headers

__all__ = ["decision_answer", "decision_headers", "encode_headers", "json_body"]
