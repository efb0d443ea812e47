"""The record pipeline on NATS JetStream: records/s through it, and decisions/s with publishing
on against off.

    python bench/events.py [--records 50000] [--seconds 10] [--connections 32] [--rounds 2]
                           [--records-per-message N] [--database-url postgresql+psycopg://...]

`--records-per-message` (default: CP_EVENTS_RECORDS_PER_MESSAGE's) is the publishers' packing
everywhere below; 1 publishes one message per record, as before packing.

1. Pipeline throughput, in process: `--records` exposure records offered to an EventPublisher
   (prepare, pack, publish with the packs' message ids, acknowledgements), stored by
   an EventConsumer (fetch, DatabaseSink batch insert, ack after commit), timed from the first
   offer to the last row stored. Baseline: the same records written by the same sink in the
   same batch size with no NATS in between. Ratio = pipeline / baseline. Then `hops`: CPU
   per record at each hop alone, `--records` published with no consumer (the publisher's loop
   thread from its thread_time, nats-server from /proc), then stored by a consumer started
   alone (this process's CPU while its main thread sleeps, nats-server).
2. Decisions/s of GET /v1/decide/ab-test-router (an experiment flag) under wrk (closed loop,
   distinct x-user-id per request, as bench/decide.py) on a routing replica (`--server
   replica`, the default: it publishes, a control plane in another process stores; the shape
   of issue 15) or on a control plane that publishes and consumes itself (`--server
   control-plane`), with the same settings and CP_EVENTS_URL: the recorder's listener removed
   (off), then in place (on), alternating `--rounds` times, best of each. Ratio = on / off
   (target >= 0.9). CPU per request from /proc over the measured run, for the measured server
   and, beside it, the nats-server and (replica mode) the storing control plane: on a 2-core
   machine they all share the cores wrk leaves. The storing control plane's CPU is also given
   per record it stored in the window (`storing_control_plane_cpu_us_per_stored_record`): one
   that falls behind stores the rest after wrk stops, which its CPU per request hides. The
   serving process's own CPU per decision (without its publisher process) gives
   `serving_process_capacity_ratio`, off / on: the share of decisions one core of a replica
   still serves with publishing on. In replica mode each round also runs publishing on with
   the storing control plane paused (SIGSTOP, its whole process tree) for the measured window,
   as on a machine of its own (the deployment's shape: docs/deployment.md), then resumed:
   `ratio_consumer_elsewhere` is that case's decisions/s over off's, the replica node's own
   cost with nats-server still on the same cores; `all_stored` and `drain_s` say whether and
   how soon the resumed consumer stored every exposure the replica published (committed and
   acknowledged, as a new row or a repeat of one it held: `duplicates_seen_by_consumer`), and
   `rows_in_database` how many exposure rows the storing database then holds (counted there).

Runs its own `nats-server -js` on a free port (a temp store). Prints one JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import free_port, uvicorn_process
from decide import _LUA, _cpu_seconds, process_cpu_seconds, run_wrk

FLAG = "ab-test-router"


# -- the servers (uvicorn --factory targets) -------------------------------------------------


def _app(publishing: bool) -> Any:
    from control_plane.http.app import create_app
    from control_plane.settings import Settings

    pid_file = os.environ.get("BENCH_PID_FILE")
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    app = create_app(Settings())
    components = app.state.components
    if not publishing:  # the baseline: the same app without the exposure listener
        events = components.events
        recorder = events.recorder if events is not None else components.experiments.recorder
        components.decider.listeners.remove(recorder.on_decision)
    return app


def publishing_on() -> Any:
    return _app(True)


def publishing_off() -> Any:
    return _app(False)


@contextmanager
def _nats(tmp: Path) -> Iterator[tuple[str, int]]:
    """A nats-server -js of the run's own: (URL, pid)."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    process = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        yield f"nats://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_ready(base: str, timeout: float = 60) -> None:
    """Until /readyz answers 200 (a replica is ready once it holds a flag set)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base} never became ready")


@contextmanager
def _scratch(base_url: str | None, tmp: Path) -> Iterator[str]:
    from control_plane.db.testing import scratch_database_url

    url, cleanup = scratch_database_url(base_url, tmp)
    try:
        yield url
    finally:
        cleanup()


# -- 1. pipeline throughput ------------------------------------------------------------------


def _records(count: int, run: str) -> list[Any]:
    from control_plane.experiments.records import EXPOSURES, Record

    return [
        Record(
            EXPOSURES,
            {
                "decision_id": f"{run}{i:019d}",
                "flag": FLAG,
                "variant": "model-a" if i % 2 else "model-b",
                "unit": f"{i:064x}",
                "flag_set_version": 1,
                "reason": "TARGETING_MATCH",
                "at": 1_700_000_000.0 + i,
            },
        )
        for i in range(count)
    ]


def _stored(database: Any) -> int:
    from sqlalchemy import text

    with database.session() as session:
        return int(session.execute(text("SELECT count(*) FROM exposures")).scalar_one())


def _packing(per_message: int | None) -> dict[str, Any]:
    """EventPublisher's packing option: the setting's default unless given."""
    return {} if per_message is None else {"records_per_message": per_message}


def _messages(publisher: Any, records: int) -> dict[str, Any]:
    messages = publisher.counts.messages
    return {"messages": messages, "records_per_message": round(records / max(messages, 1), 1)}


def pipeline_throughput(
    url: str, base: str | None, tmp: Path, count: int, per_message: int | None
) -> dict[str, Any]:
    from control_plane.db import Database
    from control_plane.events.consumer import EventConsumer
    from control_plane.events.publisher import EventPublisher
    from control_plane.events.stream import StreamSettings
    from control_plane.experiments.journal import Journal
    from control_plane.experiments.sink import DatabaseSink

    result: dict[str, Any] = {"records": count}
    with _scratch(base, tmp) as database_url:
        database = Database.from_url(database_url)
        database.migrate()
        records = _records(count, "base")
        sink = DatabaseSink(database)
        started = time.perf_counter()
        for offset in range(0, count, 1000):
            sink.write(records[offset : offset + 1000])
        baseline = time.perf_counter() - started
        sink.close()
        stream = StreamSettings(stream="BENCH", subject_prefix="bench.records", consumer="bench")
        publisher = EventPublisher(
            url,
            Journal(tmp / "journal"),
            prepare=lambda item: item[1],
            stream=stream,
            **_packing(per_message),
        )
        consumer = EventConsumer(url, DatabaseSink(database), stream=stream)
        consumer.start()
        publisher.start()
        time.sleep(1.0)  # connected, stream made
        already = _stored(database)
        records = _records(count, "pipe")
        started = time.perf_counter()
        for record in records:
            publisher.offer((record.table, record))
        while _stored(database) < already + count and time.perf_counter() - started < 300:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        publisher.stop()
        consumer.stop()
        database.dispose()
        result.update(
            {
                "baseline_sink_only_records_per_s": round(count / baseline),
                "pipeline_records_per_s": round(count / elapsed),
                "ratio": round(baseline / elapsed, 3),
                "published": publisher.counts.published,
                **_messages(publisher, publisher.counts.published),
                "journaled": publisher.counts.journaled,
                "dropped": publisher.counts.dropped,
                "stored": consumer.counts.stored,
            }
        )
    return result


def _in_loop(loop_thread: Any, call: Any) -> Any:
    """`call()` run on `loop_thread`'s event loop thread (its thread_time, a profiler)."""
    import threading

    done = threading.Event()
    result: list[Any] = []

    def run() -> None:
        result.append(call())
        done.set()

    loop_thread.loop.call_soon_threadsafe(run)
    done.wait()
    return result[0]


def hop_costs(
    url: str, nats_pid: int, base: str | None, tmp: Path, count: int, per_message: int | None
) -> dict[str, Any]:
    """CPU per record at each hop, one at a time: `count` records published with no consumer
    (the publisher's loop thread, nats-server), then stored by a consumer alone (this process
    while its main thread sleeps, nats-server)."""
    from control_plane.db import Database
    from control_plane.events.consumer import EventConsumer
    from control_plane.events.publisher import EventPublisher
    from control_plane.events.stream import StreamSettings
    from control_plane.experiments.journal import Journal
    from control_plane.experiments.sink import DatabaseSink

    def per_record(seconds: float) -> float:
        return round(seconds / count * 1e6, 1)

    result: dict[str, Any] = {"records": count}
    with _scratch(base, tmp) as database_url:
        database = Database.from_url(database_url)
        database.migrate()
        stream = StreamSettings(stream="HOPS", subject_prefix="hops.records", consumer="hops")
        publisher = EventPublisher(
            url,
            Journal(tmp / "journal-hops"),
            prepare=lambda item: item[1],
            stream=stream,
            **_packing(per_message),
        )
        publisher.start()
        while not publisher.connected:
            time.sleep(0.05)
        records = _records(count, "hops")
        loop_before = _in_loop(publisher._loop, time.thread_time)
        nats_before = process_cpu_seconds(nats_pid)
        for record in records:
            publisher.offer((record.table, record))
        if not publisher.flush(120):
            raise RuntimeError("the publisher did not get every record acknowledged")
        result["publisher_loop_thread_us_per_record"] = per_record(
            _in_loop(publisher._loop, time.thread_time) - loop_before
        )
        result["nats_server_publish_us_per_record"] = per_record(
            process_cpu_seconds(nats_pid) - nats_before
        )
        result.update(_messages(publisher, count))
        publisher.stop()
        consumer = EventConsumer(url, DatabaseSink(database), stream=stream)
        process_before = time.process_time()
        nats_before = process_cpu_seconds(nats_pid)
        consumer.start()
        while consumer.counts.stored < count:
            time.sleep(0.02)
        result["consumer_process_us_per_record"] = per_record(time.process_time() - process_before)
        result["nats_server_consume_us_per_record"] = per_record(
            process_cpu_seconds(nats_pid) - nats_before
        )
        consumer.stop()
        database.dispose()
    return result


# -- 2. decisions/s with publishing on and off -----------------------------------------------


def _exposures(base: str, series: str, result: str) -> float:
    """The exposures counted by `series` (published, consumed) with `result` on `base`."""
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=10).text
    match = re.search(
        rf'control_plane_events_{series}_total\{{result="{result}",table="exposures"\}} '
        r"([\d.e+]+)",
        text,
    )
    return float(match.group(1)) if match else 0.0


def _published(base: str) -> float:
    """Exposures `base` got into the stream: published at once, or journaled while NATS was
    slow to acknowledge and replayed from the journal later."""
    return _exposures(base, "published", "published") + _exposures(base, "published", "replayed")


def _stored_by(base: str) -> float:
    """Exposures `base` committed and acknowledged: new rows, and repeats of rows it held (a
    record published again from a journal, or delivered again)."""
    return _exposures(base, "consumed", "stored") + _exposures(base, "consumed", "duplicate")


def _signal_tree(pid: int, signum: int) -> None:
    """Send `signum` to `pid` and every live descendant (SIGSTOP/SIGCONT a server whole)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(current, signum)
        todo.extend(children.get(current, []))


def _settled(count: Callable[[], float]) -> float:
    """`count()` once it stops moving (half a second apart): a publisher sends what wrk's
    last decisions queued a few tens of milliseconds after wrk stops."""
    value = count()
    while True:
        time.sleep(0.5)
        now = count()
        if now == value:
            return now
        value = now


def _drained(
    storing_base: str, published: float, stored_at_start: float, rows: Callable[[], int]
) -> dict[str, Any]:
    """After a window with the storing control plane paused: how long until it has stored
    every exposure published so far (`published`, all servers of this part), 120 s at most,
    and the exposure rows its database then holds (`rows()`, each decision's once)."""
    started = time.monotonic()
    stored = _stored_by(storing_base) - stored_at_start
    while stored < published and time.monotonic() - started < 120:
        time.sleep(0.25)
        stored = _stored_by(storing_base) - stored_at_start
    return {
        "published_in_run": published,
        "stored_in_run": stored,
        # Since the storing control plane started (records whose rows it already held).
        "duplicates_seen_by_consumer": _exposures(storing_base, "consumed", "duplicate"),
        "all_stored": stored >= published,
        "drain_s": round(time.monotonic() - started, 1),
        "rows_in_database": rows(),
    }


def decide_on_off(args: argparse.Namespace, url: str, nats_pid: int, tmp: Path) -> dict[str, Any]:
    off: list[dict[str, Any]] = []
    on: list[dict[str, Any]] = []
    on_elsewhere: list[dict[str, Any]] = []
    published_in_run = 0.0  # exposures published by every server of the run so far
    script = tmp / "users.lua"
    script.write_text(_LUA)
    common = {
        "CP_EVENTS_URL": url,
        "CP_EXPOSURE_SALT": "bench-salt-0123456789abcdef",
        "PYTHONPATH": str(Path(__file__).resolve().parent),
    }
    if args.records_per_message is not None:
        common["CP_EVENTS_RECORDS_PER_MESSAGE"] = str(args.records_per_message)
    with contextlib.ExitStack() as stack:
        storing_pid = None
        storing_base = None
        stored_at_start = 0.0
        sync_port = free_port()
        if args.server == "replica":  # the control plane that stores what replicas publish
            database_url = stack.enter_context(_scratch(args.database_url, tmp))
            from control_plane.db import Database

            storing_database = Database.from_url(database_url)
            stack.callback(storing_database.dispose)
            pid_file = tmp / "control-plane.pid"
            storing_base = stack.enter_context(
                uvicorn_process(
                    "events:publishing_on",
                    factory=True,
                    env={
                        **common,
                        "DATABASE_URL": database_url,
                        "CP_SYNC_PORT": str(sync_port),
                        "CP_EVENTS_JOURNAL_DIR": str(tmp / "journal-control-plane"),
                        "CP_EXPOSURE_SPILL_DIR": str(tmp / "spill-control-plane"),
                        "BENCH_PID_FILE": str(pid_file),
                    },
                )
            )
            storing_pid = int(pid_file.read_text())
            # Records the earlier parts of the run left in the stream are stored first: the
            # count then is where this part's published records start.
            stored_at_start = _settled(functools.partial(_stored_by, storing_base))
            rows_before = _stored(storing_database)
        cases: list[tuple[bool, bool, list[dict[str, Any]]]] = [
            (False, False, off),
            (True, False, on),
        ]
        if storing_pid is not None:
            cases.append((True, True, on_elsewhere))
        for round_ in range(args.rounds):
            for publishing, paused, results in cases:
                with contextlib.ExitStack() as server:
                    name = f"{publishing}-{paused}-{round_}"
                    pid_file = tmp / f"server-{name}.pid"
                    env = {
                        **common,
                        "CP_EVENTS_JOURNAL_DIR": str(tmp / f"journal-{name}"),
                        "CP_EXPOSURE_SPILL_DIR": str(tmp / f"spill-{name}"),
                        "BENCH_PID_FILE": str(pid_file),
                    }
                    if args.server == "replica":
                        env["CP_REPLICA_OF"] = f"127.0.0.1:{sync_port}"
                        env["CP_REPLICA_DIR"] = str(tmp / f"replica-{name}")
                    else:
                        env["DATABASE_URL"] = server.enter_context(_scratch(args.database_url, tmp))
                        env["CP_SYNC_PORT"] = "0"
                    target_app = "events:publishing_on" if publishing else "events:publishing_off"
                    base = server.enter_context(uvicorn_process(target_app, factory=True, env=env))
                    _wait_ready(base)
                    pid = int(pid_file.read_text())
                    target = f"{base}/v1/decide/{FLAG}"
                    run_wrk(target, 2, args.connections, script)  # warm-up
                    published_before = _published(base)
                    stored_before = _stored_by(storing_base) if storing_base else 0.0
                    if paused and storing_pid is not None:
                        _signal_tree(storing_pid, signal.SIGSTOP)
                    watched = {"server": pid, "nats_server": nats_pid}
                    if storing_pid is not None:
                        watched["storing_control_plane"] = storing_pid
                    cpu_before = {name: _cpu_seconds(p) for name, p in watched.items()}
                    own_before = process_cpu_seconds(pid)
                    try:
                        result: dict[str, Any] = run_wrk(
                            target, args.seconds, args.connections, script
                        )
                        own = process_cpu_seconds(pid) - own_before
                        spent = {n: _cpu_seconds(p) - cpu_before[n] for n, p in watched.items()}
                    finally:
                        if paused and storing_pid is not None:
                            _signal_tree(storing_pid, signal.SIGCONT)
                    for name, cpu in spent.items():
                        result[f"{name}_cpu_us_per_request"] = round(
                            cpu / result["requests"] * 1e6, 1
                        )
                    # The serving process without its children (the publisher process).
                    result["serving_process_cpu_us_per_request"] = round(
                        own / result["requests"] * 1e6, 1
                    )
                    if publishing:
                        published = _published(base) - published_before
                        result["published_per_s_under_load"] = round(published / args.seconds)
                        if storing_base is not None:
                            # A consumer that falls behind stores part of the window's records
                            # after it: its CPU per request then understates its cost.
                            stored = _stored_by(storing_base) - stored_before
                            result["stored_per_s_under_load"] = round(stored / args.seconds)
                            result["storing_control_plane_cpu_us_per_stored_record"] = round(
                                spent["storing_control_plane"] / max(stored, 1) * 1e6, 1
                            )
                    if publishing:
                        published_in_run += _settled(functools.partial(_published, base))
                    if paused and storing_base is not None:
                        # Nothing was stored in the window: JetStream held it. Every record
                        # published so far must reach the database once the consumer resumes.
                        result.update(
                            _drained(
                                storing_base,
                                published_in_run,
                                stored_at_start,
                                lambda: _stored(storing_database) - rows_before,
                            )
                        )
                    results.append(result)
    best_off = max(off, key=lambda r: r["requests_per_s"])
    best_on = max(on, key=lambda r: r["requests_per_s"])
    elsewhere: dict[str, Any] = {}
    if on_elsewhere:
        best_elsewhere = max(on_elsewhere, key=lambda r: r["requests_per_s"])
        elsewhere = {
            # The storing control plane paused (SIGSTOP) during each measured window, as if
            # on a machine of its own (docs/deployment.md): the replica node's own cost,
            # nats-server included; JetStream keeps the records until it resumes.
            "publishing_on_consumer_elsewhere": best_elsewhere,
            "ratio_consumer_elsewhere": round(
                best_elsewhere["requests_per_s"] / best_off["requests_per_s"], 3
            ),
            "ratio_consumer_elsewhere_per_round": [
                round(a["requests_per_s"] / b["requests_per_s"], 3)
                for a, b in zip(on_elsewhere, off, strict=True)
            ],
        }
    added = {
        key.removesuffix("_cpu_us_per_request"): round(best_on[key] - best_off[key], 1)
        for key in best_on
        if key.endswith("_cpu_us_per_request")
    }
    return {
        "server": args.server,
        # What one replica core sustains: its serving process's CPU per decision, off / on.
        "serving_process_capacity_ratio": round(
            best_off["serving_process_cpu_us_per_request"]
            / best_on["serving_process_cpu_us_per_request"],
            3,
        ),
        "publishing_off": best_off,
        "publishing_on": best_on,
        "target_ratio": 0.9,
        "ratio": round(best_on["requests_per_s"] / best_off["requests_per_s"], 3),
        "ratio_per_round": [
            round(a["requests_per_s"] / b["requests_per_s"], 3)
            for a, b in zip(on, off, strict=True)
        ],
        **elsewhere,
        "cpu_us_per_request_added": added,
        "all_rounds": {
            "publishing_off": off,
            "publishing_on": on,
            "publishing_on_consumer_elsewhere": on_elsewhere,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--records-per-message",
        type=int,
        default=None,
        help="records packed into one message (default: the setting's; 1: one per record)",
    )
    parser.add_argument("--skip-decide", action="store_true")
    parser.add_argument(
        "--server",
        choices=("replica", "control-plane"),
        default="replica",
        help="what is measured: a routing replica (publishes only) or a control plane",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with _nats(tmp) as (url, nats_pid):
            report: dict[str, Any] = {
                "config": {
                    "records": args.records,
                    "seconds": args.seconds,
                    "connections": args.connections,
                    "rounds": args.rounds,
                    "database": "postgresql" if args.database_url else "sqlite",
                    "records_per_message": args.records_per_message,
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "pipeline": pipeline_throughput(
                    url, args.database_url, tmp, args.records, args.records_per_message
                ),
                "hops": hop_costs(
                    url, nats_pid, args.database_url, tmp, args.records, args.records_per_message
                ),
            }
            if not args.skip_decide:
                report["decide"] = decide_on_off(args, url, nats_pid, tmp)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
