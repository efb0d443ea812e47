"""Throughput through nginx with 1, 2 and 3 routing replicas, in one run.

    python bench/replicas.py [--seconds 8] [--connections 32]

Starts a real control plane (its sync port on), N `control-plane serve --replica-of` processes,
one loopback backend and Debian's nginx rendered by `control_plane.gateway` with the replicas as
decision servers; wrk drives closed-loop load through nginx. For each N it reports requests/s,
the ratio to N=1 from the same run, and the replicas' CPU per request (utime+stime from /proc).
Every process shares this machine's cores with nginx, wrk and the backend, so more replicas
help only while cores are idle: on 2 cores expect ~flat; on more cores, roughly linear until
nginx or the backend saturates. Prints one JSON report.
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

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gateway_support import Nginx  # noqa: E402
from servers import BackendApp, ServerThread, free_port  # noqa: E402

CLI = str(Path(sys.executable).with_name("control-plane"))
FLAG = "bench-router"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve(args: list[str], env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:  # not listening yet
            time.sleep(0.1)
        else:
            time.sleep(0.1)  # listening, not ready yet
    process.kill()
    raise SystemExit(f"a server on port {port} did not become ready")


def _wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if match is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-replicas", type=int, default=3)
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/replicas.py needs wrk (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    flags = work / "flags"
    flags.mkdir()
    results = []
    with ServerThread(BackendApp("model")) as backend:
        (flags / "bench.flagd.json").write_text(
            json.dumps(
                {
                    "flags": {
                        FLAG: {
                            "state": "ENABLED",
                            "defaultVariant": "a",
                            "variants": {
                                "a": {"backend": "model", "url": backend.url},
                                "b": {"backend": "model", "url": backend.url},
                            },
                            "targeting": {"fractional": [["a", 50], ["b", 50]]},
                        }
                    }
                }
            )
        )
        sync_port, primary_port = free_port(), free_port()
        (work / "primary").mkdir()
        primary = _serve(
            ["--flags", str(flags)],
            {"CP_SYNC_PORT": str(sync_port), "DATABASE_URL": f"sqlite:///{work}/cp.db"},
            work / "primary",
            primary_port,
        )
        replicas: list[tuple[subprocess.Popen[bytes], int]] = []
        try:
            for count in range(1, options.max_replicas + 1):
                port = free_port()
                cwd = work / f"r{count}"
                cwd.mkdir()
                replicas.append(
                    (
                        _serve(
                            ["--replica-of", f"127.0.0.1:{sync_port}"],
                            {"CP_REPLICA_DIR": str(cwd / "flags")},
                            cwd,
                            port,
                        ),
                        port,
                    )
                )
                prefix = work / f"nginx-{count}"
                with Nginx(
                    prefix,
                    flag=FLAG,
                    stable_variant="a",
                    stable_url=backend.url,
                    control_plane=",".join(f"127.0.0.1:{p}" for _, p in replicas),
                ) as nginx:
                    _wrk(f"{nginx.url}/v1/chat", 2, options.connections)  # warm up
                    before = sum(_cpu_seconds(process.pid) for process, _ in replicas)
                    rate = _wrk(f"{nginx.url}/v1/chat", options.seconds, options.connections)
                    cpu = sum(_cpu_seconds(process.pid) for process, _ in replicas) - before
                results.append(
                    {
                        "replicas": count,
                        "requests_per_s": round(rate, 1),
                        "replica_cpu_us_per_request": round(
                            cpu / (rate * options.seconds) * 1e6, 1
                        ),
                    }
                )
        finally:
            for process, _ in replicas:
                process.terminate()
            primary.terminate()
            for process in [primary, *(p for p, _ in replicas)]:
                process.wait(timeout=15)
    base = results[0]["requests_per_s"]
    for row in results:
        row["ratio_to_one_replica"] = round(row["requests_per_s"] / base, 3) if base else None
    print(
        json.dumps(
            {
                "benchmark": "replicas",
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "seconds": options.seconds,
                "connections": options.connections,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
