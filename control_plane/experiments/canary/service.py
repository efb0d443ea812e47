"""Canary operations: start, pause, resume, abort (operators) and step, roll back, promote
(the controller), each a flag write plus a state change, recorded in three places.

Every weight change goes through the flag editor, the same validated, versioned path as an ops
edit, as source "canary" and actor "canary-controller", with a message that says why; the run's
state and an event are stored in the database in one transaction; and an audit event names who
acted (the operator's token, or the controller) and why. Run state lives only in the database,
so a restarted control plane continues where it was. Changes to a run are serialised by a lock
in the process and by the run's revision across processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from control_plane.db import repository as db_repository
from control_plane.db.engine import Database
from control_plane.db.experiment_models import CanaryRun
from control_plane.db.models import utc_now
from control_plane.errors import CanaryNotFound, Conflict
from control_plane.experiments import repository
from control_plane.experiments.canary.analysis import Verdict, judge
from control_plane.experiments.canary.gates import (
    GateResult,
    judge_gates,
    strata_from_samples,
    stratum_tables,
)
from control_plane.experiments.canary.intervals import IntervalAnalysis, IntervalCheck, Tick
from control_plane.experiments.canary.spec import CanarySpec
from control_plane.experiments.canary.status_json import (
    CHECK_FAILED,
    analysis_json,
    event_json,
    failed_checks,
    idle_reason,
    run_json,
)
from control_plane.experiments.canary.weights import check_flag, promoted, with_weight
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.flagstore.editor import FlagEditor
from control_plane.flagstore.store import FlagStore

__all__ = ["CONTROLLER_ACTOR", "FLAG_SOURCE", "CanaryService", "event_json", "run_json"]

log = logging.getLogger(__name__)

CONTROLLER_ACTOR = "canary-controller"
#: The `source` of flag set versions written by canaries (see `control-plane history`).
FLAG_SOURCE = "canary"
#: Latency samples read per variant for a step's figures (the newest ones).
_JUDGE_SAMPLE_CAP = 10_000
#: Calls (both variants) read for the built-in checks: the run's newest ones.
_GATE_SAMPLE_CAP = 200_000


class CanaryService:
    def __init__(
        self,
        *,
        database: Database,
        store: FlagStore,
        editor: FlagEditor,
        metrics: ExperimentMetrics | None = None,
        on_tracked: Callable[[frozenset[str]], None] | None = None,
        clock: Callable[[], datetime] = utc_now,
        analysis: IntervalAnalysis | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.editor = editor
        self.metrics = metrics
        #: PromQL metric checks and no-traffic detection, interval by interval.
        self.analysis = analysis or IntervalAnalysis(watching_since=clock())
        self._on_tracked = on_tracked
        self._clock = clock
        self._lock = threading.RLock()

    # -- operators -------------------------------------------------------------------------

    def start(self, flag_key: str, spec: CanarySpec, actor: str) -> dict[str, Any]:
        with self._lock:
            self.analysis.check_spec(spec)
            flag = self._flag(flag_key)
            check_flag(flag_key, flag, spec.stable_variant, spec.canary_variant)
            assert flag is not None
            weight = spec.steps[0]
            try:
                with self.database.session() as session:
                    run_id = repository.add_run(
                        session=session,
                        flag=flag_key,
                        spec=spec.to_json(),
                        weight=weight,
                        actor=actor,
                        now=self._clock(),
                    ).id
            except IntegrityError:
                with self.database.session() as session:
                    existing = repository.active_run(session=session, flag=flag_key)
                    which = f"run {existing.id}, {existing.state}" if existing else "just started"
                raise Conflict(
                    f"flag {flag_key!r} already has an active canary ({which}); "
                    "abort it before starting another"
                ) from None
            try:
                version = self._write_flag(
                    flag_key,
                    with_weight(flag, spec.stable_variant, spec.canary_variant, weight),
                    f"canary run {run_id} started by {actor}: {spec.canary_variant} at "
                    f"{weight}% (step 1 of {len(spec.steps)})",
                )
            except Exception as exc:
                with self.database.session() as session:
                    run = session.get(CanaryRun, run_id)
                    assert run is not None
                    repository.update_run(
                        session=session,
                        run_id=run_id,
                        revision=run.revision,
                        values={
                            "state": "aborted",
                            "active_flag": None,
                            "finished_at": self._clock(),
                            "reason": f"the first flag write failed: {exc}",
                        },
                    )
                raise
            with self.database.session() as session:
                self._record(
                    session,
                    run_id,
                    flag_key,
                    "started",
                    actor,
                    weight,
                    version,
                    {"spec": spec.to_json(), "step": 1, "steps": len(spec.steps)},
                )
            self._count(flag_key, "started", weight)
            self.publish_tracked()
            return self.status(flag_key)

    def pause(self, flag_key: str, actor: str, message: str = "") -> dict[str, Any]:
        with self._lock:
            run = self._active(flag_key)
            if run.state == "paused":
                raise Conflict(f"the canary of {flag_key!r} is paused already")
            self._change(run, "paused", actor, {"state": "paused"}, message)
            return self.status(flag_key)

    def resume(self, flag_key: str, actor: str, message: str = "") -> dict[str, Any]:
        with self._lock:
            run = self._active(flag_key)
            if run.state != "paused":
                raise Conflict(f"the canary of {flag_key!r} is {run.state}, not paused")
            # The step starts over: calls made while paused do not count towards it.
            self._change(
                run,
                "resumed",
                actor,
                {"state": "running", "step_started_at": self._clock()},
                message,
            )
            return self.status(flag_key)

    def abort(self, flag_key: str, actor: str, message: str = "") -> dict[str, Any]:
        with self._lock:
            run = self._active(flag_key)
            spec = CanarySpec.model_validate(run.spec)
            reason = f"aborted by {actor}" + (f": {message}" if message else "")
            self._finish(
                run,
                spec,
                state="aborted",
                action="aborted",
                actor=actor,
                weight=0,
                reason=reason,
                observed={},
            )
            return self.status(flag_key)

    # -- reading ---------------------------------------------------------------------------

    def status(self, flag_key: str, *, after_event: int = 0) -> dict[str, Any]:
        """The flag's active run (else its latest) with its events and, while it runs, the
        current step's numbers."""
        with self.database.session() as session:
            run = repository.active_run(session=session, flag=flag_key) or repository.latest_run(
                session=session, flag=flag_key
            )
            if run is None:
                raise CanaryNotFound(f"flag {flag_key!r} has never had a canary")
            events = repository.canary_events(session=session, run_id=run.id, after=after_event)
            body = run_json(run)
            body["events"] = [event_json(event) for event in events]
            if run.state in repository.ACTIVE_STATES:
                verdict = self._verdict(session, run)
                body["current"] = {
                    "verdict": verdict.outcome,
                    "reason": verdict.reason,
                    **verdict.observed,
                }
                spec = CanarySpec.model_validate(run.spec)
                idle, latest = self.analysis.current(run.id)
                body["analysis"], body["warnings"] = analysis_json(
                    session, run.id, spec, idle, latest
                )
        return body

    def list_runs(self, *, active_only: bool, limit: int) -> list[dict[str, Any]]:
        with self.database.session() as session:
            return [
                run_json(run)
                for run in repository.list_runs(
                    session=session, limit=limit, active_only=active_only
                )
            ]

    # -- the controller ----------------------------------------------------------------------

    def publish_tracked(self) -> frozenset[str]:
        """Tell the recorder which flags have an active canary (their calls are recorded).

        Under the service's lock, so the controller thread's periodic call never publishes
        runs it read before an abort or promotion that finished meanwhile (that run's weight
        gauge would keep its old value: no later call touches a finished run's flag)."""
        with self._lock:
            with self.database.session() as session:
                runs = repository.active_runs(session=session)
                flags = frozenset(run.flag for run in runs)
                running = [(run.flag, run.weight) for run in runs]
            if self._on_tracked is not None:
                self._on_tracked(flags)
            if self.metrics is not None:
                for flag, weight in running:
                    self.metrics.canary_weight.labels(flag).set(weight)
            for run in runs:
                self.analysis.show_idle(run.id, run.flag)
        return flags

    def running_ids(self) -> list[int]:
        with self.database.session() as session:
            return [
                run.id for run in repository.active_runs(session=session) if run.state == "running"
            ]

    def step(self, run_id: int) -> str:
        """Judge the run's current step and act on it; returns what was done.

        The interval's queries (on Prometheus, each up to its timeout) run before the lock is
        taken, so an operator's pause or abort never waits for them; the run is read again
        under the lock and left for the next tick if it changed meanwhile.
        """
        now = self._clock()
        with self.database.session() as session:
            seen = session.get(CanaryRun, run_id)
        if seen is None or seen.state != "running":
            return "idle"
        spec = CanarySpec.model_validate(seen.spec)
        tick = self.analysis.tick(
            run_id=seen.id,
            flag=seen.flag,
            step_index=seen.step_index,
            step_started_at=seen.step_started_at,
            spec=spec,
            now=now,
            recorded_calls=lambda since: self._recorded_calls(seen.flag, spec, since),
            builtin=(lambda: self.gates(seen.flag, seen.started_at, spec, now))
            if spec.builtin_checks
            else None,
        )
        with self._lock:
            with self.database.session() as session:
                run = session.get(CanaryRun, run_id)
                if run is None or run.state != "running":
                    return "idle"
                if run.revision != seen.revision:
                    return "wait"
                verdict = self._verdict(session, run)
            if tick.newly_idle:
                self._report_idle(run, spec, tick)
            if tick.check is not None and tick.check.outcome == "fail":
                return self._failed_check(run, spec, tick.check, verdict)
            elapsed = (now - run.step_started_at).total_seconds()
            if verdict.outcome != "pass" or elapsed < spec.interval_seconds or not tick.may_advance:
                return "wait"
            latest = self.analysis.current(run.id)[1]
            last_compared = (
                run.step_index + 1 >= len(spec.steps) or spec.steps[run.step_index + 1] >= 100
            )
            if latest is not None and latest.outcome == "wait" and last_compared:
                return "wait"  # a check short of its minSamples: no comparison left after this
            if latest is not None:
                verdict = Verdict(
                    verdict.outcome,
                    f"{verdict.reason}; {latest.reason}",
                    {**verdict.observed, **self._check_json(latest)},
                )
            if run.step_index + 1 >= len(spec.steps):
                self._finish(
                    run,
                    spec,
                    state="promoted",
                    action="promoted",
                    actor=CONTROLLER_ACTOR,
                    weight=100,
                    reason=f"all {len(spec.steps)} steps passed; {spec.canary_variant} "
                    "is the default variant now",
                    observed=verdict.observed,
                )
                return "promoted"
            self._advance(run, spec, verdict, now)
            return "step"

    # -- internals ---------------------------------------------------------------------------

    def gates(
        self, flag: str, run_started_at: datetime, spec: CanarySpec, now: datetime
    ) -> tuple[GateResult, ...]:
        """The built-in checks over the run's calls so far, in strata of intervalSeconds."""
        with self.database.session() as session:
            samples = repository.call_samples(
                session=session,
                flag=flag,
                variants=(spec.canary_variant, spec.stable_variant),
                since=run_started_at,
                until=now,
                cap=_GATE_SAMPLE_CAP,
            )
        strata = strata_from_samples(
            samples,
            canary_variant=spec.canary_variant,
            stable_variant=spec.stable_variant,
            start=run_started_at,
            width_seconds=spec.interval_seconds,
        )
        return judge_gates(spec.checks, [stratum_tables(spec.checks, s) for s in strata])

    @staticmethod
    def _check_json(check: IntervalCheck) -> dict[str, Any]:
        body = check.to_json()
        return {"checks": body["checks"], "metrics": body["metrics"]}

    def _verdict(self, session: Any, run: CanaryRun) -> Verdict:
        spec = CanarySpec.model_validate(run.spec)
        if not spec.builtin_checks:
            return Verdict("pass", "built-in checks off (builtinChecks: false)")
        canary = repository.call_window(
            session=session,
            flag=run.flag,
            variant=spec.canary_variant,
            since=run.step_started_at,
            cap=_JUDGE_SAMPLE_CAP,
        )
        stable = repository.call_window(
            session=session,
            flag=run.flag,
            variant=spec.stable_variant,
            since=run.started_at,
            cap=_JUDGE_SAMPLE_CAP,
        )
        return judge(spec, canary, stable)

    def _recorded_calls(self, flag: str, spec: CanarySpec, since: datetime) -> int:
        with self.database.session() as session:
            return repository.call_window(
                session=session, flag=flag, variant=spec.canary_variant, since=since, cap=0
            ).calls

    def _failed_check(
        self, run: CanaryRun, spec: CanarySpec, check: IntervalCheck, verdict: Verdict
    ) -> str:
        """Count one failed check; roll back at `failureThreshold` of them."""
        with self.database.session() as session:
            failed = failed_checks(session, run.id) + 1
        observed = {
            **verdict.observed,
            **self._check_json(check),
            "failed": check.failed,
            "failedChecks": failed,
            "failureThreshold": spec.failure_threshold,
        }
        if failed >= spec.failure_threshold:
            self._finish(
                run,
                spec,
                state="rolled_back",
                action="rolled_back",
                actor=CONTROLLER_ACTOR,
                weight=0,
                reason=f"{failed} failed checks (failureThreshold "
                f"{spec.failure_threshold}); the last: {check.reason}",
                observed=observed,
            )
            return "rolled_back"
        with self.database.session() as session:
            self._record(
                session,
                run.id,
                run.flag,
                CHECK_FAILED,
                CONTROLLER_ACTOR,
                run.weight,
                None,
                {
                    "reason": f"failed check {failed} (rollback at "
                    f"{spec.failure_threshold}): {check.reason}",
                    "observed": observed,
                },
            )
        self._count(run.flag, CHECK_FAILED, run.weight)
        log.warning(
            "canary of %s: failed check %d (rollback at %d): %s",
            run.flag,
            failed,
            spec.failure_threshold,
            check.reason,
        )
        return CHECK_FAILED

    def _report_idle(self, run: CanaryRun, spec: CanarySpec, tick: Tick) -> None:
        reason = idle_reason(spec, tick.idle_intervals)
        with self.database.session() as session:
            self._record(
                session,
                run.id,
                run.flag,
                "idle",
                CONTROLLER_ACTOR,
                run.weight,
                None,
                {"reason": reason, "idleIntervals": tick.idle_intervals},
            )
        log.warning("canary of %s: %s", run.flag, reason)

    def _advance(self, run: CanaryRun, spec: CanarySpec, verdict: Verdict, now: datetime) -> None:
        index = run.step_index + 1
        weight = spec.steps[index]
        flag = self._flag(run.flag)
        if flag is None:
            self._finish(
                run,
                spec,
                state="aborted",
                action="aborted",
                actor=CONTROLLER_ACTOR,
                weight=0,
                reason=f"flag {run.flag!r} is no longer served",
                observed=verdict.observed,
                write=False,
            )
            return
        version = self._write_flag(
            run.flag,
            with_weight(flag, spec.stable_variant, spec.canary_variant, weight),
            f"canary run {run.id}: step {index + 1} of {len(spec.steps)}, "
            f"{spec.canary_variant} {run.weight}% -> {weight}% (step {index} passed: "
            f"{verdict.reason})",
        )
        with self.database.session() as session:
            if not repository.update_run(
                session=session,
                run_id=run.id,
                revision=run.revision,
                values={"step_index": index, "weight": weight, "step_started_at": now},
            ):
                log.warning(
                    "canary run %d changed while stepping; the next tick re-reads it", run.id
                )
                return
            self._record(
                session,
                run.id,
                run.flag,
                "step",
                CONTROLLER_ACTOR,
                weight,
                version,
                {
                    "step": index + 1,
                    "steps": len(spec.steps),
                    "from": run.weight,
                    "to": weight,
                    "reason": verdict.reason,
                    "observed": verdict.observed,
                },
            )
        self._count(run.flag, "step", weight)

    def _finish(
        self,
        run: CanaryRun,
        spec: CanarySpec,
        *,
        state: str,
        action: str,
        actor: str,
        weight: int,
        reason: str,
        observed: dict[str, Any],
        write: bool = True,
    ) -> None:
        version = None
        if write:
            flag = self._flag(run.flag)
            if flag is None:
                reason += f" (flag {run.flag!r} is no longer served; nothing to rewrite)"
            else:
                definition = (
                    promoted(flag, spec.stable_variant, spec.canary_variant)
                    if state == "promoted"
                    else with_weight(flag, spec.stable_variant, spec.canary_variant, weight)
                )
                version = self._write_flag(
                    run.flag,
                    definition,
                    f"canary run {run.id} {action.replace('_', ' ')}: {spec.canary_variant} "
                    f"at {weight}%: {reason}",
                )
        with self.database.session() as session:
            if not repository.update_run(
                session=session,
                run_id=run.id,
                revision=run.revision,
                values={
                    "state": state,
                    "active_flag": None,
                    "weight": weight,
                    "reason": reason,
                    "finished_at": self._clock(),
                },
            ):
                raise Conflict(f"canary run {run.id} changed meanwhile; try again")
            self._record(
                session,
                run.id,
                run.flag,
                action,
                actor,
                weight,
                version,
                {"reason": reason, "observed": observed},
            )
        self._count(run.flag, action, weight)
        self.analysis.forget(run.id, run.flag)
        self.publish_tracked()
        log.warning("canary of %s %s: %s", run.flag, action.replace("_", " "), reason)

    def _change(
        self, run: CanaryRun, action: str, actor: str, values: dict[str, Any], message: str
    ) -> None:
        with self.database.session() as session:
            if not repository.update_run(
                session=session, run_id=run.id, revision=run.revision, values=values
            ):
                raise Conflict(f"canary run {run.id} changed meanwhile; try again")
            self._record(
                session,
                run.id,
                run.flag,
                action,
                actor,
                run.weight,
                None,
                {"message": message} if message else {},
            )
        self._count(run.flag, action, run.weight)

    def _record(
        self,
        session: Any,
        run_id: int,
        flag_key: str,
        action: str,
        actor: str,
        weight: int | None,
        version: int | None,
        detail: dict[str, Any],
    ) -> None:
        repository.add_canary_event(
            session=session,
            run_id=run_id,
            action=action,
            actor=actor,
            weight=weight,
            flag_set_version=version,
            detail=detail,
        )
        db_repository.add_audit_event(
            session=session,
            actor=actor,
            action=f"canary.{action}",
            target=flag_key,
            detail={"run": run_id, "weight": weight, "flagSetVersion": version, **detail},
        )

    def _write_flag(self, flag_key: str, definition: dict[str, Any], message: str) -> int:
        result = self.editor.put_flag(
            flag_key, definition, actor=CONTROLLER_ACTOR, message=message, source=FLAG_SOURCE
        )
        return result.flag_set.version

    def _flag(self, flag_key: str) -> Any:
        return self.store.current.flags.get(flag_key) if self.store.loaded else None

    def _active(self, flag_key: str) -> CanaryRun:
        with self.database.session() as session:
            run = repository.active_run(session=session, flag=flag_key)
        if run is None:
            raise CanaryNotFound(f"flag {flag_key!r} has no running or paused canary")
        return run

    def _count(self, flag_key: str, action: str, weight: int) -> None:
        if self.metrics is None:
            return
        self.metrics.canary_actions.labels(flag_key, action).inc()
        self.metrics.canary_weight.labels(flag_key).set(weight)
