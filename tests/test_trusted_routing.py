"""Who may steer a request, checked on the real `control-plane serve`.

Pins (`x-canary-version`) need a tester token issued by the CLI or the admin API; without a valid
one the pin is ignored and the answer says why. Envoy's ext_authz requests (any method, the
original path appended) get the same decision as nginx's. Anonymous requests get the default,
are not experiment units, and log nothing above DEBUG.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import copy_shipped_flags
from serve_process import CLI, ServeProcess

from control_plane.routing.tester_tokens import TesterTokens
from flags import AB_TEST_ROUTER, CANARY_ROUTER, PINNED_ROUTER

KEY = "tester-token-key-for-trusted-routing-tests"
OPERATOR = "operator-token-for-trusted-routing-0001"
ADMIN = "admin-token-for-trusted-routing-000001"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("trusted")
    flags = copy_shipped_flags(workdir / "flags")
    env = {
        "CP_TESTER_TOKEN_KEY": KEY,
        "CP_ADMIN_TOKENS": f"ops:operator:{OPERATOR},root:admin:{ADMIN}",
        "CP_EXPOSURE_FLUSH_INTERVAL": "0.05",
    }
    with ServeProcess(flags, workdir, env=env, args=("--log-level", "info")) as process:
        yield process


@pytest.fixture
def http(server: ServeProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _pin(http: httpx.Client, version: str, **headers: str) -> httpx.Response:
    response = http.get(
        f"/v1/decide/{PINNED_ROUTER}",
        headers={"x-user-id": "tester-1", "x-canary-version": version, **headers},
    )
    assert response.status_code == 200, response.text
    return response


def test_a_pin_without_a_tester_token_is_ignored_and_the_answer_says_why(
    http: httpx.Client,
) -> None:
    """100 clients pinning v3 on their own all get the default v1, each told why."""
    for index in range(100):
        response = http.get(
            f"/v1/decide/{PINNED_ROUTER}",
            headers={"x-user-id": f"user-{index}", "x-canary-version": "v3"},
        )
        assert response.headers["x-route-variant"] == "v1"
        assert response.headers["x-route-ignored"] == "x-canary-version (no tester token)"
    body = http.post(
        f"/v1/route/{PINNED_ROUTER}",
        json={"context": {"targetingKey": "u", "canary-version": "v3"}},
    ).json()
    assert body["variant"] == "v1"
    assert body["ignored"] == ["body.context.canary-version (no tester token)"]


def test_a_token_from_the_cli_lets_a_tester_pin(http: httpx.Client) -> None:
    """`control-plane tester-token` prints a token the server honours for the pin."""
    issued = subprocess.run(
        [*CLI, "tester-token", "qa@example.com", "--ttl", "10m", "--flag", PINNED_ROUTER],
        env={**os.environ, "CP_TESTER_TOKEN_KEY": KEY},
        capture_output=True,
        text=True,
        check=True,
    )
    token = issued.stdout.strip()
    response = _pin(http, "v3", **{"x-tester-token": token})
    assert response.headers["x-route-variant"] == "v3"
    assert response.headers["x-route-tester"] == "qa@example.com"
    assert "x-route-ignored" not in response.headers


def test_the_cli_refuses_without_a_key_or_with_a_bad_ttl() -> None:
    """No key, or a TTL over seven days, is one message and exit status 2."""
    env = {k: v for k, v in os.environ.items() if k != "CP_TESTER_TOKEN_KEY"}
    no_key = subprocess.run(
        [*CLI, "tester-token", "qa"], env=env, capture_output=True, text=True, check=False
    )
    assert no_key.returncode == 2
    assert "CP_TESTER_TOKEN_KEY" in no_key.stderr
    too_long = subprocess.run(
        [*CLI, "tester-token", "qa", "--ttl", "8d"],
        env={**env, "CP_TESTER_TOKEN_KEY": KEY},
        capture_output=True,
        text=True,
        check=False,
    )
    assert too_long.returncode == 2
    assert "7 days" in too_long.stderr


def test_the_admin_api_issues_audited_tokens(http: httpx.Client) -> None:
    """An operator gets a token (201); the audit log names subject and flags, not the token."""
    issued = http.post(
        "/v1/tester-tokens",
        headers=AUTH,
        json={"subject": "alice", "ttlSeconds": 600, "flags": [PINNED_ROUTER]},
    )
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["header"] == "x-tester-token"
    assert _pin(http, "v2", **{"x-tester-token": body["token"]}).headers["x-route-variant"] == "v2"
    audit = http.get("/v1/audit", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    events = audit["items"]
    issue = next(event for event in events if event["action"] == "tester-token.issue")
    assert issue["target"] == "alice"
    assert issue["actor"] == "ops"
    assert body["token"] not in str(audit)


@pytest.mark.parametrize(
    ("body", "source"),
    [
        ({"subject": "bad subject"}, "body.subject"),
        ({"subject": "a", "ttlSeconds": 10**9}, "body.ttlSeconds"),
        ({"subject": "a", "flags": ["no-such-flag"]}, "body.flags"),
        ({"subject": "a", "extra": 1}, "body.extra"),
    ],
)
def test_bad_token_requests_are_400_naming_the_field(
    http: httpx.Client, body: dict[str, object], source: str
) -> None:
    response = http.post("/v1/tester-tokens", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["source"] == source


def test_issuing_needs_an_operator(http: httpx.Client) -> None:
    """Without a token the endpoint answers 401; tester tokens are no admin credential."""
    assert http.post("/v1/tester-tokens", json={"subject": "a"}).status_code == 401
    tester = TesterTokens(KEY).issue("a", ttl_seconds=60)[0]
    denied = http.post(
        "/v1/tester-tokens", json={"subject": "a"}, headers={"Authorization": f"Bearer {tester}"}
    )
    assert denied.status_code == 401


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (
            TesterTokens(KEY).issue("old", ttl_seconds=60, now=time.time() - 120)[0],
            "tester token expired",
        ),
        (
            TesterTokens("another-key-that-the-server-does-not-know").issue("x", ttl_seconds=86400)[
                0
            ],
            "tester token bad signature",
        ),
        (
            TesterTokens(KEY).issue("x", ttl_seconds=86400, flags=[CANARY_ROUTER])[0],
            "tester token not valid for this flag",
        ),
        ("tt1.garbage", "tester token bad signature"),
        ("not-a-token", "tester token not a tester token"),
    ],
)
def test_invalid_tester_tokens_leave_the_pin_ignored_with_the_reason(
    http: httpx.Client, token: str, why: str
) -> None:
    response = _pin(http, "v3", **{"x-tester-token": token})
    assert response.headers["x-route-variant"] == "v1"
    assert response.headers["x-route-ignored"] == f"x-canary-version ({why})"


# -- Envoy ext_authz ----------------------------------------------------------------------------

#: What Envoy's HTTP ext_authz filter adds to the headers it forwards (allowed_headers passes
#: the client's x-user-id); Content-Length is 0 when the body is not forwarded.
ENVOY_HEADERS = {
    "x-envoy-expected-rq-timeout-ms": "200",
    "x-forwarded-proto": "http",
    "x-request-id": "5e1c9a52-0f5b-4e2b-9c8b-3f0d3f6f8a01",
    "content-length": "0",
}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_envoy_ext_authz_requests_get_the_same_decision_as_nginx(
    http: httpx.Client, method: str
) -> None:
    """`<method> /v1/decide/<flag>/<original path>` answers 200 with the same X-Route-* headers."""
    for index in range(20):
        user = {"x-user-id": f"envoy-user-{index}"}
        nginx = http.get(f"/v1/decide/{CANARY_ROUTER}", headers=user)
        envoy = http.request(
            method,
            f"/v1/decide/{CANARY_ROUTER}/v1/chat/completions",
            params={"stream": "true"},
            headers={**user, **ENVOY_HEADERS},
        )
        assert envoy.status_code == 200, envoy.text
        for header in ("x-route-variant", "x-route-backend", "x-route-upstream"):
            assert envoy.headers[header] == nginx.headers[header]


def test_envoy_head_requests_have_headers_and_no_body(http: httpx.Client) -> None:
    response = http.head(f"/v1/decide/{CANARY_ROUTER}/models", headers={"x-user-id": "u"})
    assert response.status_code == 200
    assert response.headers["x-route-variant"]
    assert response.content == b""


def test_envoy_shaped_requests_work_without_the_fast_path(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The FastAPI routes answer the same Envoy requests when CP_FAST_DECIDE is off."""
    workdir = tmp_path_factory.mktemp("envoy-slow")
    flags = copy_shipped_flags(workdir / "flags")
    with (
        ServeProcess(flags, workdir, env={"CP_FAST_DECIDE": "false"}) as process,
        process.client() as client,
    ):
        response = client.post(
            f"/v1/decide/{CANARY_ROUTER}/v1/chat", headers={"x-user-id": "u1", **ENVOY_HEADERS}
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-route-variant"] in ("stable", "canary")


# -- anonymous traffic --------------------------------------------------------------------------


def test_anonymous_requests_are_not_experiment_units_and_log_no_errors(
    server: ServeProcess, http: httpx.Client
) -> None:
    """300 requests without x-user-id: default variant, reported apart, no ERROR lines."""
    log_size = server.stderr_path.stat().st_size
    for index in range(200):
        http.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": f"anon-test-{index}"})
    for _ in range(300):
        anonymous = http.get(f"/v1/decide/{AB_TEST_ROUTER}")
        assert anonymous.headers["x-route-variant"] == "model-a"  # the flag's default
    viewer = {"Authorization": f"Bearer {OPERATOR}"}
    deadline = time.monotonic() + 20
    while True:
        report = http.get(f"/v1/experiments/{AB_TEST_ROUTER}", headers=viewer).json()
        if report["units"] >= 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert report["anonymous"]["decisions"] == 300
    assert report["units"] == 200
    new_log = server.stderr_path.read_text()[log_size:]
    assert "No targetingKey" not in new_log
    assert "ERROR" not in new_log, new_log[-2000:]
    assert "WARNING" not in new_log, new_log[-2000:]
