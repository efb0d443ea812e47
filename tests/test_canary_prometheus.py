"""Canary metric analysis against Debian's real Prometheus server (/usr/bin/prometheus).

One Prometheus per module, on a free loopback port with its storage in a temp directory, scrapes
every second a test exporter (a real prometheus_client HTTP server on loopback whose request,
error and latency series per flag and variant the tests drive) and, through a file_sd target
file, the control plane under test; it loads the shipped alerts.yml. The client is checked
against Prometheus's own answers (400 bad_data for bad PromQL, 404 on a wrong prefix, empty
vectors, NaN, matrices, strings), and canaries are driven end to end: a healthy error rate and
latency promote, a bad error rate rolls back after `failureThreshold` failed checks, a canary
without traffic says so in its status, in /metrics and as a firing ControlPlaneCanaryIdle alert.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from experiments_support import OPERATOR, VIEWER, ControlPlane, make_settings, running, wait_for
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from servers import BackendApp, ServerThread, free_port

from control_plane.db import Database
from control_plane.experiments.canary.prometheus import (
    MetricBadResult,
    MetricNoData,
    PrometheusRejected,
    PrometheusTimeout,
    PrometheusUnreachable,
    instant_query,
)

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus server binary is not installed (Debian package "
    "prometheus; .ci/run installs it)",
)
RULES = Path(str(resources.files("control_plane.observability") / "alerts.yml"))

#: The PromQL users would write for their own request metrics; `or vector(0)`: a variant with
#: no error yet has no 5xx series, and that is an error rate of 0, not "no data".
ERROR_RATE = (
    '(sum(rate(test_requests_total{flag="{{ flag }}", variant="{{ variant }}", '
    'status=~"5.."}[{{ interval }}])) or vector(0))'
    ' / sum(rate(test_requests_total{flag="{{ flag }}", variant="{{ variant }}"}'
    "[{{ interval }}]))"
)
P99 = (
    "histogram_quantile(0.99, sum by (le) (rate(test_request_seconds_bucket{"
    'flag="{{ flag }}", variant="{{ variant }}"}[{{ interval }}])))'
)
TRAFFIC = (
    'sum(increase(test_requests_total{flag="{{ flag }}", variant="{{ variant }}"}[{{ interval }}]))'
)


@dataclass
class Exporter:
    """A real metrics endpoint whose counters grow as `feed` says, ten times a second."""

    url: str
    #: (flag, variant) -> (requests, errors, seconds per request) added every 0.1 s.
    feed: dict[tuple[str, str], tuple[int, int, float]] = field(default_factory=dict)
    requests: Any = None
    latency: Any = None


@dataclass
class Prometheus:
    url: str
    targets: Path

    def query(self, promql: str) -> float:
        return instant_query(self.url, promql)

    def scrape_also(self, address: str) -> None:
        """Add a scrape target (the control plane) through the file_sd file."""
        self.targets.write_text(
            json.dumps([{"targets": [address], "labels": {"job": "control-plane"}}])
        )


def _feed(exporter: Exporter, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        for (flag, variant), (requests, errors, seconds) in list(exporter.feed.items()):
            exporter.requests.labels(flag, variant, "200").inc(requests - errors)
            if errors:
                exporter.requests.labels(flag, variant, "503").inc(errors)
            for _ in range(min(requests, 20)):
                exporter.latency.labels(flag, variant).observe(seconds)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    requests = Counter(
        "test_requests",
        "Requests answered by a model backend.",
        ["flag", "variant", "status"],
        registry=registry,
    )
    latency = Histogram(
        "test_request_seconds",
        "Backend answer time.",
        ["flag", "variant"],
        buckets=(0.01, 0.05, 0.1, 0.5, 1, 5),
        registry=registry,
    )
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    stop = threading.Event()
    exporter = Exporter(
        f"http://127.0.0.1:{server.server_port}", requests=requests, latency=latency
    )
    feeder = threading.Thread(target=_feed, args=(exporter, stop), daemon=True)
    feeder.start()
    yield exporter
    stop.set()
    feeder.join(timeout=5)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(
    exporter: Exporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """The real Prometheus server: 1 s scrapes of the exporter and of file_sd targets, the
    shipped alert rules evaluated every second."""
    assert PROMETHEUS is not None
    directory = tmp_path_factory.mktemp("prometheus")
    targets = directory / "targets.json"
    targets.write_text("[]")
    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "exporter",
                        "static_configs": [{"targets": [exporter.url.removeprefix("http://")]}],
                    },
                    {
                        "job_name": "control-plane",
                        "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                    },
                ],
            }
        )
    )
    port = free_port()
    log = (directory / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                output = (directory / "prometheus.log").read_text()
                raise AssertionError(f"prometheus exited: {output}")
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, what="prometheus to be ready")
        server = Prometheus(url, targets)
        wait_for(
            lambda: _value(server, 'sum(up{job="exporter"})') == 1,
            what="the first scrape of the exporter",
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _value(server: Prometheus, promql: str) -> float | None:
    try:
        return server.query(promql)
    except MetricNoData:
        return None


# -- the client against Prometheus's own answers ----------------------------------------------


def test_numbers_from_vectors_and_scalars(prometheus: Prometheus) -> None:
    """A one-series instant vector and a scalar are read as their number (+Inf included)."""
    assert prometheus.query("vector(0.25)") == 0.25
    assert prometheus.query("scalar(vector(2))") == 2.0
    assert prometheus.query("1 / 0") == float("inf")


def test_bad_promql_is_prometheus_400_bad_data(prometheus: Prometheus) -> None:
    """A PromQL syntax error is Prometheus's 400 with errorType bad_data, and its message."""
    with pytest.raises(PrometheusRejected) as caught:
        prometheus.query("sum(rate(test_requests_total[1m])")
    assert (caught.value.status, caught.value.error_type) == (400, "bad_data")
    assert "parse error" in caught.value.detail
    assert prometheus.url in caught.value.detail


@pytest.mark.parametrize(
    ("promql", "error", "message"),
    [
        ("no_such_metric_anywhere", MetricNoData, "no series"),
        ("0 / 0", MetricNoData, "NaN"),
        ("vector(0) / vector(0)", MetricNoData, "NaN"),
        ('up{job="exporter"}[5s]', MetricBadResult, "a matrix"),
        ('"text"', MetricBadResult, "a string"),
        ('vector(1) or label_replace(vector(2), "a", "b", "", "")', MetricBadResult, "2 series"),
    ],
)
def test_answers_without_one_number(
    prometheus: Prometheus, promql: str, error: type[Exception], message: str
) -> None:
    """Empty vectors and NaN are no data; ranges, strings and several series are bad results."""
    with pytest.raises(error, match=message):
        prometheus.query(promql)


def test_answers_that_are_not_prometheus_api_json(
    prometheus: Prometheus, exporter: Exporter
) -> None:
    """HTTP errors without Prometheus's error JSON are rejections with their status and text
    (Prometheus's own 404 on a wrong prefix, the exporter's 405 to a POST, a backend's 503);
    a 200 that is not the query API's JSON is a bad result."""
    with pytest.raises(PrometheusRejected, match="404 page not found") as caught:
        instant_query(f"{prometheus.url}/no-such-prefix", "vector(1)")
    assert caught.value.status == 404
    with pytest.raises(PrometheusRejected, match="405") as caught:
        instant_query(exporter.url, "vector(1)")
    assert caught.value.status == 405
    backend = BackendApp("not-prometheus", behaviour="error")
    with ServerThread(backend) as server:
        with pytest.raises(PrometheusRejected, match="answered 503") as caught:
            instant_query(server.url, "vector(1)")
        assert (caught.value.status, caught.value.error_type) == (503, "")
        backend.behaviour = "ok"
        with pytest.raises(MetricBadResult, match="answered 200 with something that is not"):
            instant_query(server.url, "vector(1)")
    assert backend.requests[0]["path"] == "/api/v1/query"
    assert backend.requests[0]["body"] == "query=vector%281%29"


def test_refused_and_silent_servers() -> None:
    """A closed port is unreachable; a server that accepts and never answers is a timeout."""
    with pytest.raises(PrometheusUnreachable, match="ConnectError"):
        instant_query(f"http://127.0.0.1:{free_port()}", "vector(1)")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(PrometheusTimeout, match=r"within 0\.3s"):
            instant_query(f"http://127.0.0.1:{port}", "vector(1)", timeout=0.3)


# -- canaries analysed on Prometheus --------------------------------------------------------


def _flag(key: str) -> dict[str, Any]:
    """A routing flag; its backends are never called (the traffic is the exporter's)."""
    return {
        key: {
            "state": "ENABLED",
            "variants": {
                "stable": {"backend": "chat-v1", "url": "http://127.0.0.1:9/v1"},
                "canary": {"backend": "chat-v2", "url": "http://127.0.0.1:9/v2"},
            },
            "defaultVariant": "stable",
            "targeting": {"fractional": [["canary", 0], ["stable", 100]]},
        }
    }


@pytest.fixture
def plane(flags_dir: Path, tmp_path: Path, prometheus: Prometheus) -> Iterator[ControlPlane]:
    """A control plane on SQLite whose default Prometheus is the test server."""
    for key in ("good-router", "bad-router", "quiet-router", "blip-router"):
        write_flags(flags_dir, f"{key}.flagd.json", _flag(key))
    database_url = f"sqlite:///{tmp_path / 'cp.db'}"
    database = Database.from_url(database_url)
    database.migrate()
    settings = make_settings(
        flags_dir, database_url, tmp_path, prometheus_url=prometheus.url, canary_tick_interval=0.1
    )
    with running(settings, database) as control_plane:
        yield control_plane
    database.dispose()


def _start(plane: ControlPlane, flag: str, **spec: Any) -> dict[str, Any]:
    with plane.client(OPERATOR) as client:
        response = client.post(f"/v1/canaries/{flag}", json=spec)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _status(plane: ControlPlane, flag: str) -> dict[str, Any]:
    with plane.client(VIEWER) as client:
        body: dict[str, Any] = client.get(f"/v1/canaries/{flag}").json()
    return body


def _finished(plane: ControlPlane, flag: str) -> dict[str, Any] | None:
    status = _status(plane, flag)
    return status if status["state"] in ("promoted", "rolled_back", "aborted") else None


def _wait_for_traffic(prometheus: Prometheus, flag: str) -> None:
    """Until Prometheus has two scrapes of the flag's canary series (rate() needs two)."""
    wait_for(
        lambda: (
            (
                _value(
                    prometheus,
                    f'count_over_time(test_requests_total{{flag="{flag}", '
                    f'variant="canary", status="200"}}[5s])',
                )
                or 0
            )
            >= 2
        ),
        what=f"two scrapes of {flag}'s canary traffic",
    )


def test_healthy_canary_is_promoted_on_prometheus_metrics(
    plane: ControlPlane, exporter: Exporter, prometheus: Prometheus
) -> None:
    """A canary judged only by PromQL (error rate at most 5%, p99 at most 0.5 s) whose
    exporter shows 1% errors and 50 ms answers steps through every weight and is promoted;
    each step records the metric values it passed with."""
    exporter.feed[("good-router", "canary")] = (100, 1, 0.04)
    exporter.feed[("good-router", "stable")] = (100, 0, 0.04)
    _wait_for_traffic(prometheus, "good-router")
    _start(
        plane,
        "good-router",
        steps=[50, 100],
        intervalSeconds=3,
        builtinChecks=False,
        trafficQuery=TRAFFIC,
        metrics=[
            {"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}},
            {"name": "p99-seconds", "query": P99, "thresholdRange": {"max": 0.5}},
        ],
    )
    status = wait_for(
        lambda: _finished(plane, "good-router"), timeout=25, what="the canary to finish"
    )
    assert status["state"] == "promoted", status
    steps = [(event["action"], event["weight"]) for event in status["events"]]
    assert steps == [("started", 50), ("step", 100), ("promoted", 100)]
    for event in status["events"][1:]:
        metrics = {m["name"]: m for m in event["detail"]["observed"]["metrics"]}
        assert metrics["error-rate"]["outcome"] == "pass"
        assert 0 < metrics["error-rate"]["value"] <= 0.05
        assert metrics["p99-seconds"]["outcome"] == "pass"
        assert 0.01 < metrics["p99-seconds"]["value"] <= 0.05
    assert (
        "2 metric(s) within their ranges: error-rate 0.01"
        in status["events"][1]["detail"]["reason"]
    )


def test_bad_error_rate_is_rolled_back_after_the_failure_threshold(
    plane: ControlPlane, exporter: Exporter, prometheus: Prometheus
) -> None:
    """A canary whose exporter shows 30% errors fails its first check (an event, no rollback
    on one failed check) and is rolled back at the second, failureThreshold 2, with the
    value and the range in the reason; the flag's canary weight is 0 again."""
    exporter.feed[("bad-router", "canary")] = (100, 30, 0.04)
    _wait_for_traffic(prometheus, "bad-router")
    _start(
        plane,
        "bad-router",
        steps=[20, 100],
        intervalSeconds=3,
        builtinChecks=False,
        failureThreshold=2,
        trafficQuery=TRAFFIC,
        metrics=[{"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}}],
    )
    status = wait_for(
        lambda: _finished(plane, "bad-router"), timeout=25, what="the canary to be rolled back"
    )
    assert status["state"] == "rolled_back", status
    actions = [event["action"] for event in status["events"]]
    assert actions == ["started", "check_failed", "rolled_back"]
    first = status["events"][1]["detail"]
    assert first["observed"]["failedChecks"] == 1
    assert "outside the accepted range (at most 0.05)" in first["reason"]
    assert 0.2 < first["observed"]["metrics"][0]["value"] < 0.4
    assert status["reason"].startswith("2 failed checks (failureThreshold 2)")
    assert status["weight"] == 0
    with plane.client(VIEWER) as client:
        flag = client.get("/v1/flags/bad-router").json()["flag"]
    assert flag["targeting"] == {"fractional": [["canary", 0], ["stable", 100]]}


def test_canary_without_traffic_says_so(plane: ControlPlane, prometheus: Prometheus) -> None:
    """A canary whose trafficQuery finds no request for idleIntervals intervals is not
    failed: it waits with a warning in its status, an `idle` event, the idle gauge in
    /metrics, and the shipped ControlPlaneCanaryIdle alert firing in Prometheus."""
    prometheus.scrape_also(plane.url.removeprefix("http://"))
    _start(
        plane,
        "quiet-router",
        steps=[10, 100],
        intervalSeconds=1,
        idleIntervals=3,
        builtinChecks=False,
        trafficQuery=TRAFFIC,
        metrics=[{"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}}],
    )
    status = wait_for(
        lambda: (s := _status(plane, "quiet-router"))["warnings"] and len(s["events"]) == 2 and s,
        timeout=15,
        what="the idle warning and event",
    )
    assert status["state"] == "running"
    assert status["step"] == 1
    assert "no canary traffic" in status["warnings"][0]
    assert "3 consecutive intervals of 1s" in status["warnings"][0]
    assert status["analysis"]["idleIntervals"] >= 3
    assert status["analysis"]["failedChecks"] == 0
    assert [event["action"] for event in status["events"]] == ["started", "idle"]

    with plane.client() as client:
        text = client.get("/metrics").text
    gauges = {
        sample.labels["flag"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "control_plane_canary_idle_intervals"
    }
    assert gauges["quiet-router"] >= 3

    def firing() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()
        return [
            alert
            for alert in alerts["data"]["alerts"]
            if alert["labels"]["alertname"] == "ControlPlaneCanaryIdle"
            and alert["labels"].get("flag") == "quiet-router"
            and alert["state"] == "firing"
        ]

    alert = wait_for(firing, timeout=15, what="the ControlPlaneCanaryIdle alert")[0]
    assert "no traffic" in alert["annotations"]["summary"]
    with plane.client(OPERATOR) as client:
        assert client.post("/v1/canaries/quiet-router/abort").status_code == 200
    with plane.client() as client:
        text = client.get("/metrics").text
    assert 'control_plane_canary_idle_intervals{flag="quiet-router"} 0.0' in text
    assert 'control_plane_canary_weight{flag="quiet-router"} 0.0' in text


def test_unreachable_prometheus_is_a_failed_check(
    plane: ControlPlane, exporter: Exporter, prometheus: Prometheus
) -> None:
    """A metric whose Prometheus refuses connections is a failed check ('query failed', not a
    pass and not no data) even while the other metric passes; at failureThreshold the canary
    is rolled back saying which query failed and how."""
    exporter.feed[("blip-router", "canary")] = (100, 0, 0.04)
    _wait_for_traffic(prometheus, "blip-router")
    dead = f"http://127.0.0.1:{free_port()}"
    _start(
        plane,
        "blip-router",
        steps=[50, 100],
        intervalSeconds=3,
        failureThreshold=2,
        builtinChecks=False,
        trafficQuery=TRAFFIC,
        metrics=[
            {"name": "error-rate", "query": ERROR_RATE, "thresholdRange": {"max": 0.05}},
            {
                "name": "elsewhere",
                "query": "vector(0)",
                "thresholdRange": {"max": 1},
                "provider": {"address": dead},
            },
        ],
    )
    status = wait_for(lambda: _finished(plane, "blip-router"), timeout=25, what="the rollback")
    assert status["state"] == "rolled_back"
    assert [event["action"] for event in status["events"]] == [
        "started",
        "check_failed",
        "rolled_back",
    ]
    assert (
        f"elsewhere: query failed (unreachable): cannot query Prometheus at {dead}"
        in status["reason"]
    )
    outcomes = {
        m["name"]: m["outcome"] for m in status["events"][-1]["detail"]["observed"]["metrics"]
    }
    assert outcomes == {"error-rate": "pass", "elsewhere": "error"}
