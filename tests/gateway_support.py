"""Real nginx for gateway tests: the shipped config rendered into a temp dir, run in front.

Skipped with a reason only where no nginx binary exists (.ci/run installs Debian's
nginx-light). Readiness is a TCP connect, not a request: a request would be a decision (and an
outcome line) the test did not send.
"""

from __future__ import annotations

import base64
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import free_port

from control_plane.gateway import render_nginx_config

__all__ = ["NGINX", "GatewayTraffic", "Nginx", "free_udp_port", "gateway_user_id", "needs_nginx"]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
needs_nginx = [
    pytest.mark.nginx,
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx-light)"
    ),
]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_user_id(client: httpx.Client) -> str:
    """The targeting key nginx derives from the client's `cp_uid` cookie ($cp_user_id).

    ngx_http_userid_module's cookie is base64 of four 32-bit words; nginx prints them as hex.
    """
    raw = base64.b64decode(client.cookies["cp_uid"])
    return "".join(f"{word:08X}" for word in struct.unpack("<4I", raw))


class Nginx:
    """nginx with `render_nginx_config(**fields)` in `prefix`, on a free loopback port."""

    def __init__(self, prefix: Path, **fields: Any) -> None:
        if NGINX is None:
            raise RuntimeError("no nginx binary")
        self.binary = NGINX
        self.prefix = prefix
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(
            render_nginx_config(prefix=prefix, listen=f"127.0.0.1:{self.port}", **fields)
        )
        self.process: subprocess.Popen[bytes] | None = None

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, "-t", "-p", str(self.prefix), "-c", str(self.conf)],
            capture_output=True,
            text=True,
            check=False,
        )

    def __enter__(self) -> Nginx:
        check = self.check()
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the config: {check.stderr}")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class GatewayTraffic:
    """Closed-loop requests through nginx from background threads, a new user each time.

    Each request drops the client's cookies, so the gateway issues a new `cp_uid` and the
    flag's split applies per request. Counts statuses, transport failures and responses that
    carried X-Route-Fallback; `limit` bounds the total number of requests.
    """

    def __init__(
        self, url: str, path: str = "/v1/chat", *, threads: int = 3, limit: int = 20_000
    ) -> None:
        self.url = url
        self.path = path
        self.threads = threads
        self.limit = limit
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []
        self.fallbacks = 0
        self.fallback_seconds: list[float] = []
        self.routed_seconds: list[float] = []
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> GatewayTraffic:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._loop, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)

    def snapshot(self) -> tuple[int, int]:
        """(requests answered so far, of which fallbacks)."""
        with self._lock:
            return self.sent, self.fallbacks

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                with self._lock:
                    if self.sent >= self.limit:
                        return
                client.cookies.clear()
                started = time.perf_counter()
                try:
                    response = client.get(self.path)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                        self.sent += 1
                    continue
                seconds = time.perf_counter() - started
                fallback = "x-route-fallback" in response.headers
                with self._lock:
                    self.sent += 1
                    self.statuses[response.status_code] = (
                        self.statuses.get(response.status_code, 0) + 1
                    )
                    if response.status_code != 200:
                        self.failures.append(f"status {response.status_code}")
                    if fallback:
                        self.fallbacks += 1
                        self.fallback_seconds.append(seconds)
                    else:
                        self.routed_seconds.append(seconds)
