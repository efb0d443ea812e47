"""A canary's timeline (`GET /v1/canaries/{flag}/timeline`): the run's recorded backend calls
cut into equal buckets, with error rates, p99 latencies and their ratio, and the weight in
force, checked by hand on stored rows and end to end on a real canary with real backends."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import db_support
import pytest
from conftest import write_flags
from experiments_support import OPERATOR, VIEWER, ControlPlane, make_settings, running
from servers import BackendApp, ServerThread

from control_plane.console.canary_timeline import timeline
from control_plane.db import Database
from control_plane.db.experiment_models import CallSample
from control_plane.experiments import repository

PROBLEM = "application/problem+json"
T0 = datetime(2024, 5, 2, 12, 0, 0, tzinfo=UTC)
SPEC = {
    "stableVariant": "stable",
    "canaryVariant": "canary",
    "steps": [10, 50, 100],
    "intervalSeconds": 60,
    "minRequests": 100,
    "maxErrorRate": 0.05,
    "maxP99LatencyRatio": 1.5,
}


# A migrated database: SQLite, and PostgreSQL when TEST_DATABASE_URL is set.
database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database


_ids = itertools.count(1)


def _call(
    at: float, variant: str, status: int | None, seconds: float, *, flag: str = "chat"
) -> CallSample:
    return CallSample(
        decision_id=f"d{next(_ids)}",
        variant=variant,
        flag=flag,
        backend=variant,
        status=status,
        seconds=seconds,
        error=None if status else "timeout",
        at=T0 + timedelta(seconds=at),
    )


def test_buckets_count_errors_and_compare_latencies(database: Database) -> None:
    """Calls fall in the bucket of their time; errors are 5xx or no answer; the p99 ratio uses
    the bucket's stable p99, else the run's, floored at 1 ms; the weight is the last event's
    at the bucket's end (the run's own for the last bucket)."""
    with database.session() as session:
        run = repository.add_run(
            session=session, flag="chat", spec=SPEC, weight=10, actor="ops", now=T0
        )
        for offset, weight in ((0.0, 10), (6.0, 50)):
            event = repository.add_canary_event(
                session=session,
                run_id=run.id,
                action="step",
                actor="ops",
                weight=weight,
                flag_set_version=1,
                detail={},
            )
            event.at = T0 + timedelta(seconds=offset)
        run.weight = 50
        session.add_all(
            [
                _call(0.5, "canary", 200, 0.004),
                _call(1.0, "canary", 503, 0.002),
                _call(1.5, "stable", 200, 0.002),
                _call(3.0, "canary", None, 5.0),
                _call(7.0, "canary", 200, 0.0005),
                _call(8.5, "stable", 200, 0.0003),
                _call(-1.0, "canary", 200, 9.0),  # before the run: not counted
                _call(2.0, "canary", 200, 9.0, flag="other"),  # another flag
                _call(2.0, "shadow", 200, 9.0),  # neither the stable nor the canary variant
            ]
        )
        session.flush()
        body = timeline(session=session, run=run, buckets=5, now=T0 + timedelta(seconds=10))

    assert (body["spanSeconds"], body["bucketSeconds"], body["samples"]) == (10.0, 2.0, 6)
    assert body["thresholds"] == {
        "maxErrorRate": 0.05,
        "maxP99LatencyRatio": 1.5,
        "minRequests": 100,
    }
    rows = [
        (
            b["canaryCalls"],
            b["canaryErrors"],
            b["canaryErrorRate"],
            b["canaryP99Ms"],
            b["stableCalls"],
            b["stableP99Ms"],
            b["p99LatencyRatio"],
            b["weight"],
        )
        for b in body["buckets"]
    ]
    assert rows == [
        (2, 1, 0.5, 4.0, 1, 2.0, 2.0, 10),
        (1, 1, 1.0, None, 0, None, None, 10),
        (0, 0, None, None, 0, None, None, 50),
        (1, 0, 0.0, 0.5, 0, None, 0.25, 50),  # run-wide stable p99 2 ms as the baseline
        (0, 0, None, None, 1, 0.3, None, 50),
    ]
    assert [b["offsetSeconds"] for b in body["buckets"]] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert [e["offsetSeconds"] for e in body["events"]] == [0.0, 6.0]


def test_a_young_run_gets_half_second_buckets(database: Database) -> None:
    """A run younger than the bucket count in seconds is cut into 0.5 s buckets, so its
    chart still has points."""
    with database.session() as session:
        run = repository.add_run(
            session=session, flag="chat", spec=SPEC, weight=10, actor="ops", now=T0
        )
        body = timeline(session=session, run=run, buckets=40, now=T0 + timedelta(seconds=3))
    assert (len(body["buckets"]), body["bucketSeconds"]) == (6, 0.5)
    assert {b["weight"] for b in body["buckets"]} == {10}


@pytest.fixture
def chat(flags_dir: Path, tmp_path: Path) -> Iterator[tuple[ControlPlane, BackendApp, BackendApp]]:
    """A control plane whose chat flag routes to two real backends on loopback."""
    stable, canary = BackendApp("chat-v1"), BackendApp("chat-v2", behaviour="error")
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    database = Database.from_url(url)
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(
            flags_dir,
            "chat.flagd.json",
            {
                "chat": {
                    "state": "ENABLED",
                    "variants": {
                        "stable": {"backend": "chat-v1", "url": stable_server.url},
                        "canary": {"backend": "chat-v2", "url": canary_server.url},
                    },
                    "defaultVariant": "stable",
                    "targeting": {"fractional": [["canary", 0], ["stable", 100]]},
                }
            },
        )
        with running(make_settings(flags_dir, url, tmp_path), database) as plane:
            yield plane, stable, canary
    database.dispose()


def _timeline(plane: ControlPlane, **params: Any) -> dict[str, Any]:
    with plane.client(VIEWER) as client:
        response = client.get("/v1/canaries/chat/timeline", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_timeline_of_a_real_canary(chat: tuple[ControlPlane, BackendApp, BackendApp]) -> None:
    """Every call the proxy made to the failing canary and to the stable backend is in the
    timeline, as errors for the canary; after an abort the last bucket shows weight 0."""
    plane, stable, canary = chat
    with plane.client(OPERATOR) as client:
        started = client.post(
            "/v1/canaries/chat",
            json={"steps": [30, 100], "minRequests": 10_000, "intervalSeconds": 600},
        )
        assert started.status_code == 201, started.text
        for index in range(120):
            client.get("/v1/dispatch/chat/v1/chat", headers={"x-user-id": f"user-{index}"})
    plane.flush()
    running_body = _timeline(plane, buckets=10)
    assert running_body["state"] == "running"
    buckets = running_body["buckets"]
    assert sum(b["canaryCalls"] for b in buckets) == len(canary.requests) > 0
    assert sum(b["canaryErrors"] for b in buckets) == len(canary.requests)
    # Failed canary calls are retried on the stable variant: it answered every one.
    assert sum(b["stableCalls"] for b in buckets) == len(stable.requests) == 120
    assert {b["weight"] for b in buckets} == {30}
    assert running_body["thresholds"]["minRequests"] == 10_000

    with plane.client(OPERATOR) as client:
        assert client.post("/v1/canaries/chat/abort").status_code == 200
    finished = _timeline(plane, buckets=10)
    assert finished["state"] == "aborted"
    assert finished["buckets"][-1]["weight"] == 0
    assert [event["action"] for event in finished["events"]] == ["started", "aborted"]


@pytest.mark.parametrize(
    ("path", "token", "status", "says"),
    [
        ("/v1/canaries/chat/timeline", None, 401, "Authorization: Bearer"),
        ("/v1/canaries/chat/timeline", VIEWER, 404, "never had a canary"),
        ("/v1/canaries/chat/timeline?buckets=0", VIEWER, 400, "query.buckets"),
    ],
)
def test_timeline_refusals_are_clear_problems(
    chat: tuple[ControlPlane, BackendApp, BackendApp],
    path: str,
    token: str | None,
    status: int,
    says: str,
) -> None:
    """No token, a flag that never had a canary, and a bad bucket count are problems."""
    with chat[0].client(token) as client:
        response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert says in response.json()["detail"]
