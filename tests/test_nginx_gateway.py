"""End to end through a real nginx: auth_request asks the control plane, proxy_pass follows it.

Runs Debian's nginx (installed by .ci/run) with the shipped example configuration, in front of
two real backend servers; skipped with a reason only where no nginx binary exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import write_flags
from servers import BackendApp, ServerThread, free_port

from control_plane.gateway import render_nginx_config
from control_plane.http.app import create_app
from control_plane.settings import Settings

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [pytest.mark.nginx,
              pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs "
                                                       "Debian's nginx-light)")]
FLAG = "gateway-ab"


@pytest.fixture
def gateway(tmp_path: Path, flags_dir: Path) -> Iterator[tuple[str, str, dict[str, BackendApp]]]:
    apps = {"model-a": BackendApp("model-a"), "model-b": BackendApp("model-b")}
    with ServerThread(apps["model-a"]) as a, ServerThread(apps["model-b"]) as b:
        write_flags(flags_dir, "gateway.flagd.json", {FLAG: {
            "state": "ENABLED",
            "variants": {"a": {"backend": "model-a", "url": a.url},
                         "b": {"backend": "model-b", "url": b.url}},
            "defaultVariant": "a",
            "targeting": {"fractional": [["a", 50], ["b", 50]]},
        }})
        settings = Settings(flags_dir=flags_dir, database_url=f"sqlite:///{tmp_path / 'cp.db'}",
                            sync_port=0)
        with ServerThread(create_app(settings)) as control_plane:
            prefix = tmp_path / "nginx"
            prefix.mkdir()
            listen = free_port()
            conf = prefix / "nginx.conf"
            conf.write_text(render_nginx_config(
                prefix=prefix, listen=f"127.0.0.1:{listen}",
                control_plane=f"127.0.0.1:{control_plane.port}", flag=FLAG))
            assert NGINX is not None
            check = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(conf)],
                                   capture_output=True, text=True, check=False)
            assert check.returncode == 0, check.stderr
            process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf),
                                        "-g", "daemon off;"], stderr=subprocess.DEVNULL)
            try:
                _wait_for_port(listen, process, prefix / "error.log")
                yield f"http://127.0.0.1:{listen}", control_plane.url, apps
            finally:
                process.terminate()
                process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], error_log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {error_log.read_text(errors='replace')}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start listening")


def test_requests_through_nginx_land_where_the_flags_say(
        gateway: tuple[str, str, dict[str, BackendApp]]) -> None:
    """Each user's request lands on the backend the decision names, every time (sticky)."""
    nginx_url, control_plane_url, apps = gateway
    users = [f"user-{index}" for index in range(60)]
    with httpx.Client(timeout=10) as client:
        expected = {
            user: client.get(f"{control_plane_url}/v1/decide/{FLAG}",
                             headers={"x-user-id": user}).headers["x-route-backend"]
            for user in users
        }
        for _ in range(2):
            for user in users:
                response = client.post(f"{nginx_url}/v1/chat?q=1", headers={"x-user-id": user},
                                       content=b'{"prompt": "hi"}')
                assert response.status_code == 200, response.text
                seen = response.json()
                assert seen["backend"] == expected[user]
                assert (seen["path"], seen["query"]) == ("/v1/chat", "q=1")
                assert seen["body"] == '{"prompt": "hi"}'
                assert seen["headers"]["x-route-variant"] == response.headers["x-route-variant"]
    assert set(expected.values()) == {"model-a", "model-b"}
    proxied = [seen for app in apps.values() for seen in app.requests if seen["path"] == "/v1/chat"]
    assert len(proxied) == 2 * len(users)


def test_nginx_follows_a_flag_edit_without_reload(
        gateway: tuple[str, str, dict[str, BackendApp]], flags_dir: Path) -> None:
    """Ops move all traffic to model-b by editing the flag file; nginx is not touched."""
    nginx_url, _, _ = gateway
    flags = json.loads((flags_dir / "gateway.flagd.json").read_text())["flags"]
    flags[FLAG]["targeting"] = {"fractional": [["a", 0], ["b", 100]]}
    write_flags(flags_dir, "gateway.flagd.json", flags)
    deadline = time.monotonic() + 5
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            backends = {client.get(f"{nginx_url}/x", headers={"x-user-id": f"u{index}"}).json()[
                "backend"] for index in range(20)}
            if backends == {"model-b"}:
                break
            time.sleep(0.1)
    assert backends == {"model-b"}
