"""Every query of experiments and canaries, as keyword-only functions taking the session.

Callers own the unit of work (`with database.session() as session: ...`), as in
control_plane.db.repository; these functions read, add, update and flush.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from control_plane.db.experiment_models import (
    CallSample,
    CanaryEvent,
    CanaryRun,
    ExperimentKey,
    Exposure,
    OutcomeEvent,
)
from control_plane.db.models import FlagSetVersion, utc_now
from control_plane.experiments.phases import Definition, VersionSpan

__all__ = [
    "ACTIVE_STATES",
    "CallWindow",
    "UnitExposure",
    "UnitMetric",
    "active_run",
    "active_runs",
    "add_canary_event",
    "add_run",
    "call_points",
    "call_samples",
    "call_summary",
    "call_window",
    "canary_events",
    "count_error_exposures",
    "exposure_versions",
    "flag_definitions",
    "get_or_create_key",
    "latest_run",
    "list_runs",
    "metric_kinds",
    "unit_exposures",
    "unit_metrics",
    "unmatched_decision_events",
    "update_run",
]

ACTIVE_STATES = ("running", "paused")
#: Most latency samples read for one percentile (the newest ones).
LATENCY_SAMPLE_CAP = 50_000


# -- keys ------------------------------------------------------------------------------------


def get_or_create_key(*, session: Session, name: str, value: str) -> str:
    """The stored value of key `name`, storing `value` first if there is none (race-safe)."""
    row = session.get(ExperimentKey, name)
    if row is not None:
        return row.value
    try:
        with session.begin_nested():
            session.add(ExperimentKey(name=name, value=value, created_at=utc_now()))
    except IntegrityError:  # another replica stored one first: use theirs
        row = session.get(ExperimentKey, name)
        assert row is not None
        return row.value
    return value


# -- experiment results ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitExposure:
    unit: str
    variant: str
    first_at: datetime
    exposures: int


@dataclass(frozen=True, slots=True)
class UnitMetric:
    metric: str
    kind: str
    unit: str
    max_value: float
    mean_value: float
    events: int


def unit_exposures(
    *, session: Session, flag: str, versions: Collection[int] | None = None
) -> list[UnitExposure]:
    """Per (unit, variant): first exposure time and count. A decision without a targeting key
    is its own unit. Exposures served after an evaluation error are left out (not random).
    `versions`: only exposures decided with these flag set versions (one phase)."""
    unit = func.coalesce(Exposure.unit, Exposure.decision_id).label("unit_key")
    statement = (
        select(unit, Exposure.variant, func.min(Exposure.at), func.count())
        .where(Exposure.flag == flag, Exposure.reason != "ERROR")
        .group_by(unit, Exposure.variant)
    )
    if versions is not None:
        statement = statement.where(Exposure.flag_set_version.in_(list(versions)))
    return [UnitExposure(row[0], row[1], row[2], int(row[3])) for row in session.execute(statement)]


def count_error_exposures(
    *, session: Session, flag: str, versions: Collection[int] | None = None
) -> int:
    statement = select(func.count()).where(Exposure.flag == flag, Exposure.reason == "ERROR")
    if versions is not None:
        statement = statement.where(Exposure.flag_set_version.in_(list(versions)))
    return int(session.scalar(statement) or 0)


def exposure_versions(*, session: Session, flag: str) -> list[VersionSpan]:
    """Per flag set version the flag's analysed exposures were decided with: first and last
    exposure time and how many (the raw material of phases)."""
    statement = (
        select(
            Exposure.flag_set_version, func.min(Exposure.at), func.max(Exposure.at), func.count()
        )
        .where(Exposure.flag == flag, Exposure.reason != "ERROR")
        .group_by(Exposure.flag_set_version)
    )
    return [
        VersionSpan(int(row[0]), row[1], row[2], int(row[3])) for row in session.execute(statement)
    ]


def flag_definitions(
    *, session: Session, flag: str, versions: Collection[int]
) -> dict[int, Definition]:
    """The flag's definition in each stored flag set version of `versions`."""
    if not versions:
        return {}
    statement = select(
        FlagSetVersion.version, FlagSetVersion.document, FlagSetVersion.bucketing
    ).where(FlagSetVersion.version.in_(list(versions)))
    definitions = {}
    for version, document, bucketing in session.execute(statement):
        document = document or {}
        definitions[int(version)] = Definition(
            (document.get("flags") or {}).get(flag), document.get("$evaluators") or {}, bucketing
        )
    return definitions


def _events_of(flag: str) -> tuple[Any, Any]:
    exposure = aliased(Exposure)
    condition = or_(
        and_(OutcomeEvent.decision_id.is_(None), OutcomeEvent.flag == flag), exposure.flag == flag
    )
    return exposure, condition


def unit_metrics(
    *,
    session: Session,
    flag: str,
    versions: Collection[int] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[UnitMetric]:
    """Per (metric, unit): max, mean and count of the unit's events for this flag's units.

    Events name a decision (joined to its exposure's unit) or a flag and a hashed targeting
    key (the unit directly). For one phase: events naming a decision count when the decision
    was made with one of `versions`; the others when they happened in [since, until), except
    covariates (`<metric>.pre`), which describe the unit before it was exposed.
    """
    exposure, condition = _events_of(flag)
    unit = func.coalesce(OutcomeEvent.unit, exposure.unit, exposure.decision_id).label("u")
    statement = (
        select(
            OutcomeEvent.metric,
            OutcomeEvent.kind,
            unit,
            func.max(OutcomeEvent.value),
            func.avg(OutcomeEvent.value),
            func.count(),
        )
        .select_from(OutcomeEvent)
        .outerjoin(exposure, OutcomeEvent.decision_id == exposure.decision_id)
        .where(condition)
        .group_by(OutcomeEvent.metric, OutcomeEvent.kind, unit)
    )
    if versions is not None:
        window = [OutcomeEvent.at >= since] if since is not None else []
        if until is not None:
            window.append(OutcomeEvent.at < until)
        keyed = and_(
            OutcomeEvent.decision_id.is_(None),
            or_(OutcomeEvent.metric.like("%.pre"), and_(true(), *window)),
        )
        statement = statement.where(or_(exposure.flag_set_version.in_(list(versions)), keyed))
    return [
        UnitMetric(row[0], row[1], row[2], float(row[3]), float(row[4]), int(row[5]))
        for row in session.execute(statement)
    ]


def unmatched_decision_events(*, session: Session, flag: str) -> int:
    """Events that name this flag and a decision id no stored exposure has (yet)."""
    statement = (
        select(func.count())
        .select_from(OutcomeEvent)
        .outerjoin(Exposure, OutcomeEvent.decision_id == Exposure.decision_id)
        .where(
            OutcomeEvent.flag == flag,
            OutcomeEvent.decision_id.is_not(None),
            Exposure.decision_id.is_(None),
        )
    )
    return int(session.scalar(statement) or 0)


def metric_kinds(*, session: Session) -> dict[str, set[str]]:
    """Every metric name seen so far with the kinds its events were stored as."""
    kinds: dict[str, set[str]] = {}
    for metric, kind in session.execute(select(OutcomeEvent.metric, OutcomeEvent.kind).distinct()):
        kinds.setdefault(metric, set()).add(kind)
    return kinds


# -- backend calls ---------------------------------------------------------------------------


def _is_error() -> Any:
    return case((or_(CallSample.status.is_(None), CallSample.status >= 500), 1), else_=0)


@dataclass(frozen=True, slots=True)
class CallWindow:
    """Backend calls of one variant in a time window: how many, how many failed, latencies."""

    calls: int
    errors: int
    latencies: list[float]  # seconds of answered calls (newest first, capped)


def call_window(
    *,
    session: Session,
    flag: str,
    variant: str,
    since: datetime | None = None,
    cap: int = LATENCY_SAMPLE_CAP,
) -> CallWindow:
    conditions = [CallSample.flag == flag, CallSample.variant == variant]
    if since is not None:
        conditions.append(CallSample.at >= since)
    calls, errors = session.execute(
        select(func.count(), func.coalesce(func.sum(_is_error()), 0)).where(*conditions)
    ).one()
    latencies = list(
        session.scalars(
            select(CallSample.seconds)
            .where(*conditions, CallSample.status.is_not(None))
            .order_by(CallSample.at.desc())
            .limit(cap)
        )
    )
    return CallWindow(int(calls), int(errors), latencies)


def call_samples(
    *,
    session: Session,
    flag: str,
    variants: Collection[str],
    since: datetime,
    until: datetime | None = None,
    cap: int = LATENCY_SAMPLE_CAP,
) -> list[tuple[str, datetime, int | None, float]]:
    """(variant, at, status, seconds) of the flag's calls to `variants` in [since, until),
    oldest first; when there are more than `cap`, the newest `cap` of them (so every variant
    is cut at the same time, and what is left is one common window)."""
    conditions = [
        CallSample.flag == flag,
        CallSample.variant.in_(list(variants)),
        CallSample.at >= since,
    ]
    if until is not None:
        conditions.append(CallSample.at < until)
    statement = (
        select(CallSample.variant, CallSample.at, CallSample.status, CallSample.seconds)
        .where(*conditions)
        .order_by(CallSample.at.desc())
        .limit(cap)
    )
    rows = [(row[0], row[1], row[2], float(row[3])) for row in session.execute(statement)]
    rows.reverse()
    return rows


def call_summary(*, session: Session, flag: str) -> dict[str, CallWindow]:
    """All recorded backend calls of a flag, per variant."""
    variants = session.scalars(select(CallSample.variant).where(CallSample.flag == flag).distinct())
    return {
        variant: call_window(session=session, flag=flag, variant=variant)
        for variant in sorted(variants)
    }


# -- canary runs -----------------------------------------------------------------------------


def add_run(
    *, session: Session, flag: str, spec: dict[str, Any], weight: int, actor: str, now: datetime
) -> CanaryRun:
    """Store a running canary; IntegrityError (from the flush) when the flag has one active."""
    row = CanaryRun(
        flag=flag,
        active_flag=flag,
        spec=spec,
        state="running",
        step_index=0,
        weight=weight,
        started_at=now,
        step_started_at=now,
        updated_at=now,
        finished_at=None,
        reason="",
        created_by=actor,
        revision=1,
    )
    session.add(row)
    session.flush()
    return row


def active_run(*, session: Session, flag: str) -> CanaryRun | None:
    return session.scalars(select(CanaryRun).where(CanaryRun.active_flag == flag)).first()


def latest_run(*, session: Session, flag: str) -> CanaryRun | None:
    statement = (
        select(CanaryRun).where(CanaryRun.flag == flag).order_by(CanaryRun.id.desc()).limit(1)
    )
    return session.scalars(statement).first()


def active_runs(*, session: Session) -> list[CanaryRun]:
    statement = select(CanaryRun).where(CanaryRun.state.in_(ACTIVE_STATES)).order_by(CanaryRun.id)
    return list(session.scalars(statement))


def list_runs(*, session: Session, limit: int, active_only: bool = False) -> list[CanaryRun]:
    statement = select(CanaryRun).order_by(CanaryRun.id.desc()).limit(limit)
    if active_only:
        statement = statement.where(CanaryRun.state.in_(ACTIVE_STATES))
    return list(session.scalars(statement))


def update_run(*, session: Session, run_id: int, revision: int, values: dict[str, Any]) -> bool:
    """Apply `values` if the run is still at `revision` (bumping it); False if it moved on."""
    result = session.execute(
        update(CanaryRun)
        .where(CanaryRun.id == run_id, CanaryRun.revision == revision)
        .values(**values, revision=revision + 1, updated_at=utc_now())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def add_canary_event(
    *,
    session: Session,
    run_id: int,
    action: str,
    actor: str,
    weight: int | None,
    flag_set_version: int | None,
    detail: dict[str, Any],
) -> CanaryEvent:
    row = CanaryEvent(
        run_id=run_id,
        at=utc_now(),
        action=action,
        actor=actor,
        weight=weight,
        flag_set_version=flag_set_version,
        detail=detail,
    )
    session.add(row)
    session.flush()
    return row


def canary_events(
    *, session: Session, run_id: int, after: int = 0, limit: int = 500
) -> Sequence[CanaryEvent]:
    statement = (
        select(CanaryEvent)
        .where(CanaryEvent.run_id == run_id, CanaryEvent.id > after)
        .order_by(CanaryEvent.id)
        .limit(limit)
    )
    return list(session.scalars(statement))


def call_points(
    *,
    session: Session,
    flag: str,
    variants: Collection[str],
    since: datetime,
    until: datetime,
    cap: int,
) -> list[tuple[str, datetime, int | None, float]]:
    """(variant, at, status, seconds) of the flag's recorded calls in [since, until], newest
    first, at most `cap` (the console's canary timeline)."""
    statement = (
        select(CallSample.variant, CallSample.at, CallSample.status, CallSample.seconds)
        .where(
            CallSample.flag == flag,
            CallSample.variant.in_(tuple(variants)),
            CallSample.at >= since,
            CallSample.at <= until,
        )
        .order_by(CallSample.at.desc())
        .limit(cap)
    )
    return [(row[0], row[1], row[2], float(row[3])) for row in session.execute(statement)]
