"""Reload-to-replica latency over flagd's sync protocol, with official flagd providers as replicas.

    python bench/sync_replica_latency.py [--replicas 5] [--edits 50] [--interval 0.2]

Replicas are the official flagd provider (openfeature-provider-flagd, in-process mode), each on
its own gRPC channel to our flagd.sync.v1 server on loopback. Two measurements:

- `reload`: `store.reload()` is called; time until each replica evaluates the new value;
- `file_edit`: a flag file is rewritten at a random moment while the store's watcher polls
  every `--interval` seconds; time from the write until each replica evaluates the new value.

Prints a JSON report. Baseline measured in the same run: the cost of `store.reload()` itself
(read + validate + version + swap + notify), so figures are also given as ratios to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from openfeature import api as openfeature_api
from openfeature.client import OpenFeatureClient

from control_plane.distribution import start_sync_server
from control_plane.flagstore import FlagStore
from providers import sync_provider

FLAG = "latency-probe"


def _write(directory: Path, generation: int) -> None:
    document = {
        "flags": {
            FLAG: {
                "state": "ENABLED",
                "variants": {"g": f"gen-{generation}"},
                "defaultVariant": "g",
            }
        }
    }
    temp = directory / ".probe.tmp"
    temp.write_text(json.dumps(document))
    temp.replace(directory / "probe.flagd.json")


def _wait_all(
    clients: list[OpenFeatureClient], expected: str, started: float, timeout: float = 10.0
) -> list[float]:
    seen: dict[int, float] = {}
    deadline = started + timeout
    while len(seen) < len(clients):
        for index, client in enumerate(clients):
            if index not in seen and client.get_string_value(FLAG, "") == expected:
                seen[index] = time.perf_counter() - started
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"replicas {sorted(set(range(len(clients))) - set(seen))} "
                f"did not see {expected} within {timeout} s"
            )
    return [seen[index] for index in range(len(clients))]


def _summary(samples: list[float], baseline: float) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(p95 * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "p50_over_reload_cost": round(statistics.median(ordered) / baseline, 2),
        "p95_over_reload_cost": round(p95 / baseline, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.2, help="watcher poll, seconds")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="sync-latency-"))
    generation = 0
    _write(directory, generation)
    store = FlagStore(directory, reload_interval=args.interval)
    store.reload()
    handle = start_sync_server(store, "127.0.0.1", 0)
    providers = [sync_provider("127.0.0.1", handle.port) for _ in range(args.replicas)]
    clients = []
    for provider in providers:
        domain = f"replica-{uuid.uuid4().hex[:8]}"
        openfeature_api.set_provider_and_wait(provider, domain=domain)
        clients.append(openfeature_api.get_client(domain))
    try:
        reload_costs: list[float] = []
        after_reload: list[float] = []
        for _ in range(args.edits):
            generation += 1
            _write(directory, generation)
            started = time.perf_counter()
            store.reload()
            reload_costs.append(time.perf_counter() - started)
            after_reload += _wait_all(clients, f"gen-{generation}", started)
        baseline = statistics.median(reload_costs)

        store.start()
        rng = random.Random(7)
        after_edit: list[float] = []
        for _ in range(args.edits):
            time.sleep(rng.uniform(0, args.interval))
            generation += 1
            started = time.perf_counter()
            _write(directory, generation)
            after_edit += _wait_all(clients, f"gen-{generation}", started)
        store.stop()
    finally:
        for provider in providers:
            provider.shutdown()
        handle.stop()

    print(
        json.dumps(
            {
                "benchmark": "sync_replica_latency",
                "config": {
                    "replicas": args.replicas,
                    "edits": args.edits,
                    "watch_interval_s": args.interval,
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "transport": "grpc loopback",
                },
                "baseline_store_reload_ms": round(baseline * 1000, 3),
                "reload": _summary(after_reload, baseline),
                "file_edit": _summary(after_edit, baseline),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
