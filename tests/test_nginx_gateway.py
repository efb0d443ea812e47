"""End to end through a real nginx: auth_request asks the control plane, proxy_pass follows it,
and the routing attributes come from the gateway, never from the client (trust boundary).

Runs Debian's nginx (installed by .ci/run) with the shipped configuration, rendered by
control_plane.gateway, in front of real backend servers and a real control plane.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from gateway_support import Nginx, gateway_user_id, needs_nginx
from servers import BackendApp, ServerThread

from control_plane.http.app import create_app
from control_plane.routing.tester_tokens import TesterTokens
from control_plane.settings import Settings

pytestmark = needs_nginx
FLAG = "gateway-ab"
STEER = "steer-router"
#: Everything a client could send to pick its own route: all of it is the gateway's to set.
FORGED = {
    "x-canary-weight": "100",
    "x-canary-version": "canary",
    "x-user-id": "attacker",
    "x-region": "cn",
    "x-ab-test-id": "b",
    "x-tenant-id": "acme",
}


@dataclass
class Gateway:
    nginx_url: str
    control_plane_url: str
    apps: dict[str, BackendApp]


def _flags(a_url: str, b_url: str) -> dict[str, Any]:
    return {
        FLAG: {
            "state": "ENABLED",
            "variants": {
                "a": {"backend": "model-a", "url": a_url},
                "b": {"backend": "model-b", "url": b_url},
            },
            "defaultVariant": "a",
            "targeting": {"fractional": [["a", 50], ["b", 50]]},
        },
        # Every way a request could be steered to the canary: a pinned version, a region, a
        # per-request weight; otherwise 10% of users.
        STEER: {
            "state": "ENABLED",
            "variants": {
                "stable": {"backend": "model-a", "url": a_url},
                "canary": {"backend": "model-b", "url": b_url},
            },
            "defaultVariant": "stable",
            "targeting": {
                "if": [
                    {"==": [{"var": "canary-version"}, "canary"]},
                    "canary",
                    {"==": [{"var": "user-region"}, "cn"]},
                    "canary",
                    {"==": [{"var": "tenant"}, "acme"]},
                    "canary",
                    {"missing": ["canary-weight"]},
                    {"fractional": [["canary", 10], ["stable", 90]]},
                    {
                        "fractional": [
                            ["canary", {"var": "canary-weight"}],
                            ["stable", {"-": [100, {"var": "canary-weight"}]}],
                        ]
                    },
                ]
            },
        },
    }


@pytest.fixture
def gateway(request: pytest.FixtureRequest, tmp_path: Path, flags_dir: Path) -> Iterator[Gateway]:
    flag = getattr(request, "param", FLAG)
    apps = {"model-a": BackendApp("model-a"), "model-b": BackendApp("model-b")}
    with ServerThread(apps["model-a"]) as a, ServerThread(apps["model-b"]) as b:
        write_flags(flags_dir, "gateway.flagd.json", _flags(a.url, b.url))
        settings = Settings(
            flags_dir=flags_dir,
            database_url=f"sqlite:///{tmp_path / 'cp.db'}",
            sync_port=0,
            exposure_spill_dir=tmp_path / "spill",
        )
        with (
            ServerThread(create_app(settings)) as control_plane,
            Nginx(
                tmp_path / "nginx",
                control_plane=f"127.0.0.1:{control_plane.port}",
                flag=flag,
                stable_variant="a" if flag == FLAG else "stable",
                stable_url=a.url,
            ),
        ):
            yield Gateway(f"http://127.0.0.1:{_nginx_port(tmp_path)}", control_plane.url, apps)


def _nginx_port(tmp_path: Path) -> int:
    conf = (tmp_path / "nginx" / "nginx.conf").read_text()
    return int(conf.split("listen 127.0.0.1:", 1)[1].split(";", 1)[0])


def _decide(control_plane: httpx.Client, flag: str, user: str) -> str:
    """The variant the control plane gives `user` when asked directly, with nothing forged."""
    response = control_plane.get(f"/v1/decide/{flag}", headers={"x-user-id": user})
    return response.headers["x-route-variant"]


def test_requests_through_nginx_land_where_the_flags_say(gateway: Gateway) -> None:
    """Each user (a gateway cookie) lands on the backend the decision names, every time."""
    landed: dict[str, set[str]] = {}
    expected: dict[str, set[str]] = {}
    with (
        httpx.Client(base_url=gateway.nginx_url, timeout=10) as client,
        httpx.Client(base_url=gateway.control_plane_url, timeout=10) as control_plane,
    ):
        for _ in range(60):
            client.cookies.clear()  # a new user: the gateway issues a new cookie
            for _ in range(2):
                response = client.post("/v1/chat?q=1", content=b'{"prompt": "hi"}')
                assert response.status_code == 200, response.text
                seen = response.json()
                assert (seen["path"], seen["query"]) == ("/v1/chat", "q=1")
                assert seen["body"] == '{"prompt": "hi"}'
                assert seen["headers"]["x-route-variant"] == response.headers["x-route-variant"]
                user = gateway_user_id(client)
                assert seen["headers"]["x-user-id"] == user
                landed.setdefault(user, set()).add(seen["backend"])
            variant = _decide(control_plane, FLAG, user)
            expected[user] = {"model-a" if variant == "a" else "model-b"}
    assert len(landed) == 60
    assert landed == expected
    assert {backend for backends in landed.values() for backend in backends} == {
        "model-a",
        "model-b",
    }
    proxied = [
        seen for app in gateway.apps.values() for seen in app.requests if seen["path"] == "/v1/chat"
    ]
    assert len(proxied) == 2 * 60


def test_nginx_follows_a_flag_edit_without_reload(gateway: Gateway, flags_dir: Path) -> None:
    """Ops move all traffic to model-b by editing the flag file; nginx is not touched."""
    flags = json.loads((flags_dir / "gateway.flagd.json").read_text())["flags"]
    flags[FLAG]["targeting"] = {"fractional": [["a", 0], ["b", 100]]}
    write_flags(flags_dir, "gateway.flagd.json", flags)
    deadline = time.monotonic() + 5
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            backends = {client.get(f"{gateway.nginx_url}/x").json()["backend"] for _ in range(20)}
            client.cookies.clear()
            if backends == {"model-b"}:
                break
            time.sleep(0.1)
    assert backends == {"model-b"}


@pytest.mark.parametrize("gateway", [STEER], indirect=True)
def test_clients_cannot_steer_themselves_to_the_canary(gateway: Gateway) -> None:
    """100 users forging x-canary-weight: 100, a pinned version, a user id, a region and a
    tenant land on the canary only as the flag's 10% split puts them, each exactly where the
    control plane places that user's gateway identity with nothing forged."""
    landed: dict[str, set[str]] = {}
    expected: dict[str, set[str]] = {}
    with (
        httpx.Client(base_url=gateway.nginx_url, timeout=10) as client,
        httpx.Client(base_url=gateway.control_plane_url, timeout=10) as control_plane,
    ):
        for _ in range(100):
            client.cookies.clear()  # a new user
            for _ in range(2):  # first visit (cookie issued), then with the cookie
                response = client.get("/v1/chat", headers=FORGED)
                assert response.status_code == 200, response.text
                seen = response.json()
                user = gateway_user_id(client)
                landed.setdefault(user, set()).add(response.headers["x-route-variant"])
                # Backends see the gateway's attributes too, never the forged ones.
                assert seen["headers"]["x-user-id"] == user
                for name in (
                    "x-canary-weight",
                    "x-canary-version",
                    "x-region",
                    "x-ab-test-id",
                    "x-tenant-id",
                ):
                    assert name not in seen["headers"]
            expected[user] = {_decide(control_plane, STEER, user)}
    assert len(landed) == 100
    assert landed == expected
    canary = sum(1 for variants in landed.values() if variants == {"canary"})
    assert canary < 30, f"{canary} of 100 forging users reached the canary (split: 10%)"
    print(f"\n{canary} of 100 users forging x-canary-weight: 100 (and pins) reached the canary")


class DecisionSpy:
    """A stand-in decision endpoint that records the headers nginx's subrequest carries."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await BackendApp("spy")(scope, receive, send)
            return
        self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"x-route-upstream", self.upstream.encode()),
                    (b"x-route-variant", b"a"),
                    (b"x-route-backend", b"model-a"),
                    (b"x-route-decision-id", b"spy1"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def test_the_decision_sees_only_the_headers_the_gateway_sets(tmp_path: Path) -> None:
    """The decision subrequest carries the gateway's values (its own token, its user id),
    the tester token and pin unchanged, and nothing else the client sent."""
    token = "gateway-token-0123456789abcdef"
    backend = BackendApp("model-a")
    with ServerThread(backend) as a:
        spy = DecisionSpy(a.url)
        with (
            ServerThread(spy) as spy_server,
            Nginx(
                tmp_path / "nginx",
                control_plane=f"127.0.0.1:{spy_server.port}",
                flag=FLAG,
                stable_variant="a",
                stable_url=a.url,
                gateway_token=token,
            ) as nginx,
            httpx.Client(base_url=nginx.url, timeout=10) as client,
        ):
            client.get("/v1/chat")  # first visit: the gateway issues its cookie
            response = client.get(
                "/v1/chat",
                headers={
                    **FORGED,
                    "authorization": "Bearer client-chosen",
                    "x-other": "1",
                    "x-tester-token": "tester.token.value",
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                },
            )
            assert response.status_code == 200, response.text
            user = gateway_user_id(client)
    decision = spy.seen[-1]
    assert decision.pop("authorization") == f"Bearer {token}"
    assert decision.pop("x-user-id") == user
    assert decision.pop("x-tester-token") == "tester.token.value"
    # A pin goes to the decision as sent: the control plane honours it only with a valid token.
    assert decision.pop("x-canary-version") == "canary"
    assert decision.pop("traceparent").startswith("00-0af7651916cd43dd")
    assert set(decision) == {"host"}  # nothing else the client sent reaches the decision
    assert backend.requests[-1]["headers"]["x-user-id"] == user
    assert "x-tester-token" not in backend.requests[-1]["headers"]
    assert "x-canary-version" not in backend.requests[-1]["headers"]


def test_a_tester_pins_a_version_through_nginx_only_with_a_valid_token(
    tmp_path: Path, flags_dir: Path
) -> None:
    """x-canary-version reaches the decision with the tester's x-tester-token: with a token
    the control plane signed, every request is pinned to the canary; with a forged one, or
    none, the pin is ignored and users land by the split."""
    key = "tester-token-key-0123456789abcdef0123"
    token, _ = TesterTokens(key).issue("alice", ttl_seconds=600)
    stable, canary = BackendApp("model-a"), BackendApp("model-b")
    with ServerThread(stable) as a, ServerThread(canary) as b:
        write_flags(flags_dir, "gateway.flagd.json", _flags(a.url, b.url))
        settings = Settings(
            flags_dir=flags_dir,
            database_url=f"sqlite:///{tmp_path / 'cp.db'}",
            sync_port=0,
            exposure_spill_dir=tmp_path / "spill",
            tester_token_key=key,
        )
        with (
            ServerThread(create_app(settings)) as plane,
            Nginx(
                tmp_path / "nginx",
                control_plane=f"127.0.0.1:{plane.port}",
                flag=STEER,
                stable_variant="stable",
                stable_url=a.url,
            ) as nginx,
            httpx.Client(base_url=nginx.url, timeout=10) as client,
        ):
            variants: dict[str, list[str]] = {"valid": [], "forged": []}
            for _ in range(40):
                for kind, value in (("valid", token), ("forged", token[:-2] + "xx")):
                    client.cookies.clear()
                    response = client.get(
                        "/v1/chat", headers={"x-canary-version": "canary", "x-tester-token": value}
                    )
                    assert response.status_code == 200, response.text
                    assert "x-canary-version" not in response.json()["headers"]
                    variants[kind].append(response.headers["x-route-variant"])
    assert set(variants["valid"]) == {"canary"}
    assert variants["forged"].count("canary") < 20  # the 10% split, not the pin
