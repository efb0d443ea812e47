"""The built-in canary checks: error rate and latency, canary against stable, statistically.

The run's recorded calls are cut into strata of `intervalSeconds` from the run's start; in each
stratum both variants served requests at the same time, under the same load and the same
incidents. Each check turns a stratum into a 2x2 table and asks, over all the run's strata,
whether the canary is worse than the stable variant:

- errorRate: errors (5xx or no answer) of each variant.
- latency: calls above the stratum's pooled `quantile`, canary latencies divided by `maxRatio`
  first (the slowdown tolerated). Within a stratum, if the variants share one latency
  distribution, the canary's count above is hypergeometric whatever the distribution (heavy
  tails and spikes included): no ratio of two noisy p99s.

The tables go to the sequential Cochran-Mantel-Haenszel test of
control_plane.experiments.sequential.sequential_strata, whose p-value is always valid: the
chance that an A/A canary ever reaches p <= alpha, however many intervals are judged, is at
most alpha (in the normal approximation; bench/canary_gates.py measures it). Stratifying keeps
it honest when both variants change together over time (a load peak, a shared dependency
failing) while the canary's share of traffic grows step by step.

A check waits (neither passes nor fails) until the canary has `minSamples` calls; it passes
when the canary's own figure is at or below its floor, and fails when the canary's error rate is
above `max` or the sequential test finds the canary worse at `alpha`. Without `minSamples`
stable calls the comparison is skipped (said so) and only the floor and ceiling judge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control_plane.experiments.canary.spec import BuiltinChecks, ErrorRateCheck, LatencyCheck
from control_plane.experiments.rank_tests import exceedance_counts
from control_plane.experiments.repository import CallWindow
from control_plane.experiments.sequential import (
    STRATA_MIXTURE_VARIANCE,
    StratifiedSequential,
    StratumTable,
    sequential_strata,
)
from control_plane.experiments.stats import nearest_rank

__all__ = [
    "GateResult",
    "Stratum",
    "StratumTables",
    "judge_error_rate",
    "judge_gates",
    "judge_latency",
    "strata_from_samples",
    "stratum_tables",
]

ERROR_RATE = "errorRate"
LATENCY = "latency"


@dataclass(frozen=True, slots=True)
class Stratum:
    """Both variants' calls in one time window."""

    canary: CallWindow
    stable: CallWindow


@dataclass(frozen=True, slots=True)
class StratumTables:
    """A stratum as the checks see it: its two 2x2 tables and the calls' totals."""

    errors: StratumTable
    #: Answered calls above the pooled quantile (none counted when a side has no answer).
    latency: StratumTable | None
    canary_latencies: Sequence[float] = field(default=())
    stable_latencies: Sequence[float] = field(default=())


@dataclass(frozen=True, slots=True)
class GateResult:
    """One built-in check at one look: pass, fail or wait, with its statistics."""

    name: str
    outcome: str
    detail: str
    statistic: float | None = None
    p_value: float | None = None
    observed: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "detail": self.detail,
            "statistic": _round(self.statistic),
            "pValue": self.p_value,
            **self.observed,
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _is_error(status: int | None) -> bool:
    return status is None or status >= 500


def strata_from_samples(
    samples: Iterable[tuple[str, datetime, int | None, float]],
    *,
    canary_variant: str,
    stable_variant: str,
    start: datetime,
    width_seconds: float,
) -> list[Stratum]:
    """Cut (variant, at, status, seconds) calls into strata of `width_seconds` from `start`
    (calls before it are left out); latencies are those of answered calls."""
    buckets: dict[int, dict[str, list[Any]]] = {}
    for variant, at, status, seconds in samples:
        if variant not in (canary_variant, stable_variant):
            continue
        offset = (at - start).total_seconds()
        if offset < 0:
            continue
        bucket = buckets.setdefault(int(offset // width_seconds), {})
        calls = bucket.setdefault(variant, [0, 0, []])
        calls[0] += 1
        if _is_error(status):
            calls[1] += 1
        if status is not None:
            calls[2].append(seconds)

    def window(calls: list[Any] | None) -> CallWindow:
        return CallWindow(0, 0, []) if calls is None else CallWindow(calls[0], calls[1], calls[2])

    return [
        Stratum(
            window(buckets[index].get(canary_variant)), window(buckets[index].get(stable_variant))
        )
        for index in sorted(buckets)
    ]


def stratum_tables(checks: BuiltinChecks, stratum: Stratum) -> StratumTables:
    """The error and latency tables of one stratum under `checks`."""
    canary, stable = stratum.canary, stratum.stable
    errors = StratumTable(canary.errors, canary.calls, stable.errors, stable.calls)
    counts = exceedance_counts(
        stable.latencies,
        canary.latencies,
        checks.latency.quantile,
        scale=checks.latency.max_ratio,
    )
    stable_above, canary_above = (counts[0], counts[1]) if counts is not None else (0, 0)
    # A side without answered calls gives a table the test skips, still counting the other's.
    latency = StratumTable(canary_above, len(canary.latencies), stable_above, len(stable.latencies))
    return StratumTables(errors, latency, canary.latencies, stable.latencies)


def _sequential_json(test: StratifiedSequential) -> dict[str, Any]:
    return {
        "test": test.method,
        "cmhScore": _round(test.score),
        "cmhVariance": _round(test.variance),
        "oddsRatio": _round(test.odds_ratio),
        "strata": test.strata,
    }


def _pct(rate: float) -> str:
    return f"{rate:.2%}" if rate < 0.1 else f"{rate:.1%}"


def judge_error_rate(
    check: ErrorRateCheck,
    tables: Sequence[StratumTable],
    *,
    mixture_variance: float = STRATA_MIXTURE_VARIANCE,
) -> GateResult:
    canary_n = sum(table.treatment_n for table in tables)
    canary_bad = sum(table.treatment_bad for table in tables)
    stable_n = sum(table.control_n for table in tables)
    stable_bad = sum(table.control_bad for table in tables)
    observed: dict[str, Any] = {
        "canaryCalls": canary_n,
        "canaryErrors": canary_bad,
        "canaryErrorRate": canary_bad / canary_n if canary_n else None,
        "stableCalls": stable_n,
        "stableErrors": stable_bad,
        "stableErrorRate": stable_bad / stable_n if stable_n else None,
        "alpha": check.alpha,
    }
    if canary_n == 0:
        return GateResult(ERROR_RATE, "wait", "no canary calls yet", observed=observed)
    rate = canary_bad / canary_n
    canary_text = f"canary error rate {_pct(rate)} ({canary_bad} of {canary_n} calls)"
    enough = canary_n >= check.min_samples
    waiting = f"{canary_n} of {check.min_samples} canary calls"
    if rate <= check.floor:
        floor = f"{canary_text} is at or below the floor {_pct(check.floor)}"
        return GateResult(
            ERROR_RATE,
            "pass" if enough else "wait",
            floor if enough else f"{waiting}; {floor}",
            observed=observed,
        )
    if enough and check.max is not None and rate > check.max:
        return GateResult(
            ERROR_RATE,
            "fail",
            f"{canary_text} is above the maximum {_pct(check.max)}",
            observed=observed,
        )
    if stable_n == 0:
        return GateResult(
            ERROR_RATE,
            "pass" if enough else "wait",
            f"{canary_text}; not compared: the stable variant has no calls in the same intervals",
            observed=observed,
        )
    test = sequential_strata(list(tables), mixture_variance=mixture_variance, one_sided=True)
    observed.update(_sequential_json(test))
    compared = (
        f"{canary_text} against stable {_pct(stable_bad / stable_n)} ({stable_bad} of "
        f"{stable_n}) in the same {test.strata} interval(s): CMH z {test.statistic:.2f}, "
        f"always-valid p {test.p_value:.3g}"
    )
    # Always valid: a failure may be declared at any look, before minSamples too.
    if test.score > 0 and test.p_value <= check.alpha:
        return GateResult(
            ERROR_RATE,
            "fail",
            f"{compared} <= alpha {check.alpha:g}: the canary fails more often",
            test.statistic,
            test.p_value,
            observed,
        )
    return GateResult(
        ERROR_RATE,
        "pass" if enough else "wait",
        f"{compared} (alpha {check.alpha:g})" if enough else f"{waiting}; {compared}",
        test.statistic,
        test.p_value,
        observed,
    )


def _quantile_name(quantile: float) -> str:
    return f"p{quantile * 100:g}"


def judge_latency(
    check: LatencyCheck,
    tables: Sequence[StratumTable | None],
    canary_q: float | None,
    stable_q: float | None,
    *,
    mixture_variance: float = STRATA_MIXTURE_VARIANCE,
) -> GateResult:
    """`canary_q`, `stable_q`: each variant's `check.quantile` (seconds, nearest rank) over the
    answered calls of the same strata."""
    name = _quantile_name(check.quantile)
    present = [table for table in tables if table is not None]
    canary_samples = sum(table.treatment_n for table in present)
    stable_samples = sum(table.control_n for table in present)
    observed: dict[str, Any] = {
        "quantile": check.quantile,
        "canarySamples": canary_samples,
        "stableSamples": stable_samples,
        "canaryQuantileMs": _ms(canary_q),
        "stableQuantileMs": _ms(stable_q),
        "quantileRatio": _round(canary_q / stable_q, 3) if canary_q and stable_q else None,
        "maxRatio": check.max_ratio,
        "alpha": check.alpha,
    }
    if canary_samples == 0 or canary_q is None:
        return GateResult(LATENCY, "wait", "no answered canary calls yet", observed=observed)
    enough = canary_samples >= check.min_samples
    waiting = f"{canary_samples} of {check.min_samples} answered canary calls"
    canary_text = f"canary {name} latency {canary_q * 1000:.1f} ms"
    if canary_q * 1000 <= check.floor_ms:
        floor = f"{canary_text} is at or below the floor {check.floor_ms:g} ms"
        return GateResult(
            LATENCY,
            "pass" if enough else "wait",
            floor if enough else f"{waiting}; {floor}",
            observed=observed,
        )
    if stable_samples == 0 or stable_q is None:
        return GateResult(
            LATENCY,
            "pass" if enough else "wait",
            f"{canary_text}; not compared: the stable variant has no answered calls in the "
            "same intervals",
            observed=observed,
        )
    test = sequential_strata(present, mixture_variance=mixture_variance, one_sided=True)
    observed.update(_sequential_json(test))
    above = sum(table.treatment_bad for table in present)
    above_stable = sum(table.control_bad for table in present)
    tolerated = f" / {check.max_ratio:g}" if check.max_ratio != 1 else ""
    compared = (
        f"{canary_text} against stable {stable_q * 1000:.1f} ms; above each interval's pooled "
        f"{name} (canary latencies{tolerated}): canary {above} of {canary_samples}, "
        f"stable {above_stable} of {stable_samples}, CMH z {test.statistic:.2f}, "
        f"always-valid p {test.p_value:.3g}"
    )
    if test.score > 0 and test.p_value <= check.alpha:
        return GateResult(
            LATENCY,
            "fail",
            f"{compared} <= alpha {check.alpha:g}: the canary is slower",
            test.statistic,
            test.p_value,
            observed,
        )
    return GateResult(
        LATENCY,
        "pass" if enough else "wait",
        f"{compared} (alpha {check.alpha:g})" if enough else f"{waiting}; {compared}",
        test.statistic,
        test.p_value,
        observed,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def judge_gates(
    checks: BuiltinChecks,
    tables: Sequence[StratumTables],
    *,
    mixture_variance: float = STRATA_MIXTURE_VARIANCE,
) -> tuple[GateResult, GateResult]:
    """Both built-in checks over the run's strata so far."""
    quantile = checks.latency.quantile
    canary_q = nearest_rank(
        (value for table in tables for value in table.canary_latencies), quantile
    )
    stable_q = nearest_rank(
        (value for table in tables for value in table.stable_latencies), quantile
    )
    return (
        judge_error_rate(
            checks.error_rate,
            [table.errors for table in tables],
            mixture_variance=mixture_variance,
        ),
        judge_latency(
            checks.latency,
            [table.latency for table in tables],
            canary_q,
            stable_q,
            mixture_variance=mixture_variance,
        ),
    )
