"""The record pipeline wired into real `control-plane serve` processes: with CP_EVENTS_URL, a
replica and the control plane both publish exposures to JetStream, and the control plane's
consumer stores every one of them once in its database, with the targeting key hashed."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import db_support
import httpx
from conftest import copy_shipped_flags
from events_support import nats_url, stream_settings
from experiments_support import wait_for
from serve_process import ServeProcess
from servers import free_port
from sqlalchemy import select

from control_plane.db import Database
from control_plane.db.experiment_models import Exposure
from flags import AB_TEST_ROUTER

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database
__all__ = ["database", "database_url", "empty_database", "nats_url"]

SALT = "events-salt-0123456789abcdef"


def _decide(base_url: str, count: int, prefix: str) -> dict[str, str]:
    """decision id -> user, for `count` decisions on the experiment flag."""
    decided = {}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for index in range(count):
            user = f"{prefix}-{index}@example.com"
            response = client.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": user})
            assert response.status_code == 200, response.text
            decided[response.json()["decisionId"]] = user
    return decided


def test_replica_and_control_plane_exposures_are_stored_once(
    nats_url: str, database: Database, database_url: str, tmp_path: Path
) -> None:
    """Decisions answered by a replica and by the control plane, both publishing to JetStream,
    are each stored exactly once by the control plane's consumer, units hashed with the salt."""
    flags = copy_shipped_flags(tmp_path / "flags")
    stream = stream_settings()
    events = {
        "CP_EVENTS_URL": nats_url,
        "CP_EVENTS_STREAM": stream.stream,
        "CP_EVENTS_SUBJECT_PREFIX": stream.subject_prefix,
        "CP_EVENTS_CONSUMER": stream.consumer,
        "CP_EXPOSURE_SALT": SALT,
    }
    sync_port = free_port()
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary_env = {
        **events,
        "DATABASE_URL": database_url,
        "CP_SYNC_PORT": str(sync_port),
        "CP_EVENTS_JOURNAL_DIR": str(tmp_path / "primary" / "journal"),
    }
    replica_env = {
        **events,
        "CP_REPLICA_DIR": str(tmp_path / "replica" / "flags"),
        "CP_EVENTS_JOURNAL_DIR": str(tmp_path / "replica" / "journal"),
    }
    with (
        ServeProcess(flags, tmp_path / "primary", env=primary_env) as primary,
        ServeProcess(
            flags,
            tmp_path / "replica",
            env=replica_env,
            args=("--replica-of", f"127.0.0.1:{sync_port}"),
        ) as replica,
    ):
        decided = _decide(replica.url, 300, "replica")
        decided.update(_decide(primary.url, 100, "primary"))

        def stored() -> list[Exposure]:
            with database.session() as session:
                return list(session.scalars(select(Exposure)))

        wait_for(lambda: len(stored()) >= len(decided), what="every exposure stored", timeout=30)
        time.sleep(0.5)  # a duplicate, if there were one, would be stored by now
        rows = stored()
        replica_metrics = httpx.get(replica.url + "/metrics").text
        assert primary.alive()
        assert replica.alive()
    assert len(rows) == len(decided) == 400
    assert {row.decision_id for row in rows} == set(decided)
    for row in rows:
        expected = hmac.new(
            SALT.encode(), decided[row.decision_id].encode(), hashlib.sha256
        ).hexdigest()
        assert row.unit == expected
    assert (
        'control_plane_events_published_total{result="published",table="exposures"} 300.0'
        in replica_metrics
    ) or "replayed" in replica_metrics
