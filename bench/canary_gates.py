"""Canary gates on simulated canaries: false rollbacks of A/A canaries, and how fast bad ones go.

Simulates canary runs interval by interval with the product's own built-in checks
(control_plane.experiments.canary.gates, default spec unless overridden) and the controller's
rules: each interval's calls are one stratum; at its end both checks judge all the run's strata;
a failed check is counted and `failureThreshold` of them roll back; otherwise a step advances
once its interval passed and the canary had `minRequests` calls in it; after the last step the
canary is promoted.

Traffic: `--calls` requests per interval split by the canary weight (binomial). Latency:
log-normal around 80 ms (sigma 0.35), times a per-interval load factor shared by both variants
(log-normal, sigma 0.15), 1% of calls spiking 3-10x, and 2% of intervals an incident hitting both
variants (latency 2x, error rate 10x). Errors: 1% of calls (answered 503s). Scenarios:

- aa: the canary behaves exactly like stable. A rollback is a false rollback.
- errors2x: the canary fails twice as often. latency1.5x: every canary call takes 1.5x.

The old gate (rollback at the first interval whose canary p99 is above 1.5x the stable p99 of
the run, or whose error rate is above 5%) runs on the same A/A traffic for comparison. Seeded
and fast; prints a JSON report.

    .venv/bin/python bench/canary_gates.py [--runs 1000] [--seed 1] [--calls 600]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control_plane.experiments.canary.gates import (
    Stratum,
    judge_error_rate,
    judge_latency,
    stratum_tables,
)
from control_plane.experiments.canary.spec import CanarySpec
from control_plane.experiments.repository import CallWindow
from control_plane.experiments.sequential import STRATA_MIXTURE_VARIANCE
from control_plane.experiments.stats import proportion_summary

MEDIAN_SECONDS, SIGMA = 0.080, 0.35
LOAD_SIGMA = 0.15
SPIKE_SHARE, SPIKE_LOW, SPIKE_HIGH = 0.01, 3.0, 10.0
INCIDENT_SHARE, INCIDENT_LATENCY, INCIDENT_ERRORS = 0.02, 2.0, 10.0
ERROR_RATE = 0.01
SCENARIOS = {"aa": (1.0, 1.0), "errors2x": (2.0, 1.0), "latency1.5x": (1.0, 1.5)}
MAX_INTERVALS = 120


class Traffic:
    """One interval's calls of both variants."""

    def __init__(
        self,
        rng: np.random.Generator,
        calls: int,
        weight: float,
        error_factor: float,
        latency_factor: float,
    ) -> None:
        load = math.exp(rng.normal(0.0, LOAD_SIGMA))
        incident = rng.random() < INCIDENT_SHARE
        latency_scale = MEDIAN_SECONDS * load * (INCIDENT_LATENCY if incident else 1.0)
        error_rate = min(1.0, ERROR_RATE * (INCIDENT_ERRORS if incident else 1.0))
        canary_n = int(rng.binomial(calls, weight))
        self.canary = self._calls(
            rng, canary_n, latency_scale * latency_factor, min(1.0, error_rate * error_factor)
        )
        self.stable = self._calls(rng, calls - canary_n, latency_scale, error_rate)

    @staticmethod
    def _calls(
        rng: np.random.Generator, n: int, scale: float, error_rate: float
    ) -> tuple[int, int, np.ndarray]:
        latencies = scale * rng.lognormal(0.0, SIGMA, n)
        spikes = rng.random(n) < SPIKE_SHARE
        latencies[spikes] *= rng.uniform(SPIKE_LOW, SPIKE_HIGH, int(spikes.sum()))
        errors = int((rng.random(n) < error_rate).sum())
        return n, errors, latencies


def _nearest_rank(chunks: list[np.ndarray], quantile: float) -> float | None:
    data = np.concatenate(chunks) if chunks else np.empty(0)
    if data.size == 0:
        return None
    rank = max(1, math.ceil(quantile * data.size)) - 1
    return float(np.partition(data, rank)[rank])


def simulate(
    rng: np.random.Generator, spec: CanarySpec, calls: int, scenario: str, mixture_variance: float
) -> dict[str, Any]:
    """One canary run under the product's checks: its outcome and when."""
    error_factor, latency_factor = SCENARIOS[scenario]
    checks = spec.checks
    step, step_calls, failed = 0, 0, 0
    tables = []
    canary_chunks: list[np.ndarray] = []
    stable_chunks: list[np.ndarray] = []
    for interval in range(1, MAX_INTERVALS + 1):
        traffic = Traffic(rng, calls, spec.steps[step] / 100, error_factor, latency_factor)
        canary_n, canary_errors, canary_latencies = traffic.canary
        stable_n, stable_errors, stable_latencies = traffic.stable
        stratum = Stratum(
            CallWindow(canary_n, canary_errors, canary_latencies.tolist()),
            CallWindow(stable_n, stable_errors, stable_latencies.tolist()),
        )
        tables.append(stratum_tables(checks, stratum))
        canary_chunks.append(canary_latencies)
        stable_chunks.append(stable_latencies)
        results = (
            judge_error_rate(
                checks.error_rate, [t.errors for t in tables], mixture_variance=mixture_variance
            ),
            judge_latency(
                checks.latency,
                [t.latency for t in tables],
                _nearest_rank(canary_chunks, checks.latency.quantile),
                _nearest_rank(stable_chunks, checks.latency.quantile),
                mixture_variance=mixture_variance,
            ),
        )
        step_calls += canary_n
        bad = [result.name for result in results if result.outcome == "fail"]
        if bad:
            failed += 1
            if failed >= spec.failure_threshold:
                return {
                    "outcome": "rolled_back",
                    "intervals": interval,
                    "checks": bad,
                    "step": step + 1,
                }
            continue
        judged = all(r.outcome == "pass" for r in results)
        last_compared = step + 1 == len(spec.steps) or spec.steps[step + 1] >= 100
        if step_calls >= spec.min_requests and (judged or not last_compared):
            step, step_calls = step + 1, 0
            if step == len(spec.steps):
                return {"outcome": "promoted", "intervals": interval, "checks": [], "step": step}
    return {"outcome": "unfinished", "intervals": MAX_INTERVALS, "checks": [], "step": step + 1}


def simulate_old_gate(rng: np.random.Generator, spec: CanarySpec, calls: int) -> str:
    """An A/A run under the gate this project had: p99 ratio 1.5x or error rate 5%, once."""
    step, step_calls = 0, 0
    step_errors = 0
    step_chunks: list[np.ndarray] = []
    stable_chunks: list[np.ndarray] = []
    for _ in range(MAX_INTERVALS):
        traffic = Traffic(rng, calls, spec.steps[step] / 100, 1.0, 1.0)
        canary_n, canary_errors, canary_latencies = traffic.canary
        step_calls += canary_n
        step_errors += canary_errors
        step_chunks.append(canary_latencies)
        stable_chunks.append(traffic.stable[2])
        if step_calls < spec.min_requests:
            continue
        if step_errors / step_calls > 0.05:
            return "rolled_back"
        canary_p99 = _nearest_rank(step_chunks, 0.99)
        stable_p99 = _nearest_rank(stable_chunks, 0.99)
        stable_n = sum(chunk.size for chunk in stable_chunks)
        if (
            canary_p99 is not None
            and stable_p99 is not None
            and stable_n >= spec.min_requests
            and canary_p99 / max(stable_p99, 0.001) > 1.5
        ):
            return "rolled_back"
        step, step_calls, step_errors, step_chunks = step + 1, 0, 0, []
        if step == len(spec.steps):
            return "promoted"
    return "unfinished"


def _rate(count: int, n: int) -> dict[str, Any]:
    summary = proportion_summary(count, n)
    return {
        "count": count,
        "of": n,
        "rate": summary.mean,
        "wilson95": [summary.ci_low, summary.ci_high],
    }


def _scenario_report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rolled = [run for run in runs if run["outcome"] == "rolled_back"]
    intervals = sorted(run["intervals"] for run in rolled)
    by_check: dict[str, int] = {}
    for run in rolled:
        for name in run["checks"]:
            by_check[name] = by_check.get(name, 0) + 1
    outcomes: dict[str, int] = {}
    for run in runs:
        outcomes[run["outcome"]] = outcomes.get(run["outcome"], 0) + 1
    return {
        "rolledBack": _rate(len(rolled), len(runs)),
        "outcomes": outcomes,
        "failingCheck": by_check,
        "intervalsToRollback": {
            "median": statistics.median(intervals) if intervals else None,
            "p10": intervals[len(intervals) // 10] if intervals else None,
            "p90": intervals[(len(intervals) * 9) // 10] if intervals else None,
        },
        "medianIntervalsToPromotion": statistics.median(
            [run["intervals"] for run in runs if run["outcome"] == "promoted"] or [0]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="canaries per scenario")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calls", type=int, default=600, help="requests per interval")
    parser.add_argument(
        "--spec",
        type=json.loads,
        default={},
        help="canary spec overrides as JSON, e.g. '{\"failureThreshold\": 1}'",
    )
    parser.add_argument("--mixture-variance", type=float, default=STRATA_MIXTURE_VARIANCE)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    spec = CanarySpec.model_validate(args.spec)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "config": {
            "runs": args.runs,
            "seed": args.seed,
            "callsPerInterval": args.calls,
            "spec": spec.to_json(),
            "mixtureVariance": args.mixture_variance,
            "traffic": {
                "medianMs": MEDIAN_SECONDS * 1000,
                "sigma": SIGMA,
                "loadSigma": LOAD_SIGMA,
                "spikeShare": SPIKE_SHARE,
                "spikeFactor": [SPIKE_LOW, SPIKE_HIGH],
                "incidentShare": INCIDENT_SHARE,
                "errorRate": ERROR_RATE,
                "maxIntervals": MAX_INTERVALS,
            },
        },
        "scenarios": {},
    }
    for index, scenario in enumerate(args.scenarios.split(",")):
        rng = np.random.default_rng([args.seed, index])
        runs = [
            simulate(rng, spec, args.calls, scenario, args.mixture_variance)
            for _ in range(args.runs)
        ]
        report["scenarios"][scenario] = _scenario_report(runs)
    if "aa" in args.scenarios.split(","):
        rng = np.random.default_rng([args.seed, 99])
        old = [simulate_old_gate(rng, spec, args.calls) for _ in range(args.runs)]
        report["oldGateAA"] = {
            "rule": "rollback at the first interval with canary p99 > 1.5x stable p99 or "
            "error rate > 5%",
            "rolledBack": _rate(old.count("rolled_back"), len(old)),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
