"""The always-valid, CUPED, multiple-comparison and rank statistics against references on
generated data: SciPy (integration, root finding, rank tests) and statsmodels (multipletests,
OLS, proportions_ztest)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import integrate, optimize, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest

from control_plane.errors import BadRequestInput
from control_plane.experiments.corrections import adjust, benjamini_hochberg, holm
from control_plane.experiments.cuped import cuped_compare
from control_plane.experiments.rank_tests import mann_whitney, quantile_exceedance
from control_plane.experiments.sequential import (
    always_valid,
    mixture_rho_squared,
    sequential_means,
    sequential_proportions,
)
from control_plane.experiments.stats import (
    compare_proportions,
    goodness_of_fit,
    summarize,
    summary_from_sums,
)

SEEDS = range(6)


# -- always valid ----------------------------------------------------------------------------


def _mixture_ratio(difference: float, variance: float, tau2: float, centre: float = 0.0) -> float:
    """The mSPRT likelihood ratio by direct numerical integration over the normal prior."""

    def integrand(theta: float) -> float:
        # normal likelihood at centre + theta over the likelihood at centre, times the prior
        log_ratio = (theta * (difference - centre) - theta * theta / 2) / variance
        return float(math.exp(log_ratio + stats.norm.logpdf(theta, 0.0, math.sqrt(tau2))))

    spread = 12 * math.sqrt(tau2)
    value, _ = integrate.quad(integrand, -spread, spread, limit=200, points=[0.0])
    return float(value)


@pytest.mark.parametrize("seed", SEEDS)
def test_always_valid_p_value_is_the_inverse_mixture_likelihood_ratio(seed: int) -> None:
    """The always-valid p-value equals 1 / the normal-mixture likelihood ratio integrated
    numerically with SciPy, and the confidence sequence's ends are where that ratio reaches
    1/alpha (found with SciPy's root finder)."""
    rng = np.random.default_rng(seed)
    control = rng.normal(10.0, 3.0, 800 + 100 * seed)
    treatment = rng.normal(10.0 + 0.15 * seed, 3.5, 900)
    result = sequential_means(summarize(control.tolist()), summarize(treatment.tolist()))
    difference = float(treatment.mean() - control.mean())
    variance = float(control.var(ddof=1) / len(control) + treatment.var(ddof=1) / len(treatment))
    tau2 = variance * (len(control) + len(treatment)) * mixture_rho_squared()
    assert result.mixture_variance == pytest.approx(tau2, rel=1e-12)
    ratio = _mixture_ratio(difference, variance, tau2)
    assert result.p_value == pytest.approx(min(1.0, 1.0 / ratio), rel=1e-6)
    assert result.ci_low is not None
    assert result.ci_high is not None
    for end, bracket in (
        (result.ci_low, (difference - 50 * math.sqrt(variance), difference)),
        (result.ci_high, (difference, difference + 50 * math.sqrt(variance))),
    ):
        root = optimize.brentq(
            lambda centre: (
                math.log(_mixture_ratio(difference, variance, tau2, centre)) - math.log(1 / 0.05)
            ),
            *bracket,
            xtol=1e-12,
        )
        assert end == pytest.approx(root, rel=1e-6, abs=1e-9)
    # p <= alpha exactly when the sequence leaves out 0.
    assert (result.p_value <= 0.05) is (not result.ci_low <= 0.0 <= result.ci_high)


def test_mixture_is_tuned_to_the_planned_sample() -> None:
    """rho^2 minimises the confidence sequence's width at the planned number of units
    (checked with SciPy's scalar minimiser)."""

    def width(rho2: float) -> float:
        n = 10_000
        x = n * rho2
        return (1 + x) / (n * x) * (2 * math.log(20) + math.log1p(x))

    best = optimize.minimize_scalar(
        width, bounds=(1e-7, 1e-1), method="bounded", options={"xatol": 1e-12}
    )
    assert mixture_rho_squared(0.05, 10_000) == pytest.approx(best.x, rel=1e-4)


def test_always_valid_proportions_use_the_unpooled_variance() -> None:
    """The two-rate always-valid result is the mSPRT on the difference of rates with the
    Wald variance; the fixed-horizon z-test is statsmodels' proportions_ztest."""
    result = sequential_proportions(120, 1000, 165, 1000)
    variance = 0.12 * 0.88 / 1000 + 0.165 * 0.835 / 1000
    direct = always_valid(0.045, variance, 2000)
    assert result.p_value == pytest.approx(direct.p_value, rel=1e-12)
    assert result.ci_low == pytest.approx(direct.ci_low, rel=1e-12)
    fixed = compare_proportions(120, 1000, 165, 1000)
    statistic, p_value = proportions_ztest([165, 120], [1000, 1000])
    assert fixed.statistic == pytest.approx(statistic, rel=1e-10)
    assert fixed.p_value == pytest.approx(p_value, rel=1e-9)
    # Always valid costs power at one look: the sequential p-value is the larger.
    assert result.p_value is not None
    assert result.p_value > fixed.p_value


def test_always_valid_degenerate_inputs_are_not_errors() -> None:
    """No data, one unit, or no spread give no always-valid result instead of an error."""
    assert sequential_proportions(0, 0, 3, 10).p_value is None
    assert sequential_proportions(0, 10, 0, 10).p_value == 1.0
    assert always_valid(0.2, None, 100).ci_low is None
    assert always_valid(0.2, 0.01, 1).p_value is None


def test_summary_from_sums_matches_summarize() -> None:
    """The summary from (n, sum, sum of squares) equals the one from the values."""
    values = np.random.default_rng(3).lognormal(1.0, 0.7, 500)
    direct = summarize(values.tolist())
    streamed = summary_from_sums(len(values), float(values.sum()), float((values**2).sum()))
    assert streamed.mean == pytest.approx(direct.mean, rel=1e-12)
    assert streamed.variance == pytest.approx(direct.variance, rel=1e-9)
    assert streamed.ci_low == pytest.approx(direct.ci_low, rel=1e-9)


# -- multiple comparisons --------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_holm_and_benjamini_hochberg_match_statsmodels(seed: int) -> None:
    """Adjusted p-values equal statsmodels multipletests' holm and fdr_bh, ties included."""
    rng = np.random.default_rng(seed)
    p_values = np.concatenate([rng.uniform(0, 1, 8), rng.uniform(0, 0.01, 4), [0.03, 0.03]])
    rng.shuffle(p_values)
    for ours, method in ((holm, "holm"), (benjamini_hochberg, "fdr_bh")):
        reference = multipletests(p_values, alpha=0.05, method=method)[1]
        assert ours(p_values.tolist()) == pytest.approx(reference.tolist(), rel=1e-12)


def test_unknown_correction_is_a_bad_request() -> None:
    """An unknown correction name is refused naming the parameter and the choices."""
    assert adjust([0.01, 0.2], "bh") == benjamini_hochberg([0.01, 0.2])
    with pytest.raises(BadRequestInput, match="holm, bh") as caught:
        adjust([0.01], "bonferoni")
    assert caught.value.source == "correction"


# -- CUPED -----------------------------------------------------------------------------------


def _cuped_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 1500
    treated = (rng.uniform(size=n) < 0.5).astype(float)
    before = rng.gamma(2.0, 5.0, n)
    outcome = 3.0 + 0.8 * before + 0.7 * treated + rng.normal(0, 4.0 + treated, n)
    return outcome, before, treated


@pytest.mark.parametrize("seed", SEEDS)
def test_cuped_matches_ols_regression(seed: int) -> None:
    """The CUPED difference and theta equal the OLS coefficients of Y ~ 1 + treatment + X
    (statsmodels); its standard error agrees with OLS HC2 within 1%, and the variance reduction
    with 1 - (HC2 SE with X / HC2 SE without X)^2 within 0.01."""
    outcome, before, treated = _cuped_data(seed)
    control = list(zip(outcome[treated == 0].tolist(), before[treated == 0].tolist(), strict=True))
    treatment = list(
        zip(outcome[treated == 1].tolist(), before[treated == 1].tolist(), strict=True)
    )
    result = cuped_compare(control, treatment, len(outcome))
    assert result is not None
    full = sm.OLS(outcome, sm.add_constant(np.column_stack([treated, before]))).fit(cov_type="HC2")
    reduced = sm.OLS(outcome, sm.add_constant(treated)).fit(cov_type="HC2")
    assert result.difference == pytest.approx(full.params[1], rel=1e-9)
    assert result.theta == pytest.approx(full.params[2], rel=1e-9)
    assert math.sqrt(result.variance) == pytest.approx(full.bse[1], rel=1e-2)
    assert result.variance_reduction == pytest.approx(
        1 - (full.bse[1] / reduced.bse[1]) ** 2, abs=1e-2
    )
    assert result.variance_reduction > 0.5  # the covariate explains most of the outcome
    assert result.ci_low < result.difference < result.ci_high


def test_cuped_without_covariate_variation_is_skipped() -> None:
    """A covariate that is constant within the variants cannot adjust anything: no result."""
    assert cuped_compare([(1.0, 2.0), (3.0, 2.0)], [(2.0, 2.0), (5.0, 2.0)], 4) is None
    assert cuped_compare([(1.0, 2.0)], [(2.0, 2.0), (5.0, 1.0)], 3) is None


# -- rank tests (for canary gates) -----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_mann_whitney_matches_scipy(seed: int) -> None:
    """U, the two-sided and the one-sided p-value equal SciPy's asymptotic mannwhitneyu, with
    ties (latencies rounded to milliseconds)."""
    rng = np.random.default_rng(seed)
    control = np.round(rng.lognormal(3.0, 0.4, 400))
    treatment = np.round(rng.lognormal(3.0 + 0.03 * seed, 0.4, 300))
    result = mann_whitney(control.tolist(), treatment.tolist())
    assert result is not None
    two = stats.mannwhitneyu(treatment, control, method="asymptotic", use_continuity=True)
    greater = stats.mannwhitneyu(
        treatment, control, alternative="greater", method="asymptotic", use_continuity=True
    )
    assert result.u == pytest.approx(two.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(two.pvalue, rel=1e-9)
    assert result.p_greater == pytest.approx(greater.pvalue, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_quantile_exceedance_at_the_median_is_moods_median_test(seed: int) -> None:
    """At q = 0.5 the pooled-quantile test is SciPy's median_test (no continuity
    correction): the same threshold, counts above it and p-value."""
    rng = np.random.default_rng(seed)
    control = rng.lognormal(3.0, 0.5, 500)
    treatment = rng.lognormal(3.0 + 0.04 * seed, 0.5, 450)
    result = quantile_exceedance(control.tolist(), treatment.tolist(), 0.5)
    assert result is not None
    _, p_value, median, table = stats.median_test(control, treatment, correction=False)
    assert result.threshold == pytest.approx(median, rel=1e-12)
    assert [result.control_above, result.treatment_above] == table[0].tolist()
    assert result.p_value == pytest.approx(p_value, rel=1e-9)


def test_quantile_exceedance_finds_a_slower_canary() -> None:
    """A canary 10% slower throughout is caught at q = 0.9 and by Mann-Whitney (one-sided);
    an identical one is not."""
    rng = np.random.default_rng(11)
    stable = rng.lognormal(3.0, 0.3, 3000)
    canary = rng.lognormal(3.0, 0.3, 3000) * 1.1
    same = rng.lognormal(3.0, 0.3, 3000)
    slower = quantile_exceedance(stable.tolist(), canary.tolist(), 0.9)
    assert slower is not None
    assert slower.p_greater is not None
    assert slower.p_greater < 0.001
    ranks = mann_whitney(stable.tolist(), canary.tolist())
    assert ranks is not None
    assert ranks.p_greater < 0.001
    alike = quantile_exceedance(stable.tolist(), same.tolist(), 0.9)
    assert alike is not None
    assert alike.p_value is not None
    assert alike.p_value > 0.01


def test_goodness_of_fit_matches_scipy_and_refuses_one_category() -> None:
    """The one chi-square equals scipy.stats.chisquare, normalises shares, and refuses a fit
    with one expected category."""
    fit = goodness_of_fit({"a": 480, "b": 310, "c": 210}, {"a": 5, "b": 3, "c": 2})
    reference = stats.chisquare([480, 310, 210], [500, 300, 200])
    assert fit.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert fit.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    with pytest.raises(ValueError, match="two expected categories"):
        goodness_of_fit({"a": 3}, {"a": 1.0})
