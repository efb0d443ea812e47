"""Fractional bucketing generations v2 and v3, pinned by vectors from the official releases.

tests/golden/bucketing_v2.json comes from openfeature-flagd-core 1.0.0 and bucketing_v3.json
from 2.0.0 (tests/golden/generate_bucketing_vectors.py says how to regenerate them); the
compiled evaluator must reproduce each with the generation its flag set declares.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from bucketing_v2 import murmur3_x86_32
from compiled_support import Pair
from openfeature.evaluation_context import EvaluationContext

from control_plane.flagstore import FlagStore
from flags import FLAGS_DIR
from providers.compiled import CompiledFlagSet, InvalidFlagSet, parse_generation
from providers.compiled.bucketing import hash_v2
from providers.compiled.cbor import canonical_cbor, normalize_numbers

GOLDEN = Path(__file__).parent / "golden"


def vectors(generation: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"bucketing_{generation}.json").read_text())


@pytest.mark.parametrize("generation", ["v2", "v3"])
def test_compiled_bucketing_reproduces_the_official_release(generation: str) -> None:
    """Every (flag, user) of the golden file gets the variant and reason flagd-core gave it."""
    golden = vectors(generation)
    flag_set = CompiledFlagSet.from_document(
        {"flags": golden["flags"], "metadata": {"bucketing": generation}}
    )
    assert flag_set.generation == generation
    compared = 0
    for key, expected in golden["expected"].items():
        for (targeting_key, attributes), want in zip(golden["users"], expected, strict=True):
            got = flag_set.evaluate(key, targeting_key, attributes, "caller-default")
            assert f"{got.variant}/{got.reason}" == want, (key, targeting_key)
            compared += 1
    assert compared > 2500


def test_the_generations_really_assign_users_differently() -> None:
    """v2 and v3 disagree for many users (so a declared generation matters)."""
    v2, v3 = vectors("v2"), vectors("v3")
    moved = sum(
        left != right
        for key in v2["expected"]
        for left, right in zip(v2["expected"][key], v3["expected"][key], strict=True)
    )
    assert moved > 1000


def test_canonical_cbor_matches_cbor2() -> None:
    """The project's CBOR encoder writes cbor2's canonical bytes for every recorded value."""
    recorded = vectors("v3")["cbor"]
    assert len(recorded) > 40
    for item in recorded:
        assert canonical_cbor(item["value"]).hex() == item["hex"], item["value"]


def test_whole_floats_are_hashed_as_integers_in_v3() -> None:
    """flagd 2.0.0 normalises 3.0 to 3 before encoding, so both bucket the same."""
    assert canonical_cbor(normalize_numbers([3.0, {"a": 2.0}])) == canonical_cbor([3, {"a": 2}])
    assert canonical_cbor(normalize_numbers(1e300)) == canonical_cbor(1e300)
    assert math.isnan(normalize_numbers(float("nan")))


def test_v2_hash_is_the_documented_murmur3() -> None:
    """hash_v2 is murmur3_x86_32 over UTF-8 with seed 0 (the independent model in tests/)."""
    for key in ["", "a", "ab-test-routeruser-1", "ünïcødé", "🚀" * 9]:
        assert hash_v2(key) == murmur3_x86_32(key.encode())


@pytest.mark.parametrize("generation", ["v2", "v3"])
def test_a_lone_surrogate_key_never_crashes_the_interpreter(generation: str) -> None:
    """mmh3 segfaults on lone surrogates: v2 answers an error, v3 the default (as 2.0.0 does)."""
    flag_set = CompiledFlagSet.from_document(
        {
            "metadata": {"bucketing": generation},
            "flags": {
                key: {
                    "state": "ENABLED",
                    "variants": {"a": 1, "b": 2},
                    "defaultVariant": "a",
                    "targeting": targeting,
                }
                for key, targeting in {
                    "shorthand": {"fractional": [["a", 50], ["b", 50]]},
                    "bucket-by": {"fractional": [{"var": "email"}, ["a", 50], ["b", 50]]},
                }.items()
            },
        }
    )
    for key in ("shorthand", "bucket-by"):
        answer = flag_set.evaluate(key, "user-\ud800", {"email": "x\udfff@example.com"})
        if generation == "v2":
            assert (answer.reason, answer.error_code) == ("ERROR", "GENERAL")
            assert "not valid Unicode" in (answer.error_message or "")
        else:
            assert (answer.reason, answer.variant) == ("DEFAULT", "a")


def test_the_flag_set_declares_its_generation() -> None:
    """metadata.bucketing picks the generation (v2 when absent); unknown names are refused."""
    assert parse_generation(None) == "v2"
    assert parse_generation("flagd-fractional-v3") == "v3"
    assert CompiledFlagSet.from_document({"flags": {}}).generation == "v2"
    with pytest.raises(InvalidFlagSet, match="unknown bucketing generation 'v1'"):
        CompiledFlagSet.from_document({"flags": {}, "metadata": {"bucketing": "v1"}})
    store = FlagStore(FLAGS_DIR)
    store.reload()
    assert CompiledFlagSet.from_document(store.current.to_flagd()).generation == "v2"
    declared = {"flags": {}, "controlPlane": {"bucketing": "flagd-fractional-v3"}}
    assert CompiledFlagSet.from_document(declared).generation == "v3"


def test_v3_flag_set_differs_from_the_official_v2_provider() -> None:
    """The equivalence harness does see differences: a v3 set moves users the v2 provider keeps."""
    golden = vectors("v2")
    pair = Pair({"flags": golden["flags"], "metadata": {"bucketing": "v3"}})
    try:
        contexts = [EvaluationContext(key, attrs) for key, attrs in golden["users"][:50]]
        count, differences = pair.mismatches(["ab-test-router"], contexts, ("string",))
    finally:
        pair.close()
    assert count == 50
    assert differences
