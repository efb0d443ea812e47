"""The dispatch proxy against real backend servers: forwarding, streaming, and fallback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import write_flags
from servers import BackendApp, ServerThread, free_port

from control_plane.http.app import create_app
from control_plane.settings import Settings

FLAG = "chat-router"


@pytest.fixture
def backends() -> Iterator[dict[str, tuple[BackendApp, ServerThread]]]:
    stable, canary = BackendApp("stable"), BackendApp("canary")
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        yield {"stable": (stable, stable_server), "canary": (canary, canary_server)}


def routing_flag(stable_url: str, canary_url: str) -> dict[str, object]:
    return {
        FLAG: {
            "state": "ENABLED",
            "metadata": {"experiment": True},
            "variants": {
                "stable": {"backend": "chat-v1", "url": stable_url},
                "canary": {"backend": "chat-v2", "url": canary_url},
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


@pytest.fixture
def proxy(
    flags_dir: Path, tmp_path: Path, backends: dict[str, tuple[BackendApp, ServerThread]]
) -> Iterator[httpx.Client]:
    write_flags(
        flags_dir,
        "chat.flagd.json",
        routing_flag(backends["stable"][1].url, backends["canary"][1].url),
    )
    settings = Settings(
        flags_dir=flags_dir,
        database_url=f"sqlite:///{tmp_path / 'cp.db'}",
        sync_port=0,
        reload_interval=0.05,
        dispatch_timeout=1.0,
    )
    with (
        ServerThread(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield client


CANARY = {"x-user-id": "u1", "x-canary-weight": "100"}
STABLE = {"x-user-id": "u1", "x-canary-weight": "0"}


def test_request_is_forwarded_with_method_path_query_and_body(
    proxy: httpx.Client, backends: dict[str, tuple[BackendApp, ServerThread]]
) -> None:
    """Method, path, query, body and end-to-end headers reach the chosen backend."""
    response = proxy.put(
        f"/v1/dispatch/{FLAG}/v1/chat/completions?stream=false&x=1",
        headers={**CANARY, "x-custom": "kept", "content-type": "text/plain"},
        content=b"hello backend",
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["backend"] == "canary"
    assert (seen["method"], seen["path"], seen["query"]) == (
        "PUT",
        "/v1/chat/completions",
        "stream=false&x=1",
    )
    assert seen["body"] == "hello backend"
    assert seen["headers"]["x-custom"] == "kept"
    assert seen["headers"]["x-route-variant"] == "canary"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert response.headers["x-route-variant"] == "canary"
    assert "x-route-fallback" not in response.headers


def test_hop_by_hop_headers_are_dropped_and_repeated_headers_kept(proxy: httpx.Client) -> None:
    """Connection-specific headers stop at the proxy; repeated response headers survive."""
    response = proxy.get(
        f"/v1/dispatch/{FLAG}/x",
        headers={
            **STABLE,
            "connection": "keep-alive, x-secret-hop",
            "x-secret-hop": "1",
            "proxy-authorization": "Basic abc",
            "te": "trailers",
        },
    )
    seen = response.json()["headers"]
    for header in ("x-secret-hop", "proxy-authorization", "te"):
        assert header not in seen
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["x-backend"] == "stable"


def test_response_body_is_streamed_through(proxy: httpx.Client) -> None:
    """A chunked backend response arrives intact, chunk by chunk."""
    with proxy.stream("GET", f"/v1/dispatch/{FLAG}/generate/stream", headers=CANARY) as resp:
        chunks = list(resp.iter_lines())
    assert chunks == [f"chunk{index}" for index in range(5)]


@pytest.mark.parametrize("failure", ["error", "slow", "refused"])
def test_failing_canary_falls_back_to_the_default_variant(
    failure: str,
    flags_dir: Path,
    proxy: httpx.Client,
    backends: dict[str, tuple[BackendApp, ServerThread]],
) -> None:
    """A canary that answers 5xx, times out or refuses is retried once on the default."""
    canary, _ = backends["canary"]
    if failure == "refused":
        dead = f"http://127.0.0.1:{free_port()}"
        write_flags(flags_dir, "chat.flagd.json", routing_flag(backends["stable"][1].url, dead))
        _wait_for_upstream(proxy, dead)
    else:
        canary.behaviour, canary.delay = failure, 3.0
    response = proxy.post(f"/v1/dispatch/{FLAG}/infer", headers=CANARY, content=b"payload")
    assert response.status_code == 200
    assert response.json()["backend"] == "stable"
    assert response.json()["body"] == "payload"
    assert response.headers["x-route-variant"] == "stable"
    cause = {"error": "status-503", "slow": "timeout", "refused": "refused"}[failure]
    assert response.headers["x-route-fallback"] == f"canary; cause={cause}"
    metrics = proxy.get("/metrics").text
    assert (
        f'control_plane_dispatch_fallbacks_total{{cause="{cause}",flag="{FLAG}",'
        f'from_variant="canary"}} 1.0'
    ) in metrics


def test_default_variant_failure_is_passed_through_or_502(
    proxy: httpx.Client, flags_dir: Path, backends: dict[str, tuple[BackendApp, ServerThread]]
) -> None:
    """The default variant is not retried: its 5xx passes through; no answer is a 502."""
    stable, _ = backends["stable"]
    stable.behaviour = "error"
    response = proxy.get(f"/v1/dispatch/{FLAG}/x", headers=STABLE)
    assert response.status_code == 503
    assert "x-route-fallback" not in response.headers
    dead = f"http://127.0.0.1:{free_port()}"
    write_flags(flags_dir, "chat.flagd.json", routing_flag(dead, backends["canary"][1].url))
    _wait_for_upstream(proxy, dead)
    response = proxy.get(f"/v1/dispatch/{FLAG}/x", headers=STABLE)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert "chat-v1" in response.json()["detail"]


def test_dispatch_to_unknown_flag_is_404(proxy: httpx.Client) -> None:
    """Dispatching through a flag that does not exist is a 404 problem, not a 500."""
    response = proxy.get("/v1/dispatch/nope/x")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def _wait_for_upstream(client: httpx.Client, url: str) -> None:
    """Wait until the hot reload of a flag edit is serving `url` for some variant."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for headers in (STABLE, CANARY):
            if (
                client.get(f"/v1/decide/{FLAG}", headers=headers).headers.get("x-route-upstream")
                == url
            ):
                return
        time.sleep(0.05)
    raise AssertionError(f"flag edit pointing at {url} never became live")
