"""The drill: nginx in front of 3 routing replicas, with NATS JetStream carrying exposures.

Everything is real and on loopback: Debian's nginx rendered by our `gateway nginx` config code,
three `control-plane serve --replica-of` processes, one control plane, two model backends, and
our own `nats-server -js`. Under closed-loop load through nginx: one replica is `kill -9`'d and
restarted, the control plane is restarted, the NATS server is restarted, and a flag edit is made.
No client request may fail; every answered decision's exposure must be stored exactly once; the
edit must reach every live replica (how fast is printed: the target is 1 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import write_flags
from gateway_support import Nginx
from serve_process import ServeProcess
from servers import BackendApp, ServerThread, free_port

from control_plane.db import Database
from control_plane.db.experiment_models import Exposure

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
NATS = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)
pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)"),
    pytest.mark.skipif(NATS is None, reason="nats-server is not installed"),
]

FLAG = "drill-router"
ADMIN = "admin-token-for-the-drill-000000001"
SALT = "exposure-salt-for-the-drill-0001"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class NatsServer:
    """`nats-server -js` on a free loopback port, restartable on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(NATS), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)


def _flag(a: str, b: str, weight_b: int) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "metadata": {"experiment": True, "controlVariant": "a"},
        "variants": {"a": {"backend": "model-a", "url": a}, "b": {"backend": "model-b", "url": b}},
        "defaultVariant": "a",
        "targeting": {"fractional": [["a", 100 - weight_b], ["b", weight_b]]},
    }


class Load:
    """Closed-loop clients through nginx: each thread is one user (nginx's cookie)."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.threads = threads
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.decisions: list[str] = []
        #: decision id -> when the client had the answer (monotonic)
        self.answered_at: dict[str, float] = {}
        self.fallbacks = 0
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    response = client.get("/v1/chat")
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(repr(exc))
                    continue
                with self._lock:
                    self.statuses[response.status_code] += 1
                    decision = response.headers.get("x-route-decision-id")
                    if decision:
                        self.decisions.append(decision)
                        self.answered_at[decision] = time.monotonic()
                    if response.headers.get("x-route-fallback"):
                        self.fallbacks += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values()) + len(self.errors)


def _stored_exposures(database_url: str) -> Counter[str]:
    from sqlalchemy import select

    database = Database.from_url(database_url)
    try:
        with database.session() as session:
            return Counter(
                session.scalars(select(Exposure.decision_id).where(Exposure.flag == FLAG))
            )
    finally:
        database.dispose()


def _wait(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def _event_counters(url: str) -> dict[str, float]:
    """A replica's record-pipeline counters from its /metrics (published, journaled, ...)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=5).text
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("control_plane_events_"):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                counters[f"{sample.name}{{{labels}}}"] = sample.value
    return counters


def _stream_state(url: str) -> str:
    """What JetStream holds: messages not yet stored, and the consumer's pending counts."""
    import asyncio

    import nats

    from control_plane.events.stream import StreamSettings

    names = StreamSettings()  # the drill runs with the default stream and consumer

    async def state() -> str:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            stream = await js.stream_info(names.stream)
            consumer = await js.consumer_info(names.stream, names.consumer)
            return (
                f"{stream.state.messages} messages in the stream; consumer: "
                f"{consumer.num_pending} pending, {consumer.num_ack_pending} unacknowledged, "
                f"{consumer.num_redelivered} redelivered"
            )
        finally:
            await nc.close()

    try:
        return asyncio.run(state())
    except Exception as exc:  # a report must not hide the failure it reports
        return f"unknown ({exc!r})"


def _loss_report(
    missing: set[str],
    answered: int,
    answered_at: dict[str, float],
    prefixes: dict[str, str],
    timeline: list[tuple[str, float]],
    root: Path,
) -> str:
    """What a failed drill needs to be understood: who lost what, when, and what was left."""
    start = timeline[0][1]
    lines = [f"{len(missing)} of {answered} answered decisions have no stored exposure"]
    by_process: dict[str, list[float]] = {}
    for decision in missing:
        name = prefixes.get(decision[:12], decision[:12])
        by_process.setdefault(name, []).append(answered_at[decision] - start)
    for name, times in sorted(by_process.items()):
        lines.append(f"  {name}: {len(times)} answered at {min(times):.2f}..{max(times):.2f} s")
    lines.append("timeline: " + ", ".join(f"{what} {at - start:.2f} s" for what, at in timeline))
    left = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "journal" in str(path)
    )
    lines.append(f"journal files left: {left}")
    for log in sorted(root.rglob("serve-*.stderr")):
        lines.append(f"--- {log.relative_to(root)} (last 2000 characters)")
        lines.append(log.read_text(errors="replace")[-2000:])
    return "\n".join(lines)


@pytest.fixture
def drill_dirs(tmp_path: Path) -> Path:
    for name in ("primary", "r0", "r1", "r2", "nats", "nginx"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_the_drill_loses_no_request_and_no_exposure(drill_dirs: Path, flags_dir: Path) -> None:
    """Replica kill -9 + restart, control plane restart, NATS restart, flag edit, under load."""
    root = drill_dirs
    database_url = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{root / 'drill.db'}"
    if database_url.startswith("postgresql"):
        from db_support import scratch_database_url

        database_url, cleanup = scratch_database_url(database_url, root)
    else:
        cleanup = None
    nats = NatsServer(root / "nats")
    nats.start()
    sync_port, primary_port = free_port(), free_port()
    replica_ports = [free_port() for _ in range(3)]
    common = {
        "CP_EVENTS_URL": nats.url,
        "CP_EXPOSURE_SALT": SALT,
        "CP_EVENTS_PUBLISH_INTERVAL": "0.02",
    }
    try:
        with ExitStack() as stack:
            a = stack.enter_context(ServerThread(BackendApp("model-a")))
            b = stack.enter_context(ServerThread(BackendApp("model-b")))
            for path in flags_dir.iterdir():
                path.unlink()
            write_flags(flags_dir, "drill.flagd.json", {FLAG: _flag(a.url, b.url, 50)})

            def primary() -> ServeProcess:
                return ServeProcess(
                    flags_dir,
                    root / "primary",
                    port=primary_port,
                    env={
                        **common,
                        "CP_SYNC_PORT": str(sync_port),
                        "DATABASE_URL": database_url,
                        "CP_ADMIN_TOKENS": f"root:admin:{ADMIN}",
                    },
                )

            def replica(index: int) -> ServeProcess:
                return ServeProcess(
                    flags_dir,
                    root / f"r{index}",
                    port=replica_ports[index],
                    env={**common, "CP_REPLICA_DIR": str(root / f"r{index}/flags")},
                    args=("--replica-of", f"127.0.0.1:{sync_port}"),
                )

            running: list[ServeProcess] = []  # stopped at the end, whatever happens
            stack.callback(lambda: [process.__exit__(None, None, None) for process in running])

            #: what happened when (monotonic), and which process each decision-id prefix is
            timeline: list[tuple[str, float]] = []
            prefixes: dict[str, str] = {}

            def start(process: ServeProcess, name: str = "control plane") -> ServeProcess:
                running.append(process)
                process.__enter__()
                timeline.append((f"{name} started", time.monotonic()))
                if name != "control plane":
                    probe = httpx.get(f"{process.url}/v1/decide/{FLAG}", timeout=5)
                    prefixes[probe.headers["x-route-decision-id"][:12]] = name
                return process

            control = start(primary())
            replicas = [start(replica(index), f"r{index}") for index in range(3)]
            nginx = stack.enter_context(
                Nginx(
                    root / "nginx",
                    flag=FLAG,
                    control_plane=",".join(f"127.0.0.1:{port}" for port in replica_ports),
                    stable_variant="a",
                    stable_url=a.url,
                )
            )
            edit_latency: dict[int, float] = {}
            with Load(nginx.url, threads=4) as load:
                _wait(lambda: load.total >= 200, 60, "the first 200 requests")
                killed_at = time.monotonic()
                replicas[1].process.kill()  # type: ignore[union-attr]
                replicas[1].process.wait()  # type: ignore[union-attr]
                timeline.append(("r1 killed", killed_at))
                _wait(lambda: load.total >= 500, 60, "load with a replica down")
                replicas[1] = start(replica(1), "r1 (restarted)")
                control.__exit__(None, None, None)  # the control plane restarts
                timeline.append(("control plane stopped", time.monotonic()))
                control = start(primary())
                nats.stop()  # the NATS server restarts
                timeline.append(("NATS stopped", time.monotonic()))
                time.sleep(0.5)
                nats.start()
                timeline.append(("NATS started", time.monotonic()))
                _wait(lambda: load.total >= 900, 90, "load after the restarts")
                for process in replicas:  # "live": following the restarted control plane
                    _wait(
                        lambda p=process: httpx.get(f"{p.url}/readyz", timeout=5).json()["replica"][
                            "connected"
                        ],
                        15,
                        "the replica reconnecting",
                    )
                # A flag edit during the run: every live replica serves it, and how long after
                # the control plane accepted it (all polled together) is printed.
                put = httpx.put(
                    f"{control.url}/v1/flags/{FLAG}",
                    headers=AUTH,
                    timeout=10,
                    json=_flag(a.url, b.url, 80),
                )
                edited = time.monotonic()
                assert put.status_code == 200, put.text
                version = str(put.json()["flagSetVersion"])
                probes = [httpx.Client(base_url=p.url, timeout=5) for p in replicas]
                try:
                    while len(edit_latency) < len(replicas) and time.monotonic() - edited < 10:
                        for index, probe in enumerate(probes):
                            if index in edit_latency:
                                continue
                            answer = probe.get(
                                f"/v1/decide/{FLAG}", headers={"x-user-id": "drill-probe"}
                            )
                            if answer.headers.get("x-route-flag-set-version") == version:
                                edit_latency[index] = time.monotonic() - edited
                finally:
                    for probe in probes:
                        probe.close()
                assert len(edit_latency) == len(replicas), edit_latency
                _wait(lambda: load.total >= 1200, 90, "load after the edit")
            timeline.append(("load stopped", time.monotonic()))
            named = list(zip(("r0", "r1 (restarted)", "r2"), replicas, strict=True))
            counters = {name: _event_counters(process.url) for name, process in named}
            for name, process in named:
                process.__exit__(None, None, None)
                code = None if process.process is None else process.process.returncode
                timeline.append((f"{name} stopped (exit {code})", time.monotonic()))
            answered = Counter(load.decisions)

            # Every answered decision reaches the database through JetStream exactly once.
            # The guarantee (docs/operations.md): a decision answered more than about a second
            # before a kill -9 is never lost. Only the killed replica's last second may miss.
            def at_risk(decision: str) -> bool:
                return killed_at - 1.0 <= load.answered_at[decision] <= killed_at + 0.5

            def lost() -> set[str]:
                return set(answered) - set(_stored_exposures(database_url))

            try:
                _wait(
                    lambda: all(at_risk(decision) for decision in lost()),
                    60,
                    "every exposure stored",
                )
            except AssertionError:
                report = _loss_report(
                    lost(), len(answered), load.answered_at, prefixes, timeline, root
                )
                raise AssertionError(
                    f"{report}\npublisher counters before the stop: {counters}"
                    f"\nstream: {_stream_state(nats.url)}"
                ) from None
            stored = _stored_exposures(database_url)
            in_window = lost()
            control.__exit__(None, None, None)
    finally:
        nats.stop()
        if cleanup is not None:
            cleanup()
    print(
        f"\ndrill: {load.total} requests, statuses {dict(load.statuses)}, "
        f"{len(load.errors)} errors, {load.fallbacks} fallbacks, {len(answered)} decisions, "
        f"{len(stored)} exposures stored, {len(in_window)} lost in the killed replica's last "
        f"second, edit latency {edit_latency}"
    )
    assert load.errors == []
    assert set(load.statuses) == {200}
    assert max(answered.values()) == 1  # decision ids are unique
    assert set(answered) - set(stored) == in_window
    assert all(at_risk(decision) for decision in in_window)
    assert max(stored.values()) == 1  # stored exactly once: no duplicates
    # Every live replica served the edit (asserted above, within the probing window). How
    # fast is printed, not asserted: no test asserts a time. It was 0.15-0.30 s in the runs on
    # a quiet machine (docs/deployment.md) and 1.02-1.07 s once in CI on a machine running
    # about 4 times slower; the 1 s target is judged by those runs and
    # bench/sync_replica_latency.py.
