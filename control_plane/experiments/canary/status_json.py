"""The JSON of canary runs and events, and the analysis part of a run's status (failed
checks counted from its events, the idle warning)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from control_plane.db.experiment_models import CanaryEvent, CanaryRun
from control_plane.experiments import repository
from control_plane.experiments.canary.intervals import IntervalCheck
from control_plane.experiments.canary.spec import CanarySpec

__all__ = [
    "CHECK_FAILED",
    "analysis_json",
    "event_json",
    "failed_checks",
    "idle_reason",
    "run_json",
]

#: The event of one failed check, built-in or metric (rollback at `failureThreshold` of them).
CHECK_FAILED = "check_failed"


def failed_checks(session: Session, run_id: int) -> int:
    """The run's failed checks so far (its `check_failed` events)."""
    count, after = 0, 0
    while events := repository.canary_events(session=session, run_id=run_id, after=after):
        count += sum(1 for event in events if event.action == CHECK_FAILED)
        after = events[-1].id
    return count


def idle_reason(spec: CanarySpec, intervals: int) -> str:
    source = "its trafficQuery" if spec.traffic_query else "the calls the control plane recorded"
    return (
        f"no canary traffic: {spec.canary_variant!r} got no request in {intervals} "
        f"consecutive intervals of {spec.interval_seconds:g}s (by {source}); the step waits "
        "until it does. Is traffic reaching this flag and its canary weight above 0?"
    )


def analysis_json(
    session: Session, run_id: int, spec: CanarySpec, idle: int, latest: IntervalCheck | None
) -> tuple[dict[str, Any], list[str]]:
    """(the status's `analysis` object, its `warnings`) for a running canary."""
    body = {
        "idleIntervals": idle,
        "idleThreshold": spec.idle_intervals,
        "failedChecks": failed_checks(session, run_id),
        "failureThreshold": spec.failure_threshold,
        "lastCheck": latest.to_json() if latest is not None else None,
    }
    warnings = [idle_reason(spec, idle)] if idle >= spec.idle_intervals else []
    return body, warnings


def run_json(run: CanaryRun) -> dict[str, Any]:
    spec = run.spec
    return {
        "id": run.id,
        "flag": run.flag,
        "state": run.state,
        "weight": run.weight,
        "step": run.step_index + 1,
        "steps": list(spec.get("steps", [])),
        "spec": spec,
        "startedAt": run.started_at.isoformat(),
        "stepStartedAt": run.step_started_at.isoformat(),
        "updatedAt": run.updated_at.isoformat(),
        "finishedAt": run.finished_at.isoformat() if run.finished_at else None,
        "reason": run.reason,
        "createdBy": run.created_by,
    }


def event_json(event: CanaryEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "action": event.action,
        "actor": event.actor,
        "weight": event.weight,
        "flagSetVersion": event.flag_set_version,
        "detail": event.detail,
    }
