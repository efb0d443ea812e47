"""Exposure logging: records/s the writer stores, and decisions/s with logging on against off.

    python bench/exposures.py [--records 200000] [--seconds 10] [--connections 32]
                              [--rounds 2] [--writer-rate 20000]
                              [--database-url postgresql+psycopg://...]

1. Writer throughput, in process: `--records` decisions on an experiment flag go through the
   real path (decider listener -> queue -> journal thread: HMAC of the targeting key, append +
   fsync to the journal -> database thread: batching, idempotent inserts, segment deleted)
   until all are stored; baseline: the same rows, already prepared, inserted in the same
   batches by the same sink with no queue, journal or thread. Ratio = writer / baseline.
2. CPU per exposure by process: `--records` decisions offered at `--writer-rate` per second
   through the recorder and the writer process (control_plane.experiments.writer_process),
   as the server has them, until all are stored. On the serving side: the listener's thread
   time (the offer on the request path), the feeder thread's and the whole process's CPU; on
   the other side, the writer process's CPU (/proc), all per exposure.
3. Decisions/s of GET /v1/decide/ab-test-router (an experiment flag) under wrk (closed loop,
   distinct x-user-id per request, as bench/decide.py), on two uvicorn servers with the same
   settings and database kind: exposure logging off, then on, alternating `--rounds` times,
   best and median of each. Ratio = on / off (issue 12 target: >= 0.9). Server CPU per
   request, from utime + stime in /proc/<pid>/stat over the measured run of the server process
   and its children (the exposure writer process: journal and database), for both, and split
   into the serving process's own and its children's; for the
   on server also including the time it then took to drain its backlog. From the on
   server's /metrics: exposures written per second while decisions ran flat out, the backlog
   left at the end, how long it took to drain, and the totals journaled, written and dropped.

Prints one JSON report. The database is a SQLite file in a temp directory unless
`--database-url` names a PostgreSQL server's database; every measurement then gets a fresh
schema there (created and dropped by the benchmark), so nothing else in it is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import UVICORN_ARGS, uvicorn_process
from decide import _LUA, _cpu_seconds, process_cpu_seconds, run_wrk

FLAG = "ab-test-router"


# -- the servers (uvicorn --factory targets) -------------------------------------------------


def _app(logging_on: bool) -> Any:
    """The control plane (routing, admin API) on DATABASE_URL, with or without exposures."""
    from control_plane.http.app import create_app
    from control_plane.settings import Settings

    pid_file = os.environ.get("BENCH_PID_FILE")
    if pid_file:  # the benchmark reads this process's CPU time from /proc/<pid>/stat
        Path(pid_file).write_text(str(os.getpid()))
    app = create_app(Settings())
    components = app.state.components
    if not logging_on:  # the baseline: the same app without the exposure listener
        components.decider.listeners.remove(components.experiments.recorder.on_decision)
    return app


def logging_on() -> Any:
    return _app(True)


def logging_off() -> Any:
    return _app(False)


# -- 1. writer throughput --------------------------------------------------------------------


def _decisions(count: int) -> list[Any]:
    from control_plane.routing.decisions import Decision

    return [
        Decision(
            flag_key=FLAG,
            variant="model-a" if i % 2 else "model-b",
            backend="m",
            url="http://127.0.0.1:9101",
            reason="TARGETING_MATCH",
            flag_set_version=1,
            decision_id=f"bench{i:019d}",
            targeting_key=f"user-{i}@example.com",
            metadata={"experiment": True},
        )
        for i in range(count)
    ]


def writer_throughput(database_url: str, records: int, batch_size: int) -> dict[str, Any]:
    from sqlalchemy import text

    from control_plane.db import Database
    from control_plane.experiments.hashing import UnitHasher
    from control_plane.experiments.journal import Journal
    from control_plane.experiments.recorder import ExperimentRecorder
    from control_plane.experiments.records import EXPOSURES
    from control_plane.experiments.sink import DatabaseSink
    from control_plane.experiments.writer import BatchWriter

    database = Database.from_url(database_url)
    database.migrate()
    recorder = ExperimentRecorder(UnitHasher(b"bench-key-0123456789abcdef"))
    sink = DatabaseSink(database)

    def clear() -> None:
        with database.engine.begin() as connection:
            connection.execute(text("DELETE FROM exposures"))

    decisions = _decisions(records)
    now = time.time()
    prepared = [recorder.prepare((EXPOSURES, decision, now)) for decision in decisions]
    clear()
    started = time.perf_counter()
    for start in range(0, records, batch_size):
        sink.write(prepared[start : start + batch_size])
    baseline_seconds = time.perf_counter() - started
    clear()

    with tempfile.TemporaryDirectory() as journal:
        writer = BatchWriter(
            sink,
            Journal(Path(journal)),
            prepare=recorder.prepare,
            queue_size=records + 1,
            batch_size=batch_size,
            journal_interval=0.2,
            flush_interval=0.05,
            buffer_limit=records,
        )
        recorder.attach(writer)
        writer.start()
        started = time.perf_counter()
        offer_started = time.perf_counter()
        for decision in decisions:
            recorder.on_decision(decision, 0.0)
        offer_seconds = time.perf_counter() - offer_started
        flushed = writer.flush(timeout=600)
        writer_seconds = time.perf_counter() - started
        writer.stop()
    with database.engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM exposures")).scalar_one()
    clear()
    sink.close()
    database.dispose()
    return {
        "records": records,
        "batch_size": batch_size,
        "stored": stored,
        "flushed": flushed,
        "dropped": writer.counts.dropped,
        "journaled": writer.counts.journaled,
        "baseline_bulk_insert_records_per_s": round(records / baseline_seconds),
        "writer_records_per_s": round(records / writer_seconds),
        "ratio": round(baseline_seconds / writer_seconds, 3),
        "hot_path_offer_us": round(offer_seconds / records * 1e6, 3),
    }


# -- 2. CPU per exposure, by process ---------------------------------------------------------


def writer_process_cpu(database_url: str, records: int, rate: int) -> dict[str, Any]:
    """CPU per exposure on each side of the writer process, with decisions offered at `rate`
    per second through the real recorder and ProcessWriter (as the server has them)."""
    from control_plane.db.engine import DatabaseTimeouts
    from control_plane.experiments.recorder import ExperimentRecorder
    from control_plane.experiments.writer_process import ProcessWriter, WriterConfig

    decisions = _decisions(records)
    with tempfile.TemporaryDirectory() as journal:
        writer = ProcessWriter(
            WriterConfig(database_url, DatabaseTimeouts(), Path(journal)),
            key=lambda: b"bench-key-0123456789abcdef",
            queue_size=records + 1,
        )
        recorder = ExperimentRecorder(None)
        recorder.attach(writer)
        writer.start()
        writer.flush(timeout=60)  # the writer process is up
        child = writer._process.pid  # type: ignore[union-attr]
        feeder = writer._feeder.native_id  # type: ignore[union-attr]
        me = os.getpid()
        serving, feeding = time.process_time(), process_cpu_seconds(me, feeder)
        writing = process_cpu_seconds(child)
        offering = 0.0
        chunk = max(1, rate // 100)
        started = time.perf_counter()
        for start in range(0, records, chunk):
            before = time.thread_time()
            for decision in decisions[start : start + chunk]:
                recorder.on_decision(decision, 0.0)
            offering += time.thread_time() - before
            time.sleep(max(0.0, started + (start + chunk) / rate - time.perf_counter()))
        flushed = writer.flush(timeout=600)
        serving = time.process_time() - serving
        feeding = process_cpu_seconds(me, feeder) - feeding
        writing = process_cpu_seconds(child) - writing
        writer.stop()
    return {
        "records": records,
        "offered_per_s": rate,
        "flushed": flushed,
        "written": writer.counts.written,
        "serving_listener_us": round(offering / records * 1e6, 2),
        "serving_feeder_thread_us": round(feeding / records * 1e6, 2),
        "serving_process_us": round(serving / records * 1e6, 2),
        "writer_process_us": round(writing / records * 1e6, 2),
    }


# -- 3. decisions/s with logging on and off --------------------------------------------------


def _metric(text: str, result: str) -> float:
    match = re.search(
        rf'control_plane_experiment_records_total{{result="{result}",'
        rf'table="exposures"}} ([\d.e+]+)',
        text,
    )
    return float(match.group(1)) if match else 0.0


@contextmanager
def _scratch(base_url: str | None, tmp: Path) -> Iterator[str]:
    """A fresh database: a SQLite file in `tmp`, or a new schema on `base_url`'s server."""
    from control_plane.db.testing import scratch_database_url

    url, cleanup = scratch_database_url(base_url, tmp)
    try:
        yield url
    finally:
        cleanup()


@contextmanager
def _server(logging: bool, database_url: str, tmp: str) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a control plane server with exposure logging on or off."""
    pid_file = Path(tmp) / f"server-{logging}.pid"
    pid_file.unlink(missing_ok=True)
    env = {
        "DATABASE_URL": database_url,
        "CP_SYNC_PORT": "0",
        "CP_EXPOSURE_SPILL_DIR": f"{tmp}/journal",
        "BENCH_PID_FILE": str(pid_file),
        "PYTHONPATH": str(Path(__file__).resolve().parent),
    }
    target_app = "exposures:logging_on" if logging else "exposures:logging_off"
    with uvicorn_process(target_app, factory=True, env=env) as base:
        yield base, int(pid_file.read_text())


def _counters(base: str) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=10).text
    buffered = re.search(
        r"^control_plane_experiment_records_buffered ([\d.e+]+)", text, re.MULTILINE
    )
    pending = re.search(
        r"^control_plane_experiment_records_spill_pending ([\d.e+]+)", text, re.MULTILINE
    )
    return {
        "written": _metric(text, "written"),
        "dropped": _metric(text, "dropped"),
        "journaled": _metric(text, "journaled"),
        "buffered": float(buffered.group(1)) if buffered else 0.0,
        "unwritten": float(pending.group(1)) if pending else 0.0,
    }


def decide_on_off(args: argparse.Namespace, database_url: str | None) -> dict[str, Any]:
    off: list[dict[str, float]] = []
    on: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "users.lua"
        script.write_text(_LUA)
        for _ in range(args.rounds):
            for logging, results in ((False, off), (True, on)):
                with (
                    _scratch(database_url, Path(tmp)) as url,
                    _server(logging, url, tmp) as (base, pid),
                ):
                    target = f"{base}/v1/decide/{FLAG}"
                    run_wrk(target, 2, args.connections, script)  # warm-up
                    before = _counters(base) if logging else {}
                    cpu_before, own_before = _cpu_seconds(pid), process_cpu_seconds(pid)
                    result: dict[str, Any] = run_wrk(target, args.seconds, args.connections, script)
                    cpu = _cpu_seconds(pid) - cpu_before
                    own = process_cpu_seconds(pid) - own_before
                    requests = result["requests"]
                    result["server_cpu_us_per_request"] = round(cpu / requests * 1e6, 1)
                    result["serving_process_cpu_us_per_request"] = round(own / requests * 1e6, 1)
                    result["writer_process_cpu_us_per_request"] = round(
                        (cpu - own) / requests * 1e6, 1
                    )
                    if logging:
                        # What the writer stored while decisions ran flat out, and the
                        # backlog it then had to catch up on (all exposures, none dropped).
                        after = _counters(base)
                        result["exposures_written_per_s_under_load"] = round(
                            (after["written"] - before["written"]) / args.seconds
                        )
                        result["exposures_queued_at_end"] = int(after["buffered"])
                        drained = time.perf_counter()
                        while (
                            _counters(base)["buffered"] > 0 or _counters(base)["unwritten"] > 0
                        ) and time.perf_counter() - drained < 120:
                            time.sleep(0.2)
                        final = _counters(base)
                        result["backlog_drain_s"] = round(time.perf_counter() - drained, 2)
                        result["server_cpu_us_per_request_including_drain"] = round(
                            (_cpu_seconds(pid) - cpu_before) / requests * 1e6, 1
                        )
                        result["exposures_journaled_total"] = int(final["journaled"])
                        result["exposures_written_total"] = int(final["written"])
                        result["exposures_dropped_total"] = int(final["dropped"])
                    results.append(result)
    best_off = max(off, key=lambda r: r["requests_per_s"])
    best_on = max(on, key=lambda r: r["requests_per_s"])
    per_round = [a["requests_per_s"] / b["requests_per_s"] for a, b in zip(on, off, strict=True)]
    return {
        "logging_off": best_off,
        "logging_on": best_on,
        "target_ratio": 0.9,
        "ratio": round(best_on["requests_per_s"] / best_off["requests_per_s"], 3),
        "ratio_median_of_rounds": round(statistics.median(per_round), 3),
        "p99_ms_median": {
            "logging_off": statistics.median(r["p99_ms"] for r in off),
            "logging_on": statistics.median(r["p99_ms"] for r in on),
        },
        "server_cpu_us_per_request_added_by_logging": round(
            best_on["server_cpu_us_per_request"] - best_off["server_cpu_us_per_request"], 1
        ),
        "all_rounds": {"logging_off": off, "logging_on": on},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2000,
        help="records per insert transaction (the CP_EXPOSURE_BATCH_SIZE default)",
    )
    parser.add_argument(
        "--writer-rate",
        type=int,
        default=20_000,
        help="decisions/s offered to the writer process when measuring its CPU by process",
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", help="default: a SQLite file in a temp directory")
    parser.add_argument("--skip-wrk", action="store_true", help="only the writer throughput")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, _scratch(args.database_url, Path(tmp)) as url:
        report: dict[str, Any] = {
            "benchmark": "exposures",
            "config": {
                "records": args.records,
                "batch_size": args.batch_size,
                "seconds": args.seconds,
                "connections": args.connections,
                "rounds": args.rounds,
                "database": "sqlite (temp file)"
                if not args.database_url
                else args.database_url.split("@")[-1],
                "uvicorn": UVICORN_ARGS,
                "load_generator": "wrk -t1 (closed loop), distinct x-user-id",
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "writer": writer_throughput(url, args.records, args.batch_size),
        }
    with tempfile.TemporaryDirectory() as tmp, _scratch(args.database_url, Path(tmp)) as url:
        from control_plane.db import Database

        database = Database.from_url(url)
        database.migrate()
        database.dispose()
        report["writer_process_cpu"] = writer_process_cpu(url, args.records, args.writer_rate)
    if not args.skip_wrk:
        report["decide"] = decide_on_off(args, args.database_url)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
