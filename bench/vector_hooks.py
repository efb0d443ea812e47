"""Benchmark: a hooked TenantMilvus search against the raw MilvusClient.search, in one run.

One command, one JSON report on stdout::

    python bench/vector_hooks.py                 # 100,000 x 128-d vectors, 100 tenants
    python bench/vector_hooks.py --rows 20000    # a quicker run

What is timed, on one Milvus Lite collection with the tenant field as partition key:

- ``raw``: ``MilvusClient.search`` with the same tenant filter, ``limit`` hits (what a service
  would call without the SDK), its hits read (pymilvus decodes results lazily);
- ``raw_same_fetch``: ``MilvusClient.search`` asking for what the hooked search asks Milvus for
  (``candidates`` hits with their vectors and the recency field), so that
  ``hooked / raw_same_fetch`` is the SDK's own overhead;
- ``hooked``: ``TenantMilvus.search`` through the pipeline [tenant-aware-rerank (50 candidates
  -> 10, recency decay, MMR lambda 0.7), tenant-filter];
- ``rerank``: the rerank hook alone on 50 candidates, and the whole pipeline on a canned
  backend answer (no Milvus), both in milliseconds.

The three searches run interleaved, in a shuffled order per query, so machine noise hits them
alike; every figure is also given as a ratio to the raw search of the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

# This script shares its name with the package it measures: run as a file, its folder is
# sys.path[0] and `import vector_hooks` would import the script itself. Drop that folder.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import numpy as np  # noqa: E402 - after the sys.path fix above
from pymilvus import MilvusClient  # noqa: E402

from vector_hooks import SearchRequest, build_pipeline  # noqa: E402
from vector_hooks.builtins import RerankConfig, TenantAwareRerankHook  # noqa: E402
from vector_hooks.milvus import TenantMilvus, create_tenant_collection  # noqa: E402
from vector_hooks.request import Hit, Hits  # noqa: E402

COLLECTION = "bench_docs"
RERANK = {
    "candidates": 50,
    "mmr_lambda": 0.7,
    "recency": {"field": "updated_at", "half_life_s": 7 * 86400, "weight": 0.2},
}


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(p95, 3),
        "samples": len(ms),
    }


def _load(client: MilvusClient, rows: int, tenants: int, dim: int, seed: int) -> float:
    create_tenant_collection(client, COLLECTION, dim=dim, num_partitions=min(tenants, 1024))
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    now = int(time.time())
    batch = 10_000
    for start in range(0, rows, batch):
        count = min(batch, rows - start)
        vectors = rng.random((count, dim), dtype=np.float32)
        ages = rng.integers(0, 90 * 86400, size=count)
        client.insert(
            COLLECTION,
            [
                {
                    "id": start + i,
                    "vector": vectors[i],
                    "tenant_id": f"tenant-{(start + i) % tenants}",
                    "updated_at": int(now - ages[i]),
                }
                for i in range(count)
            ],
        )
    client.flush(COLLECTION)
    return time.perf_counter() - started


def _read(result: Any) -> list[list[tuple[Any, float, dict[str, Any]]]]:
    """Read every hit, as a service would: pymilvus decodes results lazily, on first access,
    so an unread result would time the search without its decoding."""
    return [[(hit["id"], hit["distance"], hit["entity"]) for hit in group] for group in result]


def _time(fn: Any) -> int:
    started = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - started


def _rerank_alone(
    raw_hits: list[tuple[Any, float, dict[str, Any]]], limit: int, repeats: int
) -> dict[str, Any]:
    hook = TenantAwareRerankHook(RerankConfig.from_mapping(RERANK))
    group = [
        Hit(
            id=hit_id,
            score=distance,
            fields=dict(entity),
            distance=distance,
            vector=entity["vector"],
        )
        for hit_id, distance, entity in raw_hits
    ]
    now = time.time()
    for _ in range(20):
        hook.rerank(list(group), limit, now=now)
    samples = [_time(lambda: hook.rerank(list(group), limit, now=now)) for _ in range(repeats)]

    pipeline = build_pipeline(
        {"hooks": [{"name": "tenant-aware-rerank", "config": RERANK}, "tenant-filter"]}
    )

    def canned(request: SearchRequest) -> Hits:
        return [list(group)]

    def run() -> None:
        request = SearchRequest(
            tenant="tenant-1",
            backend="bench",
            operation="search",
            collection=COLLECTION,
            limit=limit,
            fetch_limit=limit,
            output_fields=[],
        )
        pipeline.run(request, canned)

    for _ in range(20):
        run()
    pipeline_samples = [_time(run) for _ in range(repeats)]
    pipeline.close()
    return {
        "candidates": len(group),
        "limit": limit,
        "rerank": _percentiles(samples),
        "pipeline_without_backend": _percentiles(pipeline_samples),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vh-bench-") as tmp:
        client = MilvusClient(str(Path(tmp) / "bench.db"))
        try:
            load_s = _load(client, args.rows, args.tenants, args.dim, args.seed)
            pipeline = build_pipeline(
                {"hooks": [{"name": "tenant-aware-rerank", "config": RERANK}, "tenant-filter"]}
            )
            docs = TenantMilvus(client, COLLECTION, pipeline=pipeline)
            rng = random.Random(args.seed)
            vec_rng = np.random.default_rng(args.seed + 1)
            queries = [
                (
                    f"tenant-{rng.randrange(args.tenants)}",
                    vec_rng.random(args.dim, dtype=np.float32).tolist(),
                )
                for _ in range(args.queries)
            ]
            candidates = int(RERANK["candidates"])  # type: ignore[call-overload]

            def raw(tenant: str, vector: list[float]) -> Any:
                return _read(
                    client.search(
                        COLLECTION,
                        data=[vector],
                        limit=args.limit,
                        filter=f'tenant_id == "{tenant}"',
                    )
                )

            def raw_same_fetch(tenant: str, vector: list[float]) -> Any:
                return _read(
                    client.search(
                        COLLECTION,
                        data=[vector],
                        limit=candidates,
                        filter=f'tenant_id == "{tenant}"',
                        output_fields=["tenant_id", "updated_at", "vector"],
                    )
                )

            def hooked(tenant: str, vector: list[float]) -> Any:
                return docs.search(tenant, data=[vector], limit=args.limit)

            variants = {"raw": raw, "raw_same_fetch": raw_same_fetch, "hooked": hooked}
            for tenant, vector in queries[: min(10, len(queries))]:  # warm caches and code paths
                for fn in variants.values():
                    fn(tenant, vector)
            samples: dict[str, list[int]] = {name: [] for name in variants}
            for tenant, vector in queries:
                order = list(variants)
                rng.shuffle(order)
                for name in order:
                    fn = variants[name]
                    samples[name].append(_time(lambda f=fn, t=tenant, v=vector: f(t, v)))
            check = hooked(*queries[0])
            assert len(check[0]) == min(args.limit, args.rows // args.tenants)
            alone = _rerank_alone(raw_same_fetch(*queries[0])[0], args.limit, args.rerank_repeats)
            pipeline.close()
        finally:
            client.close()
    figures = {name: _percentiles(values) for name, values in samples.items()}
    raw_median = figures["raw"]["median_ms"]
    same_median = figures["raw_same_fetch"]["median_ms"]
    hooked_median = figures["hooked"]["median_ms"]
    ratio = hooked_median / raw_median
    rerank_median = alone["rerank"]["median_ms"]
    return {
        "benchmark": "vector_hooks hooked search vs raw MilvusClient.search",
        "config": {
            "rows": args.rows,
            "tenants": args.tenants,
            "dim": args.dim,
            "queries": args.queries,
            "limit": args.limit,
            "rerank": RERANK,
            "index": "AUTOINDEX",
            "metric": "COSINE",
            "partition_key": "tenant_id",
            "load_seconds": round(load_s, 1),
            "python": platform.python_version(),
            "pymilvus": version("pymilvus"),
            "milvus_lite": version("milvus-lite"),
            "machine": platform.machine(),
            "cpus": _cpus(),
        },
        "latency": figures,
        "ratios": {
            "hooked_over_raw_median": round(ratio, 3),
            "hooked_over_raw_p95": round(figures["hooked"]["p95_ms"] / figures["raw"]["p95_ms"], 3),
            "hooked_over_raw_same_fetch_median": round(hooked_median / same_median, 3),
            "rerank_over_raw_median": round(rerank_median / raw_median, 4),
        },
        "rerank_alone": alone,
        "targets": {
            "overhead_ratio_at_most_1_10": ratio <= 1.10,
            "rerank_under_1_ms": rerank_median < 1.0,
        },
    }


def _cpus() -> int | None:
    import os

    return os.cpu_count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000, help="vectors to load")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200, help="timed searches per variant")
    parser.add_argument("--limit", type=int, default=10, help="hits returned to the caller")
    parser.add_argument("--rerank-repeats", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rows < args.tenants:
        parser.error("--rows must be at least --tenants")
    json.dump(run(args), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
