"""CUPED: a smaller variance of a difference, from what each unit did before it was exposed.

A pre-exposure covariate X (the same metric in the weeks before the experiment, say) explains
part of the outcome Y; it cannot depend on the variant, so subtracting theta * (X - mean X)
removes that part without bias and shrinks the variance by the share of Y that X explains.
theta is the pooled within-variant slope of Y on X, which makes the adjusted difference exactly
the coefficient of the treatment indicator in the regression Y ~ 1 + treatment + X (the tests
check both against statsmodels OLS). Its variance is Welch's, from the adjusted values of each
variant, so unequal variances stay allowed.

A. Deng, Y. Xu, R. Kohavi, T. Walker, "Improving the sensitivity of online controlled
experiments by utilizing pre-experiment data", WSDM 2013.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.experiments.distributions import student_t_ppf, student_t_two_sided_p
from control_plane.experiments.stats import CONFIDENCE

__all__ = ["CupedComparison", "cuped_compare"]


@dataclass(frozen=True, slots=True)
class CupedComparison:
    """The CUPED-adjusted difference (treatment - control) with its Welch test."""

    difference: float
    variance: float  # of the adjusted difference
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    dof: float
    theta: float
    #: 1 - Var(adjusted difference) / Var(unadjusted difference): the sample saved.
    variance_reduction: float
    units_with_covariate: int


def _moments(pairs: Sequence[tuple[float, float]]) -> tuple[int, float, float, float, float, float]:
    n = len(pairs)
    mean_y = math.fsum(y for y, _ in pairs) / n
    mean_x = math.fsum(x for _, x in pairs) / n
    sxx = math.fsum((x - mean_x) ** 2 for _, x in pairs)
    sxy = math.fsum((x - mean_x) * (y - mean_y) for y, x in pairs)
    syy = math.fsum((y - mean_y) ** 2 for y, _ in pairs)
    return n, mean_y, mean_x, sxx, sxy, syy


def cuped_compare(
    control: Sequence[tuple[float, float]],
    treatment: Sequence[tuple[float, float]],
    units_with_covariate: int,
) -> CupedComparison | None:
    """CUPED comparison from (outcome, covariate) per unit of each variant.

    None when it cannot help: fewer than two units in a variant, or a covariate that does not
    vary within the variants (nothing to regress on).
    """
    if len(control) < 2 or len(treatment) < 2:
        return None
    n_c, y_c, x_c, sxx_c, sxy_c, syy_c = _moments(control)
    n_t, y_t, x_t, sxx_t, sxy_t, syy_t = _moments(treatment)
    sxx = sxx_c + sxx_t
    if sxx <= 0:
        return None
    theta = (sxy_c + sxy_t) / sxx
    difference = (y_t - y_c) - theta * (x_t - x_c)
    # Sample variance of Y - theta X in each variant, from the centred sums.
    var_c = (syy_c - 2 * theta * sxy_c + theta * theta * sxx_c) / (n_c - 1)
    var_t = (syy_t - 2 * theta * sxy_t + theta * theta * sxx_t) / (n_t - 1)
    a, b = max(var_c, 0.0) / n_c, max(var_t, 0.0) / n_t
    variance = a + b
    plain = syy_c / (n_c - 1) / n_c + syy_t / (n_t - 1) / n_t
    if variance <= 0 or plain <= 0:
        return None
    se = math.sqrt(variance)
    dof = variance**2 / (a * a / (n_c - 1) + b * b / (n_t - 1))
    statistic = difference / se
    half = student_t_ppf(0.5 + CONFIDENCE / 2, dof) * se
    return CupedComparison(
        difference,
        variance,
        difference - half,
        difference + half,
        statistic,
        student_t_two_sided_p(statistic, dof),
        dof,
        theta,
        1.0 - variance / plain,
        units_with_covariate,
    )
