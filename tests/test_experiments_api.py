"""An A/B experiment end to end on a real server: decisions, outcome events (validated per
item), and the results endpoint and CLI, checked against SciPy on the same data."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import db_support
import httpx
import numpy as np
import pytest
from experiments_support import VIEWER, ControlPlane, make_settings, running
from scipy import stats
from sqlalchemy import func, select

from control_plane.cli import main
from control_plane.db import Database
from control_plane.db.experiment_models import OutcomeEvent
from flags import AB_TEST_ROUTER, REGION_ROUTER

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

PROBLEM = "application/problem+json"
GATEWAY = "gateway-token-0123456789abcdef"


@pytest.fixture
def plane(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path
) -> Iterator[ControlPlane]:
    settings = make_settings(flags_dir, database_url, tmp_path)
    with running(settings, database) as running_plane:
        yield running_plane


def _decide(client: httpx.Client, users: list[str]) -> dict[str, tuple[str, str]]:
    """user -> (variant, decision id) of its (last) decision on the A/B flag."""
    seen = {}
    for user in users:
        body = client.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": user}).json()
        seen[user] = (body["variant"], body["decisionId"])
    return seen


def _post(client: httpx.Client, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 500):
        response = client.post("/v1/events", json={"events": events[start : start + 500]})
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == len(events[start : start + 500])


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    return body


def test_ab_report_matches_scipy(plane: ControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    """Units, rates, means, intervals, lift, p-values and the SRM check of the report equal
    SciPy's on the data the test sent; the CLI prints the same report."""
    rng = random.Random(4)
    users = [f"user-{index}@example.com" for index in range(600)]
    with httpx.Client(base_url=plane.url, timeout=15) as client:
        assignment = _decide(client, users)
        _decide(client, users[:100])  # returning users: more exposures, same units
        converted: dict[str, bool] = {}
        revenue: dict[str, list[float]] = defaultdict(list)
        events = []
        for index, user in enumerate(users):
            variant, decision_id = assignment[user]
            target = (
                {"decisionId": decision_id}
                if index % 2
                else {"flag": AB_TEST_ROUTER, "targetingKey": user}
            )
            if rng.random() < (0.12 if variant == "model-a" else 0.2):
                converted[user] = True
                events.append({**target, "metric": "converted", "value": True})
                for _ in range(rng.randint(1, 2)):  # a unit's value is the mean of its events
                    amount = rng.lognormvariate(3.0 if variant == "model-a" else 3.3, 0.5)
                    revenue[user].append(amount)
                    events.append({**target, "metric": "revenue", "value": amount})
            elif rng.random() < 0.3:  # an explicit "did not convert" is not a conversion
                events.append({**target, "metric": "converted", "value": False})
        _post(client, events)
        plane.flush()
        with plane.client(VIEWER) as viewer:
            response = viewer.get(f"/v1/experiments/{AB_TEST_ROUTER}")
    assert response.status_code == 200, response.text
    report = response.json()

    units = {v: sum(1 for u in users if assignment[u][0] == v) for v in ("model-a", "model-b")}
    assert report["controlVariant"] == "model-a"
    assert report["units"] == 600
    assert report["crossoverUnits"] == 0
    assert [(v["variant"], v["units"]) for v in report["variants"]] == list(units.items())
    assert sum(v["exposures"] for v in report["variants"]) == 700

    # Sample ratio: chi-square of units against the configured 50/50.
    srm = report["sampleRatio"]
    reference = stats.chisquare(list(units.values()))
    assert srm["checked"]
    assert srm["statistic"] == pytest.approx(reference.statistic, rel=1e-9)
    assert srm["pValue"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert srm["mismatch"] is bool(reference.pvalue < 0.001)

    metrics = {metric["metric"]: metric for metric in report["metrics"]}
    # Binary: conversions per exposed unit, Wilson interval, pooled z-test.
    conversions = {
        v: sum(1 for u in users if assignment[u][0] == v and converted.get(u)) for v in units
    }
    control, treatment = metrics["converted"]["variants"]
    for entry, variant in ((control, "model-a"), (treatment, "model-b")):
        wilson = stats.binomtest(conversions[variant], units[variant]).proportion_ci(
            method="wilson"
        )
        assert entry["units"] == units[variant]
        assert entry["conversions"] == conversions[variant]
        assert entry["rate"] == pytest.approx(conversions[variant] / units[variant], rel=1e-12)
        assert entry["ci95"] == pytest.approx([wilson.low, wilson.high], rel=1e-9)
    table = [[conversions[v], units[v] - conversions[v]] for v in ("model-a", "model-b")]
    _, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    comparison = treatment["comparison"]
    assert comparison["test"] == "two-proportion z-test"
    assert comparison["pValue"] == pytest.approx(p_value, rel=1e-8)
    rates = {v: conversions[v] / units[v] for v in units}
    assert comparison["lift"] == pytest.approx(rates["model-b"] / rates["model-a"] - 1, rel=1e-9)

    # Continuous: per-unit means, Student-t intervals, Welch's t-test.
    per_unit = {
        v: np.array(
            [np.mean(revenue[u]) for u in users if assignment[u][0] == v and revenue.get(u)]
        )
        for v in units
    }
    control, treatment = metrics["revenue"]["variants"]
    for entry, variant in ((control, "model-a"), (treatment, "model-b")):
        data = per_unit[variant]
        low, high = stats.t.interval(0.95, len(data) - 1, loc=data.mean(), scale=stats.sem(data))
        assert entry["units"] == len(data)
        assert entry["mean"] == pytest.approx(data.mean(), rel=1e-9)
        assert entry["ci95"] == pytest.approx([low, high], rel=1e-9)
    welch = stats.ttest_ind(per_unit["model-b"], per_unit["model-a"], equal_var=False)
    assert treatment["comparison"]["test"] == "Welch's t-test"
    assert treatment["comparison"]["pValue"] == pytest.approx(welch.pvalue, rel=1e-8)
    assert treatment["comparison"]["statistic"] == pytest.approx(welch.statistic, rel=1e-9)
    interval = welch.confidence_interval()
    assert treatment["comparison"]["differenceCi95"] == pytest.approx(
        [interval.low, interval.high], rel=1e-8
    )

    # The CLI shows the same report: as JSON, and as a table.
    assert (
        main(
            [
                "experiments",
                "report",
                AB_TEST_ROUTER,
                "--url",
                plane.url,
                "--token",
                VIEWER,
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == report["metrics"]
    assert (
        main(["experiments", "report", AB_TEST_ROUTER, "--url", plane.url, "--token", VIEWER]) == 0
    )
    text = capsys.readouterr().out
    assert f"Experiment {AB_TEST_ROUTER}" in text
    assert "metric converted (binary)" in text
    assert "metric revenue (continuous)" in text
    assert "sample ratio: chi-square" in text


def test_single_event_is_accepted(plane: ControlPlane, database: Database) -> None:
    """One event as a bare object is accepted (202) and stored with a hashed targeting key."""
    with httpx.Client(base_url=plane.url) as client:
        response = client.post(
            "/v1/events",
            json={
                "flag": AB_TEST_ROUTER,
                "targetingKey": "bob@example.com",
                "metric": "latency_ms",
                "value": 12.5,
                "timestamp": "2025-01-31T12:00:00Z",
            },
        )
        assert response.status_code == 202, response.text
        plane.flush()
    with database.session() as session:
        row = session.scalars(select(OutcomeEvent)).one()
    assert (row.metric, row.kind, row.value, row.flag) == (
        "latency_ms",
        "continuous",
        12.5,
        AB_TEST_ROUTER,
    )
    assert row.unit is not None
    assert len(row.unit) == 64
    assert "bob" not in row.unit
    assert row.at.isoformat() == "2025-01-31T12:00:00+00:00"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b'"converted"', "must be an event object"),
        (b"[]", "no events"),
        (b'{"events": 3}', "body.events must be an array"),
        (
            json.dumps([{"metric": "m", "value": 1, "decisionId": "d"}] * 1001).encode(),
            "at most 1000",
        ),
    ],
)
def test_malformed_bodies_are_400(plane: ControlPlane, body: bytes, detail: str) -> None:
    """A body that is not one event or a batch of events is a 400 problem saying why."""
    with httpx.Client(base_url=plane.url) as client:
        problem = _problem(client.post("/v1/events", content=body), 400)
    assert detail in problem["detail"]


def test_bad_items_are_422_per_item_and_nothing_is_stored(
    plane: ControlPlane, database: Database
) -> None:
    """Each bad item is named by index and field in one 422 problem; the good items of the
    batch are not stored either."""
    with httpx.Client(base_url=plane.url) as client:
        assert (
            client.post(
                "/v1/events", json={"decisionId": "abc", "metric": "clicks", "value": 3}
            ).status_code
            == 202
        )
        plane.flush()
        batch = [
            {"decisionId": "abc123", "metric": "converted", "value": True},  # fine
            {"decisionId": "abc123", "value": True},
            {"decisionId": "abc123", "metric": "converted", "value": "yes"},
            {"decision_id": "abc123", "metric": "converted", "value": True},
            {"decisionId": "abc123", "targetingKey": "u", "metric": "converted", "value": 1},
            {"flag": "no-such-flag", "targetingKey": "u", "metric": "converted", "value": 1},
            {"decisionId": "abc123", "metric": "converted", "value": 0.5, "kind": "binary"},
            {"decisionId": "abc123", "metric": "clicks", "value": True},
            {"decisionId": "abc123", "metric": "converted", "value": 1, "timestamp": "yesterday"},
            {"flag": AB_TEST_ROUTER, "metric": "converted", "value": True},
            "converted",
            {"decisionId": "abc123", "metric": "revenue.pre.pre", "value": 3},
        ]
        problem = _problem(client.post("/v1/events", json=batch), 422)
    fields = {(error["index"], error["field"]) for error in problem["errors"]}
    assert {
        (1, "metric"),
        (2, "value"),
        (3, "decision_id"),
        (4, "targetingKey"),
        (5, "flag"),
        (6, "value"),
        (7, "value"),
        (8, "timestamp"),
        (9, "targetingKey"),
        (10, ""),
        (11, "metric"),
    } <= fields
    assert not any(index == 0 for index, _ in fields)
    assert "11 of 12 events are invalid" in problem["detail"]
    messages = {(e["index"], e["field"]): e["message"] for e in problem["errors"]}
    assert "no flag named 'no-such-flag'" in messages[(5, "flag")]
    assert "'clicks' is continuous" in messages[(7, "value")]
    assert "unknown field 'decision_id'" in messages[(3, "decision_id")]
    assert "covariate of a covariate" in messages[(11, "metric")]
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(OutcomeEvent)) == 1


def test_results_need_a_viewer_token_and_an_experiment(plane: ControlPlane) -> None:
    """Results need a token (401 without); an unknown flag or a flag that is not an experiment
    is a 404 problem that says so."""
    with httpx.Client(base_url=plane.url) as client:
        _problem(client.get(f"/v1/experiments/{AB_TEST_ROUTER}"), 401)
    with plane.client(VIEWER) as viewer:
        missing = _problem(viewer.get("/v1/experiments/no-such-flag"), 404)
        assert "no flag named 'no-such-flag'" in missing["detail"]
        plain = _problem(viewer.get(f"/v1/experiments/{REGION_ROUTER}"), 404)
        assert '"experiment": true' in plain["detail"]
        empty = viewer.get(f"/v1/experiments/{AB_TEST_ROUTER}")
        assert empty.status_code == 200
        assert empty.json()["units"] == 0


def test_events_need_the_gateway_token_when_one_is_set(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path
) -> None:
    """With gateway tokens configured, events without the token are a 401 problem."""
    settings = make_settings(flags_dir, database_url, tmp_path, gateway_tokens=[GATEWAY])
    event = {"decisionId": "abc", "metric": "converted", "value": True}
    with (
        running(settings, database) as running_plane,
        httpx.Client(base_url=running_plane.url) as client,
    ):
        _problem(client.post("/v1/events", json=event), 401)
        accepted = client.post(
            "/v1/events", json=event, headers={"Authorization": f"Bearer {GATEWAY}"}
        )
        assert accepted.status_code == 202


def test_cli_report_errors_are_one_line(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints the problem's status, title and detail (no traceback) and exits 1; an
    unreachable server exits 2."""
    assert (
        main(["experiments", "report", "no-such-flag", "--url", plane.url, "--token", VIEWER]) == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("control-plane experiments report: 404 Experiment not found")
    assert "Traceback" not in err
    assert (
        main(
            [
                "experiments",
                "report",
                AB_TEST_ROUTER,
                "--url",
                "http://127.0.0.1:9",
                "--token",
                VIEWER,
            ]
        )
        == 2
    )
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
