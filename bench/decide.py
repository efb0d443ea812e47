"""Decisions per second and latency of GET /v1/decide against a raw ASGI baseline.

    python bench/decide.py [--seconds 10] [--connections 32] [--flag ab-test-router]

Both servers run as one uvicorn worker on loopback with the same settings; the closed-loop
load generator is wrk (Debian package `wrk`), each request carrying a different x-user-id so
that hash bucketing does real work. Prints a JSON report; the figure that matters is
`ratio` = decide req/s / raw ASGI req/s, measured in the same run because this machine is shared.
Optionally (`--profile`) prints where the time goes in-process, per request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import STACKS, UVICORN_ARGS, uvicorn_process

_LUA = """
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", wrk.path, {["x-user-id"] = "user-" .. (counter % 100000)})
end
"""


def run_wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench/decide.py needs wrk: apt-get install wrk")
    output = subprocess.run(
        [wrk, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s",
         str(script), url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    latency = {}
    for label in ("50%", "99%"):
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
        assert match, output
        value, unit = float(match.group(1)), match.group(2)
        latency[label] = value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {"requests_per_s": rate, "p50_ms": latency["50%"], "p99_ms": latency["99%"],
            "non_2xx": int(errors.group(1)) if errors else 0}


def profile(flag: str, requests: int = 20000) -> dict[str, float]:
    """Microseconds per request spent in each layer, measured in this process."""
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext

    from control_plane.flagstore import FlagStore
    from control_plane.routing.context import ContextMapper
    from control_plane.routing.decisions import Decider
    from control_plane.settings import DEFAULT_HEADER_RULES
    from flags import FLAGS_DIR
    from providers import source_fed_provider

    store = FlagStore(FLAGS_DIR)
    store.reload()
    provider = source_fed_provider(store)
    api.set_provider_and_wait(provider, domain="bench")
    client = api.get_client("bench")
    decider = Decider(client, store)
    mapper = ContextMapper(DEFAULT_HEADER_RULES)
    headers = [[(b"x-user-id", f"user-{i}".encode()), (b"accept", b"*/*")]
               for i in range(requests)]

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        for index in range(requests):
            fn(index)
        return (time.perf_counter() - start) / requests * 1e6

    results = {
        "header_mapping_us": timed(lambda i: mapper.from_raw_headers(headers[i])),
        "flagd_provider_us": timed(lambda i: provider.resolve_object_details(
            flag, {}, EvaluationContext(f"user-{i}"))),
        "openfeature_client_us": timed(lambda i: client.get_object_details(
            flag, {}, EvaluationContext(f"user-{i}"))),
        "decider_us": timed(lambda i: decider.decide(flag, f"user-{i}", {})),
    }
    api.clear_providers()
    return results


def measure(stack: str, args: argparse.Namespace) -> dict[str, object]:
    """Alternate baseline and decide servers `rounds` times on one stack; keep the best of each."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "users.lua"
        script.write_text(_LUA)
        env = {"CP_DATABASE_URL": f"sqlite:///{tmp}/bench.db", "CP_SYNC_PORT": "0",
               "CP_EXPOSURE_SPILL_DIR": f"{tmp}/spill"}
        baseline: list[dict[str, float]] = []
        decide: list[dict[str, float]] = []
        for _ in range(args.rounds):
            with uvicorn_process("raw_asgi:app", stack=stack,
                                 env={"PYTHONPATH": str(Path(__file__).parent)}) as url:
                run_wrk(url + "/", 2, args.connections, script)  # warm-up
                baseline.append(run_wrk(url + "/", args.seconds, args.connections, script))
            with uvicorn_process("control_plane.http.app:create_app", factory=True,
                                 stack=stack, env=env) as url:
                target = f"{url}/v1/decide/{args.flag}"
                run_wrk(target, 2, args.connections, script)
                decide.append(run_wrk(target, args.seconds, args.connections, script))
    best_base = max(baseline, key=lambda r: r["requests_per_s"])
    best_decide = max(decide, key=lambda r: r["requests_per_s"])
    return {
        "baseline_raw_asgi": best_base,
        "decide": best_decide,
        "ratio": round(best_decide["requests_per_s"] / best_base["requests_per_s"], 3),
        "all_rounds": {"baseline": baseline, "decide": decide},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--flag", default="ab-test-router")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate baseline and decide this many times; best of each")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stack", action="append", choices=list(STACKS),
                        help="server stack(s) to measure (default: both)")
    args = parser.parse_args()
    args.stack = args.stack or list(STACKS)

    report: dict[str, object] = {
        "benchmark": "decide",
        "config": {"seconds": args.seconds, "connections": args.connections,
                   "flag": args.flag, "rounds": args.rounds, "uvicorn": UVICORN_ARGS,
                   "load_generator": "wrk -t1 (closed loop), distinct x-user-id per request",
                   "cpus": os.cpu_count(), "python": platform.python_version()},
        "target_ratio": 0.7,
        "stacks": {stack: measure(stack, args) for stack in args.stack},
    }
    if args.profile:
        report["per_request_in_process"] = profile(args.flag)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
