"""The compiled evaluator answers exactly as the official flagd provider (0.5.2, flagd-core 1.0.0).

Compared per evaluation: value, variant, reason, error code, error message and flag metadata,
through every typed resolve method (TYPE_MISMATCH included) and the untyped direct call, on the
shipped flags (fed by the project's FlagStore, so with its flag-set metadata) x the golden
users x varied contexts, on the flagd testbed corpus, and on a corpus of operator edge cases.
Deliberate differences: none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from compiled_support import FLAG_TYPES, Pair, answer
from conftest import SHARED
from openfeature import api as openfeature_api
from openfeature.evaluation_context import EvaluationContext

from control_plane.flagstore import FlagStore
from flags import FLAGS_DIR
from providers import source_fed_provider
from providers.compiled import CompiledProvider

GOLDEN = Path(__file__).parent / "golden" / "assignments.json"
TESTBED = SHARED / "flagd-testbed" / "testkit-flags.json"


@pytest.fixture(autouse=True)
def _quiet_flagd_core() -> Iterator[None]:
    """flagd-core logs every operator error; thousands of them add nothing here."""
    logger = logging.getLogger("openfeature.contrib")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def golden_users() -> list[str]:
    assignments = json.loads(GOLDEN.read_text())
    return sorted({user for table in assignments.values() for user in table})


SHIPPED_CONTEXTS: list[dict[str, Any]] = [
    {},
    {"user-region": "cn"},
    {"user-region": "us"},
    {"user-region": None},
    {"canary-weight": 30},
    {"canary-weight": 0},
    {"canary-weight": 100},
    {"canary-weight": 30.0},
    {"canary-weight": "30"},
    {"canary-weight": -5},
    {"canary-weight": 250},
    {"canary-version": "v2"},
    {"canary-version": "v3"},
    {"canary-version": "v9"},
    {"canary-version": 3},
    {"canary-version": ["v2"]},
    {"tenant": "acme"},
    {"tenant": "sandbox"},
    {"tenant": "other"},
    {"tenant": 1},
    {"ab-test-group": "b", "user-region": "cn", "canary-weight": 55, "canary-version": "v1"},
]


@pytest.fixture(scope="module")
def shipped() -> Iterator[Pair]:
    store = FlagStore(FLAGS_DIR)
    store.reload()
    pair = Pair(store.current.to_flagd())
    yield pair
    pair.close()


def test_shipped_flags_golden_users_match_the_official_provider(shipped: Pair) -> None:
    """Every golden user gets the same answer from both evaluators for every shipped flag."""
    users = golden_users()
    contexts = [EvaluationContext(user, {}) for user in users]
    keys = shipped.flag_set.flag_keys
    count, differences = shipped.mismatches(keys, contexts, ("object", "string"))
    assert len(users) >= 1000
    assert count == 3 * len(keys) * len(users)
    assert differences == []


def test_shipped_flags_varied_contexts_match_the_official_provider(shipped: Pair) -> None:
    """Region, canary weight (also non-integer), pinned version and tenant contexts, every type."""
    users = [*golden_users()[:60], None, ""]
    contexts = [
        EvaluationContext(user, attributes) for user in users for attributes in SHIPPED_CONTEXTS
    ]
    count, differences = shipped.mismatches(shipped.flag_set.flag_keys, contexts)
    assert count > 30_000
    assert differences == []


def test_unknown_flag_is_flag_not_found_like_the_official_provider(shipped: Pair) -> None:
    """A flag that does not exist answers FLAG_NOT_FOUND with flagd-core's message."""
    count, differences = shipped.mismatches(["no-such-flag"], [EvaluationContext("u", {})])
    assert count == 6
    assert differences == []


def corpus_contexts() -> list[EvaluationContext]:
    keys = [
        None,
        "",
        "user-1",
        "jane@company.com",
        "5c3d8535-f81a-4478-a6d3-afaa4d51199e",
        "ünïcødé-ключ",
        "x" * 300,
    ]
    attributes: list[dict[str, Any]] = [
        {},
        {"email": "ballmer@macrosoft.com"},
        {
            "email": "jobs@orange.com",
            "user": {"name": "jon"},
            "tier": "premium",
            "color": "red",
            "id": "abcdef",
            "version": "2.0.0",
            "num": 5,
        },
        {"email": 7, "user": {"name": 5}, "id": "qqxyz", "version": "2.1.0", "color": "green"},
        {
            "user": {"name": "ünï"},
            "id": "abcxyz",
            "version": "1.9",
            "tier": "basic",
            "color": "yellow",
            "num": "abc",
        },
        {"version": "v1.0.0", "missing_key": "present"},
        {"version": "1.0.0+build", "user": "not-an-object"},
        {"version": 1.2},
        {"version": "1"},
        {"version": "3.0.1"},
        {"version": "3.1.0"},
        {"version": "bad"},
        {"version": None},
        {"version": ["2.0.0"]},
        {"id": None, "num": None, "tier": None, "color": None},
    ]
    return [EvaluationContext(key, attrs) for key in keys for attrs in attributes]


@pytest.mark.skipif(
    not TESTBED.exists(),
    reason=f"the flagd testbed corpus ({TESTBED}) is absent: a clone outside this workplace",
)
@pytest.mark.parametrize(
    "metadata", [None, {"flagSetId": "testkit", "string": "set-level", "bucketing": "v2"}]
)
def test_testbed_corpus_matches_the_official_provider(metadata: dict[str, Any] | None) -> None:
    """Every testbed flag, every type, over contexts hitting each rule's branches and errors."""
    document = json.loads(TESTBED.read_text())
    if metadata is not None:
        document["metadata"] = metadata
    pair = Pair(document)
    try:
        count, differences = pair.mismatches(pair.flag_set.flag_keys, corpus_contexts())
    finally:
        pair.close()
    assert count > 30_000
    assert differences == []


def operator_flag(targeting: Any, **extra: Any) -> dict[str, Any]:
    flag = {
        "state": "ENABLED",
        "defaultVariant": "dflt",
        "targeting": targeting,
        "variants": {
            "dflt": "D",
            "a": "A",
            "b": "B",
            "true": "T",
            "false": "F",
            "1": "one",
            "1.5": "x",
            "None": "none",
            "": "empty",
            "nullish": None,
        },
    }
    flag.update(extra)
    return flag


#: Rules at the edges of the operators flagd supports (and some it doesn't).
OPERATOR_RULES: dict[str, Any] = {
    # A list literal holding operations that fold to constants is the list of their values
    # (found by the hypothesis test: [{"if": []}] is [None], not the rule itself).
    "list-of-folded": {"if": [True, [{"if": []}]]},
    "list-of-folded-ops": {"in": ["a", [{"cat": ["a"]}, {"if": [False, "x", "b"]}]]},
    "eq-mixed": {"if": [{"==": [{"var": "n"}, "1"]}, "a", "b"]},
    "eq-bool": {"if": [{"==": [{"var": "n"}, True]}, "a", "b"]},
    "eq-list": {"==": [{"var": "l"}, {"var": "l"}]},
    "neq": {"if": [{"!=": ["x", {"var": "s"}]}, "a", "b"]},
    "strict": {"if": [{"===": [{"var": "n"}, 1]}, "a", {"!==": [{"var": "s"}, "x"]}]},
    "lt-mixed": {"if": [{"<": [{"var": "n"}, 10]}, "a", "b"]},
    "lt-strings": {"if": [{"<": [{"var": "s"}, {"var": "t"}]}, "a", "b"]},
    "between": {"if": [{"<=": [1, {"var": "n"}, 5]}, "a", "b"]},
    "between-missing": {"if": [{"<": [1, {"var": "n"}, {"var": "nope"}]}, "a", "b"]},
    "gt-left": {"if": [{">": [3, {"var": "n"}]}, "a", "b"]},
    "ge": {"if": [{">=": [{"var": "n"}, 2.5]}, "a", "b"]},
    "in-list": {"if": [{"in": [{"var": "s"}, ["x", "y", "1"]]}, "a", "b"]},
    "in-mixed-list": {"if": [{"in": [{"var": "n"}, [1, "2", True]]}, "a", "b"]},
    "in-string": {"if": [{"in": [{"var": "s"}, "xylophone"]}, "a", "b"]},
    "in-dynamic": {"if": [{"in": ["x", {"var": "l"}]}, "a", "b"]},
    "cat": {"cat": [{"var": "s"}, {"var": "n"}]},
    "cat-variant": {"cat": ["", {"var": "b"}]},
    "and-values": {"and": [{"var": "s"}, {"var": "n"}]},
    "or-values": {"or": [{"var": "nope"}, {"var": "n"}, "a"]},
    "and-empty": {"and": []},
    "not": {"if": [{"!": [{"var": "f"}]}, "a", "b"]},
    "notnot": {"if": [{"!!": {"var": "d"}}, "a", "b"]},
    "not-nan": {"if": [{"!": {"var": "f"}}, "true", "false"]},
    "if-odd": {"if": [{"var": "b"}, "a", {"var": "f"}, "b", "dflt"]},
    "if-even": {"if": [{"var": "b"}, "a", {"var": "f"}, "b"]},
    "if-one": {"if": [{"var": "s"}]},
    "if-none": {"if": []},
    "ternary": {"?:": [{"var": "b"}, "a", "b"]},
    "returns-null": {"if": [{"var": "b"}, None, "a"]},
    "returns-bool": {"var": "b"},
    "returns-number": {"var": "n"},
    "returns-list": {"var": "l"},
    "returns-object": {"var": "d"},
    "returns-nullish": {"if": [True, "nullish"]},
    "returns-empty": {"if": [True, ""]},
    "var-default": {"var": ["nope", "a"]},
    "var-default-dynamic": {"var": ["nope", {"var": "s"}]},
    "var-nested": {"var": "d.k"},
    "var-index": {"var": "l.1"},
    "var-length": {"cat": [{"var": "s.length"}]},
    "var-targeting-key": {"cat": ["a", {"var": "targetingKey"}]},
    "var-flag-key": {"if": [{"==": [{"var": "$flagd.flagKey"}, "var-flag-key"]}, "a", "b"]},
    "var-timestamp": {"if": [{">": [{"var": "$flagd.timestamp"}, 1_600_000_000]}, "a", "b"]},
    "var-flagd-object": {"if": [{"var": "$flagd"}, "a", "b"]},
    "var-whole-data": {"if": [{"var": ""}, "a", "b"]},
    "var-computed": {"var": {"cat": ["s", ""]}},
    "var-too-many": {"var": ["s", "a", "b"]},
    "var-numeric": {"var": 1},
    "missing": {"if": [{"missing": ["s", "nope"]}, "a", "b"]},
    "missing-some": {"if": [{"missing_some": [1, ["s", "nope"]]}, "a", "b"]},
    "arith": {"if": [{"==": [{"+": [{"var": "n"}, 1]}, 3]}, "a", "b"]},
    "division-by-zero": {"/": [1, 0]},
    "modulo": {"cat": [{"%": [{"var": "n"}, 2]}]},
    "minmax": {"if": [{"<": [{"min": [1, {"var": "n"}]}, {"max": [0.5]}]}, "a", "b"]},
    "substr": {"substr": [{"var": "s"}, 0, 1]},
    "merge": {"in": ["x", {"merge": [{"var": "l"}, ["y"]]}]},
    "map": {"if": [{"some": [{"var": "l"}, {"==": [{"var": ""}, "x"]}]}, "a", "b"]},
    "filter": {"cat": [{"filter": [{"var": "l"}, {"var": ""}]}]},
    "reduce": {
        "cat": [
            {"reduce": [{"var": "l"}, {"cat": [{"var": "accumulator"}, {"var": "current"}]}, ""]}
        ]
    },
    "all-none": {
        "if": [
            {"all": [{"var": "l"}, {"var": ""}]},
            "a",
            {"none": [{"var": "l"}, {"var": ""}]},
            "b",
            "dflt",
        ]
    },
    "unknown-op": {"if": [{"nope": [1]}, "a", "b"]},
    "unknown-op-unreached": {"if": [True, "a", {"nope": [1]}]},
    "dotted-op": {"var.x": [1]},
    "dict-literal": {"if": [{"k": 1, "j": 2}, "a", "b"]},
    "returns-dict-literal": {"if": [True, {"k": 1, "j": 2}]},
    "starts": {"if": [{"starts_with": [{"var": "s"}, "x"]}, "a", "b"]},
    "ends-dynamic": {"if": [{"ends_with": [{"var": "s"}, {"var": "t"}]}, "a", "b"]},
    "semver": {"if": [{"sem_ver": [{"var": "v"}, ">=", "1.2"]}, "a", "b"]},
    "semver-dynamic": {"if": [{"sem_ver": [{"var": "v"}, {"var": "s"}, "1.0.0"]}, "a", "b"]},
    "semver-caret": {"if": [{"sem_ver": ["v1.9.9", "^", {"var": "v"}]}, "a", "b"]},
    "semver-tilde": {"if": [{"sem_ver": [{"var": "v"}, "~", "1.2.0-rc.1"]}, "a", "b"]},
    "semver-bad-op": {"sem_ver": [{"var": "v"}, "=~", "1.0.0"]},
    "fractional-shorthand": {"fractional": [["a", 50], ["b", 50]]},
    "fractional-weights-1": {"fractional": [["a"], ["b"], ["1"]]},
    "fractional-bucket-by": {"fractional": [{"var": "s"}, ["a", 10], ["b", 90]]},
    "fractional-bucket-number": {"fractional": [{"var": "n"}, ["a", 10], ["b", 90]]},
    "fractional-constant-key": {"fractional": ["fixed-key", ["a", 1], ["b", 1]]},
    "fractional-empty-key": {"fractional": ["", ["a", 1], ["b", 1]]},
    "fractional-dynamic": {"fractional": [["a", {"var": "w"}], ["b", {"-": [100, {"var": "w"}]}]]},
    "fractional-dynamic-then-literal": {"fractional": [["a", {"var": "w"}], ["b", 50]]},
    "fractional-dynamic-then-weightless": {"fractional": [["a", {"var": "w"}], ["b"]]},
    "fractional-literal-then-dynamic": {"fractional": [["a", 20], ["b", {"var": "w"}]]},
    "fractional-dynamic-three-way": {
        "fractional": [["a", {"var": "w"}], ["b", {"var": "n"}], ["c", {"var": "b"}]]
    },
    "fractional-dynamic-bad-entry": {"fractional": [["a", {"var": "w"}], "b"]},
    "fractional-dynamic-bool-weight": {"fractional": [["a", {"var": "b"}], ["b", 1]]},
    "fractional-computed-entry": {"fractional": [{"var": "l"}, ["a", 1], ["b", 1]]},
    "fractional-float-weight": {"fractional": [["a", 0.5], ["b", 1]]},
    "fractional-bool-weight": {"fractional": [["a", True], ["b", 1]]},
    "fractional-too-heavy": {"fractional": [["a", 2_147_483_647], ["b", 1]]},
    "fractional-zero": {"fractional": [["a", 0], ["b", 0]]},
    "fractional-negative": {"fractional": [["a", -3], ["b", 4]]},
    "fractional-bad-entry": {"fractional": [["a", 1, 2], ["b", 1]]},
    "fractional-nonstring-variants": {"fractional": [[True, 1], [1.5, 1], [None, 1]]},
    "fractional-empty": {"fractional": []},
    "fractional-nested": {"if": [{"fractional": [[False, 1], [True, 1]]}, "a", "b"]},
    "fractional-in-map": {"cat": [{"map": [{"var": "l"}, {"fractional": [["a"], ["b"]]}]}]},
    "targeting-not-object": "a",
    "targeting-list": ["a"],
}


def operator_contexts() -> list[EvaluationContext]:
    attributes: list[dict[str, Any]] = [
        {},
        {
            "n": 1,
            "s": "x",
            "t": "y",
            "b": True,
            "f": 0.0,
            "l": ["x", "y"],
            "d": {"k": "a"},
            "v": "1.2.3",
            "w": 30,
        },
        {
            "n": "1",
            "s": "1",
            "t": "",
            "b": False,
            "f": float("nan"),
            "l": [],
            "d": {},
            "v": "v1.2.0-rc.2",
            "w": 30.0,
        },
        {
            "n": True,
            "s": "xylo",
            "t": "lo",
            "b": "true",
            "f": 1.5,
            "l": ["x"],
            "d": {"k": 1},
            "v": "2",
            "w": -10,
        },
        {
            "n": 2.5,
            "s": "",
            "t": "x",
            "b": 0,
            "f": "0",
            "l": [1, None],
            "d": [1],
            "v": "bad",
            "w": None,
        },
        {
            "n": None,
            "s": None,
            "t": None,
            "b": None,
            "f": None,
            "l": None,
            "d": None,
            "v": None,
            "w": "30",
        },
        {
            "n": [1],
            "s": ["x"],
            "t": {"a": 1},
            "b": [],
            "f": -0.0,
            "l": "xy",
            "d": "k",
            "v": 1.2,
            "w": 150,
        },
        {"n": 3, "s": "B", "t": "b", "b": "a", "l": [["x"]], "v": "1.3.0", "w": 0},
    ]
    return [
        EvaluationContext(key, attrs)
        for key in (None, "", "user-7", "jane@company.com")
        for attrs in attributes
    ]


@pytest.mark.parametrize("metadata", [{}, {"bucketing": "flagd-fractional-v2", "team": "ml"}])
def test_operator_edge_cases_match_the_official_provider(metadata: dict[str, Any]) -> None:
    """Mixed-type comparisons, missing variables, odd if arities, null/unknown variants, errors."""
    flags = {key: operator_flag(rule) for key, rule in OPERATOR_RULES.items()}
    flags["no-default"] = operator_flag({"if": [{"var": "b"}, "a", None]}, defaultVariant=None)
    flags["bool-default"] = operator_flag({"var": "nope"}, defaultVariant=True)
    flags["missing-default"] = operator_flag({"var": "nope"}, defaultVariant="zz")
    flags["static-missing-default"] = operator_flag(None, defaultVariant="zz")
    flags["static-null-value"] = operator_flag(None, defaultVariant="nullish")
    flags["with-metadata"] = operator_flag({"var": "s"}, metadata={"team": "search", "n": 2})
    flags["disabled"] = operator_flag({"var": "s"}, state="DISABLED")
    flags["typed-values"] = {
        "state": "ENABLED",
        "defaultVariant": "i",
        "targeting": {"var": "s"},
        "variants": {"i": 3, "f": 2.5, "b": True, "o": [1], "x": "s"},
    }
    document: dict[str, Any] = {"flags": flags, "metadata": metadata}
    pair = Pair(document)
    try:
        count, differences = pair.mismatches(pair.flag_set.flag_keys, operator_contexts())
    finally:
        pair.close()
    assert count > 15_000
    assert differences == []


def test_ref_evaluators_are_substituted_like_flagd_core() -> None:
    """$ref to known, nested (declared later), unknown and non-ASCII evaluators, as flagd-core."""
    document = {
        "$evaluators": {
            "outer": {"and": [{"$ref": "inner"}, {"var": "b"}]},
            "inner": {"==": [{"var": "s"}, "x"]},
            "first": {"in": [{"var": "s"}, ["x", "y"]]},
        },
        "flags": {
            "ref": operator_flag({"if": [{"$ref": "first"}, "a", "b"]}),
            "nested": operator_flag({"if": [{"$ref": "outer"}, "a", "b"]}),
            "unknown": operator_flag({"if": [{"$ref": "nope"}, "a", "b"]}),
            "ref-with-extra": operator_flag({"if": [{"$ref": "first", "x": 1}, "a", "b"]}),
        },
    }
    pair = Pair(document)
    try:
        count, differences = pair.mismatches(pair.flag_set.flag_keys, operator_contexts())
    finally:
        pair.close()
    assert count > 100
    assert differences == []


def test_openfeature_client_answers_the_same_with_either_provider(shipped: Pair) -> None:
    """Through the OpenFeature client, both providers give equal FlagEvaluationDetails."""
    openfeature_api.set_provider_and_wait(source_fed_provider(shipped.source), domain="official")
    openfeature_api.set_provider_and_wait(CompiledProvider(shipped.source), domain="compiled")
    official = openfeature_api.get_client("official")
    compiled = openfeature_api.get_client("compiled")
    compared = 0
    for user in golden_users()[:200]:
        for attributes in SHIPPED_CONTEXTS:
            context = EvaluationContext(user, attributes)
            for key in shipped.flag_set.flag_keys:
                for method, default in (("get_object_details", {}), ("get_string_details", "x")):
                    left = getattr(official, method)(key, default, context)
                    right = getattr(compiled, method)(key, default, context)
                    assert answer(
                        left.value,
                        left.variant,
                        left.reason,
                        left.error_code,
                        left.error_message,
                        left.flag_metadata,
                    ) == answer(
                        right.value,
                        right.variant,
                        right.reason,
                        right.error_code,
                        right.error_message,
                        right.flag_metadata,
                    )
                    compared += 1
    assert compared == 200 * len(SHIPPED_CONTEXTS) * len(shipped.flag_set.flag_keys) * 2


def test_every_flag_type_is_exercised() -> None:
    """The comparison covers all five typed resolve methods."""
    assert FLAG_TYPES == ("boolean", "string", "integer", "float", "object")
