"""The experiment statistics, implemented with the math module, against SciPy on generated
data: distribution functions, intervals, the two tests and the sample ratio check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from control_plane.experiments import distributions as dist
from control_plane.experiments.stats import (
    compare_means,
    compare_proportions,
    nearest_rank,
    proportion_summary,
    sample_ratio_check,
    summarize,
)

RNG_SEEDS = range(12)


def close(a: float | None, b: float, rel: float = 1e-9, abs_: float = 1e-12) -> bool:
    assert a is not None
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# -- distributions ---------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 3.5, 7, 29.3, 150, 5000])
def test_student_t_cdf_and_two_sided_p_match_scipy(df: float) -> None:
    """Student-t CDF and two-sided tail agree with scipy.stats.t over the whole range."""
    for t in np.concatenate([np.linspace(-12, 12, 97), [1e-6, -1e-6, 35.0, -60.0]]):
        assert close(dist.student_t_cdf(float(t), df), float(stats.t.cdf(t, df)), rel=1e-10)
        assert close(
            dist.student_t_two_sided_p(float(t), df),
            float(2 * stats.t.sf(abs(t), df)),
            rel=1e-9,
            abs_=1e-300,
        )


@pytest.mark.parametrize("df", [1, 2.5, 10, 80.7, 1000])
def test_student_t_quantiles_match_scipy(df: float) -> None:
    """Student-t quantiles agree with scipy.stats.t.ppf, tails included."""
    for p in [1e-6, 0.001, 0.025, 0.1, 0.5, 0.8, 0.975, 0.999, 1 - 1e-6]:
        assert close(dist.student_t_ppf(p, df), float(stats.t.ppf(p, df)), rel=1e-9, abs_=1e-12)


def test_normal_functions_match_scipy() -> None:
    """Normal CDF, survival function and quantile agree with scipy.stats.norm."""
    for x in np.linspace(-30, 30, 241):
        assert close(dist.normal_cdf(float(x)), float(stats.norm.cdf(x)), abs_=1e-300)
        assert close(dist.normal_sf(float(x)), float(stats.norm.sf(x)), abs_=1e-300)
    for p in [1e-12, 1e-4, 0.025, 0.3, 0.5, 0.975, 1 - 1e-9]:
        assert close(dist.normal_ppf(p), float(stats.norm.ppf(p)), rel=1e-9)


def test_incomplete_beta_and_gamma_match_scipy() -> None:
    """The regularized incomplete beta and upper gamma agree with scipy.special."""
    rng = np.random.default_rng(7)
    for a, b, x in zip(
        rng.uniform(0.1, 60, 300), rng.uniform(0.1, 60, 300), rng.uniform(0, 1, 300), strict=True
    ):
        assert close(
            dist.regularized_beta(float(a), float(b), float(x)),
            float(special.betainc(a, b, x)),
            rel=1e-9,
            abs_=1e-14,
        )
    for a, x in zip(rng.uniform(0.5, 80, 300), rng.uniform(0, 200, 300), strict=True):
        assert close(
            dist.regularized_gamma_q(float(a), float(x)),
            float(special.gammaincc(a, x)),
            rel=1e-8,
            abs_=1e-14,
        )


@pytest.mark.parametrize("dof", [1, 2, 3, 9, 40])
def test_chi_square_survival_matches_scipy(dof: int) -> None:
    """The chi-square survival function agrees with scipy.stats.chi2.sf, far tail included."""
    for x in [0.0, 0.01, 0.5, 1, 3.84, 10, 30, 80, 200]:
        assert close(dist.chi2_sf(x, dof), float(stats.chi2.sf(x, dof)), rel=1e-8, abs_=1e-300)


@pytest.mark.parametrize(
    ("function", "args", "message"),
    [
        (dist.normal_ppf, (0.0,), "strictly between 0 and 1"),
        (dist.normal_ppf, (1.0,), "strictly between 0 and 1"),
        (dist.student_t_ppf, (0.5, 0), "degrees of freedom must be positive"),
        (dist.regularized_beta, (0, 1, 0.5), "a and b must be positive"),
        (dist.regularized_beta, (1, 1, 1.5), "x must be within"),
        (dist.chi2_sf, (1.0, 0), "at least 1"),
        (dist.regularized_gamma_q, (0, 1.0), "a must be positive"),
    ],
)
def test_out_of_domain_arguments_raise(
    function: object, args: tuple[float, ...], message: str
) -> None:
    """Arguments outside a function's domain raise ValueError instead of returning nonsense."""
    with pytest.raises(ValueError, match=message):
        function(*args)  # type: ignore[operator]


# -- summaries -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_mean_interval_matches_scipy(seed: int) -> None:
    """The mean's 95% interval is scipy's Student-t interval on the same generated data."""
    rng = np.random.default_rng(seed)
    data = rng.lognormal(3, 0.7, size=int(rng.integers(2, 400)))
    summary = summarize(data.tolist())
    low, high = stats.t.interval(0.95, len(data) - 1, loc=data.mean(), scale=stats.sem(data))
    assert summary.n == len(data)
    assert close(summary.mean, float(data.mean()), rel=1e-12)
    assert close(summary.variance, float(data.var(ddof=1)), rel=1e-10)
    assert close(summary.ci_low, float(low), rel=1e-9)
    assert close(summary.ci_high, float(high), rel=1e-9)


@pytest.mark.parametrize(
    ("successes", "n"),
    [(0, 10), (1, 10), (37, 500), (499, 500), (500, 500), (3, 4), (12_345, 100_000)],
)
def test_rate_interval_is_scipy_wilson(successes: int, n: int) -> None:
    """A rate's 95% interval is the Wilson score interval of scipy.stats.binomtest."""
    summary = proportion_summary(successes, n)
    interval = stats.binomtest(successes, n).proportion_ci(0.95, method="wilson")
    assert close(summary.mean, successes / n)
    assert close(summary.ci_low, interval.low, rel=1e-9, abs_=1e-12)
    assert close(summary.ci_high, interval.high, rel=1e-9, abs_=1e-12)


def test_empty_and_single_samples_have_no_interval() -> None:
    """With no data there is no mean; with one value there is a mean but no interval."""
    assert summarize([]).mean is None
    one = summarize([4.0])
    assert (one.mean, one.ci_low, one.ci_high) == (4.0, None, None)
    assert proportion_summary(0, 0).mean is None


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_two_proportion_z_test_matches_scipy(seed: int) -> None:
    """The pooled two-proportion z-test's p-value equals scipy's 2x2 chi-square test without
    continuity correction (z squared is the chi-square statistic)."""
    rng = np.random.default_rng(seed)
    n_control, n_treatment = (int(v) for v in rng.integers(50, 20_000, size=2))
    rate = rng.uniform(0.01, 0.6)
    control = int(rng.binomial(n_control, rate))
    treatment = int(rng.binomial(n_treatment, rate * rng.uniform(0.8, 1.3)))
    result = compare_proportions(control, n_control, treatment, n_treatment)
    table = [[control, n_control - control], [treatment, n_treatment - treatment]]
    chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    assert close(result.p_value, float(p_value), rel=1e-8, abs_=1e-300)
    assert result.statistic is not None
    assert close(result.statistic**2, float(chi2), rel=1e-9)
    difference = treatment / n_treatment - control / n_control
    assert close(result.difference, difference, rel=1e-12)
    se = math.sqrt(
        control / n_control * (1 - control / n_control) / n_control
        + treatment / n_treatment * (1 - treatment / n_treatment) / n_treatment
    )
    z = float(stats.norm.ppf(0.975))
    assert close(result.ci_low, difference - z * se, rel=1e-9, abs_=1e-12)
    assert close(result.ci_high, difference + z * se, rel=1e-9, abs_=1e-12)
    assert close(result.lift, difference / (control / n_control), rel=1e-12)


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_welch_t_test_matches_scipy(seed: int) -> None:
    """Welch's t-test (statistic, degrees of freedom, p-value, 95% interval of the difference)
    equals scipy.stats.ttest_ind(equal_var=False) on the same data."""
    rng = np.random.default_rng(100 + seed)
    control = rng.normal(100, rng.uniform(5, 30), size=int(rng.integers(3, 300)))
    treatment = rng.normal(
        100 + rng.uniform(-8, 8), rng.uniform(5, 30), size=int(rng.integers(3, 300))
    )
    result = compare_means(summarize(control.tolist()), summarize(treatment.tolist()))
    reference = stats.ttest_ind(treatment, control, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert close(result.statistic, float(reference.statistic), rel=1e-9)
    assert close(result.p_value, float(reference.pvalue), rel=1e-8, abs_=1e-300)
    assert close(result.dof, float(reference.df), rel=1e-9)
    assert close(result.ci_low, float(interval.low), rel=1e-8)
    assert close(result.ci_high, float(interval.high), rel=1e-8)


def test_degenerate_comparisons_are_not_errors() -> None:
    """Identical constant groups give p = 1; groups with no data give no numbers, not errors."""
    same = compare_proportions(0, 100, 0, 80)
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    constant = compare_means(summarize([2.0, 2.0, 2.0]), summarize([2.0, 2.0]))
    assert constant.p_value == 1.0
    empty = compare_means(summarize([]), summarize([1.0, 2.0]))
    assert empty.p_value is None
    assert empty.difference is None
    assert compare_proportions(0, 0, 5, 10).p_value is None


# -- sample ratio ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_sample_ratio_check_matches_scipy_chisquare(seed: int) -> None:
    """The SRM check is scipy.stats.chisquare of units against the configured shares."""
    rng = np.random.default_rng(200 + seed)
    k = int(rng.integers(2, 5))
    weights = rng.integers(1, 10, size=k).astype(float)
    shares = weights / weights.sum()
    counts = rng.multinomial(int(rng.integers(100, 50_000)), rng.dirichlet(weights * 50))
    names = [f"v{i}" for i in range(k)]
    check = sample_ratio_check(
        dict(zip(names, counts.tolist(), strict=True)),
        dict(zip(names, weights.tolist(), strict=True)),
    )
    reference = stats.chisquare(counts, shares * counts.sum())
    assert check is not None
    assert close(check.statistic, float(reference.statistic), rel=1e-9)
    assert close(check.p_value, float(reference.pvalue), rel=1e-7, abs_=1e-300)
    assert check.dof == k - 1
    assert check.mismatch == (float(reference.pvalue) < 0.001)


def test_sample_ratio_flags_a_clear_mismatch_and_passes_a_fair_split() -> None:
    """A 50/50 flag that gave 5,300 vs 4,700 units is flagged; 5,030 vs 4,970 is not."""
    shares = {"a": 50.0, "b": 50.0}
    mismatch = sample_ratio_check({"a": 5300, "b": 4700}, shares)
    fair = sample_ratio_check({"a": 5030, "b": 4970}, shares)
    assert mismatch is not None
    assert mismatch.mismatch
    assert fair is not None
    assert not fair.mismatch


def test_units_in_a_variant_with_zero_weight_are_a_mismatch() -> None:
    """Units in a variant the flag gives no traffic to cannot come from the configured split."""
    check = sample_ratio_check({"a": 500, "b": 480, "c": 3}, {"a": 50, "b": 50, "c": 0})
    assert check is not None
    assert check.mismatch
    assert check.p_value == 0.0


def test_nearest_rank_quantile() -> None:
    """p99 by nearest rank is the value at rank ceil(0.99 n), like numpy's inverted_cdf."""
    data = list(np.random.default_rng(3).exponential(size=1001))
    for q in (0.5, 0.9, 0.99, 1.0):
        assert nearest_rank(data, q) == float(np.quantile(data, q, method="inverted_cdf"))
    assert nearest_rank([], 0.99) is None
