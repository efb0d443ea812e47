"""Span names and attributes of routing decisions and dispatch attempts.

Flag attributes follow OpenTelemetry's feature-flag semantic conventions (`feature_flag.*`, the
same keys the openfeature-hooks-opentelemetry event uses); HTTP attributes the HTTP client
conventions; what is particular to the control plane is under `control_plane.*`. The targeting
key (usually a user id) is deliberately not a span attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control_plane.routing.decisions import Decision

__all__ = [
    "BACKEND",
    "DECIDE_SPAN",
    "DECISION_ID",
    "DISPATCH_SPAN",
    "ERROR_TYPE",
    "FALLBACK",
    "FALLBACK_FROM",
    "FLAG_KEY",
    "FLAG_REASON",
    "FLAG_SET_VERSION",
    "FLAG_VARIANT",
    "HTTP_METHOD",
    "HTTP_STATUS",
    "SERVER_ADDRESS",
    "URL_FULL",
    "decision_attributes",
]

DECIDE_SPAN = "decide"
DISPATCH_SPAN = "dispatch"

FLAG_KEY = "feature_flag.key"
FLAG_VARIANT = "feature_flag.result.variant"
FLAG_REASON = "feature_flag.result.reason"
FLAG_SET_VERSION = "feature_flag.version"
DECISION_ID = "control_plane.decision.id"
BACKEND = "control_plane.backend"
#: True on the attempt that serves a request on the default variant after the chosen one failed.
FALLBACK = "control_plane.dispatch.fallback"
FALLBACK_FROM = "control_plane.dispatch.fallback_from"
HTTP_METHOD = "http.request.method"
HTTP_STATUS = "http.response.status_code"
URL_FULL = "url.full"
SERVER_ADDRESS = "server.address"
ERROR_TYPE = "error.type"


def decision_attributes(decision: Decision) -> dict[str, str | int]:
    """What a decision span records once the decision is made."""
    attributes: dict[str, str | int] = {
        FLAG_VARIANT: decision.variant,
        FLAG_REASON: decision.reason.lower(),
        FLAG_SET_VERSION: decision.flag_set_version,
        DECISION_ID: decision.decision_id,
        BACKEND: decision.backend,
    }
    if decision.error_code:
        attributes[ERROR_TYPE] = decision.error_code.lower()
    return attributes
