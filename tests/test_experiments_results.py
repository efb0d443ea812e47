"""The experiment report's phases, always-valid results, CUPED, corrected p-values and verdicts
on a real server and database, checked against SciPy and statsmodels on the data sent."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import db_support
import httpx
import numpy as np
import pytest
import statsmodels.api as sm
from experiments_support import OPERATOR, VIEWER, ControlPlane, make_settings, running
from scipy import stats
from sqlalchemy import delete, select
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest

from control_plane.cli import main
from control_plane.db import Database
from control_plane.db.experiment_models import Exposure
from control_plane.experiments.sequential import mixture_rho_squared
from flags import AB_TEST_ROUTER

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

PROBLEM = "application/problem+json"


@pytest.fixture
def plane(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path
) -> Iterator[ControlPlane]:
    settings = make_settings(flags_dir, database_url, tmp_path)
    with running(settings, database) as running_plane:
        yield running_plane


def _decide(client: httpx.Client, users: list[str]) -> dict[str, tuple[str, str]]:
    seen = {}
    for user in users:
        body = client.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": user}).json()
        seen[user] = (body["variant"], body["decisionId"])
    return seen


def _post(client: httpx.Client, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 1000):
        response = client.post("/v1/events", json={"events": events[start : start + 1000]})
        assert response.status_code == 202, response.text


def _edit_flag(plane: ControlPlane, change: dict[str, Any]) -> None:
    with plane.client(OPERATOR) as operator:
        flag = operator.get(f"/v1/flags/{AB_TEST_ROUTER}").json()["flag"]
        for key, value in change.items():
            if key == "metadata":
                flag["metadata"] = {**flag.get("metadata", {}), **value}
            else:
                flag[key] = value
        response = operator.put(f"/v1/flags/{AB_TEST_ROUTER}", json=flag)
        assert response.status_code == 200, response.text


def _report(plane: ControlPlane, **params: Any) -> dict[str, Any]:
    with plane.client(VIEWER) as viewer:
        response = viewer.get(f"/v1/experiments/{AB_TEST_ROUTER}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    return body


def test_a_changed_split_starts_a_phase_with_its_own_units_and_srm(plane: ControlPlane) -> None:
    """Units split 50/50, then 90/10: each phase counts its own units and checks them against
    its own configured split (SciPy's chisquare); a metadata edit starts no phase; the current
    phase is the default and a missing phase is a 400 problem."""
    with httpx.Client(base_url=plane.url, timeout=15) as client:
        early = _decide(client, [f"early-{index}" for index in range(300)])
        _edit_flag(plane, {"targeting": {"fractional": [["model-a", 90], ["model-b", 10]]}})
        late = _decide(client, [f"late-{index}" for index in range(300)])
        _edit_flag(plane, {"metadata": {"description": "now 90/10"}})
        plane.flush()
    current = _report(plane)
    assert current["phase"]["number"] == 2
    assert current["phase"]["current"] is True
    assert [phase["number"] for phase in current["phases"]] == [1, 2]
    assert len(current["phases"][1]["flagSetVersions"]) == 2  # the metadata edit joined it
    first = _report(plane, phase=1)
    for report, seen, shares in ((current, late, [0.9, 0.1]), (first, early, [0.5, 0.5])):
        counts = [
            sum(1 for variant, _ in seen.values() if variant == name)
            for name in ("model-a", "model-b")
        ]
        assert report["units"] == 300
        assert [v["units"] for v in report["variants"]] == counts
        assert [v["configuredShare"] for v in report["variants"]] == shares
        reference = stats.chisquare(counts, [300 * share for share in shares])
        assert report["sampleRatio"]["pValue"] == pytest.approx(reference.pvalue, rel=1e-9)
        assert report["sampleRatio"]["mismatch"] is False
    with plane.client(VIEWER) as viewer:
        for value, detail in (("3", "phase 3 does not exist"), ("x", "phase must be")):
            problem = _problem(
                viewer.get(f"/v1/experiments/{AB_TEST_ROUTER}", params={"phase": value}), 400
            )
            assert detail in problem["detail"]
        problem = _problem(
            viewer.get(f"/v1/experiments/{AB_TEST_ROUTER}", params={"correction": "bonferoni"}), 400
        )
        assert "holm, bh" in problem["detail"]


def test_lost_exposures_are_a_mismatch_and_withhold_verdicts(
    plane: ControlPlane, database: Database
) -> None:
    """Exposures of one variant lost within a phase make a sample ratio mismatch, and then no
    metric gets a verdict."""
    with httpx.Client(base_url=plane.url, timeout=15) as client:
        seen = _decide(client, [f"user-{index}" for index in range(400)])
        _post(
            client,
            [
                {"decisionId": decision, "metric": "converted", "value": variant == "model-b"}
                for variant, decision in seen.values()
            ],
        )
        plane.flush()
    with database.session() as session:
        lost = [decision for variant, decision in seen.values() if variant == "model-b"][::2]
        session.execute(delete(Exposure).where(Exposure.decision_id.in_(lost)))
    report = _report(plane)
    assert report["sampleRatio"]["mismatch"] is True
    treatment = report["metrics"][0]["variants"][1]
    assert treatment["verdict"]["outcome"] == "untrusted"
    assert "sample ratio" in treatment["verdict"]["text"]


def _always_valid_p(difference: float, variance: float, units: int) -> float:
    tau2 = variance * units * mixture_rho_squared()
    ratio = math.sqrt(variance / (variance + tau2)) * math.exp(
        difference**2 * tau2 / (2 * variance * (variance + tau2))
    )
    return min(1.0, 1 / ratio)


def test_report_numbers_match_references_with_verdicts(
    plane: ControlPlane, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fixed-horizon (statsmodels proportions_ztest), always-valid (the mSPRT formula), CUPED
    (statsmodels OLS), Holm and BH (statsmodels multipletests) numbers of the report equal the
    references on the data sent; verdicts say better, worse (a guardrail alarm) or no
    difference; the CLI prints them."""
    _edit_flag(plane, {"metadata": {"guardrails": "latency_ms", "lowerIsBetter": "latency_ms"}})
    rng = random.Random(7)
    users = [f"user-{index}@example.com" for index in range(1200)]
    with httpx.Client(base_url=plane.url, timeout=15) as client:
        seen = _decide(client, users)
        data: dict[str, dict[str, float]] = {}
        events = []
        for user in users:
            variant, decision = seen[user]
            b = variant == "model-b"
            before = rng.gammavariate(2.0, 10.0)
            row = {
                "converted": float(rng.random() < (0.25 if b else 0.12)),
                "revenue.pre": before,
                "revenue": 5 + 0.9 * before + (2.0 if b else 0.0) + rng.gauss(0, 6),
                "latency_ms": rng.lognormvariate(3.0 + (0.2 if b else 0.0), 0.3),
                "clicks": rng.gauss(10, 2),
            }
            data[user] = row
            target = {"flag": AB_TEST_ROUTER, "targetingKey": user}
            events.append(
                {"decisionId": decision, "metric": "converted", "value": bool(row["converted"])}
            )
            events += [
                {**target, "metric": name, "value": row[name]}
                for name in ("revenue.pre", "revenue", "latency_ms", "clicks")
            ]
        _post(client, events)
        plane.flush()
    report = _report(plane)
    metrics = {metric["metric"]: metric for metric in report["metrics"]}
    assert set(metrics) == {"converted", "revenue", "latency_ms", "clicks"}  # .pre is no metric
    assert report["guardrails"] == ["latency_ms"]
    assert report["correction"]["method"] == "holm"
    assert report["correction"]["comparisons"] == 3
    groups = {name: [u for u in users if seen[u][0] == name] for name in ("model-a", "model-b")}

    # Binary: statsmodels' z-test and the always-valid formula on the same counts.
    conversions = [sum(data[u]["converted"] for u in groups[v]) for v in ("model-b", "model-a")]
    sizes = [len(groups["model-b"]), len(groups["model-a"])]
    converted = metrics["converted"]["variants"][1]["comparison"]
    _, p_fixed = proportions_ztest(conversions, sizes)
    assert converted["pValue"] == pytest.approx(p_fixed, rel=1e-9)
    rates = [c / n for c, n in zip(conversions, sizes, strict=True)]
    variance = sum(r * (1 - r) / n for r, n in zip(rates, sizes, strict=True))
    assert converted["alwaysValid"]["pValue"] == pytest.approx(
        _always_valid_p(rates[0] - rates[1], variance, sum(sizes)), rel=1e-9
    )

    # CUPED on revenue: statsmodels OLS of revenue on treatment and the covariate.
    revenue = metrics["revenue"]
    assert revenue["covariate"] == {"metric": "revenue.pre", "unitsWithCovariate": 1200}
    cuped = revenue["variants"][1]["comparison"]["cuped"]
    y = np.array([data[u]["revenue"] for u in users])
    x = np.array([data[u]["revenue.pre"] for u in users])
    t = np.array([1.0 if seen[u][0] == "model-b" else 0.0 for u in users])
    ols = sm.OLS(y, sm.add_constant(np.column_stack([t, x]))).fit()
    assert cuped["difference"] == pytest.approx(ols.params[1], rel=1e-9)
    assert cuped["theta"] == pytest.approx(ols.params[2], rel=1e-9)
    assert cuped["varianceReduction"] > 0.5

    # Holm and BH over the three decision metrics, against statsmodels.
    family = [
        metrics[name]["variants"][1]["comparison"] for name in ("clicks", "converted", "revenue")
    ]
    raw = [comparison["pValue"] for comparison in family]
    holm = multipletests(raw, method="holm")[1]
    assert [c["pValueAdjusted"] for c in family] == pytest.approx(holm.tolist(), rel=1e-12)
    bh_report = {m["metric"]: m for m in _report(plane, correction="bh")["metrics"]}
    bh = multipletests(raw, method="fdr_bh")[1]
    assert [
        bh_report[name]["variants"][1]["comparison"]["pValueAdjusted"]
        for name in ("clicks", "converted", "revenue")
    ] == pytest.approx(bh.tolist(), rel=1e-12)
    latency = metrics["latency_ms"]["variants"][1]["comparison"]
    assert latency["pValueAdjusted"] == latency["pValue"]  # a guardrail is not adjusted

    verdicts = {name: metrics[name]["variants"][1]["verdict"] for name in metrics}
    assert verdicts["converted"]["text"].startswith("model-b better than model-a, ")
    assert verdicts["converted"]["text"].endswith("confidence, always-valid")
    assert verdicts["revenue"]["text"].endswith("always-valid, CUPED")
    assert verdicts["latency_ms"]["outcome"] == "worse"
    assert verdicts["latency_ms"]["alarm"] is True
    assert verdicts["latency_ms"]["text"].startswith("guardrail model-b worse")
    assert verdicts["clicks"]["text"].startswith("no detectable difference yet")

    assert (
        main(["experiments", "report", AB_TEST_ROUTER, "--url", plane.url, "--token", VIEWER]) == 0
    )
    text = capsys.readouterr().out
    assert "verdict: model-b better than model-a" in text
    assert "always-valid" in text
    assert "CUPED" in text
    assert "phase 1 (current)" in text
    with database.session() as session:
        assert session.scalars(select(Exposure.flag_set_version).distinct()).all()
