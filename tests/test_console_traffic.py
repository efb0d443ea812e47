"""The observed split: the decision tracker's sliding window, and `GET /v1/traffic` on a real
server, where the counts are those of the decisions the test made and the configured split is
the one the flag's targeting gives a request without attributes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from experiments_support import VIEWER, ControlPlane, make_settings, running

from control_plane.console.traffic import TrafficTracker
from control_plane.db import Database
from control_plane.routing.decisions import Decision

PROBLEM = "application/problem+json"


class Clock:
    """A settable monotonic clock for the tracker."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _decision(flag: str, variant: str) -> Decision:
    return Decision(
        flag_key=flag,
        variant=variant,
        backend=variant,
        url="http://127.0.0.1:1",
        reason="TARGETING_MATCH",
        flag_set_version=1,
        decision_id="d1",
    )


def test_window_sums_the_last_seconds_per_variant_and_bucket() -> None:
    """Decisions land in the bucket of their second; the window totals only the seconds
    inside it, oldest bucket first, the newest bucket ending now."""
    clock = Clock()
    tracker = TrafficTracker(max_seconds=60, clock=clock)
    tracker.observe(_decision("f", "a"), 0.001)  # t=1000, falls out of a 10 s window at 1010
    clock.now = 1005.5
    for _ in range(3):
        tracker.observe(_decision("f", "a"), 0.001)
    tracker.observe(_decision("f", "b"), 0.001)
    clock.now = 1009.2
    tracker.record("f", "b", 2)
    tracker.record("other", "x")

    window = tracker.window("f", 10, buckets=5)
    assert (window.seconds, window.bucket_seconds) == (10, 2)
    assert window.totals == {"a": 4, "b": 3}
    assert window.decisions == 7
    # Ages: t=1009 -> 0 (last bucket), t=1005 -> 4 (bucket 2), t=1000 -> 9 (bucket 0).
    assert window.series == [{"a": 1}, {}, {"a": 3, "b": 1}, {}, {"b": 2}]

    clock.now = 1010.0
    assert tracker.window("f", 10, buckets=5).totals == {"a": 3, "b": 3}
    assert tracker.window("f", 1, buckets=1).totals == {}
    assert tracker.flags() == ["f", "other"]


def test_a_reused_slot_forgets_the_second_it_held() -> None:
    """After the ring wraps, a slot counts its new second from zero, and an unknown flag has
    an empty window."""
    clock = Clock(0.0)
    tracker = TrafficTracker(max_seconds=5, clock=clock)
    tracker.record("f", "a", 10)
    clock.now = 6.0  # the same slot as second 0 (ring of 6)
    tracker.record("f", "a")
    window = tracker.window("f", 5, buckets=5)
    assert window.totals == {"a": 1}
    assert window.series[-1] == {"a": 1}
    assert tracker.window("nobody", 5).totals == {}


@pytest.mark.parametrize(
    ("seconds", "buckets", "message"),
    [
        (0, 10, "seconds must be from 1 to 60"),
        (61, 10, "seconds must be from 1 to 60"),
        (30, 0, "buckets must be at least 1"),
    ],
)
def test_bad_window_arguments_are_refused(seconds: int, buckets: int, message: str) -> None:
    """A window outside the tracker's range, or without buckets, is a ValueError saying so."""
    with pytest.raises(ValueError, match=message):
        TrafficTracker(max_seconds=60).window("f", seconds, buckets)


@pytest.fixture
def plane(flags_dir: Path, tmp_path: Path) -> Iterator[ControlPlane]:
    """A full control plane on loopback over a SQLite file."""
    url = f"sqlite:///{tmp_path / 'traffic.db'}"
    database = Database.from_url(url)
    with running(make_settings(flags_dir, url, tmp_path), database) as control_plane:
        yield control_plane
    database.dispose()


def _variants(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["variant"]: row for row in body["variants"]}


def test_traffic_counts_the_decisions_made(plane: ControlPlane) -> None:
    """`/v1/traffic/{flag}` shows each variant's backend, configured share and exactly the
    decisions made, per variant and in total; `/v1/traffic` lists every routing flag."""
    with httpx.Client(base_url=plane.url, timeout=15) as client:
        ab = Counter(
            client.get("/v1/decide/ab-test-router", headers={"x-user-id": f"user-{n}"}).json()[
                "variant"
            ]
            for n in range(300)
        )
        region = Counter(
            client.get(
                "/v1/decide/region-router",
                headers={"x-user-id": f"user-{n}", "x-region": "cn" if n % 4 == 0 else "eu"},
            ).json()["variant"]
            for n in range(100)
        )
    assert region == {"cn": 25, "global": 75}
    with plane.client(VIEWER) as viewer:
        body = viewer.get("/v1/traffic/ab-test-router", params={"minutes": 1}).json()
        regions = viewer.get("/v1/traffic/region-router").json()
        every = viewer.get("/v1/traffic", params={"minutes": 15, "buckets": 15}).json()

    rows = _variants(body)
    assert body["window"] == {"seconds": 60, "bucketSeconds": 2, "decisions": 300}
    assert len(body["series"]) == 30
    assert {name: row["decisions"] for name, row in rows.items()} == dict(ab)
    assert rows["model-a"]["observedShare"] == pytest.approx(ab["model-a"] / 300)
    assert rows["model-b"]["backend"] == "model-b"
    assert rows["model-b"]["url"] == "http://127.0.0.1:9102"
    assert {name: row["configuredShare"] for name, row in rows.items()} == {
        "model-a": 0.5,
        "model-b": 0.5,
    }
    assert body["configured"]["kind"] == "fractional"
    assert body["experiment"] is True
    assert sum(sum(bucket.values()) for bucket in body["series"]) == 300

    region_rows = _variants(regions)
    assert {name: row["decisions"] for name, row in region_rows.items()} == dict(region)
    assert regions["configured"]["kind"] == "fixed"
    assert "global" in regions["configured"]["note"]
    assert {n: r["configuredShare"] for n, r in region_rows.items()} == {"global": 1.0, "cn": 0.0}

    assert [flag["flag"] for flag in every["flags"]] == [
        "ab-test-router",
        "canary-router",
        "pinned-router",
        "region-router",
    ]
    assert every["minutes"] == 15
    listed = {flag["flag"]: flag for flag in every["flags"]}
    assert listed["ab-test-router"]["window"]["decisions"] == 300
    assert listed["ab-test-router"]["window"]["bucketSeconds"] == 60
    assert listed["canary-router"]["window"]["decisions"] == 0


@pytest.mark.parametrize(
    ("path", "token", "status", "says"),
    [
        ("/v1/traffic/ab-test-router", None, 401, "Authorization: Bearer"),
        ("/v1/traffic/ab-test-router?minutes=0", VIEWER, 400, "query.minutes"),
        ("/v1/traffic?minutes=16", VIEWER, 400, "query.minutes"),
        ("/v1/traffic/ab-test-router?buckets=500", VIEWER, 400, "query.buckets"),
        ("/v1/traffic/no-such-flag", VIEWER, 404, "no flag named 'no-such-flag'"),
        ("/v1/traffic/vector-hook-pipeline", VIEWER, 422, "not a routing flag"),
    ],
)
def test_traffic_refusals_are_clear_problems(
    plane: ControlPlane, path: str, token: str | None, status: int, says: str
) -> None:
    """No token, a window or bucket count out of range, an unknown flag and a non-routing
    flag each answer a problem+json naming what was wrong."""
    with plane.client(token) as client:
        response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert says in response.json()["detail"]
