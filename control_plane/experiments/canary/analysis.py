"""Where the current step stands: has the canary had its `minRequests` calls, and its figures.

The canary's calls are counted from the start of the current step, the stable variant's from
the start of the run. This only says whether a step may pass on traffic ("wait" or "pass") and
shows the figures (error rate, p99 and, for a glance, the ratio of the two p99s); whether the
canary is healthy is judged interval by interval by the built-in checks
(control_plane.experiments.canary.gates) and the metric checks, never by that ratio.
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
    #: "wait" (fewer than minRequests canary calls in the step) or "pass" (enough).
    outcome: str
    reason: str
    observed: dict[str, Any] = field(default_factory=dict)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


def judge(spec: CanarySpec, canary: CallWindow, stable: CallWindow) -> Verdict:
    canary_p99 = nearest_rank(canary.latencies, 0.99)
    stable_p99 = nearest_rank(stable.latencies, 0.99)
    ratio = (
        round(canary_p99 / max(stable_p99, _LATENCY_FLOOR), 3)
        if canary_p99 is not None and stable_p99 is not None
        else None
    )
    observed: dict[str, Any] = {
        "canaryCalls": canary.calls,
        "canaryErrors": canary.errors,
        "canaryErrorRate": canary.errors / canary.calls if canary.calls else None,
        "canaryP99Ms": _ms(canary_p99),
        "stableCalls": stable.calls,
        "stableErrors": stable.errors,
        "stableP99Ms": _ms(stable_p99),
        "p99LatencyRatio": ratio,
    }
    if canary.calls < spec.min_requests:
        return Verdict(
            "wait", f"{canary.calls} of {spec.min_requests} canary requests in this step", observed
        )
    return Verdict("pass", f"{canary.calls} canary requests in this step", observed)
