"""Turns decisions and backend calls into experiment records, off the request path.

`on_decision` (a Decider listener) queues an exposure for every decision on a flag whose
metadata says `"experiment": true`; `on_dispatch` (a Dispatcher listener) queues a call sample
for every backend call on an experiment flag or a flag with an active canary. Both only append
a tuple of plain values to the writer's queue (cheap to send to the writer process): hashing
the targeting key and building the row happen in the writer (`prepare`). The hasher may come
later than the recorder (its key is kept in the database, which may be down at start): until
then `ready` is False and the writer keeps the raw items queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from control_plane.experiments.hashing import UnitHasher
from control_plane.experiments.records import CALL_SAMPLES, EXPOSURES, OUTCOME_EVENTS, Record
from control_plane.routing.decisions import Decision
from control_plane.routing.dispatch import DispatchOutcome

__all__ = ["ExperimentRecorder", "RecordQueue", "is_experiment"]

#: Column widths of the record tables (longer strings are cut, never refused by the database).
_FLAG, _VARIANT, _REASON, _ERROR, _ID = 256, 256, 32, 32, 64


class RecordQueue(Protocol):
    """Where the recorder queues raw items: a BatchWriter, or the writer process's feeder."""

    def offer(self, item: Any) -> bool: ...


def is_experiment(metadata: Any) -> bool:
    """True when evaluated flag metadata marks the flag as an experiment."""
    return isinstance(metadata, dict) and metadata.get("experiment") is True


class ExperimentRecorder:
    def __init__(self, hasher: UnitHasher | None) -> None:
        self.hasher = hasher
        self.writer: RecordQueue | None = None
        self._offer: Callable[[Any], bool] = _not_attached
        #: Flags whose backend calls are recorded although they are not experiments (canaries).
        self.tracked_flags: frozenset[str] = frozenset()
        #: Decisions on experiment flags without a targeting key, per flag, since start.
        self.anonymous: dict[str, int] = {}

    def attach(self, writer: RecordQueue) -> None:
        """Send records to `writer` (its `prepare` should be this recorder's)."""
        self.writer = writer
        self._offer = writer.offer

    # -- hot path (listeners) --------------------------------------------------------------

    def on_decision(self, decision: Decision, seconds: float) -> None:
        if decision.metadata.get("experiment") is True:
            if decision.targeting_key is None:
                # Not an experiment unit: no one to bucket, and counting these in the control
                # variant (the default they are served) broke sample-ratio checks. Reported
                # apart, as `anonymous` in the experiment's results.
                self.anonymous[decision.flag_key] = self.anonymous.get(decision.flag_key, 0) + 1
            else:
                self._offer(
                    (
                        EXPOSURES,
                        (
                            decision.decision_id,
                            decision.flag_key,
                            decision.variant,
                            decision.targeting_key,
                            decision.flag_set_version,
                            decision.reason,
                        ),
                        time.time(),
                    )
                )

    def on_dispatch(self, outcome: DispatchOutcome) -> None:
        decision = outcome.decision
        if decision.metadata.get("experiment") is True or decision.flag_key in self.tracked_flags:
            self._offer(
                (
                    CALL_SAMPLES,
                    (
                        decision.decision_id,
                        outcome.variant,
                        decision.flag_key,
                        outcome.backend,
                        outcome.status,
                        outcome.seconds,
                        outcome.error,
                    ),
                    time.time(),
                )
            )

    def record_outcome(self, row: dict[str, Any]) -> bool:
        """Queue one validated outcome event row (see control_plane.experiments.events)."""
        return self._offer((OUTCOME_EVENTS, row, row["at"]))

    # -- writer (thread or process) --------------------------------------------------------

    def ready(self) -> bool:
        """True once records can be prepared (the targeting key hasher is known)."""
        return self.hasher is not None

    def prepare(self, item: tuple[str, Any, float]) -> Record:
        table, payload, at = item
        if table == EXPOSURES:
            if isinstance(payload, Decision):  # queued by older callers as the decision
                payload = (
                    payload.decision_id,
                    payload.flag_key,
                    payload.variant,
                    payload.targeting_key,
                    payload.flag_set_version,
                    payload.reason,
                )
            decision_id, flag, variant, key, version, reason = payload
            hasher = self.hasher
            if key and hasher is None:
                raise RuntimeError("no targeting key HMAC key yet")
            return Record(
                EXPOSURES,
                {
                    "decision_id": decision_id[:_ID],
                    "flag": flag[:_FLAG],
                    "variant": variant[:_VARIANT],
                    "unit": hasher(key) if key and hasher is not None else None,
                    "flag_set_version": version,
                    "reason": reason[:_REASON],
                    "at": at,
                },
            )
        if table == CALL_SAMPLES:
            if isinstance(payload, DispatchOutcome):
                payload = (
                    payload.decision.decision_id,
                    payload.variant,
                    payload.decision.flag_key,
                    payload.backend,
                    payload.status,
                    payload.seconds,
                    payload.error,
                )
            decision_id, variant, flag, backend, status, seconds, error = payload
            return Record(
                CALL_SAMPLES,
                {
                    "decision_id": decision_id[:_ID],
                    "variant": variant[:_VARIANT],
                    "flag": flag[:_FLAG],
                    "backend": backend[:_VARIANT],
                    "status": status,
                    "seconds": seconds,
                    "error": error[:_ERROR] if error else None,
                    "at": at,
                },
            )
        if table == OUTCOME_EVENTS:
            return Record(OUTCOME_EVENTS, dict(payload))
        raise ValueError(f"unknown record table {table!r}")


def _not_attached(item: Any) -> bool:
    raise RuntimeError("the experiment recorder has no writer attached")
