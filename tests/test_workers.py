"""`control-plane serve --workers 2` on real processes: one port, two processes, one control plane.

The primary and its decide worker both accept on the port (SO_REUSEPORT); which process owns
a connection shows in the decision id's per-process prefix (its first 12 hex characters). The
unit-level tests check the metrics merge (with promtool), the traffic sum and the forwarding
proxy's header handling.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import copy_shipped_flags
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from serve_process import ServeProcess
from servers import ServerThread

from control_plane.console.traffic import TrafficWindow
from control_plane.workers.forwarding import PrimaryForwarder
from control_plane.workers.metrics_merge import merge_expositions
from control_plane.workers.traffic_merge import sum_windows, window_from_json, window_json
from flags import AB_TEST_ROUTER, REGION_ROUTER

ADMIN = "admin-token-for-worker-tests-0000001"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PROMTOOL = Path("/usr/bin/promtool")


def _serve(root: Path) -> ServeProcess:
    root.mkdir(parents=True, exist_ok=True)
    flags = copy_shipped_flags(root / "flags")
    env = {"CP_ADMIN_TOKENS": f"root:admin:{ADMIN}", "CP_EXPOSURE_SPILL_DIR": str(root / "spill")}
    return ServeProcess(flags, root, env=env, args=("--workers", "2"))


def _wait(predicate: Callable[[], object], timeout: float = 30, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def _prefix(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-route-decision-id"][:12]


def _children(pid: int) -> list[int]:
    """Live worker processes of `pid` (its children started with --worker-of)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = text.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z" and b"--worker-of" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _owners(url: str, want: int = 2, tries: int = 400) -> dict[str, httpx.Client]:
    """One open keep-alive connection per process (prefix -> client), from fresh connections."""
    owners: dict[str, httpx.Client] = {}
    for index in range(tries):
        client = httpx.Client(base_url=url, timeout=10)
        try:
            prefix = _prefix(
                client.get(f"/v1/decide/{REGION_ROUTER}", headers={"x-user-id": f"owner-{index}"})
            )
        except httpx.TransportError:  # a worker's socket closing under the connection
            client.close()
            continue
        if prefix in owners:
            client.close()
        else:
            owners[prefix] = client
        if len(owners) >= want:
            return owners
    for client in owners.values():
        client.close()
    raise AssertionError(f"{tries} connections reached {len(owners)} process(es), not {want}")


def _prefixes(url: str) -> set[str]:
    """The decision id prefixes of the processes answering now (both, or raises)."""
    found = _owners(url)
    for client in found.values():
        client.close()
    return set(found)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with _serve(tmp_path_factory.mktemp("workers")) as server:
        _wait(lambda: len(_children(server.pid)) == 1, what="the worker process")
        _prefixes(server.url)  # until the worker listens too
        yield server


@pytest.fixture
def owners(served: ServeProcess) -> Iterator[dict[str, httpx.Client]]:
    found = _owners(served.url)
    yield found
    for client in found.values():
        client.close()


def test_both_processes_answer_decide_on_the_same_port(
    served: ServeProcess, owners: dict[str, httpx.Client]
) -> None:
    """Fresh connections to one port are answered by two processes: the primary and a worker."""
    assert len(owners) == 2
    assert len(_children(served.pid)) == 1
    for client in owners.values():  # the same answer whichever process decides
        answer = client.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": "same-user"})
        assert answer.status_code == 200
    variants = {
        c.get(f"/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": "same-user"}).headers[
            "x-route-variant"
        ]
        for c in owners.values()
    }
    assert len(variants) == 1


def test_the_admin_api_answers_through_either_process(owners: dict[str, httpx.Client]) -> None:
    """Admin reads, a bad request and the console answer the same on the worker's connections
    (forwarded to the primary) as on the primary's."""
    answers = []
    for client in owners.values():
        flags = client.get("/v1/flags", headers=AUTH)
        assert flags.status_code == 200, flags.text
        unauthenticated = client.get("/v1/flags")
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["content-type"].startswith("application/problem+json")
        assert client.get("/console", headers=AUTH).status_code in (200, 401)
        answers.append(flags.json())
    assert answers[0] == answers[1]


def _serves(client: httpx.Client, key: str) -> Callable[[], bool]:
    return lambda: client.get(f"/v1/decide/{key}").status_code == 200


def test_an_edit_through_either_process_serves_on_both_within_a_second(
    owners: dict[str, httpx.Client],
) -> None:
    """A flag PUT on each process's connection is served by both processes in under 1 s."""
    for number, writer in enumerate(owners.values()):
        key = f"worker-edit-{number}"
        flag = {
            "state": "ENABLED",
            "defaultVariant": "a",
            "variants": {"a": {"backend": key, "url": "http://127.0.0.1:9"}},
        }
        started = time.monotonic()
        put = writer.put(f"/v1/flags/{key}", json=flag, headers=AUTH)
        assert put.status_code in (200, 201), put.text
        for client in owners.values():
            _wait(_serves(client, key), timeout=5, what=f"{key} on every process")
        assert time.monotonic() - started < 1.0
        versions = {
            c.get(f"/v1/decide/{key}").headers["x-route-flag-set-version"] for c in owners.values()
        }
        assert len(versions) == 1  # the worker numbers flag sets as the primary does


def test_one_scrape_shows_every_process_and_passes_promtool(
    owners: dict[str, httpx.Client],
) -> None:
    """/metrics on either process has the primary's and the worker's decision counters, each
    family once, and promtool accepts the page."""
    for client in owners.values():
        client.get(f"/v1/decide/{REGION_ROUTER}", headers={"x-user-id": "metrics-user"})
    for client in owners.values():
        page = client.get("/metrics")
        assert page.status_code == 200
        lines = page.text.splitlines()
        decisions = [line for line in lines if line.startswith("control_plane_decisions_total{")]
        assert any('worker="0"' in line for line in decisions)
        assert any('worker="1"' in line for line in decisions)
        types = [line for line in lines if line.startswith("# TYPE ")]
        assert len(types) == len(set(types))
        assert 'control_plane_workers_running{worker="0"} 2.0' in lines
        if PROMTOOL.exists():
            check = subprocess.run(
                [str(PROMTOOL), "check", "metrics"],
                input=page.content,
                capture_output=True,
                check=False,
            )
            assert check.returncode == 0, check.stdout + check.stderr


def test_the_console_traffic_view_sums_both_processes(owners: dict[str, httpx.Client]) -> None:
    """/v1/traffic counts the decisions of both processes, whichever process answers it."""

    def decisions(client: httpx.Client) -> int:
        body = client.get(f"/v1/traffic/{REGION_ROUTER}", headers=AUTH).json()
        return int(body["window"]["decisions"])

    clients = list(owners.values())
    before = decisions(clients[0])
    for client, count in zip(clients, (7, 11), strict=True):
        for index in range(count):
            client.get(f"/v1/decide/{REGION_ROUTER}", headers={"x-user-id": f"t-{index}"})
    assert decisions(clients[0]) == before + 18
    assert decisions(clients[1]) == before + 18


def test_a_killed_worker_is_started_again(served: ServeProcess) -> None:
    """kill -9 of the worker: the primary starts a new one, which answers on the port."""
    (old,) = _children(served.pid)
    before = _prefixes(served.url)
    os.kill(old, signal.SIGKILL)
    _wait(lambda: [p for p in _children(served.pid) if p != old], what="a new worker")
    _wait(lambda: _prefixes(served.url) - before, what="the new worker answering")
    page = httpx.get(served.url + "/metrics").text
    assert 'control_plane_worker_restarts_total{worker="1"} 1.0' in page


def test_exposures_of_both_processes_are_stored_and_sigterm_stops_all(
    served: ServeProcess,
) -> None:
    """200 experiment decisions spread over both processes end as 200 exposures in the
    database; SIGTERM to the primary stops the worker too, each writing out its queue.
    (The module's last test on `served`.)"""
    (worker,) = _children(served.pid)
    ids = set()
    for index in range(200):
        answer = httpx.get(
            f"{served.url}/v1/decide/{AB_TEST_ROUTER}", headers={"x-user-id": f"exposed-{index}"}
        )
        assert answer.status_code == 200
        ids.add(answer.headers["x-route-decision-id"])
    prefixes = {decision_id[:12] for decision_id in ids}
    assert len(prefixes) == 2
    assert served.process is not None
    served.process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is a clean stop.
    status = served.process.wait(timeout=30)
    assert status in (0, -signal.SIGTERM), served.exit_report()
    _wait(lambda: not _alive(worker), timeout=15, what="the worker's exit")
    with sqlite3.connect(served.workdir / f"serve-{served.port}.db") as database:
        rows = database.execute(
            "SELECT decision_id FROM exposures WHERE flag = ?", (AB_TEST_ROUTER,)
        ).fetchall()
    stored = {row[0] for row in rows} & ids
    assert len(stored) == 200
    assert {decision_id[:12] for decision_id in stored} == prefixes


def test_a_worker_ends_when_its_primary_is_killed(tmp_path: Path) -> None:
    """kill -9 of the primary: the worker gets SIGTERM (PR_SET_PDEATHSIG) and exits."""
    with _serve(tmp_path) as server:
        _wait(lambda: len(_children(server.pid)) == 1, what="the worker process")
        (worker,) = _children(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        _wait(lambda: not _alive(worker), timeout=20, what="the worker's exit")


# -- units: merge, sum, forwarding ---------------------------------------------------------


def _page(value: float) -> str:
    registry = CollectorRegistry()
    Counter("decisions", "Decisions.", ["flag"], registry=registry).labels("f").inc(value)
    Histogram("latency_seconds", "Latency.", registry=registry).observe(value / 100)
    return generate_latest(registry).decode()


def test_merged_expositions_keep_one_family_with_a_worker_label_each() -> None:
    """Two processes' pages merge into one valid page: every sample labelled by process."""
    merged = merge_expositions([("0", _page(2)), ("1", _page(3))]).decode()
    assert 'decisions_total{flag="f",worker="0"} 2.0' in merged
    assert 'decisions_total{flag="f",worker="1"} 3.0' in merged
    assert merged.count("# TYPE decisions_total counter") == 1
    assert merged.count("# TYPE latency_seconds histogram") == 1
    if PROMTOOL.exists():
        check = subprocess.run(
            [str(PROMTOOL), "check", "metrics"],
            input=merged.encode(),
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_traffic_windows_sum_bucket_by_bucket_and_survive_json() -> None:
    """A worker's window sent as JSON adds to the primary's per variant and per bucket."""
    mine = TrafficWindow("f", 60, 2, {"a": 3}, [{"a": 1}, {"a": 2}])
    theirs = window_from_json(
        "f",
        json.loads(
            json.dumps(
                window_json(TrafficWindow("f", 60, 2, {"a": 1, "b": 4}, [{"b": 4}, {"a": 1}]))
            )
        ),
    )
    total = sum_windows(mine, [theirs])
    assert total.totals == {"a": 4, "b": 4}
    assert total.series == [{"a": 1, "b": 4}, {"a": 3}]
    with pytest.raises(ValueError, match="not a traffic window"):
        window_from_json("f", {"seconds": 1})


def _echo_app() -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = {
            "method": scope["method"],
            "path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "body": body.decode(),
            "client": scope["client"][0],
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        }
        payload = json.dumps(seen).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 207,
                "headers": [(b"content-type", b"application/json"), (b"x-echo", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def test_forwarding_keeps_the_request_and_replaces_forwarding_headers() -> None:
    """Method, raw path, query, body, status and headers pass; a client's X-Forwarded-For
    does not (the primary trusts it from loopback); the worker's view of the client does."""
    with ServerThread(_echo_app()) as primary:
        forwarder = PrimaryForwarder(primary.url)

        async def edge(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await forwarder.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
            await forwarder(scope, receive, send)

        worker = ServerThread(edge)
        # A worker that trusts no proxy: the client's own X-Forwarded-For is a forgery.
        worker.server.config.forwarded_allow_ips = "192.0.2.1"
        with worker:
            answer = httpx.post(
                worker.url + "/v1/flags/a%2Fb?x=1&y=2",
                content=b"{}",
                headers={
                    "x-forwarded-for": "6.6.6.6",
                    "x-custom": "kept",
                    "forwarded": "for=7.7.7.7",
                    "content-type": "application/json",
                },
            )
            get = httpx.get(worker.url + "/v1/flags")
    assert answer.status_code == 207
    assert answer.headers["x-echo"] == "1"
    seen = answer.json()
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (
        "POST",
        "/v1/flags/a%2Fb",
        "x=1&y=2",
        "{}",
    )
    assert seen["headers"]["x-custom"] == "kept"
    assert "6.6.6.6" not in seen["headers"]["x-forwarded-for"]
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert "forwarded" not in seen["headers"]
    assert "transfer-encoding" not in get.json()["headers"]  # a GET stays without a body
