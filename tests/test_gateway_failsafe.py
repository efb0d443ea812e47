"""Fail-safe routing through a real nginx in front of a real `control-plane serve` process:
when the control plane stops or hangs, the decision times out or is refused and the flag's
stable upstream serves, with X-Route-Fallback; no client request fails."""

from __future__ import annotations

import os
import signal
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import write_flags
from experiments_support import wait_for
from gateway_support import GatewayTraffic, Nginx, needs_nginx
from serve_process import ServeProcess
from servers import BackendApp, ServerThread

pytestmark = needs_nginx
FLAG = "chat-router"
TIMEOUT_MS = 200


@contextmanager
def gateway(
    tmp_path: Path, flags_dir: Path
) -> Iterator[tuple[ServeProcess, Nginx, BackendApp, BackendApp]]:
    stable, canary = BackendApp("chat-v1"), BackendApp("chat-v2")
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(
            flags_dir,
            "chat.flagd.json",
            {
                FLAG: {
                    "state": "ENABLED",
                    "defaultVariant": "stable",
                    "variants": {
                        "stable": {"backend": "chat-v1", "url": stable_server.url},
                        "canary": {"backend": "chat-v2", "url": canary_server.url},
                    },
                    "targeting": {"fractional": [["canary", 50], ["stable", 50]]},
                }
            },
        )
        workdir = tmp_path / "serve"
        workdir.mkdir()
        with (
            ServeProcess(flags_dir, workdir) as serve,
            Nginx(
                tmp_path / "nginx",
                control_plane=f"127.0.0.1:{serve.port}",
                flag=FLAG,
                stable_variant="stable",
                stable_url=stable_server.url,
                decision_timeout_ms=TIMEOUT_MS,
            ) as nginx,
        ):
            yield serve, nginx, stable, canary


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"median {statistics.median(ordered) * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


def test_stopping_the_control_plane_mid_run_fails_no_request(
    tmp_path: Path, flags_dir: Path
) -> None:
    """Closed-loop load through nginx; `control-plane serve` is terminated mid-run: 0 client
    requests fail, and from then on every response carries X-Route-Fallback and comes from
    the stable backend."""
    with gateway(tmp_path, flags_dir) as (serve, nginx, _stable, canary):
        assert serve.process is not None
        with GatewayTraffic(nginx.url, threads=4, limit=4000) as traffic:
            wait_for(lambda: traffic.snapshot()[0] >= 300, timeout=30, what="300 requests")
            routed_before, fallbacks_before = traffic.snapshot()
            serve.process.terminate()
            serve.process.wait(timeout=15)
            stopped_at = traffic.snapshot()[0]
            wait_for(
                lambda: traffic.snapshot()[1] >= 300, timeout=30, what="300 fallback responses"
            )
        canary_calls = len(canary.requests)
        with httpx.Client(base_url=nginx.url, timeout=10) as client:
            after = [client.post("/v1/chat", content=b"hello") for _ in range(20)]
    assert traffic.failures == [], traffic.failures[:5]
    assert fallbacks_before == 0
    assert canary_calls > 0  # the split was live before the stop
    for response in after:
        assert response.status_code == 200
        assert response.headers["x-route-fallback"].startswith("decision; cause=status-")
        assert response.headers["x-route-variant"] == "stable"
        assert response.json()["backend"] == "chat-v1"
        assert response.json()["body"] == "hello"  # the body survives the fallback
        assert response.json()["headers"]["x-route-fallback"].startswith("decision")
    print(
        f"\nstop mid-run: {traffic.sent} requests ({routed_before} before the stop, stopped "
        f"at {stopped_at}), {len(traffic.failures)} failed, {traffic.fallbacks} fallbacks; "
        f"routed {_ms(traffic.routed_seconds)}; fallback {_ms(traffic.fallback_seconds)}"
    )


def test_a_hung_control_plane_costs_one_decision_timeout(tmp_path: Path, flags_dir: Path) -> None:
    """A control plane that accepts connections but never answers (SIGSTOP): each request
    falls back after the decision timeout (cause status-504), none fails; resumed
    (SIGCONT), decisions route again."""
    with (
        gateway(tmp_path, flags_dir) as (serve, nginx, _, _),
        httpx.Client(base_url=nginx.url, timeout=10) as client,
    ):
        assert "x-route-fallback" not in client.get("/v1/chat").headers
        os.kill(serve.pid, signal.SIGSTOP)
        try:
            hung = []
            for _ in range(10):
                client.cookies.clear()
                hung.append(client.get("/v1/chat"))
        finally:
            os.kill(serve.pid, signal.SIGCONT)
        assert [response.status_code for response in hung] == [200] * 10
        causes = {response.headers["x-route-fallback"] for response in hung}
        assert causes == {"decision; cause=status-504"}
        resumed = wait_for(
            lambda: "x-route-fallback" not in client.get("/v1/chat").headers,
            timeout=15,
            what="routing to resume",
        )
    assert resumed
    seconds = [response.elapsed.total_seconds() for response in hung]
    print(
        f"\nhung control plane: 10 of 10 served by the fallback, {_ms(seconds)} "
        f"(decision timeout {TIMEOUT_MS} ms)"
    )
