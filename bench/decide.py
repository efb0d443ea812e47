"""Decisions per second, p99 and server CPU of GET /v1/decide, as ratios to a raw ASGI app.

    python bench/decide.py [--seconds 10] [--connections 32] [--rounds 3] [--before DIR]
                           [--workers N]

In each round, one after another on loopback: the raw ASGI app (bench/raw_asgi.py, one uvicorn
worker, uvloop + httptools), then `control-plane serve` (one process, SQLite) deciding a plain
routing flag (region-router) and an experiment flag (ab-test-router, every decision logged as
an exposure), the experiment flag with the writer process idle (CP_RECORD_PROCESS_PRIORITY=
idle: SCHED_IDLE, only spare CPU) and once more with the exposure listener removed (nothing
recorded; `experiment_over_experiment_without_exposures` is what exposure logging alone
costs with the default batch writer). The closed-loop load generator is wrk (Debian package
`wrk`), each request carrying one of 1,000,000 distinct x-user-id values. Server CPU per
request is read from /proc (the server process and its children, such as the exposure
writer) around the measured run, because req/s is noisy on this shared machine; wrk's own CPU
per request is reported too (it shares the cores). `--before DIR` also serves from another
checkout (a `git worktree` of an earlier commit) in the same rounds, for before/after figures.
`--workers N` (N > 1) also serves both flags with `control-plane serve --workers N` (the
primary and N-1 SO_REUSEPORT workers; CPU summed over all of them) against the same raw app.
Prints a JSON report: per case the best and median of the rounds, and ratios to the raw app.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import UVICORN_ARGS, free_port, uvicorn_process

ROOT = Path(__file__).resolve().parent.parent
PLAIN, EXPERIMENT = "region-router", "ab-test-router"
#: Served in each round: (case, flag, exposure logging on, settings).
_CASES: tuple[tuple[str, str, bool, dict[str, str]], ...] = (
    ("plain", PLAIN, True, {}),
    ("experiment", EXPERIMENT, True, {}),
    ("experiment_idle_writer", EXPERIMENT, True, {"CP_RECORD_PROCESS_PRIORITY": "idle"}),
    ("experiment_without_exposures", EXPERIMENT, False, {}),
)
_LUA = """
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", wrk.path, {["x-user-id"] = "user-" .. (counter % 1000000)})
end
"""
#: `control-plane serve`, whichever CLI layout the checkout has (control_plane/cli/ or cli.py).
_SERVE = """
import os, sys
if os.environ.get("BENCH_EXPOSURES") == "off":  # the experiment flag without exposure logging
    import control_plane.http.app as app_module
    build = app_module.create_app
    def create_app(settings=None):
        app = build(settings)
        components = app.state.components
        components.decider.listeners.remove(components.experiments.recorder.on_decision)
        return app
    app_module.create_app = create_app
try:
    from control_plane.cli.entry import main
except ImportError:
    from control_plane.cli import main
sys.argv = ["control-plane", "serve", "--log-level", "warning", *sys.argv[1:]]
main()
"""
_TICKS = os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench/decide.py needs wrk: apt-get install wrk")
    output = subprocess.run(
        [
            wrk,
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    latency = {}
    for label in ("50%", "99%"):
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk printed no {label} latency:\n{output}")
        value, unit = float(match.group(1)), match.group(2)
        latency[label] = value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {
        "requests_per_s": rate,
        "requests": total,
        "p50_ms": latency["50%"],
        "p99_ms": latency["99%"],
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of `pid` and every live descendant."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / _TICKS
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def process_cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) of `pid` alone (or of one of its threads), no descendants."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def measured(pid: int, url: str, args: argparse.Namespace, script: Path) -> dict[str, float]:
    run_wrk(url, 2, args.connections, script)  # warm-up
    before, client_before = _cpu_seconds(pid), _children_cpu_seconds()
    own_before = process_cpu_seconds(pid)
    result = run_wrk(url, args.seconds, args.connections, script)
    used = _cpu_seconds(pid) - before
    own = process_cpu_seconds(pid) - own_before
    requests = max(1, result["requests"])
    result["server_cpu_us_per_request"] = round(used / requests * 1e6, 1)
    # The serving process's own share; the rest is its children's (the exposure writer, and
    # with --workers the workers and theirs).
    result["serving_process_cpu_us_per_request"] = round(own / requests * 1e6, 1)
    # wrk shares the 2 cores with the server: what it costs says how much is left for it.
    client = _children_cpu_seconds() - client_before
    result["client_cpu_us_per_request"] = round(client / requests * 1e6, 1)
    return result


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished children (the wrk run that just ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def serve(
    checkout: Path,
    tmp: Path,
    name: str,
    workers: int = 1,
    *,
    exposures: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[int, str]]:
    """`control-plane serve` of `checkout` on a free port, its own SQLite and journal, and
    `env`'s settings; `exposures=False`: the exposure listener removed (nothing recorded)."""
    port = free_port()
    env = {
        **os.environ,
        "BENCH_EXPOSURES": "on" if exposures else "off",
        "PYTHONPATH": str(checkout),
        "CP_PORT": str(port),
        "CP_FLAGS_DIR": str(checkout / "flags"),
        "CP_SYNC_PORT": "0",
        "DATABASE_URL": f"sqlite:///{tmp}/{name}.db",
        "CP_EXPOSURE_SPILL_DIR": f"{tmp}/{name}-journal",
        **(env or {}),
    }
    env.pop("CP_DATABASE_URL", None)
    extra = ["--workers", str(workers)] if workers > 1 else []
    process = subprocess.Popen([sys.executable, "-c", _SERVE, *extra], env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"control-plane serve ({checkout}) exited")
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                subprocess.run(
                    ["curl", "-fs", "-o", "/dev/null", f"{url}/readyz"], check=True, timeout=2
                )
                if workers == 1 or _running(url) >= workers:  # every worker listens
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("control-plane serve did not become ready")
            time.sleep(0.2)
        yield process.pid, url
    finally:
        process.terminate()
        process.wait(timeout=60)


def summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    rates = [item["requests_per_s"] for item in rounds]
    return {
        "requests_per_s": {"best": max(rates), "median": statistics.median(rates)},
        "p99_ms": {
            "best": min(item["p99_ms"] for item in rounds),
            "median": statistics.median(item["p99_ms"] for item in rounds),
        },
        "server_cpu_us_per_request": {
            "best": min(item["server_cpu_us_per_request"] for item in rounds),
            "median": statistics.median(item["server_cpu_us_per_request"] for item in rounds),
        },
        "serving_process_cpu_us_per_request": {
            "median": statistics.median(
                item["serving_process_cpu_us_per_request"] for item in rounds
            ),
        },
        "client_cpu_us_per_request": {
            "median": statistics.median(item["client_cpu_us_per_request"] for item in rounds),
        },
        "non_2xx": sum(item["non_2xx"] for item in rounds),
    }


def ratios(case: list[dict[str, float]], raw: list[dict[str, float]]) -> dict[str, float]:
    """req/s over the raw app's: best over best, and the median of the per-round ratios."""
    per_round = [a["requests_per_s"] / b["requests_per_s"] for a, b in zip(case, raw, strict=True)]
    return {
        "best": round(
            max(a["requests_per_s"] for a in case) / max(b["requests_per_s"] for b in raw), 3
        ),
        "median_of_rounds": round(statistics.median(per_round), 3),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    checkouts = {"after": ROOT}
    if args.before:
        checkouts["before"] = Path(args.before).resolve()
    rounds: dict[str, list[dict[str, float]]] = {"raw": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "users.lua"
        script.write_text(_LUA)
        for number in range(args.rounds):
            with uvicorn_process("raw_asgi:app", env={"PYTHONPATH": str(ROOT / "bench")}) as url:
                pid = _server_pid(url)
                rounds["raw"].append(measured(pid, url + "/", args, script))
            for label, checkout in checkouts.items():
                for kind, flag, exposures, settings in _CASES:
                    name = f"{label}-{kind}-{number}"
                    served = serve(checkout, tmp, name, exposures=exposures, env=settings)
                    with served as (pid, url):
                        result = measured(pid, f"{url}/v1/decide/{flag}", args, script)
                    rounds.setdefault(f"{label}_{kind}", []).append(result)
            if args.workers > 1:  # serve --workers N (this checkout only)
                for kind, flag in (("plain", PLAIN), ("experiment", EXPERIMENT)):
                    name = f"after-{kind}-workers{args.workers}-{number}"
                    with serve(ROOT, tmp, name, args.workers) as (pid, url):
                        result = measured(pid, f"{url}/v1/decide/{flag}", args, script)
                    rounds.setdefault(f"after_{kind}_workers{args.workers}", []).append(result)
            print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    report: dict[str, Any] = {"cases": {name: summary(items) for name, items in rounds.items()}}
    report["ratios_to_raw"] = {
        name: ratios(items, rounds["raw"]) for name, items in rounds.items() if name != "raw"
    }
    for label in checkouts:
        plain, experiment = rounds[f"{label}_plain"], rounds[f"{label}_experiment"]
        # What exposure logging alone costs the experiment flag: with it / without it.
        report[f"{label}_experiment_over_experiment_without_exposures"] = ratios(
            experiment, rounds[f"{label}_experiment_without_exposures"]
        )
        idle = rounds[f"{label}_experiment_idle_writer"]
        report[f"{label}_experiment_idle_writer_p99_over_plain_p99"] = round(
            statistics.median(item["p99_ms"] for item in idle)
            / statistics.median(item["p99_ms"] for item in plain),
            2,
        )
        report[f"{label}_experiment_p99_over_plain_p99"] = round(
            statistics.median(item["p99_ms"] for item in experiment)
            / statistics.median(item["p99_ms"] for item in plain),
            2,
        )
    report["all_rounds"] = rounds
    return report


def _running(url: str) -> int:
    """Processes serving `url`: those whose metrics the merged /metrics page holds (a worker
    answers its internal scrape once it listens on the port), 0 if unknown."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        page = subprocess.run(
            ["curl", "-fs", f"{url}/metrics"], capture_output=True, text=True, check=True, timeout=5
        ).stdout
        return len(
            set(
                re.findall(r'^control_plane_flag_set_version\{worker="(\d+)"\}', page, re.MULTILINE)
            )
        )
    return 0


def _server_pid(url: str) -> int:
    """The pid listening on `url`'s port (the uvicorn process of the raw app)."""
    port = int(url.rsplit(":", 1)[1])
    output = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"pid=(\d+)", output)
    if match is None:
        raise RuntimeError(f"no process listens on port {port}")
    return int(match.group(1))


def in_process(requests: int = 50_000) -> dict[str, float]:
    """Microseconds per decision in this process: compiled evaluation and the lean decider."""
    from control_plane.flagstore import FlagStore
    from control_plane.routing.compiled_decisions import CompiledDecider
    from control_plane.routing.decisions import DecisionIds
    from flags import FLAGS_DIR

    store = FlagStore(FLAGS_DIR)
    decider = CompiledDecider(store, ids=DecisionIds(), listeners=[])
    store.subscribe(decider.update)
    store.reload()
    compiled = decider.flag_set
    if compiled is None:
        raise RuntimeError("the shipped flags did not compile")
    users = [f"user-{index}" for index in range(requests)]
    results: dict[str, float] = {}
    for flag in (PLAIN, EXPERIMENT):
        start = time.perf_counter()
        for user in users:
            compiled.evaluate(flag, user, {})
        results[f"compiled_evaluate_{flag}_us"] = round(
            (time.perf_counter() - start) / requests * 1e6, 2
        )
        start = time.perf_counter()
        for user in users:
            decider.decide(flag, user, {})
        results[f"lean_decide_{flag}_us"] = round((time.perf_counter() - start) / requests * 1e6, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="another checkout to serve from in the same rounds")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also serve with `serve --workers N` (N > 1) in each round",
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "decide",
        "config": {
            "seconds": args.seconds,
            "connections": args.connections,
            "rounds": args.rounds,
            "plain_flag": PLAIN,
            "experiment_flag": EXPERIMENT,
            "raw_app": ["uvicorn", *UVICORN_ARGS, "--loop", "uvloop", "--http", "httptools"],
            "served": "control-plane serve (one process, SQLite)",
            "before": args.before,
            "workers": args.workers,
            "load_generator": "wrk -t1 (closed loop), 1M distinct x-user-id values",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "targets": {
            "plain_ratio": 0.9,
            "experiment_ratio": 0.8,
            "experiment_p99_over_plain_p99": 2.0,
            "in_process_us": 2.0,
            "workers2_ratio": 1.1,
        },
        "in_process": in_process(),
    }
    report.update(measure(args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
