"""The metric part of a canary spec and the interval analysis, without a Prometheus server:
spec fields refused with their JSON names, query templating, the prometheus_url setting, and
IntervalAnalysis driven by a table of answers (the real server is in test_canary_prometheus)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from control_plane.errors import InvalidCanary
from control_plane.experiments.canary.intervals import AnalysisMetrics, IntervalAnalysis
from control_plane.experiments.canary.prometheus import (
    MetricNoData,
    PrometheusRejected,
    PrometheusUnreachable,
)
from control_plane.experiments.canary.spec import CanarySpec, parse_spec
from control_plane.experiments.canary.templating import duration, render
from control_plane.settings import Settings

METRIC = {
    "name": "error-rate",
    "query": 'rate(x{v="{{ variant }}"}[{{ interval }}])',
    "thresholdRange": {"max": 0.05},
}
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"metrics": [{**METRIC, "query": "up{job='{{ job }}'}"}]},
            "metrics.0.query",
            "unknown template variable {{ job }}; the variables are flag, variant, stable, "
            "interval",
        ),
        (
            {"metrics": [{**METRIC, "thresholdRange": {}}]},
            "metrics.0.thresholdRange",
            "give min, max or both",
        ),
        (
            {"metrics": [{**METRIC, "thresholdRange": {"min": 2, "max": 1}}]},
            "metrics.0.thresholdRange",
            "min 2 is above max 1",
        ),
        (
            {"metrics": [{**METRIC, "thresholdRange": {"max": "inf"}}]},
            "metrics.0.thresholdRange",
            "finite",
        ),
        (
            {"metrics": [{**METRIC, "provider": {"address": "ftp://prometheus:9090"}}]},
            "metrics.0.provider.address",
            "http:// or https:// base URL",
        ),
        (
            {"metrics": [{**METRIC, "provider": {"address": "http://p:9090?x=1"}}]},
            "metrics.0.provider.address",
            "http:// or https:// base URL",
        ),
        (
            {"metrics": [{**METRIC, "provider": {"type": "datadog", "address": "http://p"}}]},
            "metrics.0.provider.type",
            "'prometheus'",
        ),
        ({"metrics": [{**METRIC, "name": "error rate"}]}, "metrics.0.name", "pattern"),
        ({"metrics": [METRIC, METRIC]}, "spec", "two metrics are named 'error-rate'"),
        ({"metrics": [{**METRIC, "interval": "1m"}]}, "metrics.0.interval", "Extra inputs"),
        ({"builtinChecks": False}, "spec", "nothing would judge the canary"),
        ({"trafficQuery": "sum(x[{{ window }}])"}, "trafficQuery", "{{ window }}"),
        ({"failureThreshold": 0}, "failureThreshold", "greater than or equal to 1"),
        ({"idleIntervals": 0}, "idleIntervals", "greater than or equal to 1"),
    ],
)
def test_bad_metric_fields_name_the_field(body: dict[str, Any], field: str, message: str) -> None:
    """Each bad metric field is a 422 (InvalidCanary) with its JSON path and the rule."""
    with pytest.raises(InvalidCanary) as caught:
        parse_spec(body)
    errors = caught.value.extra["errors"]
    assert any(error["field"] == field and message in error["message"] for error in errors), errors


def test_metric_spec_round_trips_with_defaults() -> None:
    """A spec with metrics parses back from its JSON form; defaults are Flagger-like."""
    spec = parse_spec({"metrics": [{**METRIC, "provider": {"address": "http://p:9090/"}}]})
    assert spec.failure_threshold == 2
    assert spec.idle_intervals == 3
    assert spec.builtin_checks is True
    assert spec.metrics[0].provider is not None
    assert spec.metrics[0].provider.address == "http://p:9090"
    assert parse_spec(spec.to_json()) == spec
    assert parse_spec({}).metrics == ()


def test_templating_fills_and_escapes() -> None:
    """Variables are filled in (spaces inside the braces optional) and escaped for a
    double-quoted PromQL string; the interval is a Prometheus duration."""
    values = {"flag": "chat", "variant": 'v"2\\', "stable": "v1", "interval": duration(30)}
    assert (
        render('x{f="{{flag}}",v="{{ variant }}"}[{{ interval }}]', values)
        == 'x{f="chat",v="v\\"2\\\\"}[30s]'
    )
    assert (duration(30), duration(1.5), duration(0.25), duration(120)) == (
        "30s",
        "1500ms",
        "250ms",
        "120s",
    )


@pytest.mark.parametrize("url", ["ftp://p:9090", "http://", "p:9090", "http://p:9090?q=1"])
def test_prometheus_url_setting_must_be_an_http_url(url: str) -> None:
    """CP_PROMETHEUS_URL that is not an http(s) base URL stops the settings from loading."""
    with pytest.raises(ValidationError, match="prometheus_url"):
        Settings(prometheus_url=url)
    assert Settings(prometheus_url="https://prom.example:9090/prefix").prometheus_url


class Answers:
    """An InstantQuery from a table: promql -> number or error; remembers what was asked."""

    def __init__(self, table: dict[str, float | Exception]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []

    def __call__(self, address: str, promql: str) -> float:
        self.asked.append((address, promql))
        answer = self.table[promql]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _spec(**extra: Any) -> CanarySpec:
    return parse_spec({"intervalSeconds": 10, "builtinChecks": False, **extra})


def _metric(name: str, query: str, **bounds: float) -> dict[str, Any]:
    return {"name": name, "query": query, "thresholdRange": bounds}


def _tick(
    analysis: IntervalAnalysis, spec: CanarySpec, seconds: float, calls: int = 5, step: int = 0
) -> Any:
    return analysis.tick(
        run_id=1,
        flag="chat",
        step_index=step,
        step_started_at=T0,
        spec=spec,
        now=T0 + timedelta(seconds=seconds),
        recorded_calls=lambda since: calls,
    )


def test_outcomes_pass_fail_no_data_and_error_are_distinct() -> None:
    """In one interval a metric inside its range passes, outside fails, an empty answer is
    no data, a refused query is an error; the check fails and says each, and nothing is
    queried before the interval ends."""
    answers = Answers(
        {
            "ok": 0.01,
            "high": 0.5,
            "empty": MetricNoData("no series"),
            "bad": PrometheusRejected("parse error", status=400, error_type="bad_data"),
        }
    )
    spec = _spec(
        metrics=[
            _metric("ok", "ok", max=0.05),
            _metric("high", "high", max=0.05),
            _metric("empty", "empty", max=1),
            _metric("bad", "bad", max=1),
        ]
    )
    analysis = IntervalAnalysis(query=answers, default_address="http://p:9090", watching_since=T0)
    early = _tick(analysis, spec, 9.9)
    assert (early.check, early.may_advance, answers.asked) == (None, False, [])
    tick = _tick(analysis, spec, 10.1)
    assert tick.check is not None
    assert tick.check.outcome == "fail"
    assert [(m.name, m.outcome) for m in tick.check.metrics] == [
        ("ok", "pass"),
        ("high", "fail"),
        ("empty", "no_data"),
        ("bad", "error"),
    ]
    assert tick.check.reason == (
        "high: 0.5 is outside the accepted range (at most 0.05); empty: no data: no series; "
        "bad: query failed (rejected): parse error"
    )
    assert not tick.may_advance
    assert _tick(analysis, spec, 15).check is None  # once per interval


def test_passing_check_lets_the_step_advance_until_the_next_interval() -> None:
    """Every metric in range passes the interval; the step may advance from then on."""
    answers = Answers({'rate(x{v="canary"}[10s])': 0.01})
    spec = _spec(metrics=[METRIC])
    analysis = IntervalAnalysis(query=answers, default_address="http://p:9090", watching_since=T0)
    tick = _tick(analysis, spec, 10.5)
    assert tick.check is not None
    assert tick.check.outcome == "pass"
    assert tick.may_advance
    assert answers.asked == [("http://p:9090", 'rate(x{v="canary"}[10s])')]
    assert _tick(analysis, spec, 12).may_advance


def test_idle_intervals_are_counted_reported_once_and_not_queried() -> None:
    """Intervals without canary calls are idle: no metric is queried, the step does not
    advance, the count grows, and reaching idleIntervals is reported once; traffic resets it."""
    answers = Answers({'rate(x{v="canary"}[10s])': 0.01})
    spec = _spec(metrics=[METRIC], idleIntervals=2)
    analysis = IntervalAnalysis(query=answers, default_address="http://p:9090", watching_since=T0)
    first = _tick(analysis, spec, 10.1, calls=0)
    assert (first.idle_intervals, first.newly_idle, first.may_advance) == (1, False, False)
    second = _tick(analysis, spec, 20.1, calls=0)
    assert (second.idle_intervals, second.newly_idle) == (2, True)
    third = _tick(analysis, spec, 30.1, calls=0)
    assert (third.idle_intervals, third.newly_idle) == (3, False)
    assert answers.asked == []
    back = _tick(analysis, spec, 40.1, calls=7)
    assert (back.idle_intervals, back.may_advance) == (0, True)


def test_traffic_query_decides_idleness_and_its_failure_is_a_failed_check() -> None:
    """With a trafficQuery, no series means no traffic (idle, not failed); a refused
    traffic query is a failed check naming it."""
    answers = Answers({"traffic": MetricNoData("no series")})
    spec = _spec(metrics=[METRIC], trafficQuery="traffic")
    analysis = IntervalAnalysis(query=answers, default_address="http://p:9090", watching_since=T0)
    idle = _tick(analysis, spec, 10.1, calls=99)
    assert (idle.idle_intervals, idle.check) == (1, None)
    answers.table["traffic"] = PrometheusUnreachable("connection refused")
    failed = _tick(analysis, spec, 20.1)
    assert failed.check is not None
    assert failed.check.reason == "trafficQuery: query failed (unreachable): connection refused"


def test_steps_started_before_the_process_are_watched_from_now() -> None:
    """After a restart the intervals nobody watched are not counted as idle; the next
    interval end is the first one looked at."""
    spec = _spec(metrics=[METRIC])
    analysis = IntervalAnalysis(
        query=Answers({}),
        default_address="http://p:9090",
        watching_since=T0 + timedelta(seconds=95),
    )
    tick = _tick(analysis, spec, 95, calls=0)
    assert (tick.idle_intervals, tick.check) == (0, None)
    assert _tick(analysis, spec, 100.1, calls=0).idle_intervals == 1


def test_a_run_finished_during_its_tick_keeps_its_idle_gauge_at_zero() -> None:
    """An abort that lands while a tick is under way (its traffic query running) wins: the
    tick does not bring back the run's watch or set the flag's idle gauge again."""
    registry = CollectorRegistry()
    analysis = IntervalAnalysis(
        query=Answers({}),
        default_address="http://p:9090",
        watching_since=T0,
        metrics=AnalysisMetrics(registry),
    )
    spec = _spec(metrics=[METRIC], idleIntervals=2)
    for seconds in (10.1, 20.1):
        _tick(analysis, spec, seconds, calls=0)
    assert registry.get_sample_value("control_plane_canary_idle_intervals", {"flag": "chat"}) == 2

    def aborted_meanwhile(since: datetime) -> int:
        analysis.forget(1, "chat")
        return 0

    analysis.tick(
        run_id=1,
        flag="chat",
        step_index=0,
        step_started_at=T0,
        spec=spec,
        now=T0 + timedelta(seconds=30.1),
        recorded_calls=aborted_meanwhile,
    )
    analysis.show_idle(1, "chat")  # the recorder's publish of tracked runs, read before
    assert registry.get_sample_value("control_plane_canary_idle_intervals", {"flag": "chat"}) == 0
    assert analysis.current(1) == (0, None)
    _tick(analysis, spec, 40.1, calls=0)
    assert analysis.current(1) == (0, None)


def test_metrics_without_any_prometheus_address_are_refused() -> None:
    """Without prometheus_url, every metric (and trafficQuery) lacking provider.address is
    named in one 422."""
    spec = _spec(
        metrics=[
            METRIC,
            {**METRIC, "name": "b", "provider": {"address": "http://p"}},
            {**METRIC, "name": "c"},
        ]
    )
    with pytest.raises(InvalidCanary) as caught:
        IntervalAnalysis().check_spec(spec)
    assert [e["field"] for e in caught.value.extra["errors"]] == [
        "metrics.0.provider.address",
        "metrics.2.provider.address",
    ]
    assert "CP_PROMETHEUS_URL" in caught.value.detail
    IntervalAnalysis(default_address="http://p:9090").check_spec(spec)
