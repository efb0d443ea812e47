"""Judging one canary step from the recorded backend calls: wait, pass, or fail (and why).

The canary's calls are counted from the start of the current step; the stable variant's
latency baseline from the start of the run (at high canary weights the stable variant gets
little traffic in the step itself). An error is a 5xx answer or no answer at all. Thresholds
are judged as soon as the canary has `minRequests` calls in the step, so a bad canary is
stopped at the first tick after that, not at the end of the interval. Stable p99 latencies below
1 ms count as 1 ms, so loopback-fast baselines do not turn jitter into a huge ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from control_plane.experiments.canary.spec import CanarySpec
from control_plane.experiments.repository import CallWindow
from control_plane.experiments.stats import nearest_rank

__all__ = ["Verdict", "judge"]

_LATENCY_FLOOR = 0.001


@dataclass(frozen=True)
class Verdict:
    #: "wait" (not enough calls yet), "pass" (thresholds hold) or "fail" (roll back).
    outcome: str
    reason: str
    observed: dict[str, Any] = field(default_factory=dict)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


def judge(spec: CanarySpec, canary: CallWindow, stable: CallWindow) -> Verdict:
    canary_p99 = nearest_rank(canary.latencies, 0.99)
    stable_p99 = nearest_rank(stable.latencies, 0.99)
    error_rate = canary.errors / canary.calls if canary.calls else None
    observed: dict[str, Any] = {
        "canaryCalls": canary.calls, "canaryErrors": canary.errors,
        "canaryErrorRate": error_rate, "canaryP99Ms": _ms(canary_p99),
        "stableCalls": stable.calls, "stableErrors": stable.errors,
        "stableP99Ms": _ms(stable_p99),
    }
    if canary.calls < spec.min_requests:
        return Verdict("wait", f"{canary.calls} of {spec.min_requests} canary requests in this "
                               "step", observed)
    assert error_rate is not None
    if error_rate > spec.max_error_rate:
        return Verdict("fail", f"canary error rate {error_rate:.1%} ({canary.errors} of "
                               f"{canary.calls} calls failed) is above the maximum "
                               f"{spec.max_error_rate:.1%}", observed)
    if canary_p99 is not None and stable_p99 is not None \
            and len(stable.latencies) >= spec.min_requests:
        ratio = canary_p99 / max(stable_p99, _LATENCY_FLOOR)
        observed["p99LatencyRatio"] = round(ratio, 3)
        if ratio > spec.max_p99_latency_ratio:
            return Verdict("fail", f"canary p99 latency {canary_p99 * 1000:.1f} ms is "
                                   f"{ratio:.1f}x the stable p99 {stable_p99 * 1000:.1f} ms, "
                                   f"above the maximum {spec.max_p99_latency_ratio:g}x",
                           observed)
    else:
        observed["p99LatencyRatio"] = None
        observed["latencyNote"] = (f"latency not compared: the stable variant has "
                                   f"{len(stable.latencies)} answered calls in this run, "
                                   f"fewer than {spec.min_requests}")
    return Verdict("pass", f"{canary.calls} canary requests within the thresholds", observed)
