"""Trust boundaries of the HTTP side against a real server: what the dispatch proxy forwards,
which paths it lets through, what redirects echo, both backends down, and /metrics access."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from servers import BackendApp, ServerThread, free_port

from control_plane.http.app import create_app
from control_plane.settings import Settings

FLAG = "tenant-router"
GATEWAY = "gateway-secret-0123456789"
ADMIN = "admin-secret-0123456789ab"
VIEWER = "viewer-secret-0123456789a"
CANARY = {"x-user-id": "u1", "x-canary-weight": "100"}
STABLE = {"x-user-id": "u1", "x-canary-weight": "0"}


def _flag(stable_url: str, canary_url: str) -> dict[str, Any]:
    return {
        FLAG: {
            "state": "ENABLED",
            "variants": {
                "stable": {"backend": "tenant-a-v1", "url": stable_url},
                "canary": {"backend": "tenant-a-v2", "url": canary_url},
            },
            "defaultVariant": "stable",
            "targeting": {
                "fractional": [
                    ["canary", {"var": "canary-weight"}],
                    ["stable", {"-": [100, {"var": "canary-weight"}]}],
                ]
            },
        }
    }


class Served:
    """One control plane on loopback in front of one backend under a path prefix."""

    def __init__(self, server: ServerThread, backend: BackendApp) -> None:
        self.server = server
        self.backend = backend
        self.client = httpx.Client(base_url=server.url, timeout=10)

    def raw(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send `target` byte for byte (httpx would resolve the dot segments itself)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            connection.request(method, target, headers=headers or {})
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()


def _serve(
    flags_dir: Path, tmp_path: Path, stable_url: str, canary_url: str, **settings: Any
) -> ServerThread:
    write_flags(flags_dir, "tenant.flagd.json", _flag(stable_url, canary_url))
    return ServerThread(
        create_app(
            Settings(
                flags_dir=flags_dir,
                database_url=f"sqlite:///{tmp_path / 'cp.db'}",
                sync_port=0,
                dispatch_timeout=2.0,
                **settings,
            )
        )
    )


@pytest.fixture
def backend() -> Iterator[tuple[BackendApp, ServerThread]]:
    app = BackendApp("tenant-a")
    with ServerThread(app) as server:
        yield app, server


@pytest.fixture
def served(
    flags_dir: Path,
    tmp_path: Path,
    backend: tuple[BackendApp, ServerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    """Gateway token and admin tokens configured; uvicorn trusts no proxy on loopback, so the
    peer address is the real one and only our stripping decides what a client header does."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "192.0.2.1")
    app, server = backend
    prefixed = f"{server.url}/tenant-a/api"
    with _serve(
        flags_dir,
        tmp_path,
        prefixed,
        prefixed,
        gateway_tokens=[GATEWAY],
        admin_tokens=[f"ops:admin:{ADMIN}", f"scraper:viewer:{VIEWER}"],
    ) as proxy:
        served = Served(proxy, app)
        yield served
        served.client.close()


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_credentials_and_client_forwarding_headers_do_not_reach_the_backend(served: Served) -> None:
    """The gateway token, cookies, proxy credentials and client-set Forwarded/X-Forwarded-*/
    X-Real-IP stop at the proxy; X-Forwarded-For/-Host/-Proto come from this hop."""
    response = served.client.get(
        f"/v1/dispatch/{FLAG}/v1/chat",
        headers={
            **STABLE,
            **_auth(GATEWAY),
            "cookie": "session=admin-console",
            "proxy-authorization": "Basic Zm9vOmJhcg==",
            "x-forwarded-host": "evil.example",
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "gopher",
            "x-forwarded-prefix": "/admin",
            "forwarded": "for=6.6.6.6;host=evil.example",
            "x-real-ip": "6.6.6.6",
            "x-custom": "kept",
            "host": "gw.example",
        },
    )
    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    for header in (
        "authorization",
        "cookie",
        "proxy-authorization",
        "forwarded",
        "x-real-ip",
        "x-forwarded-prefix",
    ):
        assert header not in seen, header
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == "gw.example"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-custom"] == "kept"
    assert GATEWAY not in str(seen)


def test_own_tokens_are_never_forwarded_even_when_authorization_is_allowed(
    flags_dir: Path, tmp_path: Path, backend: tuple[BackendApp, ServerThread]
) -> None:
    """With "authorization" taken off the strip list (no gateway token), an end user's own
    Authorization reaches the backend, but an admin token or a generated cpt_ token never."""
    _, server = backend
    with (
        _serve(
            flags_dir,
            tmp_path,
            server.url,
            server.url,
            dispatch_strip_headers="cookie,x-forwarded-*",
            admin_tokens=[f"ops:admin:{ADMIN}"],
        ) as proxy,
        httpx.Client(base_url=proxy.url, timeout=10) as client,
    ):

        def forwarded(authorization: str) -> str | None:
            response = client.get(
                f"/v1/dispatch/{FLAG}/x", headers={**STABLE, "authorization": authorization}
            )
            value: str | None = response.json()["headers"].get("authorization")
            return value

        assert forwarded("Bearer user-key-for-the-model") == "Bearer user-key-for-the-model"
        assert forwarded(f"Bearer {ADMIN}") is None
        assert forwarded("Bearer cpt_someGeneratedTokenValue") is None


@pytest.mark.parametrize(
    "path",
    [
        "../../other",
        "x/../../other",
        "%2e%2e/%2E%2E/other",
        "%252e%252e/%252e%252e/other",
        "x%2f..%2f..%2f..%2fother",
        "..%5c..%5cother",
        "..;/..;/other",
    ],
)
def test_paths_that_leave_the_backend_prefix_are_a_400_naming_the_path(
    served: Served, path: str
) -> None:
    """`..` in any spelling (literal, %2e, double-encoded, across %2f or backslashes) that
    climbs above the backend URL's /tenant-a/api prefix is refused; nothing reaches the backend."""
    status, headers, body = served.raw(
        "GET", f"/v1/dispatch/{FLAG}/{path}", {**STABLE, **_auth(GATEWAY)}
    )
    assert status == 400, body
    assert headers["content-type"] == "application/problem+json"
    assert "leaves the backend URL's path prefix" in body.decode()
    assert served.backend.requests == []
    metrics = served.client.get("/metrics").text
    assert 'control_plane_bad_requests_total{source="path"}' in metrics


def test_dot_segments_inside_the_prefix_are_resolved(served: Served) -> None:
    """A path whose dot segments stay under the prefix is forwarded with them resolved, and a
    decoded '?' stays part of the path."""
    status, _, body = served.raw(
        "GET", f"/v1/dispatch/{FLAG}/v1/x/../chat/./a%3Fb?q=1", {**STABLE, **_auth(GATEWAY)}
    )
    assert status == 200, body
    seen = served.backend.requests[-1]
    assert (seen["path"], seen["query"]) == ("/tenant-a/api/v1/chat/a?b", "q=1")


def test_no_redirect_echoes_the_client_host(served: Served) -> None:
    """A trailing-slash mismatch is not redirected to the client's Host (no Location at all),
    and the dispatch root without a slash is served directly."""
    status, headers, _ = served.raw("GET", "/v1/flags/", {"host": "evil.example", **_auth(VIEWER)})
    assert status == 404
    assert "location" not in headers
    status, headers, body = served.raw(
        "GET", f"/v1/dispatch/{FLAG}", {"host": "evil.example", **STABLE, **_auth(GATEWAY)}
    )
    assert status == 200, body
    assert "location" not in headers
    assert served.backend.requests[-1]["path"] == "/tenant-a/api/"


def test_both_backends_down_is_a_502_problem_without_a_traceback(
    flags_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A canary user whose backend and the default backend both refuse gets one 502
    problem+json naming both; nothing is logged as an unhandled error."""
    canary, stable = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    with (
        caplog.at_level(logging.INFO),
        _serve(flags_dir, tmp_path, stable, canary) as proxy,
        httpx.Client(base_url=proxy.url, timeout=10) as client,
    ):
        response = client.post(f"/v1/dispatch/{FLAG}/infer", headers=CANARY, content=b"x")
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert "tenant-a-v2" in problem["detail"]
    assert "tenant-a-v1" in problem["detail"]
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


def test_metrics_are_open_by_default(served: Served) -> None:
    """Without metrics_require_auth, /metrics answers without a token."""
    assert served.client.get("/metrics").status_code == 200


def test_metrics_can_require_the_viewer_role(
    flags_dir: Path, tmp_path: Path, backend: tuple[BackendApp, ServerThread]
) -> None:
    """With metrics_require_auth, /metrics is 401 without a token, 401 with a gateway token,
    and 200 with a viewer (or higher) admin token; health probes stay open."""
    _, server = backend
    with (
        _serve(
            flags_dir,
            tmp_path,
            server.url,
            server.url,
            metrics_require_auth=True,
            gateway_tokens=[GATEWAY],
            admin_tokens=[f"scraper:viewer:{VIEWER}"],
        ) as proxy,
        httpx.Client(base_url=proxy.url, timeout=10) as client,
    ):
        anonymous = client.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert client.get("/metrics", headers=_auth(GATEWAY)).status_code == 401
        allowed = client.get("/metrics", headers=_auth(VIEWER))
        assert allowed.status_code == 200
        assert "control_plane_flag_set_version" in allowed.text
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
