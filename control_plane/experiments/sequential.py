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

from control_plane.experiments.distributions import normal_sf
from control_plane.experiments.stats import Summary

__all__ = [
    "ALPHA",
    "METHOD",
    "PLANNED_UNITS",
    "STRATA_METHOD",
    "STRATA_MIXTURE_VARIANCE",
    "SequentialResult",
    "StratifiedSequential",
    "StratumTable",
    "always_valid",
    "mixture_p_value",
    "mixture_rho_squared",
    "sequential_means",
    "sequential_proportions",
    "sequential_strata",
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


# -- stratified 2x2 tables: canary gates ---------------------------------------------------------

#: Variance of the normal mixture over the log odds ratio in `sequential_strata` (prior sd 0.71:
#: odds ratios from 0.5 to 2 within one sd). Chosen for canary gates with bench/canary_gates.py
#: (a doubled error rate is a log odds ratio of about 0.7).
STRATA_MIXTURE_VARIANCE = 0.5
STRATA_METHOD = (
    "sequential Cochran-Mantel-Haenszel score, normal mixture over the log odds ratio "
    "(Howard et al. 2021)"
)


@dataclass(frozen=True, slots=True)
class StratumTable:
    """One 2x2 table: `treatment_bad` of `treatment_n` against `control_bad` of `control_n`."""

    treatment_bad: int
    treatment_n: int
    control_bad: int
    control_n: int


@dataclass(frozen=True, slots=True)
class StratifiedSequential:
    """The always-valid test of "the treatment is as likely to be bad as the control", over
    tables from successive strata (time intervals), at this look."""

    #: Cochran-Mantel-Haenszel score: observed minus expected bad treatment outcomes.
    score: float
    #: Its variance under the null (sum of the hypergeometric variances).
    variance: float
    #: score / sqrt(variance), the CMH z (0 without information).
    statistic: float
    #: Always-valid two-sided p-value (normal mixture; min(1, 1 / mixture likelihood ratio)).
    p_value: float
    #: Mantel-Haenszel common odds ratio (None when undefined).
    odds_ratio: float | None
    strata: int
    mixture_variance: float
    method: str = STRATA_METHOD


def _hypergeometric(table: StratumTable) -> tuple[float, float]:
    """(mean, variance) of the treatment's bad count given the table's margins."""
    n1, n0 = table.treatment_n, table.control_n
    total = n1 + n0
    bad = table.treatment_bad + table.control_bad
    if n1 == 0 or n0 == 0 or total < 2:
        return float(table.treatment_bad), 0.0
    mean = n1 * bad / total
    variance = n1 * n0 * bad * (total - bad) / (total * total * (total - 1))
    return mean, variance


def mixture_p_value(
    score: float, variance: float, mixture_variance: float, *, one_sided: bool = False
) -> float:
    """Always-valid p-value of a score with null variance V: 1 / the mixture likelihood ratio
    of exp(l S - l^2 V / 2) over l ~ N(0, t) (t the mixing variance), which is
    (1 + t V)^(-1/2) exp(b^2 / 2) with b = S sqrt(t / (1 + t V)). `one_sided`: l over the
    half-normal on l > 0 (evidence of a positive score only), 2 Phi(b) times as large."""
    if variance <= 0 or mixture_variance <= 0:
        return 1.0
    grown = 1.0 + mixture_variance * variance
    b = score * math.sqrt(mixture_variance / grown)
    log_ratio = -0.5 * math.log(grown) + 0.5 * b * b
    if one_sided:
        below = normal_sf(-b)  # Phi(b)
        if below <= 0:
            return 1.0
        log_ratio += math.log(2.0 * below)
    return 1.0 if log_ratio <= 0 else min(1.0, math.exp(-log_ratio))


def sequential_strata(
    tables: list[StratumTable],
    *,
    mixture_variance: float = STRATA_MIXTURE_VARIANCE,
    one_sided: bool = False,
) -> StratifiedSequential:
    """Always-valid comparison of two bad-outcome rates over successive strata.

    Within each stratum the treatment's bad count is hypergeometric under the null (the two
    share one rate there, whatever the rate does from one stratum to the next), so the summed
    score minus its expectation is a martingale over the strata with the summed variance as its
    clock; the normal mixture over the effect (Robbins; Howard et al. 2021, eq. 14) turns it
    into a p-value that may be read after every stratum: P(ever p <= alpha) <= alpha, in the
    normal approximation of the score. Strata where one side has no data add nothing.
    `one_sided`: evidence that the treatment is worse only (see `mixture_p_value`).
    """
    score = variance = 0.0
    ad_sum = bc_sum = 0.0
    used = 0
    for table in tables:
        if table.treatment_n == 0 or table.control_n == 0:
            continue
        used += 1
        mean, var = _hypergeometric(table)
        score += table.treatment_bad - mean
        variance += var
        total = table.treatment_n + table.control_n
        treatment_good = table.treatment_n - table.treatment_bad
        control_good = table.control_n - table.control_bad
        ad_sum += table.treatment_bad * control_good / total
        bc_sum += treatment_good * table.control_bad / total
    statistic = score / math.sqrt(variance) if variance > 0 else 0.0
    odds_ratio = ad_sum / bc_sum if bc_sum > 0 else None
    return StratifiedSequential(
        score,
        variance,
        statistic,
        mixture_p_value(score, variance, mixture_variance, one_sided=one_sided),
        odds_ratio,
        used,
        mixture_variance,
    )
