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
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import free_port

from control_plane.gateway import render_nginx_config

__all__ = ["NGINX", "Nginx", "free_udp_port", "gateway_user_id", "needs_nginx"]

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
