"""`GET /v1/canaries/{flag}/timeline`: a canary run's numbers over time, against its thresholds.

The canary API answers where a run stands now; the console also charts how it got there. The
run's span (start to finish, or to now while it is active) is cut into equal buckets, and the
recorded backend calls of its two variants are summarised per bucket: the canary's calls,
errors (5xx or no answer) and error rate, both variants' p99 latency and their ratio, and the
canary weight in force at the bucket's end (from the run's events). The ratio's baseline is the
stable p99 of the same bucket, or of the whole run when the bucket has no stable call, floored
at 1 ms as the controller does. Viewer role.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control_plane.db.experiment_models import CanaryRun
from control_plane.db.models import utc_now
from control_plane.errors import CanaryNotFound
from control_plane.experiments import repository
from control_plane.experiments.stats import nearest_rank
from control_plane.http.deps import ComponentsDep, ViewerDep
from control_plane.http.schemas import WireModel, problems

__all__ = ["CallPoint", "call_points", "router", "timeline"]

router = APIRouter(tags=["console"])

#: Most call samples read for one timeline (the newest ones).
SAMPLE_CAP = 100_000
_LATENCY_FLOOR = 0.001
#: Buckets are at least this wide, so a young run still shows a few points.
_MIN_BUCKET_SECONDS = 0.5

CallPoint = tuple[str, datetime, int | None, float]


class TimelineBucket(WireModel):
    offset_seconds: float
    end_offset_seconds: float
    weight: int | float | None = Field(description="Canary weight in force at the bucket's end")
    canary_calls: int
    canary_errors: int
    canary_error_rate: float | None
    canary_p99_ms: float | None
    stable_calls: int
    stable_p99_ms: float | None
    p99_latency_ratio: float | None


class TimelineThresholds(WireModel):
    max_error_rate: float | None
    max_p99_latency_ratio: float | None
    min_requests: int | None


class TimelineEvent(WireModel):
    id: int
    offset_seconds: float
    at: str
    action: str
    actor: str | None
    weight: int | float | None


class CanaryTimeline(WireModel):
    flag: str
    run: int
    state: str
    stable_variant: str
    canary_variant: str
    started_at: str
    ended_at: str
    span_seconds: float
    bucket_seconds: float
    thresholds: TimelineThresholds
    samples: int
    truncated: bool
    buckets: list[TimelineBucket]
    events: list[TimelineEvent]


def call_points(
    *,
    session: Session,
    flag: str,
    variants: tuple[str, ...],
    since: datetime,
    until: datetime,
    cap: int = SAMPLE_CAP,
) -> list[CallPoint]:
    """(variant, at, status, seconds) of the flag's recorded calls in [since, until], newest
    first, at most `cap` (the query is the repository's)."""
    return repository.call_points(
        session=session, flag=flag, variants=variants, since=since, until=until, cap=cap
    )


def _check(spec: dict[str, Any], check: str, field: str, legacy: str) -> float | None:
    """A gate's limit from `checks`, or the spec's old top-level field for older runs."""
    checks = spec.get("checks")
    value = checks.get(check, {}).get(field) if isinstance(checks, dict) else None
    if value is None:
        value = spec.get(legacy)
    return float(value) if isinstance(value, int | float) else None


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


def _is_error(status: int | None) -> bool:
    return status is None or status >= 500


def timeline(*, session: Session, run: CanaryRun, buckets: int, now: datetime) -> dict[str, Any]:
    """The timeline body of `run` (see the module docstring)."""
    spec = run.spec
    stable, canary = (
        str(spec.get("stableVariant", "stable")),
        str(spec.get("canaryVariant", "canary")),
    )
    start = run.started_at
    end = run.finished_at or now
    span = max((end - start).total_seconds(), 1.0)
    count = max(1, min(buckets, int(span / _MIN_BUCKET_SECONDS)))
    width = span / count
    points = call_points(
        session=session,
        flag=run.flag,
        variants=(stable, canary),
        since=start,
        until=end + timedelta(seconds=1),
    )
    calls = [{"calls": 0, "errors": 0} for _ in range(count)]
    latencies: dict[str, list[list[float]]] = {
        stable: [[] for _ in range(count)],
        canary: [[] for _ in range(count)],
    }
    for variant, at, status, seconds in points:
        index = min(count - 1, max(0, int((at - start).total_seconds() / width)))
        if variant == canary:
            calls[index]["calls"] += 1
            calls[index]["errors"] += int(_is_error(status))
        if status is not None:
            latencies[variant][index].append(seconds)
    run_stable_p99 = nearest_rank([value for bucket in latencies[stable] for value in bucket], 0.99)
    events = repository.canary_events(session=session, run_id=run.id)
    weights = [(event.at, event.weight) for event in events if event.weight is not None]
    rows = []
    for index in range(count):
        bucket_end = start + timedelta(seconds=width * (index + 1))
        canary_p99 = nearest_rank(latencies[canary][index], 0.99)
        stable_p99 = nearest_rank(latencies[stable][index], 0.99)
        baseline = stable_p99 if stable_p99 is not None else run_stable_p99
        ratio = (
            canary_p99 / max(baseline, _LATENCY_FLOOR)
            if canary_p99 is not None and baseline is not None
            else None
        )
        if index == count - 1:
            weight = run.weight  # where the run is now (its last event may postdate the end)
        else:
            weight = next(
                (w for at, w in reversed(weights) if at <= bucket_end),
                weights[0][1] if weights else run.weight,
            )
        bucket_calls = calls[index]
        rows.append(
            {
                "offsetSeconds": round(width * index, 3),
                "endOffsetSeconds": round(width * (index + 1), 3),
                "weight": weight,
                "canaryCalls": bucket_calls["calls"],
                "canaryErrors": bucket_calls["errors"],
                "canaryErrorRate": (
                    bucket_calls["errors"] / bucket_calls["calls"]
                    if bucket_calls["calls"]
                    else None
                ),
                "canaryP99Ms": _ms(canary_p99),
                "stableCalls": len(latencies[stable][index]),
                "stableP99Ms": _ms(stable_p99),
                "p99LatencyRatio": round(ratio, 3) if ratio is not None else None,
            }
        )
    return {
        "flag": run.flag,
        "run": run.id,
        "state": run.state,
        "stableVariant": stable,
        "canaryVariant": canary,
        "startedAt": start.isoformat(),
        "endedAt": end.isoformat(),
        "spanSeconds": round(span, 3),
        "bucketSeconds": round(width, 3),
        # The gates' own limits (spec `checks`): the error-rate ceiling and the latency ratio
        # the canary may reach before its quantile test counts it slower.
        "thresholds": {
            "maxErrorRate": _check(spec, "errorRate", "max", "maxErrorRate"),
            "maxP99LatencyRatio": _check(spec, "latency", "maxRatio", "maxP99LatencyRatio"),
            "minRequests": spec.get("minRequests"),
        },
        "samples": len(points),
        "truncated": len(points) >= SAMPLE_CAP,
        "buckets": rows,
        "events": [
            {
                "id": event.id,
                "offsetSeconds": round((event.at - start).total_seconds(), 3),
                "at": event.at.isoformat(),
                "action": event.action,
                "actor": event.actor,
                "weight": event.weight,
            }
            for event in events
        ],
    }


@router.get(
    "/v1/canaries/{flag_key}/timeline",
    summary="A flag's canary (active, else latest): calls, errors, p99 and weight over "
    "time, with its thresholds",
    response_model=CanaryTimeline,
    responses=problems(400, 401, 404),
)
async def canary_timeline(
    flag_key: str,
    principal: ViewerDep,
    components: ComponentsDep,
    buckets: Annotated[int, Query(ge=1, le=200)] = 40,
) -> dict[str, Any]:
    database = components.database

    def work() -> dict[str, Any]:
        with database.session() as session:
            run = repository.active_run(session=session, flag=flag_key) or repository.latest_run(
                session=session, flag=flag_key
            )
            if run is None:
                raise CanaryNotFound(f"flag {flag_key!r} has never had a canary")
            return timeline(session=session, run=run, buckets=buckets, now=utc_now())

    result: dict[str, Any] = await run_in_threadpool(work)
    return result
