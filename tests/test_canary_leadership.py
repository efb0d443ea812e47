"""One canary controller among control planes on one database: a PostgreSQL advisory lock on a
session of its own elects exactly one leader, a dead or hung holder loses it to another, and a
canary whose leader is `kill -9`ed mid-run is finished by the other control plane from its stored
state, every step applied once. SQLite has one instance, which always leads."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from experiments_support import Traffic, wait_for
from serve_process import ServeProcess
from servers import BackendApp, ServerThread
from sqlalchemy import text

from control_plane.db import Database
from control_plane.db.testing import scratch_database_url
from control_plane.experiments import repository
from control_plane.experiments.canary.leadership import (
    AdvisoryLockLeadership,
    AlwaysLeader,
    leadership_for,
)

FLAG = "chat-router"
PATH = f"/v1/dispatch/{FLAG}/v1/chat"
OPERATOR = "operator-token-for-leadership-0001"
VIEWER = "viewer-token-for-leadership-00001"


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL schema on TEST_DATABASE_URL (the lock needs PostgreSQL)."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip("TEST_DATABASE_URL is not set (PostgreSQL tests run when it is)")
    url, cleanup = scratch_database_url(base, tmp_path)
    try:
        yield url
    finally:
        cleanup()


@pytest.fixture
def pg(pg_url: str) -> Iterator[Database]:
    database = Database.from_url(pg_url)
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


def _leaders(*candidates: AdvisoryLockLeadership) -> list[AdvisoryLockLeadership]:
    return [candidate for candidate in candidates if candidate.leader]


def test_sqlite_instance_always_leads(tmp_path: Path) -> None:
    """On SQLite (one instance per database file) the controller always leads."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'one.db'}")
    seen: list[bool] = []
    leadership = leadership_for(database, on_change=seen.append)
    assert isinstance(leadership, AlwaysLeader)
    assert leadership.leader
    assert leadership.confirm()
    assert seen == [True]


@pytest.mark.postgres
def test_exactly_one_of_two_leads_and_the_other_takes_over(pg: Database) -> None:
    """Of two candidates on one database exactly one leads; when it stops, the other leads."""
    first = AdvisoryLockLeadership(pg, retry_interval=0.1, lease_seconds=2)
    second = AdvisoryLockLeadership(pg, retry_interval=0.1, lease_seconds=2)
    first.start()
    second.start()
    try:
        assert _leaders(first, second) == [first]
        assert first.confirm()
        assert not second.confirm()
        first.stop()
        wait_for(lambda: second.leader, what="the second to take over", timeout=10)
        assert second.confirm()
        assert not first.leader
    finally:
        first.stop()
        second.stop()


@pytest.mark.postgres
def test_other_schemas_do_not_contend(pg: Database, tmp_path: Path) -> None:
    """Control planes in another schema of the same database have a leader of their own."""
    base = os.environ["TEST_DATABASE_URL"]
    other_url, cleanup = scratch_database_url(base, tmp_path)
    other = Database.from_url(other_url)
    here = AdvisoryLockLeadership(pg, retry_interval=0.1, lease_seconds=2)
    there = AdvisoryLockLeadership(other, retry_interval=0.1, lease_seconds=2)
    try:
        here.start()
        there.start()
        assert here.leader
        assert there.leader
    finally:
        here.stop()
        there.stop()
        other.dispose()
        cleanup()


@pytest.mark.postgres
def test_a_hung_leader_loses_the_lock_and_cannot_step(pg: Database) -> None:
    """A leader that stops pinging (hung, but its connection open) has its lock session ended
    by the server after lease_seconds; the other takes over and the hung one's check before a
    step says it no longer leads."""
    hung = AdvisoryLockLeadership(pg, retry_interval=0.2, lease_seconds=1)
    other = AdvisoryLockLeadership(pg, retry_interval=0.2, lease_seconds=1)
    hung.start()
    try:
        assert hung.leader
        # Hang it: its thread stops pinging, its lock connection stays open.
        hung._stop.set()
        assert hung._thread is not None
        hung._thread.join()
        other.start()
        wait_for(lambda: other.leader, what="the other to take over", timeout=15)
        assert hung.leader  # it has not noticed yet: nothing told it
        assert not hung.confirm()  # ... until it checks before stepping
        assert not hung.leader
    finally:
        hung.stop()
        other.stop()


@pytest.mark.postgres
def test_a_leader_whose_session_is_killed_steps_down(pg: Database) -> None:
    """A leader whose lock session ends (a database restart, a network cut) stops leading at
    its next check, and leads again once it wins the lock back."""
    leadership = AdvisoryLockLeadership(pg, retry_interval=0.1, lease_seconds=2)
    leadership.start()
    try:
        assert leadership.leader
        with pg.session() as session:
            session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            )
        assert not leadership.confirm()
        wait_for(lambda: leadership.leader, what="the lock won back", timeout=10)
        assert leadership.acquired == 2
    finally:
        leadership.stop()


# -- two real control planes ---------------------------------------------------------------


def _flag(stable_url: str, canary_url: str) -> dict[str, Any]:
    return {
        FLAG: {
            "state": "ENABLED",
            "variants": {
                "stable": {"backend": "chat-v1", "url": stable_url},
                "canary": {"backend": "chat-v2", "url": canary_url},
            },
            "defaultVariant": "stable",
            "targeting": {"fractional": [["canary", 0], ["stable", 100]]},
        }
    }


def _status(plane: ServeProcess) -> dict[str, Any]:
    response = httpx.get(
        f"{plane.url}/v1/canaries/{FLAG}", headers={"Authorization": f"Bearer {VIEWER}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.postgres
def test_killed_leader_mid_canary_the_other_finishes_it_once(
    pg: Database, pg_url: str, flags_dir: Path, tmp_path: Path
) -> None:
    """Two `control-plane serve` processes on one PostgreSQL database: the canary is stepped by
    the leader only; after the leader is `kill -9`ed mid-canary the other takes over, continues
    from the stored step and promotes, with every step event recorded exactly once."""
    stable, canary = BackendApp("stable"), BackendApp("canary")
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(flags_dir, "chat.flagd.json", _flag(stable_server.url, canary_server.url))
        env = {
            "DATABASE_URL": pg_url,
            "CP_CANARY_TICK_INTERVAL": "0.1",
            "CP_RELOAD_INTERVAL": "0.05",
            "CP_ADMIN_TOKENS": f"ops:operator:{OPERATOR},dash:viewer:{VIEWER}",
        }
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            ServeProcess(flags_dir, tmp_path / "a", env=env) as first,
            ServeProcess(flags_dir, tmp_path / "b", env=env) as second,
        ):
            response = httpx.post(
                f"{first.url}/v1/canaries/{FLAG}",
                headers={"Authorization": f"Bearer {OPERATOR}"},
                timeout=10,
                json={
                    "steps": [20, 40, 60, 100],
                    "intervalSeconds": 1.0,
                    "minRequests": 3,
                    "maxErrorRate": 0.05,
                    "maxP99LatencyRatio": 200,
                },
            )
            assert response.status_code == 201, response.text
            run_id = response.json()["id"]
            leaders = [plane for plane in (first, second) if _status(plane)["controller"]["leader"]]
            assert len(leaders) == 1
            leader = leaders[0]
            survivor = second if leader is first else first
            # Traffic through both, so each records calls for the canary's judgement.
            traffic = {plane.pid: Traffic(plane.url, PATH, threads=2) for plane in (first, second)}
            for driver in traffic.values():
                driver.__enter__()
            try:
                wait_for(
                    lambda: _status(survivor)["step"] >= 2,
                    timeout=60,
                    what="the canary to reach step 2",
                )
                os.kill(leader.pid, signal.SIGKILL)
                leader.process.wait()  # type: ignore[union-attr]
                traffic.pop(leader.pid).__exit__(None, None, None)  # no spinning on a dead port
                stepped_before = _status(survivor)["step"]
                wait_for(
                    lambda: _status(survivor)["controller"]["leader"],
                    timeout=20,
                    what="the survivor to take over",
                )
                try:
                    final = wait_for(
                        lambda: (s := _status(survivor))["state"] != "running" and s,
                        timeout=90,
                        what="the canary to finish",
                    )
                except AssertionError:
                    events = [
                        (
                            e["action"],
                            e["at"],
                            e["detail"].get("step"),
                            str(e["detail"].get("reason", ""))[:150],
                        )
                        for e in _status(survivor)["events"]
                    ]
                    raise AssertionError(f"{events}\n{survivor.exit_report()}") from None
            finally:
                for driver in traffic.values():
                    driver.__exit__(None, None, None)
            assert survivor.alive(), survivor.exit_report()
    assert final["state"] == "promoted", final
    assert final["id"] == run_id
    with pg.session() as session:
        events = repository.canary_events(session=session, run_id=run_id)
        actions = [(event.action, event.detail.get("step")) for event in events]
    names = [action for action, _ in actions]
    assert names.count("started") == 1
    assert names.count("promoted") == 1
    assert [step for action, step in actions if action == "step"] == [2, 3, 4]
    assert stepped_before < 4  # the kill came before the last step
