"""`control-plane serve` as a real process, the way operators run it, for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from servers import free_port

__all__ = ["CLI", "ServeProcess", "process_rss_bytes"]

#: The installed console script (python -m would put the working directory, which may hold a
#: `flags/` folder, in front of the installed `flags` package).
CLI = [str(Path(sys.executable).with_name("control-plane"))]


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class ServeProcess:
    """`control-plane serve` on a free port with its own SQLite file, stopped on exit.

    `alive()` says whether it is still running; a crash (a segfault is exit -11) fails tests
    that check it, and the process's stderr is kept in `stderr_path` for the failure message.
    """

    def __init__(
        self,
        flags_dir: Path,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        port: int | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.ready_on_enter = wait_ready
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.stderr_path = workdir / f"serve-{self.port}.stderr"
        self.env = {
            **os.environ,
            "CP_SYNC_PORT": "0",
            "CP_LOG_FORMAT": "text",
            "DATABASE_URL": f"sqlite:///{workdir / f'serve-{self.port}.db'}",
            **(env or {}),
        }
        self.args = [
            "serve",
            "--flags",
            str(flags_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServeProcess:
        # Appended: a restarted process keeps its earlier run's log above its own.
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [*CLI, *self.args],
                env=self.env,
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        if self.ready_on_enter:
            self.wait_ready()
        else:
            self.wait_listening()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_report(self) -> str:
        code = None if self.process is None else self.process.poll()
        return f"exit status {code}; stderr:\n{self.stderr_path.read_text()[-3000:]}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"the server exited early: {self.exit_report()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server never became ready")

    def wait_listening(self, timeout: float = 30) -> None:
        """Until the HTTP port answers at all (ready or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"the server exited early: {self.exit_report()}")
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the server never listened")

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=options.pop("timeout", 10), **options)
