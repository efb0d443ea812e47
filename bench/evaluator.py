"""In-process evaluation cost: the compiled evaluator against flagd-core, direct and via the SDK.

    python bench/evaluator.py [--users 2000] [--repeat 5]

Four ways to evaluate the same flags for the same (targeting key, attributes) pairs, timed in
the same run: the compiled evaluator's direct call (`CompiledFlagSet.evaluate`), the official
flagd provider's resolve method (openfeature-flagd-core 1.0.0, in-process, as the project feeds
it), and the OpenFeature client over each provider. Flags: each shipped flag (from flags/, via
the project's FlagStore) and a 100-condition rule (an `if` chain of 100 `==` tests on one
attribute, the users spread over all branches). Every answer is checked equal before timing.

Prints a JSON report: microseconds per evaluation (best of --repeat passes) and ratios against
the compiled direct call; the target is <= 2 us per decision for the compiled direct call.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openfeature import api as openfeature_api  # noqa: E402
from openfeature.evaluation_context import EvaluationContext  # noqa: E402

from control_plane.flagstore import FlagStore  # noqa: E402
from flags import FLAGS_DIR  # noqa: E402
from providers import StaticFlagSource, source_fed_provider  # noqa: E402
from providers.compiled import CompiledProvider  # noqa: E402

CONDITIONS = 100


def hundred_conditions() -> dict[str, Any]:
    """An `if` chain of 100 equality tests; variants v0..v99 plus the default."""
    chain: list[Any] = []
    for index in range(CONDITIONS):
        chain += [{"==": [{"var": "segment"}, f"s{index}"]}, f"v{index}"]
    chain.append("fallback")
    variants = {f"v{index}": index for index in range(CONDITIONS)} | {"fallback": -1}
    return {
        "state": "ENABLED",
        "variants": variants,
        "defaultVariant": "fallback",
        "targeting": {"if": chain},
    }


def contexts(users: int) -> list[tuple[str, dict[str, Any]]]:
    regions = ["cn", "us", "eu"]
    return [
        (
            f"user-{index}",
            {
                "user-region": regions[index % 3],
                "canary-weight": [10, 30, 50][index % 3] if index % 2 else None,
                "canary-version": ["v1", "v2", "v9"][index % 3],
                "tenant": ["acme", "sandbox", "other"][index % 3],
                "segment": f"s{index % (CONDITIONS + 1)}",
            },
        )
        for index in range(users)
    ]


def best(fn: Callable[[], None], calls: int, repeat: int) -> float:
    """Best microseconds per call over `repeat` passes of `fn` (which makes `calls` calls)."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - started) / calls * 1e6)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    store = FlagStore(FLAGS_DIR)
    store.reload()
    document = store.current.to_flagd()
    document["flags"]["hundred-conditions"] = hundred_conditions()
    source = StaticFlagSource(document)
    official = source_fed_provider(source)
    compiled = CompiledProvider(source)
    openfeature_api.set_provider_and_wait(official, domain="bench-official")
    openfeature_api.set_provider_and_wait(compiled, domain="bench-compiled")
    official_client = openfeature_api.get_client("bench-official")
    compiled_client = openfeature_api.get_client("bench-compiled")
    flag_set = compiled.flag_set
    pairs = [(key, attrs | {}) for key, attrs in contexts(args.users)]
    for _, attrs in pairs:
        if attrs["canary-weight"] is None:
            del attrs["canary-weight"]
    evaluation_contexts = [EvaluationContext(key, attrs) for key, attrs in pairs]

    results: dict[str, Any] = {}
    for flag_key in document["flags"]:
        values = flag_set.definition(flag_key).variants.values()  # type: ignore[union-attr]
        kind = "integer" if all(type(v) is int for v in values) else "object"
        default: Any = 0 if kind == "integer" else {}
        resolve_official = getattr(official, f"resolve_{kind}_details")
        client_official = getattr(official_client, f"get_{kind}_details")
        client_compiled = getattr(compiled_client, f"get_{kind}_details")
        for (key, attrs), context in zip(pairs, evaluation_contexts, strict=True):
            direct = flag_set.evaluate(flag_key, key, attrs, default)
            reference = resolve_official(flag_key, default, context)
            if (direct.variant, direct.reason) != (reference.variant, str(reference.reason)):
                raise SystemExit(f"{flag_key} {key}: {direct} != {reference}")

        def run_direct(flag_key: str = flag_key, default: Any = default) -> None:
            evaluate = flag_set.evaluate
            for key, attrs in pairs:
                evaluate(flag_key, key, attrs, default)

        def run(
            method: Callable[..., Any], flag_key: str = flag_key, default: Any = default
        ) -> Callable[[], None]:
            def loop() -> None:
                for context in evaluation_contexts:
                    method(flag_key, default, context)

            return loop

        calls = len(pairs)
        timings = {
            "compiled_direct_us": best(run_direct, calls, args.repeat),
            "flagd_core_provider_us": best(run(resolve_official), calls, args.repeat),
            "openfeature_client_compiled_us": best(run(client_compiled), calls, args.repeat),
            "openfeature_client_flagd_core_us": best(run(client_official), calls, args.repeat),
        }
        base = timings["compiled_direct_us"]
        results[flag_key] = {
            **{name: round(value, 3) for name, value in timings.items()},
            "ratios_to_compiled_direct": {
                name.removesuffix("_us"): round(value / base, 1) for name, value in timings.items()
            },
        }
    official.shutdown()
    compiled.shutdown()
    worst = max(
        item["compiled_direct_us"] for key, item in results.items() if key != "hundred-conditions"
    )
    report = {
        "benchmark": "bench/evaluator.py",
        "config": {
            "users": args.users,
            "repeat": args.repeat,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "flags": results,
        "target": {
            "compiled_direct_us_max_shipped": round(worst, 3),
            "target_us": 2.0,
            "met": worst <= 2.0,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
