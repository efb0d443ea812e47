"""Judging a canary interval by interval: its PromQL metric checks and no-traffic detection.

Each step is cut into intervals of `intervalSeconds` from its start. At the first controller
tick after an interval ends:

1. Traffic. Did the canary variant get any request since the last interval looked at? The
   spec's `trafficQuery` on Prometheus says so when there is one (no series counts as no
   requests), otherwise the calls the control plane recorded. No request: the interval is
   idle. Its metrics are not queried (without requests an error rate is NaN, not a verdict),
   the step cannot advance, and the idle count grows; at `idleIntervals` the run reports
   itself idle, once per idle spell (an event, a status warning, the
   control_plane_canary_idle_intervals gauge and the ControlPlaneCanaryIdle alert).
2. Built-in checks (unless `builtinChecks: false`): error rate and latency, canary against
   stable over the run's intervals (control_plane.experiments.canary.gates); each passes,
   fails or waits (short of its `minSamples`).
3. Metrics. Each query is filled in (control_plane.experiments.canary.templating), evaluated
   now, and judged: pass (inside `thresholdRange`), fail (outside), no_data (empty vector or
   NaN) or error (the query failed: unreachable, timeout, refused, not one number).

The interval's check fails when a built-in check fails or a metric does not pass: one failed
check, which the service counts over the run against `failureThreshold` (Flagger's semantics:
one blip does not roll back). It waits when nothing failed but a built-in check is waiting, and
passes otherwise. A step advances only while its latest check passed (or waits, on the way to a
step that still has stable traffic). Which interval was looked at last, the idle
count and the latest check are kept in memory per run and step: a restarted control plane
starts them afresh (intervals it did not watch are not counted as idle), while failed checks
are events in the database and carry over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from control_plane.db.models import utc_now
from control_plane.errors import InvalidCanary
from control_plane.experiments.canary.gates import GateResult
from control_plane.experiments.canary.prometheus import (
    InstantQuery,
    MetricError,
    MetricNoData,
    instant_query,
)
from control_plane.experiments.canary.spec import CanarySpec, MetricCheck
from control_plane.experiments.canary.templating import duration, render

__all__ = ["AnalysisMetrics", "IntervalAnalysis", "IntervalCheck", "MetricResult", "Tick"]


class AnalysisMetrics:
    """Prometheus metrics of the interval analysis, on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.idle_intervals = Gauge(
            "control_plane_canary_idle_intervals",
            "Consecutive analysis intervals in which the running canary of a flag got no "
            "request (0 once it gets traffic, or when no canary runs).",
            ["flag"],
            registry=registry,
        )
        self.metric_checks = Counter(
            "control_plane_canary_metric_checks",
            "Canary metric (PromQL) evaluations per flag and outcome: pass, fail (outside its "
            "thresholdRange), no_data (empty or NaN), error (the query failed).",
            ["flag", "outcome"],
            registry=registry,
        )


@dataclass(frozen=True)
class MetricResult:
    name: str
    #: pass, fail, no_data or error.
    outcome: str
    value: float | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "value": self.value,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class IntervalCheck:
    #: pass, fail (one failed check) or wait (nothing failed, a built-in check is short of
    #: its minSamples).
    outcome: str
    reason: str
    metrics: tuple[MetricResult, ...]
    #: The built-in checks (errorRate, latency) at this interval.
    checks: tuple[GateResult, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "checks": [check.to_json() for check in self.checks],
            "metrics": [metric.to_json() for metric in self.metrics],
        }

    @property
    def failed(self) -> list[str]:
        """The names of what failed: built-in checks and metrics."""
        return [c.name for c in self.checks if c.outcome == "fail"] + [
            m.name for m in self.metrics if m.outcome != "pass"
        ]


@dataclass(frozen=True)
class Tick:
    """What the analysis saw at one controller tick."""

    idle_intervals: int
    #: The run has just reached `idleIntervals` idle intervals: report it (once).
    newly_idle: bool
    #: The check made at this tick, if an interval ended and the canary had traffic.
    check: IntervalCheck | None
    #: The checks let the step advance: nothing to check and traffic seen, or the latest
    #: interval's check passed or waits (the service decides what a wait allows).
    may_advance: bool


@dataclass
class _Watch:
    key: tuple[int, int, datetime]
    looked: int
    idle: int = 0
    reported: bool = False
    check: IntervalCheck | None = None


class IntervalAnalysis:
    """Per-interval checks of the running canaries (one instance per control plane)."""

    def __init__(
        self,
        *,
        query: InstantQuery | None = None,
        default_address: str | None = None,
        timeout: float = 3.0,
        metrics: AnalysisMetrics | None = None,
        watching_since: datetime | None = None,
    ) -> None:
        """`query` defaults to `instant_query` with `timeout`; steps that started before
        `watching_since` (default: now) are watched from the first tick on."""
        self.query: InstantQuery = query or partial(instant_query, timeout=timeout)
        self.default_address = default_address.rstrip("/") if default_address else None
        self.metrics = metrics
        self._since = watching_since or utc_now()
        self._watches: dict[int, _Watch] = {}
        # Runs that finished here: a tick already under way when its run is aborted must not
        # bring back its watch or its idle gauge (forget has set that to 0).
        self._finished: set[int] = set()
        self._lock = threading.Lock()

    # -- spec checks -----------------------------------------------------------------------

    def check_spec(self, spec: CanarySpec) -> None:
        """InvalidCanary naming each query that has no Prometheus to run on."""
        if self.default_address is not None:
            return
        fields = [
            f"metrics.{index}.provider.address"
            for index, metric in enumerate(spec.metrics)
            if metric.provider is None
        ]
        if spec.traffic_query is not None and self._traffic_address(spec) is None:
            fields.append("trafficQuery")
        if fields:
            message = (
                "no Prometheus address: give provider.address or set the control "
                "plane's prometheus_url (CP_PROMETHEUS_URL)"
            )
            raise InvalidCanary(
                f"invalid canary spec: {fields[0]}: {message}",
                errors=[{"field": name, "message": message} for name in fields],
            )

    # -- per tick --------------------------------------------------------------------------

    def tick(
        self,
        *,
        run_id: int,
        flag: str,
        step_index: int,
        step_started_at: datetime,
        spec: CanarySpec,
        now: datetime,
        recorded_calls: Callable[[datetime], int],
        builtin: Callable[[], tuple[GateResult, ...]] | None = None,
    ) -> Tick:
        """Look at the intervals of the step that ended since the last tick; `builtin` judges
        the built-in checks (None: they are off)."""
        interval = spec.interval_seconds
        ended = max(0, int((now - step_started_at).total_seconds() // interval))
        watch = self._watch(run_id, step_index, step_started_at, ended)
        check = None
        newly_idle = False
        if ended > watch.looked:
            since = step_started_at + timedelta(seconds=watch.looked * interval)
            new, watch.looked = ended - watch.looked, ended
            traffic = self._traffic(flag, spec, since, recorded_calls)
            if isinstance(traffic, MetricResult):  # the traffic query failed: a failed check
                check = IntervalCheck("fail", f"trafficQuery: {traffic.detail}", (traffic,))
                self._count(flag, [traffic])
            elif traffic <= 0:
                watch.idle += new
                watch.check = None
                if watch.idle >= spec.idle_intervals and not watch.reported:
                    watch.reported = newly_idle = True
            else:
                watch.idle, watch.reported = 0, False
                if spec.metrics or builtin is not None:
                    check = self._check(flag, spec, builtin() if builtin is not None else ())
            if check is not None:
                watch.check = check
        self.show_idle(run_id, flag)
        latest = watch.check
        judged = bool(spec.metrics) or builtin is not None
        may_advance = (not judged and watch.idle == 0) or (
            latest is not None and latest.outcome in ("pass", "wait")
        )
        return Tick(watch.idle, newly_idle, check, may_advance)

    @classmethod
    def from_settings(cls, settings: Any, registry: CollectorRegistry) -> IntervalAnalysis:
        """The analysis of one app: its prometheus_url and timeout, metrics on `registry`."""
        return cls(
            default_address=settings.prometheus_url,
            timeout=settings.prometheus_timeout,
            metrics=AnalysisMetrics(registry),
        )

    def current(self, run_id: int) -> tuple[int, IntervalCheck | None]:
        """(idle intervals, the latest check) of a run this process is watching."""
        with self._lock:
            watch = self._watches.get(run_id)
        return (watch.idle, watch.check) if watch is not None else (0, None)

    def show_idle(self, run_id: int, flag: str) -> None:
        """Set the flag's idle gauge to the run's idle intervals (0 when not watched), unless
        the run has finished: under the lock, so it never undoes `forget`."""
        if self.metrics is None:
            return
        with self._lock:
            if run_id in self._finished:
                return
            watch = self._watches.get(run_id)
            self.metrics.idle_intervals.labels(flag).set(watch.idle if watch is not None else 0)

    def forget(self, run_id: int, flag: str) -> None:
        """The run finished: drop its watch and set its flag's idle gauge to 0."""
        with self._lock:
            self._watches.pop(run_id, None)
            self._finished.add(run_id)
            if self.metrics is not None:
                self.metrics.idle_intervals.labels(flag).set(0)

    # -- internals ---------------------------------------------------------------------------

    def _watch(self, run_id: int, step_index: int, step_started_at: datetime, ended: int) -> _Watch:
        key = (run_id, step_index, step_started_at)
        with self._lock:
            watch = self._watches.get(run_id)
            if watch is None or watch.key != key:
                # A step this process saw start is watched from its start; one that started
                # before (a restart) from now on, so unwatched intervals are not called idle.
                fresh = step_started_at >= self._since
                watch = _Watch(key, 0 if fresh else ended)
                if run_id not in self._finished:
                    self._watches[run_id] = watch
            return watch

    def _values(self, flag: str, spec: CanarySpec) -> dict[str, str]:
        return {
            "flag": flag,
            "variant": spec.canary_variant,
            "stable": spec.stable_variant,
            "interval": duration(spec.interval_seconds),
        }

    def _traffic_address(self, spec: CanarySpec) -> str | None:
        if spec.metrics and spec.metrics[0].provider is not None:
            return spec.metrics[0].provider.address
        return self.default_address

    def _traffic(
        self,
        flag: str,
        spec: CanarySpec,
        since: datetime,
        recorded_calls: Callable[[datetime], int],
    ) -> float | MetricResult:
        """The canary's requests since `since`, or the failed traffic query."""
        if spec.traffic_query is None:
            return recorded_calls(since)
        address = self._traffic_address(spec)
        if address is None:
            return MetricResult("trafficQuery", "error", None, "no Prometheus address")
        try:
            return self.query(address, render(spec.traffic_query, self._values(flag, spec)))
        except MetricNoData:
            return 0.0
        except MetricError as exc:
            return MetricResult(
                "trafficQuery", "error", None, f"query failed ({exc.kind}): {exc.detail}"
            )

    def _check(self, flag: str, spec: CanarySpec, builtin: tuple[GateResult, ...]) -> IntervalCheck:
        values = self._values(flag, spec)
        results = [self._evaluate(metric, values) for metric in spec.metrics]
        self._count(flag, results)
        bad = [f"{gate.name}: {gate.detail}" for gate in builtin if gate.outcome == "fail"] + [
            f"{result.name}: {result.detail}" for result in results if result.outcome != "pass"
        ]
        if bad:
            return IntervalCheck("fail", "; ".join(bad), tuple(results), builtin)
        parts = [f"{gate.name}: {gate.detail}" for gate in builtin]
        if results:
            parts.append(
                f"{len(results)} metric(s) within their ranges: "
                + ", ".join(f"{r.name} {r.value:g}" for r in results if r.value is not None)
            )
        waiting = any(gate.outcome == "wait" for gate in builtin)
        return IntervalCheck(
            "wait" if waiting else "pass", "; ".join(parts), tuple(results), builtin
        )

    def _evaluate(self, metric: MetricCheck, values: dict[str, str]) -> MetricResult:
        address = metric.provider.address if metric.provider else self.default_address
        if address is None:
            return MetricResult(metric.name, "error", None, "no Prometheus address")
        try:
            value = self.query(address, render(metric.query, values))
        except MetricNoData as exc:
            return MetricResult(metric.name, "no_data", None, f"no data: {exc.detail}")
        except MetricError as exc:
            return MetricResult(
                metric.name, "error", None, f"query failed ({exc.kind}): {exc.detail}"
            )
        accepted = metric.threshold_range
        if accepted.holds(value):
            return MetricResult(metric.name, "pass", value, f"{value:g} is {accepted.describe()}")
        return MetricResult(
            metric.name,
            "fail",
            value,
            f"{value:g} is outside the accepted range ({accepted.describe()})",
        )

    def _count(self, flag: str, results: list[MetricResult]) -> None:
        if self.metrics is not None:
            for result in results:
                self.metrics.metric_checks.labels(flag, result.outcome).inc()
