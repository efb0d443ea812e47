"""`control-plane serve` as an operator starts it: options, environment, and bad settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from servers import free_port

from flags import FLAGS_DIR

# The installed console script, as an operator runs it (python -m would put the working
# directory, which holds a `flags/` folder here, in front of the installed `flags` package).
CLI = [str(Path(sys.executable).with_name("control-plane"))]


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        try:
            return httpx.get(url + "/readyz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server never answered")


def test_serve_takes_options_and_environment(flags_dir: Path, tmp_path: Path) -> None:
    """Options set flags/host/port/database; the environment sets what options leave out."""
    port = free_port()
    env = {
        **os.environ,
        "CP_PORT": str(port),
        "CP_SYNC_PORT": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}",
    }
    process = subprocess.Popen(
        [*CLI, "serve", "--flags", str(flags_dir), "--host", "127.0.0.1", "--log-level", "warning"],
        env=env,
        cwd=tmp_path,
    )
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}", process)
        assert ready.status_code == 200
        decision = httpx.get(
            f"http://127.0.0.1:{port}/v1/decide/region-router", headers={"x-region": "cn"}
        )
        assert decision.headers["x-route-variant"] == "cn"
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert (tmp_path / "env.db").exists()


def test_serve_refuses_bad_settings_with_a_message(tmp_path: Path) -> None:
    """A bad port or a missing flag directory is one clear message and exit status 2."""
    bad_port = subprocess.run(
        [*CLI, "serve", "--port", "70000"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert bad_port.returncode == 2
    assert "port" in bad_port.stderr
    assert "Traceback" not in bad_port.stderr
    missing = subprocess.run(
        [*CLI, "serve", "--flags", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert missing.returncode == 2
    assert "nope" in missing.stderr
    assert "does not exist" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [*CLI, "serve", "--sync-port", str(port), "--port", "0", "--flags", str(FLAGS_DIR)],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )
    assert busy.returncode == 2
    assert f"sync port 127.0.0.1:{port} cannot be used" in busy.stderr
    assert "Traceback" not in busy.stderr
