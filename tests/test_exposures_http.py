"""Exposure logging on a real control plane: every decision on an experiment flag is stored
(hashed targeting key, variant, version), other flags are not, and shutdown flushes the queue."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import db_support
import httpx
import pytest
from experiments_support import make_settings, running
from sqlalchemy import func, select

from control_plane.db import Database
from control_plane.db.experiment_models import CallSample, Exposure
from flags import AB_TEST_ROUTER, REGION_ROUTER

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

SALT = "exposure-salt-0123456789"


def _exposures(database: Database, flag: str) -> list[Exposure]:
    with database.session() as session:
        return list(session.scalars(select(Exposure).where(Exposure.flag == flag)))


def test_decisions_on_experiment_flags_are_logged_hashed(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path
) -> None:
    """Each /v1/decide on an experiment flag stores one exposure whose unit is the HMAC of the
    targeting key; decisions on flags not marked as experiments store nothing."""
    settings = make_settings(flags_dir, database_url, tmp_path, exposure_salt=SALT)
    decided: dict[str, tuple[str, int]] = {}
    with running(settings, database) as plane, httpx.Client(base_url=plane.url) as client:
        for index in range(40):
            user = f"alice-{index}@example.com"
            body = client.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": user}).json()
            decided[body["decisionId"]] = (user, body["flagSetVersion"])
            assert body["variant"] in ("model-a", "model-b")
            client.get(f"/v1/decide/{REGION_ROUTER}", headers={"x-user-id": user})
        plane.flush()
        metrics = client.get("/metrics").text
    rows = _exposures(database, AB_TEST_ROUTER)
    assert {row.decision_id for row in rows} == set(decided)
    for row in rows:
        user, version = decided[row.decision_id]
        expected = hmac.new(SALT.encode(), user.encode(), hashlib.sha256).hexdigest()
        assert row.unit == expected
        assert "@" not in (row.unit or "")
        assert row.flag_set_version == version
        assert row.variant in ("model-a", "model-b")
    assert _exposures(database, REGION_ROUTER) == []
    assert (
        'control_plane_experiment_records_total{result="written",table="exposures"} 40.0' in metrics
    )


def test_shutdown_flushes_queued_exposures(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path
) -> None:
    """Exposures still queued when the server stops are written before it exits."""
    # A flush interval far longer than the test: only the shutdown flush can write them.
    settings = make_settings(flags_dir, database_url, tmp_path, exposure_flush_interval=60)
    with running(settings, database) as plane, httpx.Client(base_url=plane.url) as client:
        for index in range(25):
            client.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": f"u{index}"})
        assert plane.experiments.writer.counts.written == 0
    assert len(_exposures(database, AB_TEST_ROUTER)) == 25


def test_anonymous_decisions_are_not_exposures(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path
) -> None:
    """A decision without a targeting key is no experiment unit: counted apart, not stored."""
    settings = make_settings(flags_dir, database_url, tmp_path)
    with running(settings, database) as plane, httpx.Client(base_url=plane.url) as client:
        for _ in range(3):
            assert client.get(f"/v1/decide/{AB_TEST_ROUTER}").status_code == 200
        assert (
            client.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": "known"}).status_code
            == 200
        )
        plane.flush()
        assert plane.experiments.recorder.anonymous == {AB_TEST_ROUTER: 3}
    rows = _exposures(database, AB_TEST_ROUTER)
    assert len(rows) == 1
    assert rows[0].unit is not None


@pytest.mark.parametrize("experiment", [True, False])
def test_dispatch_records_backend_calls_of_experiments(
    database: Database, database_url: str, flags_dir: Path, tmp_path: Path, experiment: bool
) -> None:
    """The dispatch proxy stores each backend call's status and latency for experiment flags
    (and only for them, unless a canary runs)."""
    from conftest import write_flags
    from servers import BackendApp, ServerThread

    backend_a, backend_b = BackendApp("a"), BackendApp("b", behaviour="error")
    with ServerThread(backend_a) as a, ServerThread(backend_b) as b:
        write_flags(
            flags_dir,
            "calls.flagd.json",
            {
                "calls-router": {
                    "state": "ENABLED",
                    "metadata": {"experiment": experiment},
                    "variants": {
                        "a": {"backend": "a", "url": a.url},
                        "b": {"backend": "b", "url": b.url},
                    },
                    "defaultVariant": "a",
                    "targeting": {"fractional": [["a", 50], ["b", 50]]},
                }
            },
        )
        settings = make_settings(flags_dir, database_url, tmp_path)
        with running(settings, database) as plane, httpx.Client(base_url=plane.url) as client:
            for index in range(30):
                client.get("/v1/dispatch/calls-router/predict", headers={"x-user-id": f"u{index}"})
            plane.flush()
    with database.session() as session:
        per_variant = dict(
            session.execute(
                select(CallSample.variant, func.count()).group_by(CallSample.variant)
            ).all()
        )
        statuses = set(session.scalars(select(CallSample.status).where(CallSample.variant == "b")))
    if not experiment:
        assert per_variant == {}
        return
    # Variant b fails (503) and is retried on the default a: both calls are recorded.
    assert per_variant["b"] > 0
    assert per_variant["a"] == 30
    assert statuses == {503}
