"""Progressive canaries on real servers: backends on loopback that behave well or badly,
traffic through the real dispatch proxy, flag writes through the validated, versioned path.
A bad canary is rolled back in its first step with the reason in the audit log, a good one is
promoted after all its steps, and a restart in the middle resumes where it was."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import db_support
import httpx
import pytest
from conftest import write_flags
from experiments_support import (
    ADMIN,
    OPERATOR,
    VIEWER,
    ControlPlane,
    Traffic,
    make_settings,
    running,
    wait_for,
)
from servers import BackendApp, ServerThread

from control_plane.cli import main
from control_plane.db import Database
from control_plane.experiments import repository
from control_plane.settings import Settings

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

FLAG = "chat-router"
#: The built-in checks judge (and let a canary be promoted) after this few calls: these tests
#: are about stepping, not statistics (tests/test_canary_gates.py has those).
FEW_SAMPLES = {"errorRate": {"minSamples": 20}, "latency": {"minSamples": 20}}
PATH = f"/v1/dispatch/{FLAG}/v1/chat"


@dataclass
class Env:
    stable: BackendApp
    canary: BackendApp
    settings: Settings
    database: Database


def chat_flag(stable_url: str, canary_url: str, targeting: Any = None) -> dict[str, Any]:
    return {
        FLAG: {
            "state": "ENABLED",
            "variants": {
                "stable": {"backend": "chat-v1", "url": stable_url},
                "canary": {"backend": "chat-v2", "url": canary_url},
            },
            "defaultVariant": "stable",
            "targeting": targeting
            if targeting is not None
            else {"fractional": [["canary", 0], ["stable", 100]]},
        }
    }


@pytest.fixture
def env(database: Database, database_url: str, flags_dir: Path, tmp_path: Path) -> Iterator[Env]:
    """Two model backends on loopback and a flag that routes between them (canary at 0%)."""
    stable, canary = BackendApp("stable"), BackendApp("canary")
    with ServerThread(stable) as stable_server, ServerThread(canary) as canary_server:
        write_flags(flags_dir, "chat.flagd.json", chat_flag(stable_server.url, canary_server.url))
        yield Env(stable, canary, make_settings(flags_dir, database_url, tmp_path), database)


def _start(plane: ControlPlane, **spec: Any) -> dict[str, Any]:
    with plane.client(OPERATOR) as client:
        response = client.post(f"/v1/canaries/{FLAG}", json=spec)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _status(plane: ControlPlane) -> dict[str, Any]:
    with plane.client(VIEWER) as client:
        body: dict[str, Any] = client.get(f"/v1/canaries/{FLAG}").json()
    return body


def _finished(plane: ControlPlane) -> dict[str, Any] | None:
    status = _status(plane)
    return status if status["state"] in ("promoted", "rolled_back", "aborted") else None


def _flag(plane: ControlPlane) -> dict[str, Any]:
    with plane.client(VIEWER) as client:
        body: dict[str, Any] = client.get(f"/v1/flags/{FLAG}").json()["flag"]
    return body


def _history(plane: ControlPlane) -> list[dict[str, Any]]:
    with plane.client(VIEWER) as client:
        return list(client.get("/v1/flags/history", params={"limit": 50}).json()["items"])


def _audit(plane: ControlPlane) -> list[dict[str, Any]]:
    with plane.client(ADMIN) as client:
        return list(client.get("/v1/audit", params={"limit": 200}).json()["items"])


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("error", "canary error rate 100.0%"),
        ("slow", "canary p99 latency"),
    ],
)
def test_bad_canary_is_rolled_back_in_its_first_step(env: Env, behaviour: str, reason: str) -> None:
    """A canary that fails (503) or is slow is set to 0% in its first step, with the reason
    (the failed check) in the run, the audit log and the flag history; then no traffic
    reaches it."""
    env.canary.behaviour, env.canary.delay = behaviour, 0.5
    with running(env.settings, env.database) as plane:
        # The next step is 100% (no stable traffic left to compare with), so the step waits
        # until the checks have judged; one failed check rolls back.
        _start(
            plane,
            steps=[20, 100],
            intervalSeconds=0.5,
            minRequests=5,
            maxErrorRate=0.1,
            maxP99LatencyRatio=5,
            failureThreshold=1,
        )
        with Traffic(plane.url, PATH, threads=4):
            status = wait_for(lambda: _finished(plane), what="the canary to be rolled back")
        assert status["state"] == "rolled_back"
        assert status["weight"] == 0
        assert status["step"] == 1  # never left its first step
        assert reason in status["reason"]
        # The controller may report the canary idle before the traffic starts.
        actions = [event["action"] for event in status["events"] if event["action"] != "idle"]
        assert actions == ["started", "rolled_back"]
        rollback = status["events"][-1]
        assert rollback["actor"] == "canary-controller"
        assert rollback["detail"]["observed"]["canaryCalls"] >= 5

        audit = [
            event
            for event in _audit(plane)
            if event["target"] == FLAG and event["action"] != "canary.idle"
        ]
        assert audit[0]["action"] == "canary.rolled_back"
        assert audit[0]["actor"] == "canary-controller"
        assert reason in audit[0]["detail"]["reason"]
        assert audit[1]["action"] == "canary.started"
        assert audit[1]["actor"] == "ops"

        latest = _history(plane)[0]
        assert (latest["source"], latest["actor"]) == ("canary", "canary-controller")
        assert "rolled back" in latest["message"]
        assert reason in latest["message"]
        assert latest["version"] == rollback["flagSetVersion"]
        assert _flag(plane)["targeting"] == {"fractional": [["canary", 0], ["stable", 100]]}

        seen = len(env.canary.requests)
        with httpx.Client(base_url=plane.url) as client:
            for index in range(40):
                assert client.get(PATH, headers={"x-user-id": f"after-{index}"}).status_code == 200
        assert len(env.canary.requests) == seen


def test_good_canary_is_promoted_after_all_steps(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A healthy canary goes through every step and becomes the default variant; each weight
    change is a flag set version by the canary controller; `canary watch` follows it to the
    end and exits 0."""
    with running(env.settings, env.database) as plane:
        _start(
            plane,
            steps=[25, 50, 100],
            intervalSeconds=0.3,
            minRequests=5,
            maxErrorRate=0.05,
            maxP99LatencyRatio=200,
            checks=FEW_SAMPLES,
        )
        with Traffic(plane.url, PATH, threads=3):
            assert (
                main(
                    [
                        "canary",
                        "watch",
                        FLAG,
                        "--url",
                        plane.url,
                        "--token",
                        VIEWER,
                        "--every",
                        "0.1",
                    ]
                )
                == 0
            )
        status = _status(plane)
        assert status["state"] == "promoted"
        assert status["weight"] == 100
        events = [e for e in status["events"] if e["action"] != "idle"]
        steps = [(e["action"], e["weight"]) for e in events]
        assert steps == [("started", 25), ("step", 50), ("step", 100), ("promoted", 100)]
        for event in events[1:]:
            observed = event["detail"]["observed"]
            assert observed["canaryCalls"] >= 5
            assert observed["canaryErrors"] == 0

        flag = _flag(plane)
        assert flag["defaultVariant"] == "canary"
        assert flag["targeting"] == {"fractional": [["canary", 100], ["stable", 0]]}
        canary_versions = [v for v in _history(plane) if v["source"] == "canary"]
        assert len(canary_versions) == 4
        assert all(v["actor"] == "canary-controller" for v in canary_versions)
        assert "promoted" in canary_versions[0]["message"]

        before = len(env.stable.requests)
        with httpx.Client(base_url=plane.url) as client:
            for index in range(30):
                response = client.get(PATH, headers={"x-user-id": f"after-{index}"})
                assert response.headers["x-route-variant"] == "canary"
        assert len(env.stable.requests) == before
    out = capsys.readouterr().out
    assert "promoted" in out
    assert "step" in out


def test_restart_in_the_middle_resumes_where_it_was(env: Env) -> None:
    """A control plane stopped in the middle of a canary and started again continues from the
    step it had reached (state is in the database), never repeating a step, then promotes."""
    with running(env.settings, env.database) as plane:
        run_id = _start(
            plane,
            steps=[20, 40, 60, 100],
            intervalSeconds=0.8,
            minRequests=5,
            maxErrorRate=0.05,
            maxP99LatencyRatio=200,
            checks=FEW_SAMPLES,
        )["id"]
        with Traffic(plane.url, PATH, threads=3):
            wait_for(lambda: _status(plane)["step"] >= 2, what="the canary to reach step 2")
    # Stopped: where it was is in the database and in the flag file, nowhere else.
    with env.database.session() as session:
        run = repository.latest_run(session=session, flag=FLAG)
        assert run is not None
        reached, weight, state = run.step_index + 1, run.weight, run.state
        events_before = sum(
            1
            for event in repository.canary_events(session=session, run_id=run.id)
            if event.action != "idle"
        )
    assert state == "running"
    assert 2 <= reached <= 3
    document = json.loads((env.settings.flags_dir / "chat.flagd.json").read_text())
    assert document["flags"][FLAG]["targeting"]["fractional"][0] == ["canary", weight]

    with running(env.settings, env.database) as plane, Traffic(plane.url, PATH, threads=3):
        status = wait_for(lambda: _finished(plane), what="the canary to finish")
    assert status["state"] == "promoted"
    assert status["id"] == run_id
    actions = [
        (e["action"], e["detail"].get("step")) for e in status["events"] if e["action"] != "idle"
    ]
    assert actions[0] == ("started", 1)
    assert [action for action, _ in actions].count("started") == 1
    assert [step for action, step in actions if action == "step"] == [2, 3, 4]
    # After the restart: only the steps after the one reached, then the promotion.
    assert actions[events_before:] == [("step", step) for step in range(reached + 1, 5)] + [
        ("promoted", None)
    ]


def test_pause_resume_abort_from_the_cli(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Operators drive a canary with the CLI: start, pause (it holds its weight under traffic),
    resume, abort (weight 0 at once, their message in the audit log); list shows it."""
    client = ["--url", "", "--token", OPERATOR]
    with running(env.settings, env.database) as plane:
        client[1] = plane.url
        assert (
            main(
                [
                    "canary",
                    "start",
                    FLAG,
                    "--steps",
                    "10,50,100",
                    "--interval",
                    "0.2",
                    "--min-requests",
                    "3",
                    "--max-latency-ratio",
                    "200",
                    *client,
                ]
            )
            == 0
        )
        assert "canary weight 10%" in capsys.readouterr().out
        assert main(["canary", "pause", FLAG, "-m", "looking at dashboards", *client]) == 0
        with Traffic(plane.url, PATH, threads=3) as traffic:
            wait_for(lambda: traffic.sent > 200, what="traffic while paused")
        status = _status(plane)
        assert (status["state"], status["step"], status["weight"]) == ("paused", 1, 10)
        assert main(["canary", "list", *client]) == 0
        assert "paused" in capsys.readouterr().out
        assert main(["canary", "resume", FLAG, *client]) == 0
        assert _status(plane)["state"] == "running"
        assert main(["canary", "abort", FLAG, "-m", "latency budget", *client]) == 0
        status = _status(plane)
        assert (status["state"], status["weight"]) == ("aborted", 0)
        assert status["reason"] == "aborted by ops: latency budget"
        assert _flag(plane)["targeting"] == {"fractional": [["canary", 0], ["stable", 100]]}
        # The controller may report the resumed canary idle (no traffic) before the abort.
        actions = [(e["action"], e["actor"]) for e in status["events"] if e["action"] != "idle"]
        assert actions == [
            ("started", "ops"),
            ("paused", "ops"),
            ("resumed", "ops"),
            ("aborted", "ops"),
        ]
        audit = [e for e in _audit(plane) if e["target"] == FLAG]
        assert audit[0]["action"] == "canary.aborted"
        assert audit[0]["detail"]["reason"] == "aborted by ops: latency budget"
        assert any(
            e["action"] == "canary.paused"
            and e["actor"] == "ops"
            and e["detail"]["message"] == "looking at dashboards"
            for e in audit
        )
        capsys.readouterr()
        assert main(["canary", "watch", FLAG, *client]) == 3  # finished, not promoted
        assert "aborted" in capsys.readouterr().out
        assert main(["canary", "list", "--all", *client]) == 0
        assert "aborted" in capsys.readouterr().out


def test_refusals_are_clear_problems(
    env: Env, flags_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad requests get a problem naming what is wrong and change nothing: a viewer may not
    start (403), a bad spec or flag is 422, a second canary on a flag is 409, no canary is 404."""
    with running(env.settings, env.database) as plane:
        with plane.client(VIEWER) as viewer:
            assert viewer.post(f"/v1/canaries/{FLAG}", json={}).status_code == 403
        with plane.client(OPERATOR) as operator:
            bad = operator.post(
                f"/v1/canaries/{FLAG}", json={"steps": [50, 10], "minRequests": 0, "bogus": 1}
            )
            assert bad.status_code == 422, bad.text
            fields = {error["field"] for error in bad.json()["errors"]}
            assert fields == {"steps", "minRequests", "bogus"}
            missing = operator.post("/v1/canaries/no-such-flag", json={})
            assert missing.status_code == 422
            assert "no flag named 'no-such-flag'" in missing.json()["detail"]
            variant = operator.post(f"/v1/canaries/{FLAG}", json={"canaryVariant": "v9"})
            assert "has no variant 'v9'" in variant.json()["detail"]
            no_prometheus = operator.post(
                f"/v1/canaries/{FLAG}",
                json={
                    "metrics": [
                        {"name": "errors", "query": "vector(0)", "thresholdRange": {"max": 0.1}}
                    ]
                },
            )
            assert no_prometheus.status_code == 422
            assert no_prometheus.headers["content-type"] == "application/problem+json"
            assert [e["field"] for e in no_prometheus.json()["errors"]] == [
                "metrics.0.provider.address"
            ]
            assert operator.post(f"/v1/canaries/{FLAG}/pause").status_code == 404
            assert (
                operator.post(f"/v1/canaries/{FLAG}", json={"intervalSeconds": 600}).status_code
                == 201
            )
            again = operator.post(f"/v1/canaries/{FLAG}", json={})
            assert again.status_code == 409
            assert "already has an active canary" in again.json()["detail"]
            assert operator.post(f"/v1/canaries/{FLAG}/resume").status_code == 409
            assert (
                operator.post(f"/v1/canaries/{FLAG}/abort", content=b"not json").status_code == 400
            )
        assert (
            main(["canary", "start", "region-router", "--url", plane.url, "--token", OPERATOR]) == 1
        )
        err = capsys.readouterr().err
        assert err.startswith("control-plane canary start: 422 Invalid canary:")
        assert "flag 'region-router' has no variant 'stable'" in err


def test_canary_without_traffic_reports_itself_idle(env: Env) -> None:
    """A canary that gets no request for idleIntervals intervals keeps waiting but says so:
    a warning in its status, one `idle` event, the idle gauge in /metrics; once traffic
    comes, the warning goes and the canary is promoted."""
    with running(env.settings, env.database) as plane:
        _start(
            plane,
            steps=[100],
            intervalSeconds=0.2,
            idleIntervals=2,
            minRequests=5,
            maxP99LatencyRatio=200,
            checks=FEW_SAMPLES,
        )
        status = wait_for(
            lambda: (s := _status(plane))["warnings"] and len(s["events"]) == 2 and s,
            what="the idle warning and event",
        )
        assert status["state"] == "running"
        idle = re.search(
            r"no canary traffic: 'canary' got no request in (\d+) consecutive intervals",
            status["warnings"][0],
        )
        assert idle is not None
        assert int(idle.group(1)) >= 2  # ticks may land late on a busy host
        assert "the calls the control plane recorded" in status["warnings"][0]
        assert status["analysis"]["idleIntervals"] >= 2
        assert [event["action"] for event in status["events"]] == ["started", "idle"]
        with plane.client() as client:
            metrics = client.get("/metrics").text
        gauge = next(
            line
            for line in metrics.splitlines()
            if line.startswith(f'control_plane_canary_idle_intervals{{flag="{FLAG}"}}')
        )
        assert float(gauge.split()[-1]) >= 2
        with Traffic(plane.url, PATH, threads=3):
            status = wait_for(lambda: _finished(plane), what="the promotion")
        assert status["state"] == "promoted"
        assert [event["action"] for event in status["events"]] == ["started", "idle", "promoted"]


def _still_open(connection: socket.socket) -> bool:
    """True while the peer has not closed `connection` (what it sent is read and dropped)."""
    connection.setblocking(False)
    while True:
        try:
            if connection.recv(65536) == b"":
                return False
        except BlockingIOError:
            return True


def test_abort_does_not_wait_for_a_hanging_prometheus(env: Env) -> None:
    """While the controller waits on a Prometheus that accepted the connection and never
    answers, an operator's abort goes through at once: the query is still open after it."""
    accepted: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.1)

        def accept() -> None:
            while listener.fileno() != -1 and len(accepted) < 8:
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
        silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = env.settings.model_copy(update={"prometheus_timeout": 2.0})
        with running(settings, env.database) as plane:
            _start(
                plane,
                intervalSeconds=0.2,
                builtinChecks=False,
                trafficQuery="vector(1)",
                metrics=[
                    {
                        "name": "errors",
                        "query": "vector(0)",
                        "thresholdRange": {"max": 0.1},
                        "provider": {"address": silent},
                    }
                ],
            )
            wait_for(lambda: accepted, what="the controller's query to Prometheus")
            with plane.client(OPERATOR) as client:
                aborted = client.post(f"/v1/canaries/{FLAG}/abort")
            assert aborted.status_code == 200, aborted.text
            assert aborted.json()["state"] == "aborted"
            assert _still_open(accepted[0])  # the query is still waiting for its answer
        for connection in accepted:
            connection.close()


def test_flag_without_a_controllable_split_is_refused(env: Env, flags_dir: Path) -> None:
    """A flag whose targeting has no fixed-weight split of the two variants cannot be driven:
    the start is refused with an example of the rule to add."""
    stable_url = "http://127.0.0.1:9"
    write_flags(
        flags_dir,
        "chat.flagd.json",
        chat_flag(
            stable_url,
            stable_url,
            targeting={"if": [{"==": [{"var": "tier"}, "beta"]}, "canary", "stable"]},
        ),
    )
    with running(env.settings, env.database) as plane, plane.client(OPERATOR) as operator:
        response = operator.post(f"/v1/canaries/{FLAG}", json={})
    assert response.status_code == 422
    assert '{"fractional": [["canary", 0], ["stable", 100]]}' in response.json()["detail"]
