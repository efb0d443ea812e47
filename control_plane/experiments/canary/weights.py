"""Reading and rewriting the canary weight of a routing flag's fractional split.

The controller owns every `fractional` rule in the flag's own targeting whose buckets are
exactly the stable and the canary variant with literal weights, e.g.
`{"fractional": [["canary", 10], ["stable", 90]]}`, and sets them to canary w / stable 100-w.
Rules with computed weights (`{"var": "canary-weight"}`, a per-request override) are left
alone. A flag with no targeting gets such a rule. Promotion sets canary 100 / stable 0 and makes
the canary the default variant.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

from control_plane.errors import InvalidCanary
from control_plane.routing.backends import routing_table

__all__ = ["check_flag", "current_weight", "promoted", "with_weight"]


def check_flag(flag_key: str, flag: Mapping[str, Any] | None, stable: str, canary: str) -> None:
    """InvalidCanary unless the controller can drive this flag's canary weight."""
    if flag is None:
        raise InvalidCanary(f"no flag named {flag_key!r} is serving")
    if routing_table(flag) is None:
        raise InvalidCanary(
            f"flag {flag_key!r} is not a routing flag (each variant must be "
            "an object with 'backend' and 'url')"
        )
    variants = flag.get("variants") or {}
    for role, name in (("stableVariant", stable), ("canaryVariant", canary)):
        if name not in variants:
            raise InvalidCanary(
                f"flag {flag_key!r} has no variant {name!r} ({role}); its "
                f"variants are {', '.join(sorted(variants))}"
            )
    if flag.get("state") != "ENABLED":
        raise InvalidCanary(f"flag {flag_key!r} is {flag.get('state')}; enable it first")
    targeting = flag.get("targeting")
    if targeting and not list(_rules(targeting, stable, canary)):
        raise InvalidCanary(
            f"flag {flag_key!r} has targeting but no fractional split between {canary!r} and "
            f"{stable!r} with fixed weights for the controller to set; add one, e.g. "
            f'{{"fractional": [["{canary}", 0], ["{stable}", 100]]}}'
        )


def current_weight(flag: Mapping[str, Any], stable: str, canary: str) -> int | None:
    """The canary weight (percent) of the first controlled rule, None if there is none."""
    for buckets in _rules(flag.get("targeting") or {}, stable, canary):
        weights = {bucket[0]: _weight(bucket) for bucket in buckets}
        total = sum(weights.values())
        return round(100 * weights[canary] / total) if total else 0
    return None


def with_weight(flag: Mapping[str, Any], stable: str, canary: str, weight: int) -> dict[str, Any]:
    """A copy of the flag definition whose controlled rules give the canary `weight` percent."""
    if not 0 <= weight <= 100:
        raise ValueError("weight is a percentage")
    definition = _copy(flag)
    targeting = definition.get("targeting")
    if not targeting:
        definition["targeting"] = {"fractional": [[canary, weight], [stable, 100 - weight]]}
        return definition
    for buckets in _rules(targeting, stable, canary):
        for bucket in buckets:
            value = weight if bucket[0] == canary else 100 - weight
            if len(bucket) == 2:
                bucket[1] = value
            else:
                bucket.append(value)
    return definition


def promoted(flag: Mapping[str, Any], stable: str, canary: str) -> dict[str, Any]:
    """The flag after promotion: all traffic and the default variant go to the canary."""
    definition = with_weight(flag, stable, canary, 100)
    definition["defaultVariant"] = canary
    return definition


def _copy(flag: Mapping[str, Any]) -> dict[str, Any]:
    # Flag sets hold read-only mapping proxies; a JSON round trip gives plain, owned data.
    copied: dict[str, Any] = json.loads(json.dumps(flag, default=_plain))
    return copy.deepcopy(copied)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _weight(bucket: list[Any]) -> int:
    return int(bucket[1]) if len(bucket) == 2 else 1


def _rules(node: Any, stable: str, canary: str) -> Iterator[list[list[Any]]]:
    """The bucket lists of controlled fractional rules, depth first (mutable, in place)."""
    if isinstance(node, dict):
        for operator, arguments in node.items():
            if operator == "fractional" and isinstance(arguments, list):
                buckets = [item for item in arguments if isinstance(item, list)]
                names = {bucket[0] for bucket in buckets if bucket}
                literal = all(
                    1 <= len(bucket) <= 2
                    and isinstance(bucket[0], str)
                    and (
                        len(bucket) == 1
                        or (isinstance(bucket[1], int) and not isinstance(bucket[1], bool))
                    )
                    for bucket in buckets
                )
                if literal and names == {stable, canary} and len(buckets) == 2:
                    yield buckets
                    continue
            yield from _rules(arguments, stable, canary)
    elif isinstance(node, list):
        for item in node:
            yield from _rules(item, stable, canary)
