"""Tables of experiments and canaries: exposures, outcomes, backend call samples, canary runs.

Declared on the shared `Base` (control_plane.db.models) and created by Alembic revision 0003.
Exposures, outcome events and call samples are append-only and keyed by an id made where the
record was born (the decision id, a random event id), so a batch written twice, as happens when
a spill file is replayed after a crash, is stored once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.db.models import Base, JsonDocument, UtcDateTime, utc_now

__all__ = ["CallSample", "CanaryEvent", "CanaryRun", "ExperimentKey", "Exposure", "OutcomeEvent"]


class Exposure(Base):
    """One decision on an experiment flag: who (hashed) saw which variant, when."""

    __tablename__ = "exposures"
    #: Only what the reports need (every query filters by flag; see migrations 0004 and 0005):
    #: each secondary index is paid by every insert of the experiment writer.
    __table_args__ = (Index("ix_exposures_flag", "flag"),)

    decision_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flag: Mapped[str] = mapped_column(String(256))
    variant: Mapped[str] = mapped_column(String(256))
    #: HMAC-SHA256 (hex) of the targeting key; None for a decision without one.
    unit: Mapped[str | None] = mapped_column(String(64))
    flag_set_version: Mapped[int] = mapped_column(Integer)
    #: Evaluation reason (TARGETING_MATCH, DEFAULT, ERROR...): ERROR exposures are not analysed.
    reason: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class OutcomeEvent(Base):
    """A metric value reported for a decision, or for a flag and a (hashed) targeting key."""

    __tablename__ = "outcome_events"
    __table_args__ = (
        Index("ix_outcome_events_flag_metric", "flag", "metric"),
        Index("ix_outcome_events_decision_id", "decision_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    decision_id: Mapped[str | None] = mapped_column(String(64))
    flag: Mapped[str | None] = mapped_column(String(256))
    unit: Mapped[str | None] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(128))
    #: "binary" (value 0 or 1) or "continuous".
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class CallSample(Base):
    """One backend call made by the dispatch proxy: status (None: no answer) and latency."""

    __tablename__ = "call_samples"
    __table_args__ = (Index("ix_call_samples_flag_variant_at", "flag", "variant", "at"),)

    decision_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: A decision makes at most one call per variant (the fallback goes to another variant).
    variant: Mapped[str] = mapped_column(String(256), primary_key=True)
    flag: Mapped[str] = mapped_column(String(256))
    backend: Mapped[str] = mapped_column(String(256))
    status: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class ExperimentKey(Base):
    """The HMAC key for targeting keys when none is configured (made once, shared by replicas)."""

    __tablename__ = "experiment_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)


class CanaryRun(Base):
    """A progressive canary of one flag: its spec and where it is (survives restarts)."""

    __tablename__ = "canary_runs"
    __table_args__ = (Index("ix_canary_runs_flag", "flag"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    flag: Mapped[str] = mapped_column(String(256))
    #: The flag while the run is running or paused, else None: the unique constraint keeps one
    #: active run per flag, across replicas, without a lock.
    active_flag: Mapped[str | None] = mapped_column(String(256), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    #: running, paused, promoted, rolled_back or aborted.
    state: Mapped[str] = mapped_column(String(16))
    step_index: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    step_started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    #: Bumped by every change; a change names the revision it read (optimistic concurrency).
    revision: Mapped[int] = mapped_column(Integer)


class CanaryEvent(Base):
    """What happened to a canary run and why (started, step, paused, rolled back...)."""

    __tablename__ = "canary_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("canary_runs.id"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    weight: Mapped[int | None] = mapped_column(Integer)
    flag_set_version: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
