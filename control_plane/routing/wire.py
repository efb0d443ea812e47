"""The routing answer's headers, shared by every decision endpoint and the lean decide path."""

from __future__ import annotations

from control_plane.routing.decisions import Decision

__all__ = ["decision_headers"]


def decision_headers(decision: Decision) -> list[tuple[str, str]]:
    """Headers for nginx `auth_request_set` / Envoy ext_authz `allowed_upstream_headers`."""
    headers = [
        ("x-route-variant", decision.variant),
        ("x-route-backend", decision.backend),
        ("x-route-upstream", decision.url),
        ("x-route-decision-id", decision.decision_id),
        ("x-route-reason", decision.reason),
        ("x-route-flag-set-version", str(decision.flag_set_version)),
        ("cache-control", "no-store"),
    ]
    if decision.ignored:
        headers.append(("x-route-ignored", "; ".join(decision.ignored)))
    if decision.tester:
        headers.append(("x-route-tester", decision.tester))
    return headers
