"""The routing API over a real uvicorn server: decisions, bad inputs, and hot flag edits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import write_flags
from servers import ServerThread

from control_plane.http.app import create_app
from control_plane.routing.tester_tokens import TesterTokens
from control_plane.settings import Settings
from flags import AB_TEST_ROUTER, CANARY_ROUTER, PINNED_ROUTER, REGION_ROUTER

TESTER_KEY = "tester-token-key-for-routing-api-tests"
TESTER = {"x-tester-token": TesterTokens(TESTER_KEY).issue("qa", ttl_seconds=3600)[0]}


def make_settings(flags_dir: Path, tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        reload_interval=0.05,
        tester_token_key=TESTER_KEY,
        **overrides,
    )


@pytest.fixture
def server(flags_dir: Path, tmp_path: Path) -> Iterator[ServerThread]:
    write_flags(
        flags_dir,
        "misc.flagd.json",
        {
            "greeting": {
                "state": "ENABLED",
                "variants": {"hi": "hi", "bye": "bye"},
                "defaultVariant": "hi",
            },
        },
    )
    with ServerThread(create_app(make_settings(flags_dir, tmp_path))) as running:
        yield running


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def test_decide_answers_in_gateway_headers(http: httpx.Client) -> None:
    """GET /v1/decide answers 200 with the X-Route-* headers a gateway copies into its request."""
    response = http.get(
        f"/v1/decide/{REGION_ROUTER}", headers={"x-user-id": "u1", "x-region": "cn"}
    )
    assert response.status_code == 200
    assert response.headers["x-route-variant"] == "cn"
    assert response.headers["x-route-backend"] == "model-cn"
    assert response.headers["x-route-upstream"] == "http://127.0.0.1:9112"
    assert len(response.headers["x-route-decision-id"]) == 24
    assert response.json()["flagSetVersion"] >= 1


def test_route_returns_the_decision_as_json(http: httpx.Client) -> None:
    """POST /v1/route returns every decision field; the body's context adds attributes."""
    response = http.post(
        f"/v1/route/{REGION_ROUTER}",
        headers={"x-user-id": "u7"},
        json={"context": {"user-region": "cn"}},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "flagKey",
        "variant",
        "backend",
        "url",
        "reason",
        "flagSetVersion",
        "decisionId",
    }
    assert (body["flagKey"], body["variant"], body["backend"]) == (REGION_ROUTER, "cn", "model-cn")
    assert body["reason"] == "TARGETING_MATCH"


def test_headers_win_over_body_context(http: httpx.Client) -> None:
    """A mapped header and a body attribute naming the same attribute: the header decides."""
    response = http.post(
        f"/v1/route/{REGION_ROUTER}",
        headers={"x-region": "us"},
        json={"context": {"user-region": "cn"}},
    )
    assert response.json()["variant"] == "global"


def test_fast_path_and_router_answer_alike(
    flags_dir: Path, tmp_path: Path, http: httpx.Client
) -> None:
    """The raw-ASGI decide fast path answers exactly what the FastAPI route answers."""
    headers = {"x-user-id": "same-user", "x-canary-weight": "40"}
    fast = http.get(f"/v1/decide/{CANARY_ROUTER}", headers=headers)
    fast_bad = http.get(f"/v1/decide/{CANARY_ROUTER}", headers={"x-canary-weight": "x"})
    slow_app = create_app(make_settings(flags_dir, tmp_path, fast_decide=False))
    with ServerThread(slow_app) as slow_server, httpx.Client(base_url=slow_server.url) as slow:
        slow_ok = slow.get(f"/v1/decide/{CANARY_ROUTER}", headers=headers)
        slow_bad = slow.get(f"/v1/decide/{CANARY_ROUTER}", headers={"x-canary-weight": "x"})
    for a, b in ((fast, slow_ok), (fast_bad, slow_bad)):
        assert a.status_code == b.status_code
        drop = {"x-route-decision-id", "date", "server"}
        assert {k: v for k, v in a.headers.items() if k not in drop} == {
            k: v for k, v in b.headers.items() if k not in drop
        }
        body_a, body_b = a.json(), b.json()
        body_a.pop("decisionId", None)
        body_b.pop("decisionId", None)
        assert body_a == body_b


@pytest.mark.parametrize(
    ("header", "value", "says"),
    [
        ("x-canary-weight", "abc", "must be an integer"),
        ("x-canary-weight", "150", "at most 100"),
        ("x-canary-weight", "-1", "at least 0"),
        ("x-canary-weight", "nan", "finite"),
        ("x-user-id", "u" * 300, "at most 256"),
        ("x-region", "c\tn", "a control character (U+0009)"),
    ],
)
def test_malformed_header_is_a_400_naming_it(
    http: httpx.Client, header: str, value: str, says: str
) -> None:
    """A malformed mapped header is a 400 problem+json whose detail names the header."""
    for method, path in (("GET", "/v1/decide/"), ("POST", "/v1/route/")):
        response = http.request(method, path + CANARY_ROUTER, headers={header: value})
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert header in problem["detail"]
        assert says in problem["detail"]
        assert problem["source"] == header
        assert problem["status"] == 400


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"context": 5}', "body.context must be a JSON object"),
        (b'{"context": {"$flagd": {"x": 1}}}', "reserved"),
        (b'{"context": {"deep": {"a": {"b": {"c": {"d": 1}}}}}}', "body.context.deep"),
    ],
)
def test_malformed_route_body_is_a_400(http: httpx.Client, body: bytes, says: str) -> None:
    """A bad JSON body on POST /v1/route is a 400 problem naming what is wrong."""
    response = http.post(
        f"/v1/route/{REGION_ROUTER}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert says in response.json()["detail"]


def test_missing_targeting_key_gets_the_default_variant(http: httpx.Client) -> None:
    """With no x-user-id, hash bucketing cannot run: the flag's default variant serves."""
    response = http.get(f"/v1/decide/{AB_TEST_ROUTER}")
    assert response.status_code == 200
    assert response.headers["x-route-variant"] == "model-a"
    assert response.headers["x-route-reason"] == "DEFAULT"


def test_unknown_flag_is_404_and_non_routing_flag_is_422(http: httpx.Client) -> None:
    """Unknown flags answer 404 and flags whose variants name no backend answer 422."""
    for path in ("/v1/decide/no-such-flag", "/v1/route/no-such-flag"):
        method = "GET" if "decide" in path else "POST"
        missing = http.request(method, path)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert "no-such-flag" in missing.json()["detail"]
    not_routing = http.get("/v1/decide/greeting")
    assert not_routing.status_code == 422
    assert "not a routing flag" in not_routing.json()["detail"]


def test_pinned_version_header_selects_that_version(http: httpx.Client) -> None:
    """x-canary-version pins a tester to a version; unknown versions get the default."""
    for version in ("v1", "v2", "v3"):
        response = http.get(
            f"/v1/decide/{PINNED_ROUTER}",
            headers={"x-canary-version": version, "x-user-id": "tester", **TESTER},
        )
        assert response.headers["x-route-variant"] == version
        assert response.headers["x-route-tester"] == "qa"
    unknown = http.get(f"/v1/decide/{PINNED_ROUTER}", headers={"x-canary-version": "v9", **TESTER})
    assert unknown.headers["x-route-variant"] == "v1"


def test_ops_add_a_backend_by_editing_flags_only(http: httpx.Client, flags_dir: Path) -> None:
    """A new backend written to the flag directory serves traffic without a restart."""
    write_flags(
        flags_dir,
        "new.flagd.json",
        {
            "summarizer-router": {
                "state": "ENABLED",
                "variants": {
                    "small": {"backend": "sum-small", "url": "http://127.0.0.1:9201"},
                    "large": {"backend": "sum-large", "url": "http://127.0.0.1:9202"},
                },
                "defaultVariant": "small",
                "targeting": {"if": [{"==": [{"var": "tenant"}, "acme"]}, "large", "small"]},
            }
        },
    )
    deadline = time.monotonic() + 5
    while True:
        response = http.get("/v1/decide/summarizer-router", headers={"x-tenant-id": "acme"})
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert response.status_code == 200
    assert response.headers["x-route-upstream"] == "http://127.0.0.1:9202"


def test_health_readiness_and_metrics(http: httpx.Client) -> None:
    """/healthz is up, /readyz reports the flag set, /metrics counts decisions per variant."""
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["flagSetVersion"] >= 1
    for _ in range(3):
        http.get(f"/v1/decide/{REGION_ROUTER}", headers={"x-region": "cn"})
    http.get(f"/v1/decide/{REGION_ROUTER}", headers={"x-canary-weight": "oops"})
    text = http.get("/metrics").text
    assert (
        'control_plane_decisions_total{flag="region-router",reason="TARGETING_MATCH",'
        'variant="cn"} 3.0'
    ) in text
    assert "control_plane_decision_seconds_bucket" in text
    assert 'control_plane_bad_requests_total{source="x-canary-weight"} 1.0' in text


def test_not_ready_until_flags_are_valid(tmp_path: Path) -> None:
    """With an invalid flag directory the service is live but not ready, and says why."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.flagd.json").write_text("{ this is not json")
    with (
        ServerThread(create_app(make_settings(broken, tmp_path))) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert "bad.flagd.json" in ready.json()["detail"]
        decide = http.get(f"/v1/decide/{REGION_ROUTER}")
        assert decide.status_code == 503
        assert decide.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("fast_decide", [True, False])
def test_gateway_token_guards_the_routing_api(
    flags_dir: Path, tmp_path: Path, fast_decide: bool
) -> None:
    """With a gateway token set, routing calls without it are 401 problems; with it, 200."""
    token = "gateway-secret-0123456789"
    settings = make_settings(flags_dir, tmp_path, gateway_tokens=token, fast_decide=fast_decide)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as http:
        for method, path in (
            ("GET", f"/v1/decide/{REGION_ROUTER}"),
            ("POST", f"/v1/route/{REGION_ROUTER}"),
            ("POST", f"/ofrep/v1/evaluate/flags/{REGION_ROUTER}"),
        ):
            for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}):
                refused = http.request(method, path, headers=headers, json={"context": {}})
                assert refused.status_code == 401, path
                # OFREP answers its spec's 401 body ({"errorDetails"}); the rest problem+json.
                expected = (
                    "application/json" if path.startswith("/ofrep/") else "application/problem+json"
                )
                assert refused.headers["content-type"] == expected, path
                assert refused.headers["www-authenticate"] == "Bearer"
                assert token not in refused.text
            allowed = http.request(
                method, path, json={"context": {}}, headers={"authorization": f"Bearer {token}"}
            )
            assert allowed.status_code == 200, (path, allowed.text)
        assert http.get("/healthz").status_code == 200  # probes need no token
