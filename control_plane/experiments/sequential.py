"""Always-valid p-values and confidence sequences: results that stay valid however often they are
read.

A fixed-horizon p-value is valid once, at a sample size chosen in advance; reading it every day
and stopping at the first p < 0.05 makes false positives several times likelier than 5%. The
mixture sequential probability ratio test (mSPRT) fixes that: its likelihood ratio against
"no difference", mixed over a normal prior N(0, tau^2) on the difference, is a nonnegative
martingale under the null, so by Ville's inequality P(ever 1/Lambda_n <= alpha) <= alpha at
every sample size at once.

For an estimated difference d with estimator variance V (normal approximation):

    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))
    always-valid p = min(1, 1 / Lambda)
    confidence sequence = d +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))

so the p-value is below alpha exactly when the sequence excludes 0. The sequence is Robbins'
normal-mixture boundary in the form of Howard et al., and the p-value the mSPRT of Johari et al.:

- R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Peeking at A/B tests: why it matters, and what to
  do about it", KDD 2017; and "Always valid inference: continuous monitoring of A/B tests",
  Operations Research 70(3), 2022.
- S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon, "Time-uniform, nonparametric,
  nonasymptotic confidence sequences", Annals of Statistics 49(2), 2021 (section 3.5, eq. 14).

The mixing variance is tau^2 = rho^2 * s^2, where s^2 = V * N is the per-unit variance of the
difference (N units in both variants) and rho^2 = x* / PLANNED_UNITS with x* solving
x = 2 log(1/alpha) + log(1 + x): the sequence is then narrowest when N reaches PLANNED_UNITS
(Howard et al.; GrowthBook's tuning parameter is the same quantity). Any fixed choice keeps the
guarantee; it only moves where the test is most sensitive. The report gives the current value
of the p-value; the running minimum of the values read so far is equally valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from control_plane.experiments.stats import Summary

__all__ = [
    "ALPHA",
    "METHOD",
    "PLANNED_UNITS",
    "SequentialResult",
    "always_valid",
    "mixture_rho_squared",
    "sequential_means",
    "sequential_proportions",
]

ALPHA = 0.05
#: Units (both variants together) at which the confidence sequence is tuned to be narrowest.
PLANNED_UNITS = 10_000
METHOD = "mSPRT, normal mixture (Johari et al. 2022; Howard et al. 2021)"


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """The always-valid p-value and confidence sequence of one difference, at this look."""

    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    #: tau^2, the variance of the normal mixture over the difference.
    mixture_variance: float | None
    alpha: float
    planned_units: int
    method: str = METHOD


def mixture_rho_squared(alpha: float = ALPHA, planned_units: int = PLANNED_UNITS) -> float:
    """rho^2 that makes the normal-mixture boundary narrowest after `planned_units` units."""
    if not 0 < alpha < 1 or planned_units < 1:
        raise ValueError("alpha must be within (0, 1) and planned_units positive")
    c = 2.0 * math.log(1.0 / alpha)
    x = c
    for _ in range(100):  # x = c + log(1 + x) is a contraction: converges in a few steps
        following = c + math.log1p(x)
        if abs(following - x) < 1e-13:
            break
        x = following
    return x / planned_units


def always_valid(
    difference: float | None,
    variance: float | None,
    units: int,
    *,
    alpha: float = ALPHA,
    planned_units: int = PLANNED_UNITS,
) -> SequentialResult:
    """mSPRT p-value and confidence sequence of `difference`, whose estimator has `variance`,
    computed from `units` units (see the module docstring for the formulas)."""
    if difference is None or variance is None or units < 2 or not math.isfinite(variance):
        return SequentialResult(None, None, None, None, alpha, planned_units)
    if variance <= 0:
        # No spread in either variant: no evidence either way, and no interval to give.
        return SequentialResult(
            1.0 if difference == 0 else None, None, None, None, alpha, planned_units
        )
    tau2 = variance * units * mixture_rho_squared(alpha, planned_units)
    total = variance + tau2
    log_ratio = 0.5 * math.log(variance / total) + difference * difference * tau2 / (
        2.0 * variance * total
    )
    p_value = 1.0 if log_ratio <= 0 else math.exp(-log_ratio)
    half = math.sqrt(
        variance * total / tau2 * (2.0 * math.log(1.0 / alpha) + math.log(total / variance))
    )
    return SequentialResult(
        min(1.0, p_value), difference - half, difference + half, tau2, alpha, planned_units
    )


def sequential_proportions(
    control_successes: int,
    control_n: int,
    treatment_successes: int,
    treatment_n: int,
    *,
    alpha: float = ALPHA,
    planned_units: int = PLANNED_UNITS,
) -> SequentialResult:
    """Always-valid comparison of two rates (unpooled variance, as the Wald interval)."""
    if control_n == 0 or treatment_n == 0:
        return always_valid(None, None, 0, alpha=alpha, planned_units=planned_units)
    p_c = control_successes / control_n
    p_t = treatment_successes / treatment_n
    variance = p_c * (1 - p_c) / control_n + p_t * (1 - p_t) / treatment_n
    return always_valid(
        p_t - p_c, variance, control_n + treatment_n, alpha=alpha, planned_units=planned_units
    )


def sequential_means(
    control: Summary,
    treatment: Summary,
    *,
    alpha: float = ALPHA,
    planned_units: int = PLANNED_UNITS,
) -> SequentialResult:
    """Always-valid comparison of two means (Welch's variance of the difference)."""
    if (
        control.mean is None
        or treatment.mean is None
        or control.variance is None
        or treatment.variance is None
    ):
        return always_valid(None, None, 0, alpha=alpha, planned_units=planned_units)
    variance = control.variance / control.n + treatment.variance / treatment.n
    return always_valid(
        treatment.mean - control.mean,
        variance,
        control.n + treatment.n,
        alpha=alpha,
        planned_units=planned_units,
    )
