"""The statistics of an experiment report: summaries with 95% intervals, tests, and SRM.

Binary metrics (conversion): the rate with a Wilson score interval, the two-proportion z-test
(pooled variance under the null) and an unpooled Wald interval for the difference. Continuous
metrics (latency, revenue): the mean with a Student-t interval, Welch's t-test (unequal
variances, Welch-Satterthwaite degrees of freedom) and its interval for the difference.
Sample ratio mismatch: Pearson's chi-square of units per variant against configured shares;
`goodness_of_fit` is the one chi-square of the project (`control-plane simulate` uses it too).
Everything is computed from sufficient statistics (n, sum, sum of squares), so the report never
has to hold raw data twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from control_plane.experiments.distributions import (
    chi2_sf,
    normal_ppf,
    normal_sf,
    student_t_ppf,
    student_t_two_sided_p,
)

__all__ = [
    "CONFIDENCE",
    "SRM_THRESHOLD",
    "Comparison",
    "GoodnessOfFit",
    "SampleRatioCheck",
    "Summary",
    "compare_means",
    "compare_proportions",
    "goodness_of_fit",
    "nearest_rank",
    "proportion_summary",
    "sample_ratio_check",
    "summarize",
    "summary_from_sums",
]

CONFIDENCE = 0.95
#: Below this p-value the split of units is flagged as a sample ratio mismatch.
SRM_THRESHOLD = 0.001
_Z = normal_ppf(0.5 + CONFIDENCE / 2)


@dataclass(frozen=True, slots=True)
class Summary:
    """n observations with their mean, sample variance and a 95% interval of the mean."""

    n: int
    mean: float | None
    variance: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """A treatment against the control: difference, relative lift, test and p-value."""

    difference: float | None
    ci_low: float | None
    ci_high: float | None
    lift: float | None  # difference / control mean; None when the control mean is 0
    statistic: float | None
    p_value: float | None
    test: str
    dof: float | None = None


@dataclass(frozen=True, slots=True)
class GoodnessOfFit:
    """Pearson's chi-square of observed counts against expected shares."""

    statistic: float
    dof: int
    p_value: float
    expected: dict[str, float]  # expected count per category with a positive share


@dataclass(frozen=True, slots=True)
class SampleRatioCheck:
    statistic: float
    dof: int
    p_value: float
    expected: dict[str, float]  # expected units per variant
    mismatch: bool


def summarize(values: Iterable[float]) -> Summary:
    """Mean and a Student-t 95% interval of `values` (two passes, fsum: no cancellation)."""
    data = list(values)
    n = len(data)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = math.fsum(data) / n
    if n == 1:
        return Summary(1, mean, None, None, None)
    variance = math.fsum((value - mean) ** 2 for value in data) / (n - 1)
    half = student_t_ppf(0.5 + CONFIDENCE / 2, n - 1) * math.sqrt(variance / n)
    return Summary(n, mean, variance, mean - half, mean + half)


def summary_from_sums(
    n: int, total: float, total_squares: float, *, interval: bool = True
) -> Summary:
    """Summary of n values from their sum and sum of squares (for streams and simulations);
    `interval=False` skips the mean's interval (a t quantile: the costly part)."""
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = total / n
    if n == 1:
        return Summary(1, mean, None, None, None)
    variance = max(0.0, (total_squares - n * mean * mean) / (n - 1))
    if not interval:
        return Summary(n, mean, variance, None, None)
    half = student_t_ppf(0.5 + CONFIDENCE / 2, n - 1) * math.sqrt(variance / n)
    return Summary(n, mean, variance, mean - half, mean + half)


def proportion_summary(successes: int, n: int) -> Summary:
    """The rate successes/n with a Wilson score 95% interval (sound near 0 and 1)."""
    if n == 0:
        return Summary(0, None, None, None, None)
    rate = successes / n
    z2 = _Z * _Z
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z / (1 + z2 / n) * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    variance = rate * (1 - rate) * n / (n - 1) if n > 1 else None
    return Summary(n, rate, variance, max(0.0, centre - half), min(1.0, centre + half))


def compare_proportions(
    control_successes: int, control_n: int, treatment_successes: int, treatment_n: int
) -> Comparison:
    """Two-proportion z-test (pooled) of treatment against control; two-sided p-value."""
    test = "two-proportion z-test"
    if control_n == 0 or treatment_n == 0:
        return Comparison(None, None, None, None, None, None, test)
    p_control = control_successes / control_n
    p_treatment = treatment_successes / treatment_n
    difference = p_treatment - p_control
    lift = difference / p_control if p_control else None
    pooled = (control_successes + treatment_successes) / (control_n + treatment_n)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / control_n + 1 / treatment_n))
    if pooled_se == 0:
        # Every unit converted, or none did, in both groups: no evidence of a difference.
        statistic, p_value = 0.0, 1.0
    else:
        statistic = difference / pooled_se
        p_value = 2 * normal_sf(abs(statistic))
    wald_se = math.sqrt(
        p_control * (1 - p_control) / control_n + p_treatment * (1 - p_treatment) / treatment_n
    )
    return Comparison(
        difference,
        difference - _Z * wald_se,
        difference + _Z * wald_se,
        lift,
        statistic,
        min(1.0, p_value),
        test,
    )


def compare_means(control: Summary, treatment: Summary) -> Comparison:
    """Welch's t-test of treatment against control; two-sided p-value and 95% interval."""
    test = "Welch's t-test"
    if control.mean is None or treatment.mean is None:
        return Comparison(None, None, None, None, None, None, test)
    difference = treatment.mean - control.mean
    lift = difference / control.mean if control.mean else None
    if control.variance is None or treatment.variance is None:
        return Comparison(difference, None, None, lift, None, None, test)
    a = control.variance / control.n
    b = treatment.variance / treatment.n
    se = math.sqrt(a + b)
    if se == 0:
        same = difference == 0
        return Comparison(
            difference,
            difference,
            difference,
            lift,
            0.0 if same else None,
            1.0 if same else None,
            test,
        )
    dof = (a + b) ** 2 / (a * a / (control.n - 1) + b * b / (treatment.n - 1))
    statistic = difference / se
    half = student_t_ppf(0.5 + CONFIDENCE / 2, dof) * se
    return Comparison(
        difference,
        difference - half,
        difference + half,
        lift,
        statistic,
        student_t_two_sided_p(statistic, dof),
        test,
        dof,
    )


def goodness_of_fit(observed: Mapping[str, int], shares: Mapping[str, float]) -> GoodnessOfFit:
    """Chi-square goodness of fit of `observed` counts to `shares` (normalised to sum to 1).

    Categories with a zero share are left out of the sum; a count in one of them (or in a
    category without a share) makes the fit impossible (p = 0). ValueError when fewer than two
    categories have a positive share or nothing was observed.
    """
    positive = [name for name, share in shares.items() if share > 0]
    total = sum(observed.values())
    if len(positive) < 2 or total == 0:
        raise ValueError(
            "a goodness-of-fit test needs at least two expected categories and one observation"
        )
    total_share = math.fsum(shares[name] for name in positive)
    expected = {name: total * shares[name] / total_share for name in positive}
    statistic = math.fsum(
        (observed.get(name, 0) - count) ** 2 / count for name, count in expected.items()
    )
    dof = len(positive) - 1
    impossible = any(count and name not in expected for name, count in observed.items())
    return GoodnessOfFit(statistic, dof, 0.0 if impossible else chi2_sf(statistic, dof), expected)


def sample_ratio_check(
    observed: Mapping[str, int], shares: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SampleRatioCheck | None:
    """Chi-square goodness of fit of units per variant to the configured shares.

    Variants with a share of 0 that still got units make the split impossible (p = 0).
    None when there are fewer than two variants with a positive share or no units at all.
    """
    try:
        fit = goodness_of_fit(observed, shares)
    except ValueError:
        return None
    return SampleRatioCheck(
        fit.statistic, fit.dof, fit.p_value, fit.expected, fit.p_value < threshold
    )


def nearest_rank(values: Iterable[float], quantile: float) -> float | None:
    """The nearest-rank quantile (p99: the smallest value at or above 99% of the data)."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(quantile * len(data)))
    return data[rank - 1]
