"""The canary spec, the rewrite of a flag's canary weight, and the judgement of one step."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.errors import InvalidCanary
from control_plane.experiments.canary.analysis import judge
from control_plane.experiments.canary.spec import CanarySpec, parse_spec
from control_plane.experiments.canary.weights import (
    check_flag,
    current_weight,
    promoted,
    with_weight,
)
from control_plane.experiments.repository import CallWindow
from control_plane.flagstore.loader import load_directory
from control_plane.flagstore.validate import validate_flag
from flags import CANARY_ROUTER, FLAGS_DIR

SHIPPED = load_directory(FLAGS_DIR)


def _shipped(key: str) -> dict[str, Any]:
    flag: dict[str, Any] = json.loads(json.dumps(SHIPPED.flags[key], default=dict))
    return flag


# -- spec ------------------------------------------------------------------------------------


def test_spec_defaults_and_json_round_trip() -> None:
    """An empty body is the default spec; its JSON form parses back to the same spec."""
    spec = parse_spec({})
    assert spec.steps == (5, 10, 25, 50, 100)
    assert (spec.stable_variant, spec.canary_variant) == ("stable", "canary")
    assert parse_spec(spec.to_json()) == spec
    assert parse_spec(None) == spec


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"steps": []}, "steps", "at least 1"),
        ({"steps": [0, 50]}, "steps", "step 0 is not a percentage"),
        ({"steps": [10, 101]}, "steps", "step 101 is not a percentage"),
        ({"steps": [10, 10, 20]}, "steps", "steps must increase: 10 follows 10"),
        ({"intervalSeconds": 0}, "intervalSeconds", "greater than 0"),
        ({"minRequests": 0}, "minRequests", "greater than or equal to 1"),
        ({"maxErrorRate": 1.5}, "maxErrorRate", "less than or equal to 1"),
        ({"maxP99LatencyRatio": 0.5}, "maxP99LatencyRatio", "greater than or equal to 1"),
        (
            {"maxP99LatencyRatio": 2, "checks": {"latency": {"maxRatio": 3}}},
            "maxP99LatencyRatio",
            "old form of checks.latency.maxRatio 2, which says 3; give one of them",
        ),
        (
            {"maxErrorRate": 0.1, "checks": {"errorRate": {"max": 0.2}}},
            "maxErrorRate",
            "old form of checks.errorRate.max 0.1",
        ),
        ({"checks": {"latency": {"quantile": 1}}}, "checks.latency.quantile", "less than 1"),
        (
            {"checks": {"latency": {"maxRatio": 0.9}}},
            "checks.latency.maxRatio",
            "greater than or equal to 1",
        ),
        ({"checks": {"errorRate": {"alpha": 0}}}, "checks.errorRate.alpha", "greater than 0"),
        (
            {"checks": {"errorRate": {"minSamples": 0}}},
            "checks.errorRate.minSamples",
            "greater than or equal to 1",
        ),
        (
            {"checks": {"errorRate": {"maxIncrease": 0.1}}},
            "checks.errorRate.maxIncrease",
            "Extra inputs are not permitted",
        ),
        ({"stableVariant": "x", "canaryVariant": "x"}, "spec", "must differ"),
        ({"steps": "5,10"}, "steps", "tuple"),
        ({"weights": [1]}, "weights", "Extra inputs are not permitted"),
    ],
)
def test_bad_specs_name_the_field(body: dict[str, Any], field: str, message: str) -> None:
    """Each bad spec field is refused with the field's JSON name and the rule it broke."""
    with pytest.raises(InvalidCanary) as caught:
        parse_spec(body)
    errors = caught.value.extra["errors"]
    assert any(error["field"] == field and message in error["message"] for error in errors), errors


def test_spec_must_be_an_object() -> None:
    """A JSON array or string is not a spec."""
    with pytest.raises(InvalidCanary, match="must be a JSON object"):
        parse_spec([5, 10])


# -- weights ---------------------------------------------------------------------------------


def test_shipped_canary_router_rewrites_only_the_fixed_split() -> None:
    """On the shipped canary-router, the fixed 10/90 split is rewritten and the per-request
    x-canary-weight override (computed weights) is left as it was; the result validates."""
    flag = _shipped(CANARY_ROUTER)
    assert current_weight(flag, "stable", "canary") == 10
    rewritten = with_weight(flag, "stable", "canary", 35)
    _condition, fixed, override = rewritten["targeting"]["if"]
    assert fixed == {"fractional": [["canary", 35], ["stable", 65]]}
    assert override == flag["targeting"]["if"][2]
    assert current_weight(rewritten, "stable", "canary") == 35
    assert flag["targeting"]["if"][1] == {"fractional": [["canary", 10], ["stable", 90]]}
    assert validate_flag(CANARY_ROUTER, rewritten, SHIPPED.evaluators) == []


def test_flag_without_targeting_gets_a_split() -> None:
    """A flag that serves its default to everyone gets a canary/stable fractional rule."""
    flag = {
        "state": "ENABLED",
        "defaultVariant": "stable",
        "variants": {
            "stable": {"backend": "a", "url": "http://127.0.0.1:1"},
            "canary": {"backend": "b", "url": "http://127.0.0.1:2"},
        },
    }
    check_flag("f", flag, "stable", "canary")
    rewritten = with_weight(flag, "stable", "canary", 5)
    assert rewritten["targeting"] == {"fractional": [["canary", 5], ["stable", 95]]}
    assert "targeting" not in flag
    assert validate_flag("f", rewritten) == []


def test_bucket_without_weight_and_bucketing_key_expression() -> None:
    """A bucket with an implicit weight gets an explicit one; a leading bucketing-key
    expression is kept."""
    flag = {
        "state": "ENABLED",
        "defaultVariant": "stable",
        "variants": {
            "stable": {"backend": "a", "url": "http://127.0.0.1:1"},
            "canary": {"backend": "b", "url": "http://127.0.0.1:2"},
        },
        "targeting": {"fractional": [{"var": "email"}, ["canary"], ["stable"]]},
    }
    assert current_weight(flag, "stable", "canary") == 50
    rewritten = with_weight(flag, "stable", "canary", 20)
    assert rewritten["targeting"]["fractional"] == [
        {"var": "email"},
        ["canary", 20],
        ["stable", 80],
    ]


def test_promotion_makes_the_canary_the_default() -> None:
    """Promotion sends all traffic and the default variant to the canary."""
    result = promoted(_shipped(CANARY_ROUTER), "stable", "canary")
    assert result["defaultVariant"] == "canary"
    assert result["targeting"]["if"][1] == {"fractional": [["canary", 100], ["stable", 0]]}
    assert validate_flag(CANARY_ROUTER, result, SHIPPED.evaluators) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": {"stable": True, "canary": False}}, "not a routing flag"),
        ({"state": "DISABLED"}, "is DISABLED"),
        ({"targeting": {"$ref": "shared"}}, "no fractional split between 'canary' and 'stable'"),
        (
            {"targeting": {"fractional": [["canary", {"var": "w"}], ["stable", 50]]}},
            "with fixed weights",
        ),
    ],
)
def test_flags_the_controller_cannot_drive(change: dict[str, Any], message: str) -> None:
    """A flag that is not a routing flag, is disabled, or has no fixed-weight split is refused
    with the reason (and what to add)."""
    flag = {**_shipped(CANARY_ROUTER), **change}
    with pytest.raises(InvalidCanary, match=message):
        check_flag(CANARY_ROUTER, flag, "stable", "canary")


def test_missing_flag_and_variant_are_refused() -> None:
    """An unknown flag and a variant the flag lacks are named."""
    with pytest.raises(InvalidCanary, match="no flag named 'x'"):
        check_flag("x", None, "stable", "canary")
    with pytest.raises(InvalidCanary, match="has no variant 'v2' \\(canaryVariant\\)"):
        check_flag(CANARY_ROUTER, _shipped(CANARY_ROUTER), "stable", "v2")


# -- the old threshold fields -------------------------------------------------------------


def test_old_threshold_fields_move_into_checks() -> None:
    """maxErrorRate becomes the error-rate ceiling and maxP99LatencyRatio the latency check at
    the 99th percentile with that tolerated ratio; the stored form parses back the same, and
    a spec stored before checks existed still loads."""
    spec = parse_spec({"maxErrorRate": 0.1, "maxP99LatencyRatio": 3})
    assert spec.checks.error_rate.max == 0.1
    assert (spec.checks.latency.quantile, spec.checks.latency.max_ratio) == (0.99, 3)
    assert spec.max_error_rate is None
    assert spec.max_p99_latency_ratio is None
    assert parse_spec(spec.to_json()) == spec
    same = parse_spec({"maxP99LatencyRatio": 3, "checks": {"latency": {"maxRatio": 3}}})
    assert same.checks.latency.max_ratio == 3
    stored = {
        "steps": [10, 100],
        "minRequests": 5,
        "maxErrorRate": 0.05,
        "maxP99LatencyRatio": 1.5,
        "builtinChecks": True,
        "metrics": [],
    }
    old = CanarySpec.model_validate(stored)
    assert old.checks.error_rate.max == 0.05
    assert old.checks.latency.max_ratio == 1.5


def test_default_checks() -> None:
    """The defaults are the ones bench/canary_gates.py measured."""
    checks = parse_spec({}).to_json()["checks"]
    assert checks == {
        "errorRate": {"minSamples": 3000, "floor": 0.001, "max": 0.25, "alpha": 0.025},
        "latency": {
            "minSamples": 500,
            "floorMs": 5.0,
            "quantile": 0.9,
            "maxRatio": 1.1,
            "alpha": 0.025,
        },
    }


# -- a step's figures ------------------------------------------------------------------------

SPEC = CanarySpec(minRequests=10)


def window(calls: int, errors: int = 0, latency: float = 0.01) -> CallWindow:
    return CallWindow(calls, errors, [latency] * (calls - errors))


def test_step_waits_for_min_requests_then_shows_its_figures() -> None:
    """Below minRequests the step waits; then it may pass on traffic, with its figures shown
    (the p99 ratio only as a figure: a 2.5x ratio does not fail anything by itself)."""
    waiting = judge(SPEC, window(9, errors=9), window(100))
    assert waiting.outcome == "wait"
    assert "9 of 10 canary requests" in waiting.reason
    slow = judge(SPEC, window(20, latency=0.05), window(100, latency=0.02))
    assert slow.outcome == "pass"
    assert slow.observed["p99LatencyRatio"] == 2.5
    assert slow.observed["canaryP99Ms"] == 50.0
