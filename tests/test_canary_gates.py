"""Canary gates: the sequential stratified test and the pooled-quantile tables against SciPy and
statsmodels, the built-in checks' rules (floor, ceiling, minimum sample, comparison), and
canaries through the real service: identical variants with realistic latency noise are promoted,
a slower or more failing canary is rolled back after failureThreshold failed checks, saying which
check failed with its statistic and p-value."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import db_support
import numpy as np
import pytest
from conftest import write_flags
from experiments_support import OPERATOR, VIEWER, ControlPlane, make_settings, running, wait_for
from scipy import integrate, stats
from statsmodels.stats.contingency_tables import StratifiedTable

from control_plane.db import Database
from control_plane.db.experiment_models import CallSample, CanaryRun
from control_plane.db.models import utc_now
from control_plane.experiments.canary.gates import (
    Stratum,
    judge_error_rate,
    judge_gates,
    judge_latency,
    stratum_tables,
)
from control_plane.experiments.canary.spec import ErrorRateCheck, LatencyCheck, parse_spec
from control_plane.experiments.rank_tests import exceedance_counts, pooled_quantile
from control_plane.experiments.repository import CallWindow
from control_plane.experiments.sequential import (
    StratumTable,
    mixture_p_value,
    sequential_strata,
)

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database


# -- the statistics against references -------------------------------------------------------


def _tables(seed: int, strata: int = 6) -> list[StratumTable]:
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(strata):
        n1, n0 = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        rate = rng.uniform(0.02, 0.3)
        tables.append(
            StratumTable(int(rng.binomial(n1, rate * 1.3)), n1, int(rng.binomial(n0, rate)), n0)
        )
    return tables


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stratified_score_matches_statsmodels_cmh(seed: int) -> None:
    """The score and variance give statsmodels' Cochran-Mantel-Haenszel chi-square (no
    continuity correction), the Mantel-Haenszel odds ratio is statsmodels' pooled odds ratio,
    and each stratum's mean and variance are SciPy's hypergeometric ones."""
    tables = _tables(seed)
    result = sequential_strata(tables)
    reference = StratifiedTable(
        [
            np.array(
                [
                    [t.treatment_bad, t.treatment_n - t.treatment_bad],
                    [t.control_bad, t.control_n - t.control_bad],
                ]
            )
            for t in tables
        ]
    )
    cmh = reference.test_null_odds(correction=False)
    assert result.score**2 / result.variance == pytest.approx(cmh.statistic, rel=1e-9)
    assert result.odds_ratio == pytest.approx(reference.oddsratio_pooled, rel=1e-9)
    expected = variance = 0.0
    for t in tables:
        bad = t.treatment_bad + t.control_bad
        hyper = stats.hypergeom(t.treatment_n + t.control_n, bad, t.treatment_n)
        expected += hyper.mean()
        variance += hyper.var()
    assert result.score == pytest.approx(sum(t.treatment_bad for t in tables) - expected)
    assert result.variance == pytest.approx(variance, rel=1e-9)


@pytest.mark.parametrize(
    ("score", "variance", "mixture"),
    [(4.0, 10.0, 0.5), (-3.0, 5.0, 1.0), (12.0, 40.0, 0.2), (0.5, 2.0, 0.5)],
)
def test_mixture_p_value_is_one_over_the_integrated_likelihood_ratio(
    score: float, variance: float, mixture: float
) -> None:
    """The always-valid p-value is 1 / the likelihood ratio exp(l S - l^2 V / 2) integrated
    over a normal prior on l (half-normal on l > 0 when one-sided), as SciPy's quad has it."""

    def ratio(lam: float) -> float:
        return math.exp(lam * score - lam * lam * variance / 2)

    prior = stats.norm(0, math.sqrt(mixture))
    two = integrate.quad(lambda lam: ratio(lam) * prior.pdf(lam), -np.inf, np.inf)[0]
    one = integrate.quad(lambda lam: ratio(lam) * 2 * prior.pdf(lam), 0, np.inf)[0]
    assert mixture_p_value(score, variance, mixture) == pytest.approx(min(1.0, 1 / two), rel=1e-7)
    assert mixture_p_value(score, variance, mixture, one_sided=True) == pytest.approx(
        min(1.0, 1 / one), rel=1e-7
    )


def test_exceedance_counts_use_numpys_pooled_quantile() -> None:
    """The threshold is numpy's quantile of stable and canary / maxRatio pooled; the counts are
    the values strictly above it."""
    rng = np.random.default_rng(7)
    stable, canary = rng.lognormal(0, 0.5, 301).tolist(), rng.lognormal(0.3, 0.5, 157).tolist()
    for quantile in (0.5, 0.9, 0.99):
        stable_above, canary_above, threshold = exceedance_counts(
            stable, canary, quantile, scale=1.5
        ) or (0, 0, 0.0)
        pooled = np.concatenate([stable, np.array(canary) / 1.5])
        assert threshold == pytest.approx(float(np.quantile(pooled, quantile)), rel=1e-12)
        assert pooled_quantile(stable, canary, quantile) == pytest.approx(
            float(np.quantile(stable + canary, quantile)), rel=1e-12
        )
        assert stable_above == int((np.array(stable) > threshold).sum())
        assert canary_above == int((np.array(canary) / 1.5 > threshold).sum())


def test_a_a_tables_keep_the_false_rejection_rate_below_alpha_however_often_read() -> None:
    """Over 400 simulated A/A runs read after each of 30 strata (rates changing from stratum to
    stratum), the share that ever reaches always-valid p <= 0.05 stays below 0.05."""
    rng = np.random.default_rng(11)
    rejected = 0
    for _ in range(400):
        tables: list[StratumTable] = []
        for _ in range(30):
            rate = rng.uniform(0.01, 0.2)
            n1, n0 = int(rng.integers(30, 200)), int(rng.integers(100, 600))
            tables.append(
                StratumTable(int(rng.binomial(n1, rate)), n1, int(rng.binomial(n0, rate)), n0)
            )
            if sequential_strata(tables).p_value <= 0.05:
                rejected += 1
                break
    assert rejected / 400 <= 0.05


# -- the built-in checks' rules --------------------------------------------------------------


def _errors(
    canary: tuple[int, int], stable: tuple[int, int], strata: int = 1
) -> list[StratumTable]:
    return [StratumTable(canary[0], canary[1], stable[0], stable[1])] * strata


def test_error_rate_check_rules() -> None:
    """The error-rate check waits below minSamples, passes at or below its floor, fails above
    its ceiling whatever stable does, and otherwise fails only when the sequential test finds
    the canary worse at alpha (saying the statistic and the p-value)."""
    check = ErrorRateCheck(minSamples=500, floor=0.01, max=0.5, alpha=0.025)
    waiting = judge_error_rate(check, _errors((1, 100), (1, 900)))
    assert waiting.outcome == "wait"
    assert "100 of 500 canary calls" in waiting.detail
    assert judge_error_rate(check, _errors((5, 500), (0, 5000))).outcome == "pass"  # the floor
    ceiling = judge_error_rate(check, _errors((300, 500), (280, 500)))
    assert ceiling.outcome == "fail"
    assert "above the maximum 50.0%" in ceiling.detail
    same = judge_error_rate(check, _errors((20, 1000), (20, 1000), strata=3))
    assert same.outcome == "pass"
    assert same.p_value == 1.0
    worse = judge_error_rate(check, _errors((60, 1000), (20, 1000), strata=3))
    assert worse.outcome == "fail"
    assert worse.p_value is not None
    assert worse.p_value < 0.025
    assert worse.statistic is not None
    assert worse.statistic > 5
    assert "CMH z" in worse.detail
    assert "always-valid p" in worse.detail
    assert worse.to_json()["pValue"] == worse.p_value
    # Better than stable is never a failure, however clear.
    assert judge_error_rate(check, _errors((20, 1000), (60, 1000), strata=3)).outcome == "pass"
    # A clear failure is declared before minSamples: the p-value is valid at any look.
    early = judge_error_rate(check, _errors((40, 100), (10, 900), strata=2))
    assert early.outcome == "fail"
    alone = judge_error_rate(check, _errors((30, 1000), (0, 0)))
    assert alone.outcome == "pass"
    assert "not compared" in alone.detail


def _stratum(
    rng: np.random.Generator, canary_scale: float, n_canary: int = 200, n_stable: int = 800
) -> Stratum:
    def calls(n: int, scale: float) -> CallWindow:
        latencies = (0.08 * scale * rng.lognormal(0, 0.35, n)).tolist()
        return CallWindow(n, 0, latencies)

    return Stratum(calls(n_canary, canary_scale), calls(n_stable, 1.0))


def test_latency_check_rules() -> None:
    """The latency check passes an identical canary, fails one 1.5x slower (but not when 1.5x is
    the tolerated maxRatio), and never fails a canary whose quantile is below its floor."""
    rng = np.random.default_rng(3)
    checks = parse_spec({}).checks
    same = [stratum_tables(checks, _stratum(rng, 1.0)) for _ in range(5)]
    assert judge_gates(checks, same)[1].outcome == "pass"
    slow = [stratum_tables(checks, _stratum(rng, 1.5)) for _ in range(5)]
    result = judge_gates(checks, slow)[1]
    assert result.outcome == "fail"
    assert "canary p90 latency" in result.detail
    assert "the canary is slower" in result.detail
    assert result.observed["quantileRatio"] > 1.3
    tolerant = parse_spec({"checks": {"latency": {"maxRatio": 1.6}}}).checks
    lenient = [stratum_tables(tolerant, _stratum(rng, 1.5)) for _ in range(5)]
    assert judge_gates(tolerant, lenient)[1].outcome == "pass"
    floored = LatencyCheck(floorMs=1000)
    assert judge_latency(floored, [t.latency for t in slow], 0.2, 0.1).outcome == "pass"


# -- through the real service ----------------------------------------------------------------

AA_FLAGS = ("aa-1", "aa-2", "aa-3", "aa-4")
SLOW, FAILING = "slow-1", "failing-1"
#: (latency factor, error rate) of each flag's canary; stable: (1.0, 0.01).
BEHAVIOUR = {**dict.fromkeys(AA_FLAGS, (1.0, 0.01)), SLOW: (1.5, 0.01), FAILING: (1.0, 0.08)}


def _flags() -> dict[str, Any]:
    return {
        flag: {
            "state": "ENABLED",
            "variants": {
                "stable": {"backend": "v1", "url": "http://127.0.0.1:9"},
                "canary": {"backend": "v2", "url": "http://127.0.0.1:9"},
            },
            "defaultVariant": "stable",
            "targeting": {"fractional": [["canary", 0], ["stable", 100]]},
        }
        for flag in BEHAVIOUR
    }


class Feeder:
    """Records calls as the dispatch proxy would: per flag, split by the canary's current
    weight, log-normal latencies (80 ms, sigma 0.35) with a per-tick load factor shared by both
    variants and 1% spikes of 3-10x."""

    def __init__(self, database: Database, per_tick: int = 150) -> None:
        self.database = database
        self.per_tick = per_tick
        self.rng = np.random.default_rng(5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _calls(
        self, flag: str, variant: str, n: int, scale: float, error_rate: float
    ) -> list[CallSample]:
        latencies = 0.08 * scale * self.rng.lognormal(0, 0.35, n)
        spikes = self.rng.random(n) < 0.01
        latencies[spikes] *= self.rng.uniform(3, 10, int(spikes.sum()))
        failed = self.rng.random(n) < error_rate
        now = utc_now()
        return [
            CallSample(
                decision_id=uuid.uuid4().hex,
                variant=variant,
                flag=flag,
                backend=variant,
                status=503 if bad else 200,
                seconds=float(seconds),
                error=None,
                at=now,
            )
            for seconds, bad in zip(latencies, failed, strict=True)
        ]

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            with self.database.session() as session:
                runs = {
                    run.flag: run.weight
                    for run in session.query(CanaryRun).filter(CanaryRun.state == "running")
                }
                rows: list[CallSample] = []
                for flag, weight in runs.items():
                    load = math.exp(self.rng.normal(0, 0.15))
                    factor, error_rate = BEHAVIOUR[flag]
                    canary = int(self.rng.binomial(self.per_tick, weight / 100))
                    rows += self._calls(flag, "canary", canary, load * factor, error_rate)
                    rows += self._calls(flag, "stable", self.per_tick - canary, load, 0.01)
                session.add_all(rows)


@pytest.fixture
def plane(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path
) -> Iterator[ControlPlane]:
    write_flags(flags_dir, "gates.flagd.json", _flags())
    with running(make_settings(flags_dir, database_url, tmp_path), database) as plane:
        yield plane


def _status(plane: ControlPlane, flag: str) -> dict[str, Any]:
    with plane.client(VIEWER) as client:
        body: dict[str, Any] = client.get(f"/v1/canaries/{flag}").json()
    return body


def test_identical_canaries_are_promoted_and_bad_ones_rolled_back(
    plane: ControlPlane, database: Database
) -> None:
    """Through the real service with the default checks (fewer samples before promotion):
    four canaries identical to stable
    (noisy, spiky latencies; the old p99-ratio gate rolled back 2 of 4 such canaries) are all
    promoted; a canary 1.5x slower and one failing 8% of calls instead of 1% are rolled back
    after failureThreshold (2) failed checks, which name the check with its statistic and
    always-valid p-value."""
    with plane.client(OPERATOR) as client:
        for flag in BEHAVIOUR:
            # The default checks, but promotion after 1000 compared canary calls, not 3000.
            response = client.post(
                f"/v1/canaries/{flag}",
                json={
                    "intervalSeconds": 0.25,
                    "minRequests": 50,
                    "checks": {"errorRate": {"minSamples": 1000}},
                },
            )
            assert response.status_code == 201, response.text
    finished: dict[str, dict[str, Any]] = {}

    def all_finished() -> bool:
        for flag in BEHAVIOUR:
            if flag not in finished:
                status = _status(plane, flag)
                if status["state"] != "running":
                    finished[flag] = status
        return len(finished) == len(BEHAVIOUR)

    with Feeder(database):
        wait_for(all_finished, timeout=90, every=0.2, what="every canary to finish")
    for flag in AA_FLAGS:
        assert finished[flag]["state"] == "promoted", finished[flag]["reason"]
        last = finished[flag]["events"][-1]["detail"]["observed"]["checks"]
        assert [check["outcome"] for check in last] == ["pass", "pass"]
        assert last[0]["canaryCalls"] >= 1000
    for flag, name in ((SLOW, "latency"), (FAILING, "errorRate")):
        status = finished[flag]
        assert status["state"] == "rolled_back", status["reason"]
        assert status["reason"].startswith("2 failed checks (failureThreshold 2); the last: ")
        assert f"{name}: canary" in status["reason"]
        actions = [event["action"] for event in status["events"]]
        assert actions.count("check_failed") == 1
        assert actions[-1] == "rolled_back"
        observed = status["events"][-1]["detail"]["observed"]
        assert name in observed["failed"]
        check = next(c for c in observed["checks"] if c["name"] == name)
        assert check["outcome"] == "fail"
        assert check["pValue"] <= 0.025
        assert check["statistic"] > 0
        assert "always-valid p" in check["detail"]
