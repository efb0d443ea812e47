"""Peeking at A/A experiments every day: fixed-horizon tests against always-valid ones.

Simulates many experiments whose two variants are identical (A/A), each read once a day. An
analyst who stops at the first "significant" daily reading declares a false positive; the
share of experiments where that happens is the false positive rate of peeking. The same runs
are read with the report's fixed-horizon tests (two-proportion z-test, Welch's t-test) and with
its always-valid mSPRT p-values (control_plane.experiments.sequential); the product's own
functions compute every p-value. A second set of experiments with a real effect shows what the
always-valid guarantee costs in power. Seeded and fast (seconds); prints a JSON report.

    .venv/bin/python bench/experiments_peeking.py [--experiments 1000] [--days 30] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control_plane.experiments.sequential import (
    PLANNED_UNITS,
    sequential_means,
    sequential_proportions,
)
from control_plane.experiments.stats import (
    compare_means,
    compare_proportions,
    summary_from_sums,
)

CONVERSION = 0.10
#: Revenue per unit: log-normal (heavy right tail, as real revenue and latency have).
LOG_MEAN, LOG_SIGMA = 1.0, 1.0


def _daily_sums(
    rng: np.random.Generator, days: int, per_day: int, conversion: float, revenue_scale: float
) -> dict[str, np.ndarray]:
    """Cumulative (n, conversions, revenue sum, revenue sum of squares) after each day."""
    converted = rng.random((days, per_day)) < conversion
    revenue = rng.lognormal(LOG_MEAN, LOG_SIGMA, (days, per_day)) * revenue_scale
    return {
        "n": np.cumsum(np.full(days, per_day)),
        "conversions": np.cumsum(converted.sum(axis=1)),
        "revenue": np.cumsum(revenue.sum(axis=1)),
        "revenue_sq": np.cumsum((revenue**2).sum(axis=1)),
    }


def _first_rejection(
    control: dict[str, np.ndarray], treatment: dict[str, np.ndarray], days: int, alpha: float
) -> dict[str, int | None]:
    """Per metric and test: the first day (1-based) whose reading is below alpha, or None."""
    first: dict[str, int | None] = dict.fromkeys(
        ("binary.fixed", "binary.always_valid", "continuous.fixed", "continuous.always_valid")
    )
    for day in range(days):
        n_c, n_t = int(control["n"][day]), int(treatment["n"][day])
        s_c, s_t = int(control["conversions"][day]), int(treatment["conversions"][day])
        readings = {
            "binary.fixed": compare_proportions(s_c, n_c, s_t, n_t).p_value,
            "binary.always_valid": sequential_proportions(s_c, n_c, s_t, n_t).p_value,
        }
        c = summary_from_sums(
            n_c, float(control["revenue"][day]), float(control["revenue_sq"][day]), interval=False
        )
        t = summary_from_sums(
            n_t,
            float(treatment["revenue"][day]),
            float(treatment["revenue_sq"][day]),
            interval=False,
        )
        readings["continuous.fixed"] = compare_means(c, t).p_value
        readings["continuous.always_valid"] = sequential_means(c, t).p_value
        for key, p_value in readings.items():
            if first[key] is None and p_value is not None and p_value < alpha:
                first[key] = day + 1
    return first


def _run(
    rng: np.random.Generator, experiments: int, days: int, per_day: int, alpha: float, lift: float
) -> dict[str, Any]:
    peeking = dict.fromkeys(
        ("binary.fixed", "binary.always_valid", "continuous.fixed", "continuous.always_valid"), 0
    )
    final_only = dict.fromkeys(peeking, 0)
    days_to_detect: dict[str, list[int]] = {key: [] for key in peeking}
    for _ in range(experiments):
        control = _daily_sums(rng, days, per_day, CONVERSION, 1.0)
        treatment = _daily_sums(rng, days, per_day, CONVERSION * (1 + lift), 1 + lift)
        first = _first_rejection(control, treatment, days, alpha)
        last = _first_rejection(
            {k: v[-1:] for k, v in control.items()},
            {k: v[-1:] for k, v in treatment.items()},
            1,
            alpha,
        )
        for key, day in first.items():
            if day is not None:
                peeking[key] += 1
                days_to_detect[key].append(day)
            if last[key] is not None:
                final_only[key] += 1
    out: dict[str, Any] = {}
    for key in peeking:
        metric, test = key.split(".")
        out.setdefault(metric, {})[test] = {
            "rejectedWhenPeekingDaily": peeking[key] / experiments,
            "rejectedAtTheLastDayOnly": final_only[key] / experiments,
            "medianDayOfFirstRejection": (
                float(np.median(days_to_detect[key])) if days_to_detect[key] else None
            ),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--units-per-day", type=int, default=200, help="new units per variant per day"
    )
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--lift",
        type=float,
        default=0.10,
        help="relative effect of the power runs (conversion and revenue)",
    )
    parser.add_argument(
        "--power-experiments",
        type=int,
        default=300,
        help="experiments with a real effect (the power runs)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    aa = _run(rng, args.experiments, args.days, args.units_per_day, args.alpha, 0.0)
    power = _run(rng, args.power_experiments, args.days, args.units_per_day, args.alpha, args.lift)
    report = {
        "benchmark": "experiments_peeking",
        "config": {
            "experiments": args.experiments,
            "days": args.days,
            "unitsPerVariantPerDay": args.units_per_day,
            "alpha": args.alpha,
            "seed": args.seed,
            "conversionRate": CONVERSION,
            "powerExperiments": args.power_experiments,
            "revenue": f"lognormal(mu={LOG_MEAN}, sigma={LOG_SIGMA}) per unit",
            "alwaysValidPlannedUnits": PLANNED_UNITS,
            "powerRunLift": args.lift,
        },
        "aa": {"description": "identical variants: every rejection is a false positive", **aa},
        "power": {
            "description": f"treatment {args.lift:+.0%} on conversion and revenue: "
            "share of experiments detected within the days",
            **power,
        },
        "falsePositiveRateWithinAlpha": {
            metric: aa[metric]["always_valid"]["rejectedWhenPeekingDaily"] <= args.alpha
            for metric in ("binary", "continuous")
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
