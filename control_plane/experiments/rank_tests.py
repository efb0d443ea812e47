"""Comparisons of two latency samples that do not rest on a ratio of two noisy p99s.

Ready for canary gates (canary against stable over the same window):

- `mann_whitney`: is one distribution shifted above the other? The Mann-Whitney U statistic
  with its normal approximation, tie-corrected and with a continuity correction (as SciPy's
  `mannwhitneyu(method="asymptotic")`). Robust to the heavy tails latency has.
- `quantile_exceedance`: is the canary slower at a chosen quantile? Both samples are pooled and
  the pooled q-quantile is the threshold; if the variants share one distribution, each has the
  same share of samples above it, which a two-proportion z-test checks (for q = 0.5 this is
  Mood's median test, SciPy's `median_test`).

H. B. Mann, D. R. Whitney, "On a test of whether one of two random variables is stochastically
larger than the other", Ann. Math. Statist. 18(1), 1947. A. M. Mood, "Introduction to the
Theory of Statistics", 1950 (the median test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.experiments.distributions import normal_sf
from control_plane.experiments.stats import compare_proportions

__all__ = [
    "QuantileExceedance",
    "RankTest",
    "exceedance_counts",
    "mann_whitney",
    "pooled_quantile",
    "quantile_exceedance",
]


@dataclass(frozen=True, slots=True)
class RankTest:
    u: float  # U of the treatment sample
    statistic: float  # z
    p_value: float  # two-sided
    p_greater: float  # one-sided: treatment stochastically larger than control


@dataclass(frozen=True, slots=True)
class QuantileExceedance:
    quantile: float
    threshold: float
    control_above: int
    treatment_above: int
    statistic: float | None
    p_value: float | None  # two-sided
    p_greater: float | None  # one-sided: more of the treatment lies above the threshold


def mann_whitney(control: Sequence[float], treatment: Sequence[float]) -> RankTest | None:
    """Mann-Whitney U test of treatment against control; None when a sample is empty."""
    n_c, n_t = len(control), len(treatment)
    if n_c == 0 or n_t == 0:
        return None
    pooled = sorted([(value, 1) for value in treatment] + [(value, 0) for value in control])
    rank_sum = 0.0
    tie_term = 0.0
    index = 0
    while index < len(pooled):
        end = index
        while end + 1 < len(pooled) and pooled[end + 1][0] == pooled[index][0]:
            end += 1
        size = end - index + 1
        average_rank = (index + end) / 2.0 + 1.0
        rank_sum += average_rank * sum(group for _, group in pooled[index : end + 1])
        tie_term += size**3 - size
        index = end + 1
    n = n_c + n_t
    u = rank_sum - n_t * (n_t + 1) / 2.0
    mean = n_c * n_t / 2.0
    variance = n_c * n_t / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return RankTest(u, 0.0, 1.0, 1.0)
    sd = math.sqrt(variance)
    two_sided_z = max(abs(u - mean) - 0.5, 0.0) / sd
    greater_z = (u - mean - 0.5) / sd
    return RankTest(
        u, (u - mean) / sd, min(1.0, 2.0 * normal_sf(two_sided_z)), normal_sf(greater_z)
    )


def quantile_exceedance(
    control: Sequence[float], treatment: Sequence[float], quantile: float
) -> QuantileExceedance | None:
    """Pooled-quantile test at `quantile` (0 < q < 1); None when a sample is empty."""
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must be strictly between 0 and 1")
    if not control or not treatment:
        return None
    threshold = pooled_quantile(control, treatment, quantile)
    control_above = sum(1 for value in control if value > threshold)
    treatment_above = sum(1 for value in treatment if value > threshold)
    comparison = compare_proportions(control_above, len(control), treatment_above, len(treatment))
    statistic = comparison.statistic
    greater = normal_sf(statistic) if statistic is not None else None
    return QuantileExceedance(
        quantile, threshold, control_above, treatment_above, statistic, comparison.p_value, greater
    )


def pooled_quantile(control: Sequence[float], treatment: Sequence[float], quantile: float) -> float:
    """The `quantile` of both samples pooled, as numpy's default (linear interpolation) has it;
    ValueError when both are empty."""
    pooled = sorted([*control, *treatment])
    if not pooled:
        raise ValueError("no values to take a quantile of")
    position = quantile * (len(pooled) - 1)
    low = math.floor(position)
    high = min(low + 1, len(pooled) - 1)
    return pooled[low] + (pooled[high] - pooled[low]) * (position - low)


def exceedance_counts(
    control: Sequence[float], treatment: Sequence[float], quantile: float, *, scale: float = 1.0
) -> tuple[int, int, float] | None:
    """(control above, treatment above, threshold) at the pooled `quantile` of control and
    treatment / `scale`: the 2x2 table of the pooled-quantile test, where `scale` is the
    slowdown tolerated (treatment values are divided by it first). None when a sample is empty.

    If treatment / scale and control share one distribution, the treatment's count above the
    threshold is hypergeometric given the pooled sample, whatever that distribution is.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must be strictly between 0 and 1")
    if scale <= 0:
        raise ValueError("scale must be positive")
    if not control or not treatment:
        return None
    scaled = [value / scale for value in treatment] if scale != 1.0 else list(treatment)
    threshold = pooled_quantile(control, scaled, quantile)
    control_above = sum(1 for value in control if value > threshold)
    treatment_above = sum(1 for value in scaled if value > threshold)
    return control_above, treatment_above, threshold
