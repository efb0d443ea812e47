"""Log listeners: each routing decision at DEBUG, each backend attempt of a dispatch at INFO.

Decisions are the hot path (thousands per second), so they log at DEBUG on their own logger
(`control_plane.decisions`) and cost one level check when that is off. Dispatches are fewer and
slower (a backend call each) and are what an operator follows, so every attempt logs at INFO on
`control_plane.dispatch`: a fallback shows as the failed attempt followed by the retry with
`fallback: true`. The fields (decision_id, flag, variant, ...) become JSON fields; the message
says the same for text logs.
"""

from __future__ import annotations

import logging

from control_plane.routing.decisions import Decision
from control_plane.routing.dispatch import DispatchOutcome

__all__ = ["log_decision", "log_dispatch"]

decisions_log = logging.getLogger("control_plane.decisions")
dispatch_log = logging.getLogger("control_plane.dispatch")


def log_decision(decision: Decision, seconds: float) -> None:
    """Decider listener."""
    if not decisions_log.isEnabledFor(logging.DEBUG):
        return
    decisions_log.debug(
        "decision %s: flag %s -> %s (%s, %s)",
        decision.decision_id,
        decision.flag_key,
        decision.variant,
        decision.backend,
        decision.reason,
        extra={
            "decision_id": decision.decision_id,
            "flag": decision.flag_key,
            "variant": decision.variant,
            "backend": decision.backend,
            "reason": decision.reason,
            "flag_set_version": decision.flag_set_version,
            "error_code": decision.error_code,
            "latency_ms": round(seconds * 1000, 3),
        },
    )


def log_dispatch(outcome: DispatchOutcome) -> None:
    """Dispatcher listener: one line per backend attempt."""
    if not dispatch_log.isEnabledFor(logging.INFO):
        return
    decision = outcome.decision
    fallback = outcome.variant != decision.variant
    answer = str(outcome.status) if outcome.status is not None else outcome.error or "no answer"
    dispatch_log.info(
        "dispatch %s: flag %s %s -> %s answered %s in %.1f ms%s",
        decision.decision_id,
        decision.flag_key,
        outcome.variant,
        outcome.backend,
        answer,
        outcome.seconds * 1000,
        f" (fallback from {decision.variant})" if fallback else "",
        extra={
            "decision_id": decision.decision_id,
            "flag": decision.flag_key,
            "variant": outcome.variant,
            "backend": outcome.backend,
            "status": outcome.status,
            "error": outcome.error,
            "latency_ms": round(outcome.seconds * 1000, 3),
            "fallback": fallback,
            "fallback_from": decision.variant if fallback else None,
        },
    )
