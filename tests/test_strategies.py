"""The four routing strategies of the shipped flags, and the stability of user assignments.

Decisions go through the real stack below HTTP (flag store -> official flagd provider ->
OpenFeature client -> Decider), so 10,000-user splits run in well under a second.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bucketing_v2 import v2_variant
from openfeature import api as openfeature_api

from control_plane.flagstore import BUCKETING_GENERATION, FlagStore
from control_plane.routing.context import ContextMapper
from control_plane.routing.decisions import Decider
from control_plane.routing.tester_tokens import TesterTokens
from control_plane.settings import DEFAULT_HEADER_RULES
from flags import AB_TEST_ROUTER, CANARY_ROUTER, FLAGS_DIR, PINNED_ROUTER, REGION_ROUTER
from providers import source_fed_provider

GOLDEN = Path(__file__).parent / "golden" / "assignments.json"
USERS = [f"user-{index:05d}" for index in range(10_000)]
TESTERS = TesterTokens("tester-token-key-for-strategy-tests!")
MAPPER = ContextMapper(DEFAULT_HEADER_RULES, tester_tokens=TESTERS)
TESTER = {"x-tester-token": TESTERS.issue("qa", ttl_seconds=3600)[0]}


def make_decider(domain: str, directory: Path = FLAGS_DIR) -> Decider:
    store = FlagStore(directory)
    store.reload()
    openfeature_api.set_provider_and_wait(source_fed_provider(store), domain=domain)
    return Decider(openfeature_api.get_client(domain), store)


@pytest.fixture
def decider() -> Decider:
    return make_decider("strategies")


def decide(decider: Decider, flag: str, headers: dict[str, str]) -> str:
    context = MAPPER.from_headers(headers, flag)
    return decider.decide(flag, context.targeting_key, context.attributes).variant


def split(decider: Decider, flag: str, extra: dict[str, str] | None = None) -> dict[str, float]:
    counts = Counter(decide(decider, flag, {"x-user-id": user, **(extra or {})}) for user in USERS)
    return {variant: 100 * count / len(USERS) for variant, count in counts.items()}


def test_hash_bucketing_is_sticky_and_splits_by_weight(decider: Decider) -> None:
    """A/B: each user always gets the same model; 10,000 users split 50/50 within 1 point."""
    first = [decide(decider, AB_TEST_ROUTER, {"x-user-id": user}) for user in USERS[:500]]
    again = [decide(decider, AB_TEST_ROUTER, {"x-user-id": user}) for user in USERS[:500]]
    fresh = make_decider("strategies-fresh")
    other = [decide(fresh, AB_TEST_ROUTER, {"x-user-id": user}) for user in USERS[:500]]
    assert first == again == other
    shares = split(decider, AB_TEST_ROUTER)
    assert shares.keys() == {"model-a", "model-b"}
    assert abs(shares["model-a"] - 50) <= 1


def test_label_targeting_sends_region_cn_to_the_cn_model(decider: Decider) -> None:
    """Region: user-region == "cn" gets the cn model, every other region the global one."""
    assert decide(decider, REGION_ROUTER, {"x-user-id": "a", "x-region": "cn"}) == "cn"
    for region in ("us", "eu", "CN", ""):
        assert decide(decider, REGION_ROUTER, {"x-user-id": "a", "x-region": region}) == "global"
    assert decide(decider, REGION_ROUTER, {"x-user-id": "a"}) == "global"


@pytest.mark.parametrize("weight", [0, 5, 30, 75, 100])
def test_canary_weight_from_the_request_header(decider: Decider, weight: int) -> None:
    """Canary: x-canary-weight sets the canary share (flagd fractional with a dynamic weight)."""
    shares = split(decider, CANARY_ROUTER, {"x-canary-weight": str(weight)})
    assert abs(shares.get("canary", 0.0) - weight) <= 1


def test_canary_without_header_uses_the_configured_weight(decider: Decider) -> None:
    """Canary: with no weight header the flag's own 10/90 split applies."""
    shares = split(decider, CANARY_ROUTER)
    assert abs(shares["canary"] - 10) <= 1


def test_pinned_version(decider: Decider) -> None:
    """Pinned: x-canary-version picks that version for a tester; otherwise the default v1."""
    for version in ("v1", "v2", "v3"):
        assert decide(decider, PINNED_ROUTER, {"x-canary-version": version, **TESTER}) == version
        assert decide(decider, PINNED_ROUTER, {"x-canary-version": version}) == "v1"
    assert decide(decider, PINNED_ROUTER, {"x-user-id": "x"}) == "v1"
    assert decide(decider, PINNED_ROUTER, {"x-canary-version": "v2; drop", **TESTER}) == "v1"


def test_flag_set_reports_its_bucketing_generation() -> None:
    """The flag set, and every document served from it, say which bucketing generation they
    use (in the facts, not in flag metadata, which stays exactly as flagd has it)."""
    store = FlagStore(FLAGS_DIR)
    store.reload()
    assert store.current.facts["bucketing"] == BUCKETING_GENERATION == "flagd-fractional-v2"
    assert store.current.to_flagd()["controlPlane"]["bucketing"] == BUCKETING_GENERATION


# The golden assignments: 1,000 fixed users on every shipped fractional rule. If a dependency
# upgrade changes the bucketing (flagd-core 2.x does), this fails instead of silently moving
# users between variants in the middle of an experiment.
GOLDEN_CASES: dict[str, tuple[str, dict[str, str]]] = {
    "ab-test-router": (AB_TEST_ROUTER, {}),
    "canary-router": (CANARY_ROUTER, {}),
    "canary-router@weight=30": (CANARY_ROUTER, {"x-canary-weight": "30"}),
}


def current_assignments(decider: Decider) -> dict[str, dict[str, str]]:
    return {
        case: {user: decide(decider, flag, {"x-user-id": user, **headers}) for user in USERS[:1000]}
        for case, (flag, headers) in GOLDEN_CASES.items()
    }


def test_golden_assignments_of_1000_users(decider: Decider) -> None:
    """1,000 fixed users keep their variants on the shipped flags (CI fails on re-bucketing)."""
    actual = current_assignments(decider)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(actual, indent=0, sort_keys=True) + "\n")
    expected: dict[str, Any] = json.loads(GOLDEN.read_text())
    for case in GOLDEN_CASES:
        moved = [user for user in expected[case] if expected[case][user] != actual[case][user]]
        assert not moved, (
            f"{len(moved)} of 1000 users changed variant on {case} (first: {moved[:5]}); the "
            "fractional bucketing generation changed. See README, 'Bucketing generation'."
        )


def test_golden_assignments_follow_the_v2_algorithm() -> None:
    """The pinned assignments are exactly flagd's v2 bucketing, recomputed independently."""
    expected = json.loads(GOLDEN.read_text())
    weights = {
        "ab-test-router": [("model-a", 50), ("model-b", 50)],
        "canary-router": [("canary", 10), ("stable", 90)],
        "canary-router@weight=30": [("canary", 30), ("stable", 70)],
    }
    for case, buckets in weights.items():
        flag = GOLDEN_CASES[case][0]
        for user, variant in expected[case].items():
            assert v2_variant(flag, user, buckets) == variant, (case, user)
