"""Generate the fractional-bucketing golden vectors from the official flagd-core releases.

Each generation is pinned by the release that implements it: v2 by openfeature-flagd-core 1.0.0
(the project's own pin), v3 by openfeature-flagd-core 2.0.0 (what openfeature-provider-flagd
0.6.x pulls in). The script evaluates a set of fractional flags for a few hundred users with
whichever flagd-core is installed in the interpreter running it, refuses to write a generation
with the wrong release, and writes tests/golden/bucketing_<generation>.json. For v3 it also
records cbor2's canonical encodings of assorted values, which pin the project's own encoder.

Regenerate (from the repository root):

    # v2, with the project's environment (flagd-core 1.0.0):
    .venv/bin/python tests/golden/generate_bucketing_vectors.py v2

    # v3, with a separate environment, never the project's:
    python3 -m venv /tmp/fc2venv
    /tmp/fc2venv/bin/pip install openfeature-flagd-core==2.0.0
    /tmp/fc2venv/bin/python tests/golden/generate_bucketing_vectors.py v3

The flags and users are defined here, so both files cover the same cases.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

RELEASES = {"v2": "1.0.0", "v3": "2.0.0"}
HERE = Path(__file__).resolve().parent

SUITS = {
    "clubs": "clubs",
    "diamonds": "diamonds",
    "hearts": "hearts",
    "spades": "spades",
    "none": "none",
}
FLAGS: dict[str, dict[str, Any]] = {
    "ab-test-router": {"fractional": [["clubs", 50], ["diamonds", 50]]},
    "three-way": {"fractional": [["clubs", 10], ["diamonds", 30], ["hearts", 60]]},
    "equal-weights": {"fractional": [["clubs"], ["diamonds"], ["hearts"], ["spades"]]},
    "uneven": {"fractional": [["clubs", 1], ["diamonds", 999], ["hearts", 0], ["spades", 7]]},
    "bucket-by-email": {
        "fractional": [
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]},
            ["clubs", 25],
            ["diamonds", 25],
            ["hearts", 25],
            ["spades", 25],
        ]
    },
    "bucket-by-targeting-key": {
        "fractional": [{"var": "targetingKey"}, ["clubs", 50], ["diamonds", 50]]
    },
    "bucket-by-number": {"fractional": [{"var": "shard"}, ["clubs", 50], ["diamonds", 50]]},
    "dynamic-weights": {
        "fractional": [["clubs", {"var": "weight"}], ["diamonds", {"-": [100, {"var": "weight"}]}]]
    },
    "nested": {
        "if": [
            {"==": [{"var": "tier"}, "gold"]},
            {"fractional": [["clubs", 90], ["diamonds", 10]]},
            {"fractional": [["hearts", 50], ["spades", 50]]},
        ]
    },
}


def users() -> list[tuple[str | None, dict[str, Any]]]:
    cases: list[tuple[str | None, dict[str, Any]]] = []
    for index in range(300):
        key = f"user-{index}"
        attributes: dict[str, Any] = {
            "email": f"person{index}@example.com",
            "shard": index % 17 if index % 3 else float(index % 17) + 0.5,
            "weight": [0, 10, 30, 50, 99, 100][index % 6],
            "tier": "gold" if index % 4 == 0 else "basic",
        }
        cases.append((key, attributes))
    for key in ["jane@company.com", "ünïcødé-ключ", "🚀", "x" * 200, " ", "0", None, ""]:
        cases.append((key, {"email": key or "none@example.com", "shard": 3, "weight": 30}))
    return cases


CBOR_VALUES: list[Any] = [
    "",
    "a",
    "ü",
    "x" * 30,
    "x" * 300,
    0,
    1,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**64 - 1,
    2**64,
    -(2**64),
    -(2**64) - 1,
    10**30,
    -1,
    -24,
    -25,
    -(2**63),
    0.5,
    -0.5,
    1.5,
    0.1,
    3.14159,
    65504.5,
    1e-7,
    5.960464477539063e-08,
    1e300,
    -1e-300,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
    [],
    [1, "a", None],
    ["flag", "user-1"],
    {},
    {"b": 1, "a": 2, "aa": 3, "": 4},
    {"k": {"z": [1.5, {"y": None}]}},
    [[[]]],
    2.0,
    1e19,
    1.8446744073709552e19,
    1e20,
    -9.223372036854775808e18,
]


def generate(generation: str) -> dict[str, Any]:
    from openfeature.contrib.tools.flagd.core import FlagdCore
    from openfeature.evaluation_context import EvaluationContext

    installed = version("openfeature-flagd-core")
    if installed != RELEASES[generation]:
        sys.exit(
            f"bucketing {generation} is pinned by openfeature-flagd-core "
            f"{RELEASES[generation]}, but {installed} is installed here"
        )
    flags = {
        key: {
            "state": "ENABLED",
            "variants": SUITS,
            "defaultVariant": "none",
            "targeting": targeting,
        }
        for key, targeting in FLAGS.items()
    }
    core = FlagdCore()
    core.set_flags(json.dumps({"flags": flags}))  # a copy: flagd-core edits what it is given
    population = users()
    #: Per flag, per user (in `users` order): "variant/REASON".
    expected: dict[str, list[str]] = {key: [] for key in flags}
    for targeting_key, attributes in population:
        context = EvaluationContext(targeting_key, attributes)
        for key in flags:
            details = core.resolve_string_value(key, "caller-default", context)
            expected[key].append(f"{details.variant}/{details.reason}")
    report: dict[str, Any] = {
        "generation": generation,
        "generatedWith": f"openfeature-flagd-core {installed}",
        "generator": "tests/golden/generate_bucketing_vectors.py",
        "flags": flags,
        "users": [[key, attributes] for key, attributes in population],
        "expected": expected,
    }
    if generation == "v3":
        import cbor2

        report["cbor"] = [
            {"value": value, "hex": cbor2.dumps(value, canonical=True).hex()}
            for value in CBOR_VALUES
        ]
        report["cborWith"] = f"cbor2 {version('cbor2')}"
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generation", choices=sorted(RELEASES))
    args = parser.parse_args()
    report = generate(args.generation)
    target = HERE / f"bucketing_{args.generation}.json"
    lines = [
        f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
        for key, value in report.items()
    ]
    target.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    cases = sum(len(values) for values in report["expected"].values())
    print(f"wrote {cases} cases to {target}")


if __name__ == "__main__":
    main()
