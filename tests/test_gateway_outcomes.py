"""Outcomes from a real nginx: its JSON access log over UDP syslog reaches the control plane's
listener and is counted exactly like dispatch traffic (call samples per variant, errors,
latency, dispatch metrics); canaries step up or roll back on nginx-only traffic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from experiments_support import OPERATOR, VIEWER, make_settings, wait_for
from fastapi import FastAPI
from gateway_support import GatewayTraffic, Nginx, free_udp_port, needs_nginx
from servers import BackendApp, ServerThread

from control_plane.experiments import repository
from control_plane.http.app import create_app

pytestmark = needs_nginx
FLAG = "chat-router"


@dataclass
class Loop:
    nginx: Nginx
    plane_url: str
    app: FastAPI
    stable: BackendApp
    canary: BackendApp

    def sample(self, name: str, **labels: str) -> float:
        registry = self.app.state.components.metrics.registry
        return float(registry.get_sample_value(name, labels) or 0)

    def lines(self, result: str) -> float:
        return self.sample("control_plane_gateway_log_lines_total", result=result)

    def calls(self) -> dict[str, repository.CallWindow]:
        writer = self.app.state.components.experiments.writer
        assert writer.flush(timeout=15), "the writer did not flush"
        with self.app.state.components.database.session() as session:
            return repository.call_summary(session=session, flag=FLAG)


def _flag(
    stable_url: str, canary_url: str, targeting: Any, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        FLAG: {
            "state": "ENABLED",
            "defaultVariant": "stable",
            "metadata": metadata or {},
            "variants": {
                "stable": {"backend": "chat-v1", "url": stable_url},
                "canary": {"backend": "chat-v2", "url": canary_url},
            },
            "targeting": targeting,
        }
    }


@contextmanager
def closed_loop(
    tmp_path: Path,
    flags_dir: Path,
    *,
    canary_behaviour: str = "ok",
    targeting: Any = None,
    metadata: dict[str, Any] | None = None,
    extra_flags: dict[str, Any] | None = None,
    upstream: str | None = None,
) -> Iterator[Loop]:
    """Two backends, the control plane (outcome listener on) and nginx sending it its log."""
    stable, canary = BackendApp("chat-v1"), BackendApp("chat-v2", behaviour=canary_behaviour)
    log_port = free_udp_port()
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(
            flags_dir,
            "chat.flagd.json",
            {
                **_flag(
                    stable_server.url,
                    canary_server.url,
                    targeting or {"fractional": [["canary", 0], ["stable", 100]]},
                    metadata,
                ),
                **(extra_flags or {}),
            },
        )
        settings = make_settings(
            flags_dir, f"sqlite:///{tmp_path / 'cp.db'}", tmp_path, gateway_log_port=log_port
        )
        app = create_app(settings)
        with (
            ServerThread(app) as plane,
            Nginx(
                tmp_path / "nginx",
                control_plane=f"127.0.0.1:{plane.port}",
                flag=upstream or FLAG,
                stable_variant="stable",
                stable_url=stable_server.url,
                log_port=log_port,
            ) as nginx,
        ):
            yield Loop(nginx, plane.url, app, stable, canary)


def test_every_request_through_nginx_is_counted_per_variant(
    tmp_path: Path, flags_dir: Path
) -> None:
    """N requests through nginx on an experiment flag: N call samples, split per variant as
    the backends saw them, the canary's 503s counted as errors, every latency recorded, and
    the dispatch metrics count them too."""
    sent = 300
    with (
        closed_loop(
            tmp_path,
            flags_dir,
            canary_behaviour="error",
            targeting={"fractional": [["canary", 30], ["stable", 70]]},
            metadata={"experiment": True},
        ) as loop,
        httpx.Client(base_url=loop.nginx.url, timeout=10) as client,
    ):
        statuses: dict[int, int] = {}
        for _ in range(sent):
            client.cookies.clear()  # a new user each time
            status = client.get("/v1/chat").status_code
            statuses[status] = statuses.get(status, 0) + 1
        wait_for(
            lambda: loop.lines("accepted") == sent,
            timeout=15,
            what=f"{sent} accepted outcome lines",
        )
        calls = loop.calls()
        served = {"stable": len(loop.stable.requests), "canary": len(loop.canary.requests)}
        dispatched = {
            variant: loop.sample(
                "control_plane_dispatch_requests_total",
                flag=FLAG,
                variant=variant,
                status_class=status_class,
            )
            for variant, status_class in (("stable", "2xx"), ("canary", "5xx"))
        }
        latency_count = sum(
            loop.sample("control_plane_dispatch_seconds_count", flag=FLAG, variant=variant)
            for variant in ("stable", "canary")
        )
    assert statuses == {200: served["stable"], 503: served["canary"]}
    assert served["stable"] + served["canary"] == sent
    assert 0 < served["canary"] < sent
    assert {variant: window.calls for variant, window in calls.items()} == served
    assert (calls["stable"].errors, calls["canary"].errors) == (0, served["canary"])
    assert len(calls["stable"].latencies) == served["stable"]
    assert all(seconds >= 0 for seconds in calls["stable"].latencies)
    assert dispatched == {"stable": served["stable"], "canary": served["canary"]}
    assert latency_count == sent
    print(
        f"\nsent {sent} through nginx; counted {sum(w.calls for w in calls.values())} "
        f"call samples ({served}); canary errors {calls['canary'].errors}"
    )


def test_calls_nginx_sent_through_the_dispatch_proxy_are_counted_once(
    tmp_path: Path, flags_dir: Path
) -> None:
    """nginx routing to the control plane's /v1/dispatch: the dispatch proxy counts each
    call, and the gateway's line for it is skipped, so nothing is counted twice."""
    sent = 60
    with closed_loop(
        tmp_path,
        flags_dir,
        metadata={"experiment": True},
        targeting={"fractional": [["canary", 50], ["stable", 50]]},
    ) as loop:
        # The edge flag's only variant is the control plane itself, known once it runs.
        write_flags(
            flags_dir,
            "edge.flagd.json",
            {
                "edge": {
                    "state": "ENABLED",
                    "defaultVariant": "cp",
                    "variants": {"cp": {"backend": "control-plane", "url": loop.plane_url}},
                }
            },
        )
        wait_for(
            lambda: "edge" in loop.app.state.components.store.current.flags, what="the edge flag"
        )
        with (
            Nginx(
                tmp_path / "edge-nginx",
                control_plane=loop.plane_url.removeprefix("http://"),
                flag="edge",
                stable_variant="cp",
                stable_url=loop.plane_url,
                log_port=loop.app.state.components.settings.gateway_log_port,
            ) as edge,
            httpx.Client(base_url=edge.url, timeout=10) as client,
        ):
            for _ in range(sent):
                client.cookies.clear()
                response = client.get(f"/v1/dispatch/{FLAG}/v1/chat")
                assert response.status_code == 200, response.text
            # A line for each call, none counted: "dispatched", or "fallback" when the edge's
            # decision timed out under load and it went to the control plane's stable URL,
            # which is the same dispatch proxy.
            wait_for(
                lambda: loop.lines("dispatched") + loop.lines("fallback") == sent,
                timeout=15,
                what=f"{sent} dispatched or fallback lines",
            )
            calls = loop.calls()
    assert sum(window.calls for window in calls.values()) == sent
    assert loop.lines("accepted") == 0


def _start_canary(plane_url: str, **spec: Any) -> None:
    response = httpx.post(
        f"{plane_url}/v1/canaries/{FLAG}",
        json=spec,
        timeout=15,
        headers={"Authorization": f"Bearer {OPERATOR}"},
    )
    assert response.status_code == 201, response.text


def _canary(plane_url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{plane_url}/v1/canaries/{FLAG}", timeout=15, headers={"Authorization": f"Bearer {VIEWER}"}
    ).json()
    return body


def _finished(plane_url: str) -> dict[str, Any] | None:
    status = _canary(plane_url)
    return status if status["state"] in ("promoted", "rolled_back", "aborted") else None


@pytest.mark.parametrize(("behaviour", "outcome"), [("ok", "promoted"), ("error", "rolled_back")])
def test_a_canary_moves_on_nginx_only_traffic(
    tmp_path: Path, flags_dir: Path, behaviour: str, outcome: str
) -> None:
    """With traffic only through nginx, a healthy canary steps up to promotion and a canary
    answering 503 is rolled back in its first step."""
    with closed_loop(tmp_path, flags_dir, canary_behaviour=behaviour) as loop:
        _start_canary(
            loop.plane_url,
            steps=[20, 50, 100],
            intervalSeconds=0.5,
            minRequests=10,
            maxErrorRate=0.1,
            maxP99LatencyRatio=50,
            checks={"errorRate": {"minSamples": 100}},
        )
        with GatewayTraffic(loop.nginx.url, threads=3, limit=5000) as traffic:
            final = wait_for(
                lambda: _finished(loop.plane_url), timeout=60, what=f"the canary to be {outcome}"
            )
        served = len(loop.canary.requests)
    actions = [event["action"] for event in final["events"]]
    assert final["state"] == outcome, final
    if outcome == "promoted":
        assert actions.count("step") == 2
    else:
        assert "step" not in actions
        assert "canary error rate" in final["reason"]
    assert served > 0
    assert traffic.failures == [] or behaviour == "error"
    print(
        f"\ncanary {behaviour}: {final['state']} after {traffic.sent} requests through "
        f"nginx ({served} to the canary); events {actions}"
    )
