"""Start an ASGI app in its own uvicorn process, the same way for every side of a comparison."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["STACKS", "UVICORN_ARGS", "free_port", "uvicorn_process"]

#: One worker, no access log: the settings every benchmarked server shares.
UVICORN_ARGS = ["--workers", "1", "--no-access-log", "--log-level", "warning"]
#: Server stacks compared: uvicorn's pure-Python one and its C-accelerated one.
STACKS = {
    "asyncio+h11": ["--loop", "asyncio", "--http", "h11"],
    "uvloop+httptools": ["--loop", "uvloop", "--http", "httptools"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def uvicorn_process(
    app: str,
    *,
    factory: bool = False,
    env: dict[str, str] | None = None,
    stack: str = "uvloop+httptools",
) -> Iterator[str]:
    """Run `uvicorn app` on a free loopback port; yield its base URL once it answers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *UVICORN_ARGS,
        *STACKS[stack],
    ]
    if factory:
        command.append("--factory")
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{app} exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
