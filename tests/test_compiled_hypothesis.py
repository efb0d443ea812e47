"""Random JSONLogic rule trees and contexts: the compiled evaluator equals the official provider.

Trees of bounded depth over flagd's operators, the JSONLogic built-ins (the interpreted forms
and unknown operators too) and literals of every JSON type; contexts with the attributes the
trees read, of every type. Each example compares every typed resolve and the direct call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from compiled_support import Pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfeature.evaluation_context import EvaluationContext

NAMES = [
    "s",
    "n",
    "b",
    "l",
    "d",
    "d.k",
    "l.0",
    "s.length",
    "targetingKey",
    "$flagd.flagKey",
    "nope",
    "",
]
VARIANTS = {"a": "A", "b": 2, "true": True, "false": 0.5, "1": [1], "x": {"k": "v"}, "": "e"}
TEXT = st.text(alphabet="abx1.-v ", max_size=6)
NUMBER = st.one_of(st.integers(-3, 120), st.sampled_from([0.0, 0.5, 1.0, -0.0, 2.5, 1e20]))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT, st.sampled_from(list(VARIANTS)))
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["k", "j"]), inner, max_size=2)
    ),
    max_leaves=5,
)

OPERATORS = [
    "if",
    "?:",
    "and",
    "or",
    "!",
    "!!",
    "==",
    "!=",
    "===",
    "!==",
    "<",
    ">",
    "<=",
    ">=",
    "in",
    "cat",
    "starts_with",
    "ends_with",
    "sem_ver",
    "fractional",
    "+",
    "-",
    "*",
    "/",
    "%",
    "min",
    "max",
    "merge",
    "missing",
    "missing_some",
    "substr",
    "map",
    "filter",
    "some",
    "all",
    "none",
    "reduce",
    "nope",
]


def var_node() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(lambda name: {"var": name}, st.sampled_from(NAMES)),
        st.builds(lambda name, default: {"var": [name, default]}, st.sampled_from(NAMES), SCALAR),
    )


def fractional_node(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    weight = st.one_of(st.integers(-5, 100), inner, st.just(1.5))
    entry = st.one_of(
        st.builds(lambda v, w: [v, w], st.sampled_from(list(VARIANTS)), weight),
        st.builds(lambda v: [v], st.sampled_from(list(VARIANTS))),
        inner,
    )
    entries = st.lists(entry, max_size=4)
    return st.one_of(
        st.builds(lambda items: {"fractional": items}, entries),
        st.builds(
            lambda key, items: {"fractional": [key, *items]},
            st.one_of(var_node(), TEXT, inner),
            entries,
        ),
    )


def rules(depth: int = 4) -> st.SearchStrategy[Any]:
    leaves = st.one_of(SCALAR, var_node(), st.sampled_from(list(VARIANTS)))

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        operation = st.builds(
            lambda op, args: {op: args}, st.sampled_from(OPERATORS), st.lists(inner, max_size=5)
        )
        single = st.builds(lambda op, arg: {op: arg}, st.sampled_from(["!", "!!", "var"]), inner)
        semver = st.builds(
            lambda left, op, right: {"sem_ver": [left, op, right]},
            st.one_of(var_node(), TEXT),
            st.sampled_from(["=", "^", "~", ">="]),
            st.sampled_from(["1.0.0", "v2", "1.2", "bad"]),
        )
        # The 38 generic operators get most of the draws, flagd's special ones a share each.
        return st.one_of(
            operation,
            operation,
            operation,
            operation,
            operation,
            single,
            semver,
            fractional_node(inner),
            st.lists(inner, max_size=3),
        )

    return st.recursive(leaves, extend, max_leaves=12)


CONTEXTS = st.builds(
    lambda key, attributes: EvaluationContext(key, attributes),
    st.one_of(st.none(), st.just(""), TEXT),
    st.dictionaries(st.sampled_from(["s", "n", "b", "l", "d", "targetingKey"]), VALUE, max_size=5),
)


@pytest.fixture(autouse=True)
def _quiet_flagd_core() -> Iterator[None]:
    logger = logging.getLogger("openfeature.contrib")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    targeting=st.one_of(
        rules(),
        st.builds(lambda cond, then, other: {"if": [cond, then, other]}, rules(), rules(), rules()),
    ),
    default=st.sampled_from([None, "a", "b", "zz"]),
    contexts=st.lists(CONTEXTS, min_size=1, max_size=4),
)
def test_random_rules_match_the_official_provider(
    targeting: Any, default: str | None, contexts: list[EvaluationContext]
) -> None:
    """For random trees, every answer (value, variant, reason, error, metadata) is flagd's."""
    flag = {
        "state": "ENABLED",
        "variants": VARIANTS,
        "defaultVariant": default,
        "targeting": {"if": [True, targeting]} if not isinstance(targeting, dict) else targeting,
    }
    pair = Pair({"flags": {"f": flag}, "metadata": {"set": "hypothesis"}})
    try:
        count, differences = pair.mismatches(["f"], contexts)
    finally:
        pair.close()
    assert count == 6 * len(contexts)
    assert differences == []
