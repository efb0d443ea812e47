"""A crash loses no answered exposure, and routing never waits for the database (issue 9.4):
`control-plane serve` runs as a subprocess, as an operator starts it, its database behind a
loopback TCP proxy that passes, refuses or blackholes (PostgreSQL, when TEST_DATABASE_URL is
set) or in a directory made read-only (SQLite); decisions on an experiment flag are answered,
the process is killed with SIGKILL, and after a restart every answered decision id is in the
exposures table exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from experiments_support import wait_for
from outage_support import OutageProxy, set_read_only
from servers import free_port
from sqlalchemy import func, make_url, select

from control_plane.db import Database
from control_plane.db.experiment_models import Exposure
from control_plane.db.testing import scratch_database_url
from flags import AB_TEST_ROUTER

CLI = [str(Path(sys.executable).with_name("control-plane"))]
#: Decisions answered while the database is out, before the kill.
DECISIONS = 300
#: How long the answered decisions have before the kill (the guarantee is about one second).
GRACE = 1.5


@dataclass
class Plane:
    """`control-plane serve` in a subprocess; `kill()` is SIGKILL, as a crash."""

    env: dict[str, str]
    cwd: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.env, "CP_PORT": str(self.port)}
        self.process = subprocess.Popen(
            [*CLI, "serve", "--log-level", "warning"], env=env, cwd=self.cwd
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited ({self.process.returncode})"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server never became ready")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def decide(self, count: int, prefix: str) -> list[str]:
        """Answer `count` decisions on the experiment flag; their decision ids."""
        ids = []
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for index in range(count):
                response = client.get(
                    f"/v1/decide/{AB_TEST_ROUTER}",
                    headers={"x-user-id": f"{prefix}-{index}@example.com"},
                )
                assert response.status_code == 200, response.text
                ids.append(response.json()["decisionId"])
        return ids

    def metric(self, name: str) -> float | None:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        match = re.search(rf"^{name} ([\d.e+-]+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None


@dataclass
class Backend:
    """The database the server uses, a way to take it out, and a handle to check it."""

    server_url: str  # what the server is given (through the proxy, for PostgreSQL)
    check_url: str  # the same database, directly
    outage: dict[str, Callable[[], None]]  # mode -> what takes it out that way
    restore: Callable[[], None]


def _plane(backend: Backend, flags_dir: Path, tmp_path: Path, **extra: str) -> Plane:
    env = {
        "DATABASE_URL": backend.server_url,
        "CP_SYNC_PORT": "0",
        "CP_FLAGS_DIR": str(flags_dir),
        "CP_EXPOSURE_SPILL_DIR": str(tmp_path / "journal"),
        "CP_EXPOSURE_RETRY_INTERVAL": "0.2",
        "CP_EXPOSURE_WRITE_TIMEOUT": "2",
        "CP_DATABASE_CONNECT_TIMEOUT": "2",
        "CP_RELOAD_INTERVAL": "0.1",
        **extra,
    }
    return Plane(env, tmp_path)


@contextmanager
def _sqlite(tmp_path: Path) -> Iterator[Backend]:
    directory = tmp_path / "dbdir"
    directory.mkdir()
    file = directory / "cp.db"
    paths = [file, directory]
    url = f"sqlite:///{file}"

    def down() -> None:
        set_read_only(paths, True)

    try:
        yield Backend(url, url, {"down": down}, lambda: set_read_only(paths, False))
    finally:
        if file.exists():
            set_read_only(paths, False)


@contextmanager
def _postgresql(tmp_path: Path) -> Iterator[Backend]:
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip("TEST_DATABASE_URL is not set (PostgreSQL tests run when it is)")
    url, cleanup = scratch_database_url(base, tmp_path)
    parsed = make_url(url)
    proxy = OutageProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        yield Backend(
            proxied, url, {"refuse": proxy.refuse, "blackhole": proxy.blackhole}, proxy.passthrough
        )
    finally:
        proxy.close()
        cleanup()


@contextmanager
def _backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    with (_sqlite if kind == "sqlite" else _postgresql)(tmp_path) as backend:
        yield backend


def _stored(url: str, ids: list[str]) -> tuple[set[str], int]:
    """(the given ids found in the exposures table, how many exposure rows there are)."""
    database = Database.from_url(url)
    try:
        with database.session() as session:
            found = set(
                session.scalars(select(Exposure.decision_id).where(Exposure.decision_id.in_(ids)))
            )
            total = session.scalar(select(func.count()).select_from(Exposure)) or 0
    finally:
        database.dispose()
    return found, int(total)


def _all_stored(url: str, ids: list[str]) -> bool:
    try:
        return _stored(url, ids)[0] == set(ids)
    except Exception:  # the schema may not exist yet (background migration)
        return False


@pytest.mark.parametrize(
    ("kind", "outage"),
    [
        pytest.param("sqlite", None, id="sqlite-up"),
        pytest.param("sqlite", "down", id="sqlite-read-only"),
        pytest.param("postgresql", None, id="postgresql-up", marks=pytest.mark.postgres),
        pytest.param("postgresql", "refuse", id="postgresql-refused", marks=pytest.mark.postgres),
        pytest.param(
            "postgresql", "blackhole", id="postgresql-blackhole", marks=pytest.mark.postgres
        ),
    ],
)
def test_kill_9_loses_no_answered_exposure(
    kind: str, outage: str | None, flags_dir: Path, tmp_path: Path
) -> None:
    """Decisions answered more than a second before a SIGKILL, with the database up, refusing,
    read-only or blackholed, are all stored exactly once after a restart with it back."""
    with _backend(kind, tmp_path) as backend:
        plane = _plane(backend, flags_dir, tmp_path)
        try:
            plane.start()
            ids = plane.decide(50, "before")
            wait_for(lambda: _all_stored(backend.check_url, ids), what="the first exposures")
            if outage is not None:
                backend.outage[outage]()
            ids += plane.decide(DECISIONS, "during")
            time.sleep(GRACE)
            plane.kill()
        finally:
            plane.kill()
            backend.restore()
        restarted = _plane(backend, flags_dir, tmp_path)
        try:
            restarted.start()
            wait_for(
                lambda: _all_stored(backend.check_url, ids),
                timeout=60,
                what="every answered exposure to be stored after the restart",
            )
        finally:
            restarted.stop()
        found, total = _stored(backend.check_url, ids)
    assert found == set(ids)
    assert total == len(ids) == len(set(ids))  # each exactly once, nothing else


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def test_starts_and_routes_with_the_database_down(
    kind: str, flags_dir: Path, tmp_path: Path
) -> None:
    """With the database unreachable from the start (and no exposure salt: the key lives in
    it), the server starts, /readyz and /v1/decide answer 200, and on PostgreSQL the
    exposures answered meanwhile are stored once it is reachable."""
    with _backend(kind, tmp_path) as backend:
        server_url = backend.server_url
        if kind == "sqlite":  # a directory that does not exist: the file cannot be opened
            server_url = f"sqlite:///{tmp_path / 'missing' / 'cp.db'}"
        else:
            backend.outage["refuse"]()
        offline = Backend(server_url, backend.check_url, {}, backend.restore)
        plane = _plane(offline, flags_dir, tmp_path)
        try:
            plane.start()
            ids = plane.decide(20, "offline")
            wait_for(
                lambda: plane.metric("control_plane_experiment_database_up") == 0,
                what="database_up to say the database is down",
            )
            if kind == "postgresql":
                backend.restore()
                wait_for(
                    lambda: _all_stored(backend.check_url, ids),
                    timeout=60,
                    what="the exposures answered while the database was down",
                )
                wait_for(
                    lambda: plane.metric("control_plane_experiment_database_up") == 1,
                    what="database_up to be 1 again",
                )
        finally:
            plane.stop()
    assert plane.process is not None
    # It ran until told to stop (uvicorn re-raises SIGTERM after a clean shutdown).
    assert plane.process.returncode in (0, -signal.SIGTERM)


@pytest.mark.postgres
def test_database_up_follows_a_blackhole(flags_dir: Path, tmp_path: Path) -> None:
    """When the proxy in front of PostgreSQL stops forwarding without closing anything,
    control_plane_experiment_database_up goes to 0 (the write is interrupted, not hung), and
    back to 1 once it forwards again, with every exposure stored."""
    with _backend("postgresql", tmp_path) as backend:
        plane = _plane(backend, flags_dir, tmp_path)
        try:
            plane.start()
            ids = plane.decide(20, "before")
            wait_for(lambda: _all_stored(backend.check_url, ids), what="the first exposures")
            assert plane.metric("control_plane_experiment_database_up") == 1
            backend.outage["blackhole"]()
            ids += plane.decide(50, "during")
            wait_for(
                lambda: plane.metric("control_plane_experiment_database_up") == 0,
                timeout=20,
                what="database_up to drop during the blackhole",
            )
            backend.restore()
            wait_for(
                lambda: plane.metric("control_plane_experiment_database_up") == 1,
                timeout=30,
                what="database_up to come back",
            )
            wait_for(
                lambda: _all_stored(backend.check_url, ids),
                timeout=30,
                what="the exposures answered during the blackhole",
            )
        finally:
            plane.stop()
