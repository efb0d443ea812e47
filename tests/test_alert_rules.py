"""The shipped Prometheus alert rules cannot drift from the code: every metric and label they
use is in a live /metrics scrape of a running control plane that served traffic, rolled back a
bad canary and refused a bad flag edit; `promtool` (Debian package `prometheus`) checks their
syntax and unit-tests that the canary and reload alerts fire when they should and only then."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_flags
from experiments_support import OPERATOR, make_settings, running, wait_for
from prometheus_client.parser import text_string_to_metric_families
from servers import BackendApp, ServerThread

from control_plane.db import Database

FLAG = "chat-router"
RULES = Path(str(resources.files("control_plane.observability") / "alerts.yml"))
_SELECTOR = re.compile(r"\b(control_plane_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
#: Label values the rules name that this test does not make the app produce, and why.
_NOT_EXERCISED = {
    # Dropping records needs a full queue and spill file; writer.py counts them as "dropped".
    ("control_plane_experiment_records_total", "result", "dropped"),
}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _selectors() -> list[tuple[str, str, dict[str, tuple[str, str]]]]:
    """(alert, metric, {label: (operator, value)}) for every metric selector in the rules."""
    found = []
    for rule in _rules():
        for metric, matchers in _SELECTOR.findall(rule["expr"]):
            labels = {name: (op, value) for name, op, value in _MATCHER.findall(matchers)}
            found.append((rule["alert"], metric, labels))
    return found


@pytest.fixture
def plane(flags_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """A running control plane (experiments on) with a 50/50 flag over a good stable backend
    and a failing canary backend."""
    database_url = f"sqlite:///{tmp_path / 'cp.db'}"
    database = Database.from_url(database_url)
    database.migrate()
    stable, canary = BackendApp("stable"), BackendApp("canary", behaviour="error")
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(
            flags_dir,
            "chat.flagd.json",
            {
                FLAG: {
                    "state": "ENABLED",
                    "metadata": {"experiment": True},
                    "variants": {
                        "stable": {"backend": "chat-v1", "url": stable_server.url},
                        "canary": {"backend": "chat-v2", "url": canary_server.url},
                    },
                    "defaultVariant": "stable",
                    "targeting": {"fractional": [["canary", 0], ["stable", 100]]},
                }
            },
        )
        settings = make_settings(flags_dir, database_url, tmp_path)
        with running(settings, database) as control_plane:
            yield control_plane
    database.dispose()


def _scrape(plane: Any) -> dict[str, dict[str, set[str]]]:
    """sample name -> label name -> values seen, from GET /metrics."""
    with plane.client() as client:
        text = client.get("/metrics").text
    samples: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = samples.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return samples


def test_every_metric_and_label_in_the_rules_is_exported(plane: Any, flags_dir: Path) -> None:
    """After real traffic, a canary rolled back for its errors and a refused flag edit, the
    scrape has every metric the rules select, with every label they match on, and every
    label value they require (but variant names, which are flag data)."""
    with plane.client(OPERATOR) as client:
        # Every canary call fails: the error check's ceiling fails the first interval, and one
        # failed check is enough here (failureThreshold 1).
        started = client.post(
            f"/v1/canaries/{FLAG}",
            json={
                "steps": [50, 100],
                "intervalSeconds": 1,
                "minRequests": 5,
                "failureThreshold": 1,
            },
        )
        assert started.status_code == 201, started.text
    with plane.client() as client:

        def rolled_back() -> bool:
            for index in range(10):
                client.get(f"/v1/dispatch/{FLAG}/v1/chat", headers={"x-user-id": f"u{index}"})
            state: str = client.get(
                f"/v1/canaries/{FLAG}", headers={"authorization": f"Bearer {OPERATOR}"}
            ).json()["state"]
            return state == "rolled_back"

        wait_for(rolled_back, what="the failing canary to be rolled back")
    write_flags(flags_dir, "broken.flagd.json", {"broken": {"state": "ENABLED"}})
    wait_for(lambda: _refused(plane) >= 1, what="the refused reload")
    plane.flush()
    scraped = _scrape(plane)
    selectors = _selectors()
    assert {metric for _, metric, _ in selectors} >= {
        "control_plane_dispatch_requests_total",
        "control_plane_dispatch_seconds_bucket",
        "control_plane_flag_reloads_total",
    }
    for alert, metric, matchers in selectors:
        assert metric in scraped, f"{alert}: {metric} is not exported"
        for label, (operator, value) in matchers.items():
            assert label in scraped[metric], f"{alert}: {metric} has no label {label}"
            seen = scraped[metric][label]
            if label == "variant" or (metric, label, value) in _NOT_EXERCISED:
                continue
            if operator == "=":
                assert value in seen, f"{alert}: {metric}{{{label}={value!r}}} never seen"
            elif operator == "=~":
                assert seen & set(value.split("|")), f"{alert}: {metric} {label}=~{value!r}"
    for rule in _rules():  # labels the rules aggregate or match on: by (...), on (...)
        metrics = {metric for metric, _ in _SELECTOR.findall(rule["expr"])}
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            for label in filter(None, (name.strip() for name in clause.split(","))):
                for metric in metrics:
                    assert label in scraped[metric], f"{rule['alert']}: {metric} lacks {label}"


def _refused(plane: Any) -> float:
    with plane.client() as client:
        text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "control_plane_flag_reloads_total"
                and sample.labels.get("result") == "refused"
            ):
                return float(sample.value)
    return 0.0


_PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    _PROMTOOL is None, reason="promtool not installed (Debian package prometheus)"
)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` finds every rule valid."""
    assert _PROMTOOL is not None
    result = subprocess.run(
        [_PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def _alert(name: str, summary: str, **labels: str) -> dict[str, Any]:
    """An expected alert: its labels, the summary as promtool renders it, and the description
    with its label templates filled in (descriptions use no other template)."""
    rule = next(rule for rule in _rules() if rule["alert"] == name)
    description = re.sub(
        r"\{\{ \$labels\.(\w+) \}\}",
        lambda m: labels[m.group(1)],
        rule["annotations"]["description"],
    )
    assert "{{" not in description
    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {"summary": summary, "description": description},
    }


# Series per minute: a healthy flag (1% canary errors), a failing one (10%), one with too little
# canary traffic to judge (4 calls in 5m, half failing), a slow canary, a refused reload, and
# the first rollback of a flag (its counter series appears at 1).
_SERIES = [
    (
        'control_plane_dispatch_requests_total{flag="good",variant="canary",status_class="2xx"}',
        "0+99x30",
    ),
    (
        'control_plane_dispatch_requests_total{flag="good",variant="canary",status_class="5xx"}',
        "0+1x30",
    ),
    (
        'control_plane_dispatch_requests_total{flag="bad",variant="canary",status_class="2xx"}',
        "0+45x30",
    ),
    (
        'control_plane_dispatch_requests_total{flag="bad",variant="canary",status_class="5xx"}',
        "0+3x30",
    ),
    (
        'control_plane_dispatch_requests_total{flag="bad",variant="canary",status_class="timeout"}',
        "0+2x30",
    ),
    (
        'control_plane_dispatch_requests_total{flag="quiet",variant="canary",status_class="2xx"}',
        "0+0.4x30",
    ),
    (
        'control_plane_dispatch_requests_total{flag="quiet",variant="canary",status_class="5xx"}',
        "0+0.4x30",
    ),
    *[
        (
            f'control_plane_dispatch_seconds_bucket{{flag="slow",variant="stable",le="{le}"}}',
            "0+100x30",
        )
        for le in ("0.1", "0.5", "1", "+Inf")
    ],
    ('control_plane_dispatch_seconds_bucket{flag="slow",variant="canary",le="0.1"}', "0x30"),
    *[
        (
            f'control_plane_dispatch_seconds_bucket{{flag="slow",variant="canary",le="{le}"}}',
            "0+100x30",
        )
        for le in ("0.5", "1", "+Inf")
    ],
    ('control_plane_flag_reloads_total{result="refused",instance="cp-1"}', "0 0 0 0 1x26"),
    ('control_plane_canary_actions_total{flag="bad",action="rolled_back"}', "_x5 1x25"),
    ('control_plane_experiment_database_up{instance="cp-1"}', "1 1 0x5 1x22"),
]


@needs_promtool
def test_promtool_unit_tests_of_the_alerts(tmp_path: Path) -> None:
    """With synthetic series, the canary error alert fires for 10% errors but not for 1% or
    for too little traffic, the latency alert for a canary 5x slower than stable, the reload
    alert after a refusal, the rollback alert on a flag's first rollback, and the database
    alert once database_up has been 0 for two minutes (not for a shorter outage, not after)."""
    assert _PROMTOOL is not None
    cases = [
        (
            10,
            "ControlPlaneCanaryErrorRateHigh",
            [
                _alert(
                    "ControlPlaneCanaryErrorRateHigh",
                    "Canary of bad fails 10% of its calls",
                    flag="bad",
                )
            ],
        ),
        (
            12,
            "ControlPlaneCanaryLatencyHigh",
            [
                _alert(
                    "ControlPlaneCanaryLatencyHigh",
                    "Canary of slow is slow: p99 496ms",
                    flag="slow",
                )
            ],
        ),
        (
            6,
            "ControlPlaneFlagReloadRefused",
            [
                _alert(
                    "ControlPlaneFlagReloadRefused",
                    "cp-1 refused a flag set reload",
                    result="refused",
                    instance="cp-1",
                )
            ],
        ),
        (2, "ControlPlaneFlagReloadRefused", []),
        (
            7,
            "ControlPlaneCanaryRolledBack",
            [
                _alert(
                    "ControlPlaneCanaryRolledBack",
                    "The canary controller rolled back the canary of bad",
                    flag="bad",
                    action="rolled_back",
                )
            ],
        ),
        (3, "ControlPlaneCanaryRolledBack", []),
        (
            5,
            "ControlPlaneExperimentDatabaseDown",
            [
                _alert(
                    "ControlPlaneExperimentDatabaseDown",
                    "cp-1 cannot write experiment records to the database",
                    instance="cp-1",
                )
            ],
        ),
        (3, "ControlPlaneExperimentDatabaseDown", []),
        (12, "ControlPlaneExperimentDatabaseDown", []),
    ]
    alert_tests = [
        {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": expected}
        for minute, name, expected in cases
    ]
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": s, "values": v} for s, v in _SERIES],
                        "alert_rule_test": alert_tests,
                    }
                ],
            }
        )
    )
    result = subprocess.run(
        [_PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
