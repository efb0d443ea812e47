"""Reload latency: from a flag file edit to the first routing decision that reflects it.

    python bench/reload_latency.py [--edits 50] [--interval 0.2] [--http] [--other-flags 10000]

Each edit atomically rewrites a routing flag file so every variant URL carries a new generation
number, at a random moment relative to the watcher's poll; a client then decides continuously
until a decision's URL carries the new generation. In-process by default (flag store -> flagd
provider -> Decider, as the service runs it); with --http the decisions are POST /v1/route
requests to the real app on a uvicorn server on loopback.

Prints a JSON report. Baselines measured in the same run: the cost of one direct
`store.reload()` (read + validate + version + swap + notify) and the poll interval; the latency
is also given as a ratio to the interval, since detection waits for the next poll. After the
edits, twenty more are reloaded by calling the serving store's `reload()` and its thread CPU is
reported (`reload_thread_cpu`: database recorder and every listener included with --http),
with how late a 1 ms sleeper thread woke meanwhile (`wake_lateness`), beside the same measure
during pure-Python CPU bursts of the same lengths: a reload that holds the interpreter lock in
long C calls (a big json.dumps, a full garbage collection) shows above the bursts.

`--other-flags N` puts N more flags beside the edited one (100 per file, untouched): the edit
of one flag in a large flag set. Every decision's own duration is kept too, before the first
edit (the baseline) and while edits go live, so a reload that stalls decisions shows as the
ratio of their p99 and max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openfeature import api as openfeature_api  # noqa: E402

from control_plane.flagstore import FlagStore  # noqa: E402
from control_plane.routing.decisions import Decider  # noqa: E402
from providers import source_fed_provider  # noqa: E402

FLAG = "bench-router"


def document(generation: int) -> dict[str, Any]:
    variants = {
        name: {
            "backend": f"model-{name}",
            "url": f"http://127.0.0.1:{9200 + index}/gen-{generation}",
        }
        for index, name in enumerate(("a", "b"))
    }
    return {
        "flags": {
            FLAG: {
                "state": "ENABLED",
                "variants": variants,
                "defaultVariant": "a",
                "metadata": {"generation": generation},
                "targeting": {"fractional": [["a", 50], ["b", 50]]},
            }
        }
    }


def write_other_flags(directory: Path, count: int) -> None:
    """`count` routing flags in files of 100 that no edit touches."""
    for start in range(0, count, 100):
        flags = {
            f"other-{index}": {
                "state": "ENABLED",
                "variants": {
                    name: {"backend": f"model-{name}", "url": f"http://127.0.0.1:{9300 + i}/"}
                    for i, name in enumerate(("a", "b"))
                },
                "defaultVariant": "a",
                "targeting": {"fractional": [["a", 50], ["b", 50]]},
            }
            for index in range(start, min(count, start + 100))
        }
        (directory / f"other-{start // 100:05d}.flagd.json").write_text(
            json.dumps({"flags": flags})
        )


def write(path: Path, generation: int) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(document(generation), indent=2))
    temp.replace(path)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(percentile(values, 0.95) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


class Lateness:
    """A thread that sleeps 1 ms in a loop and, inside `measuring(into)`, appends how late it
    woke: the wait for the interpreter lock (and for a core) another thread causes."""

    def __init__(self) -> None:
        self._into: list[float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            begun = time.perf_counter()
            time.sleep(0.001)
            late = time.perf_counter() - begun - 0.001
            into = self._into
            if into is not None:
                into.append(late)

    def __enter__(self) -> Lateness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @contextlib.contextmanager
    def measuring(self, into: list[float]) -> Iterator[None]:
        self._into = into
        try:
            yield
        finally:
            self._into = None


def in_process_decide(store: FlagStore) -> Callable[[str], str]:
    domain = f"bench-{uuid.uuid4().hex[:8]}"
    openfeature_api.set_provider_and_wait(source_fed_provider(store), domain=domain)
    decider = Decider(openfeature_api.get_client(domain), store)
    return lambda user: decider.decide(FLAG, user, {}).url


def http_decide(
    store_dir: Path, interval: float
) -> tuple[Callable[[str], str], Callable[[], None], FlagStore]:
    import httpx
    import uvicorn

    from control_plane.http.app import create_app
    from control_plane.settings import Settings

    settings = Settings(
        flags_dir=store_dir,
        sync_port=0,
        reload_interval=interval,
        database_url=f"sqlite:///{store_dir.parent / 'bench.db'}",
    )
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def decide(user: str) -> str:
        response = client.post(f"/v1/route/{FLAG}", headers={"x-user-id": user})
        response.raise_for_status()
        return str(response.json()["url"])

    def close() -> None:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)

    return decide, close, app.state.components.store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.2, help="watcher poll interval, s")
    parser.add_argument("--http", action="store_true", help="decide through the HTTP API")
    parser.add_argument("--other-flags", type=int, default=0, help="untouched flags beside it")
    args = parser.parse_args()
    rng = random.Random(7)

    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp) / "flags"
        directory.mkdir()
        path = directory / "bench.flagd.json"
        write(path, 0)
        write_other_flags(directory, args.other_flags)

        # Baseline: the work of one reload, without waiting for a poll.
        baseline_store = FlagStore(directory)
        direct: list[float] = []
        for generation in range(1, 21):
            write(path, generation)
            started = time.perf_counter()
            baseline_store.reload()
            direct.append(time.perf_counter() - started)
        write(path, 0)

        close: Callable[[], None] = lambda: None  # noqa: E731
        if args.http:
            decide, close, store = http_decide(directory, args.interval)
        else:
            store = FlagStore(directory, reload_interval=args.interval)
            store.reload()
            decide = in_process_decide(store)
            store.start()
        latencies: list[float] = []
        calm: list[float] = []  # decisions before any edit
        during: list[float] = []  # decisions while edits go live
        probes = 0
        reload_cpu: list[float] = []
        stall: list[float] = []  # how late a 1 ms sleeper woke while a reload ran
        control: list[float] = []  # the same, during pure-Python bursts of the same CPU

        def timed(user: str, into: list[float]) -> str:
            begun = time.perf_counter()
            url = decide(user)
            into.append(time.perf_counter() - begun)
            return url

        try:
            for probe in range(2000):
                timed(f"calm-{probe}", calm)
            for generation in range(1, args.edits + 1):
                time.sleep(rng.uniform(0, args.interval))  # a random phase against the poll
                marker = f"/gen-{generation}"
                write(path, generation)
                started = time.perf_counter()
                while True:
                    probes += 1
                    if timed(f"user-{probes}", during).endswith(marker):
                        break
                    time.sleep(0.0005)
                latencies.append(time.perf_counter() - started)
            # The CPU of one reload in the serving process (its database recorder and every
            # listener included), as thread CPU of the reloading thread: with the watcher idle
            # between polls, the same reload store.reload() runs here. Meanwhile a thread that
            # sleeps 1 ms in a loop records how late it wakes (what a decision waiting for the
            # interpreter lock sees); as a control, pure-Python CPU bursts of the same lengths
            # (the interpreter hands the lock over every switch interval) are measured the same.
            with Lateness() as late:
                for generation in range(args.edits + 1, args.edits + 21):
                    write(path, generation)
                    with late.measuring(stall):
                        begun = time.thread_time()
                        store.reload()
                        reload_cpu.append(time.thread_time() - begun)
                for seconds in reload_cpu:
                    with late.measuring(control):
                        begun = time.thread_time()
                        while time.thread_time() - begun < seconds:
                            pass
        finally:
            store.stop()
            close()
            openfeature_api.clear_providers()

    edit_to_live = summary_ms(latencies)
    report = {
        "benchmark": "reload_latency",
        "configuration": {
            "mode": "http" if args.http else "in-process",
            "edits": args.edits,
            "other_flags": args.other_flags,
            "poll_interval_s": args.interval,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "edit_to_decision": edit_to_live,
        "baseline_direct_reload": summary_ms(direct),
        "reload_thread_cpu": summary_ms(reload_cpu),
        "wake_lateness": {
            "during_reloads": {
                **summary_ms(stall),
                "p99_ms": round(percentile(stall, 0.99) * 1000, 2),
            },
            "during_python_bursts": {
                **summary_ms(control),
                "p99_ms": round(percentile(control, 0.99) * 1000, 2),
            },
        },
        "decision_seconds": {
            "before_edits": {**summary_ms(calm), "p99_ms": round(percentile(calm, 0.99) * 1000, 2)},
            "during_edits": {
                **summary_ms(during),
                "p99_ms": round(percentile(during, 0.99) * 1000, 2),
            },
        },
        "ratios": {
            "decision_p99_during_to_before": round(
                percentile(during, 0.99) / percentile(calm, 0.99), 2
            ),
            "decision_max_during_to_before": round(max(during) / max(calm), 2),
            "p95_to_poll_interval": round(edit_to_live["p95_ms"] / (args.interval * 1000), 3),
            "p50_to_poll_interval": round(edit_to_live["p50_ms"] / (args.interval * 1000), 3),
        },
        "target": "p95 edit -> decision under 1000 ms",
        "met": edit_to_live["p95_ms"] < 1000,
        "reloads": {"ok": store.stats.reloads_ok, "failed": store.stats.reloads_failed},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
