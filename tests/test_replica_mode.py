"""Replica mode on real processes: `control-plane serve --replica-of` follows a real control plane.

Two `control-plane serve` processes on loopback: a primary with its sync port, and a replica
syncing from it over flagd.sync.v1. The replica answers what the primary answers, follows edits,
keeps serving when the primary is gone (and after its own restart), and says how stale it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_shipped_flags
from serve_process import ServeProcess
from servers import free_port

from flags import AB_TEST_ROUTER, CANARY_ROUTER, REGION_ROUTER

ADMIN = "admin-token-for-replica-tests-000001"
SYNC_TOKEN = "sync-token-for-replica-tests-0000001"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _primary(workdir: Path, flags: Path, sync_port: int, port: int | None = None) -> ServeProcess:
    env = {
        "CP_SYNC_PORT": str(sync_port),
        "CP_ADMIN_TOKENS": f"root:admin:{ADMIN}",
        "CP_SYNC_TOKENS": SYNC_TOKEN,
    }
    return ServeProcess(flags, workdir, port=port, env=env)


def _replica(
    workdir: Path,
    flags: Path,
    sync_port: int,
    *,
    token: str | None = SYNC_TOKEN,
    wait_ready: bool = True,
) -> ServeProcess:
    env = {"CP_REPLICA_DIR": str(workdir / "replica-flags")}
    if token:
        env["CP_REPLICA_TOKEN"] = token
    return ServeProcess(
        flags,
        workdir,
        env=env,
        wait_ready=wait_ready,
        args=("--replica-of", f"127.0.0.1:{sync_port}"),
    )


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[ServeProcess, ServeProcess, int, Path]]:
    flags = copy_shipped_flags(tmp_path / "flags")
    sync_port = free_port()
    with (
        _primary(tmp_path / "primary", flags, sync_port) as primary,
        _replica(tmp_path / "replica", flags, sync_port) as replica,
    ):
        yield primary, replica, sync_port, flags


def _wait(predicate: object, timeout: float = 10, what: str = "the condition") -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


@pytest.fixture(autouse=True)
def _workdirs(tmp_path: Path) -> None:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()


def test_a_replica_answers_what_the_primary_answers(
    topology: tuple[ServeProcess, ServeProcess, int, Path],
) -> None:
    """Same variant, backend and flag-set version for 300 requests over three flags."""
    primary, replica, _, _ = topology
    with primary.client() as p, replica.client() as r:
        for index in range(100):
            for flag, headers in (
                (AB_TEST_ROUTER, {}),
                (REGION_ROUTER, {"x-region": "cn"}),
                (CANARY_ROUTER, {}),
            ):
                user = {"x-user-id": f"replica-user-{index}", **headers}
                mine, theirs = (
                    r.get(f"/v1/decide/{flag}", headers=user),
                    p.get(f"/v1/decide/{flag}", headers=user),
                )
                assert mine.status_code == theirs.status_code == 200
                for header in ("x-route-variant", "x-route-upstream", "x-route-flag-set-version"):
                    assert mine.headers[header] == theirs.headers[header], (flag, header)
        ofrep = r.post(
            f"/ofrep/v1/evaluate/flags/{AB_TEST_ROUTER}", json={"context": {"targetingKey": "u1"}}
        )
        assert ofrep.status_code == 200


def test_a_replica_has_no_admin_api_experiments_or_console(
    topology: tuple[ServeProcess, ServeProcess, int, Path],
) -> None:
    _, replica, _, _ = topology
    with replica.client() as r:
        for path in (
            "/v1/flags",
            "/v1/flags/status",
            "/v1/experiments/ab-test-router",
            "/console",
            "/v1/canaries",
        ):
            assert r.get(path, headers=AUTH).status_code == 404, path
        assert r.post("/v1/events", json={}).status_code == 404
        ready = r.get("/readyz").json()
        assert ready["replica"]["connected"] is True
        assert ready["replica"]["staleSeconds"] == 0


def test_an_edit_on_the_primary_reaches_the_replica_within_a_second(
    topology: tuple[ServeProcess, ServeProcess, int, Path],
) -> None:
    """A flag PUT through the primary's admin API serves on the replica in under 1 s."""
    primary, replica, _, _ = topology
    flag = {
        "state": "ENABLED",
        "defaultVariant": "a",
        "variants": {"a": {"backend": "replica-new", "url": "http://127.0.0.1:9"}},
    }
    with primary.client() as p, replica.client() as r:
        started = time.monotonic()
        put = p.put("/v1/flags/replica-new-flag", json=flag, headers=AUTH)
        assert put.status_code in (200, 201), put.text
        _wait(
            lambda: r.get("/v1/decide/replica-new-flag").status_code == 200,
            timeout=5,
            what="the edit on the replica",
        )
        assert time.monotonic() - started < 1.0
        version = p.get("/v1/decide/replica-new-flag").headers["x-route-flag-set-version"]
        assert r.get("/v1/decide/replica-new-flag").headers["x-route-flag-set-version"] == version


def test_a_replica_keeps_serving_when_the_primary_dies_and_says_it_is_stale(
    tmp_path: Path,
) -> None:
    """Primary killed: the replica answers 200 from its last set, /readyz and metrics say stale;
    restarted itself while the primary is gone, it serves the set it kept; the primary back,
    it reconnects."""
    flags = copy_shipped_flags(tmp_path / "flags")
    sync_port = free_port()
    primary = _primary(tmp_path / "primary", flags, sync_port)
    primary.__enter__()
    primary_port = primary.port
    try:
        with _replica(tmp_path / "replica", flags, sync_port) as replica, replica.client() as r:
            primary.process.kill()  # type: ignore[union-attr]
            primary.process.wait()  # type: ignore[union-attr]
            _wait(
                lambda: r.get("/readyz").json()["replica"]["connected"] is False,
                what="the replica noticing",
            )
            time.sleep(0.3)
            decision = r.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": "u"})
            assert decision.status_code == 200
            ready = r.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["replica"]["staleSeconds"] > 0
            metrics = r.get("/metrics").text
            assert "control_plane_replica_connected 0.0" in metrics
        # The replica restarts while the primary is still down: it serves what it kept.
        with _replica(tmp_path / "replica", flags, sync_port) as again, again.client() as r2:
            assert (
                r2.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": "u"}).status_code
                == 200
            )
            # The primary comes back (same ports): the replica follows it again.
            with _primary(tmp_path / "primary", flags, sync_port, port=primary_port):
                _wait(
                    lambda: r2.get("/readyz").json()["replica"]["connected"] is True,
                    timeout=15,
                    what="the replica reconnecting",
                )
    finally:
        primary.__exit__(None, None, None)


def test_a_replica_without_the_sync_token_is_refused_and_not_ready(tmp_path: Path) -> None:
    """The primary's sync port wants a token: without one the replica never serves (503)."""
    flags = copy_shipped_flags(tmp_path / "flags")
    sync_port = free_port()
    with (
        _primary(tmp_path / "primary", flags, sync_port),
        _replica(tmp_path / "replica", flags, sync_port, token=None, wait_ready=False) as replica,
        replica.client() as r,
    ):
        _wait(
            lambda: r.get("/readyz").json().get("replica", {}).get("lastError"), what="the refusal"
        )
        ready = r.get("/readyz")
        assert ready.status_code == 503
        assert "UNAUTHENTICATED" in ready.json()["replica"]["lastError"]
        assert r.get(f"/v1/decide/{AB_TEST_ROUTER}").status_code == 503


def test_a_replica_started_before_its_primary_waits_then_serves(tmp_path: Path) -> None:
    flags = copy_shipped_flags(tmp_path / "flags")
    sync_port = free_port()
    with (
        _replica(tmp_path / "replica", flags, sync_port, wait_ready=False) as replica,
        replica.client() as r,
    ):
        waiting = r.get("/readyz")
        assert waiting.status_code == 503
        assert "waiting for the first flag set" in waiting.json()["detail"]
        with _primary(tmp_path / "primary", flags, sync_port):
            _wait(
                lambda: r.get("/readyz").status_code == 200,
                timeout=15,
                what="the replica becoming ready",
            )
