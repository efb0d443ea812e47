"""What split a flag configures: the fractional weights its targeting reaches for some users.

The flag's targeting runs with the pinned evaluator's own JsonLogic operators, with `fractional`
replaced by one that reports its (already evaluated) weights and stops. Used by simulate (the
configured split beside the observed one), the experiment report (sample-ratio check) and the
console (configured vs observed traffic).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from json_logic import jsonLogic
from openfeature.contrib.tools.flagd.core.targeting.targeting import OPERATORS

__all__ = ["ConfiguredSplit", "ProgressSink", "configured_split"]


class ProgressSink(Protocol):
    """Told how far a long evaluation is (the CLI's progress display is one)."""

    def phase(self, label: str, total: int | None = None) -> None: ...

    def update(self, done: int | None = None, *, status: str | None = None) -> None: ...


@dataclass(frozen=True)
class ConfiguredSplit:
    """What the flag's rule says these users should get."""

    #: "fractional" (static weights), "fixed" (one variant for everyone), or "varies".
    kind: str
    weights: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {name: weight / total for name, weight in self.weights.items()} if total else {}


class _Reached(Exception):
    """Raised by the recording `fractional` operator to stop evaluation at the rule."""

    def __init__(self, weights: tuple[tuple[str, float], ...] | None) -> None:
        super().__init__("fractional reached")
        self.weights = weights


def _recording_fractional(data: Any, *args: Any) -> Any:
    buckets = list(args)
    if buckets and isinstance(buckets[0], str):
        buckets = buckets[1:]  # the optional bucketing-key expression (already evaluated)
    weights: list[tuple[str, float]] = []
    for bucket in buckets:
        if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
            raise _Reached(None)
        weight = bucket[1] if len(bucket) == 2 else 1
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise _Reached(None)
        weights.append((str(bucket[0]), float(weight)))
    raise _Reached(tuple(weights))


_RECORDING_OPERATORS = {**OPERATORS, "fractional": _recording_fractional}


def _resolve_refs(node: Any, evaluators: Mapping[str, Any], depth: int = 0) -> Any:
    if depth > 32:
        return node
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"] in evaluators:
            return _resolve_refs(evaluators[node["$ref"]], evaluators, depth + 1)
        return {key: _resolve_refs(value, evaluators, depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(item, evaluators, depth + 1) for item in node]
    return node


def configured_split(
    flag: Mapping[str, Any],
    flag_key: str,
    evaluators: Mapping[str, Any],
    contexts: list[tuple[str, dict[str, Any]]],
    progress: ProgressSink | None = None,
) -> ConfiguredSplit:
    """The split the flag's targeting configures for these (targeting key, attributes) pairs."""
    default = flag.get("defaultVariant")
    if flag.get("state") == "DISABLED":
        return ConfiguredSplit("fixed", {str(default): 1.0}, "the flag is DISABLED")
    targeting = _resolve_refs(flag.get("targeting") or {}, evaluators)
    if not targeting:
        return ConfiguredSplit("fixed", {str(default): 1.0}, "no targeting: the default variant")
    outcomes: set[Any] = set()
    now = int(time.time())
    for index, (targeting_key, attributes) in enumerate(contexts, 1):
        if progress is not None:
            progress.update(index)
        data = {
            **attributes,
            "targetingKey": targeting_key,
            "$flagd": {"flagKey": flag_key, "timestamp": now},
        }
        try:
            result = jsonLogic(targeting, data, _RECORDING_OPERATORS)
        except _Reached as reached:
            outcomes.add(("fractional", reached.weights))
        except Exception:  # the evaluator would fail too: the default is served
            outcomes.add(("fixed", default))
        else:
            variants = flag.get("variants", {})
            outcomes.add(
                ("fixed", result if isinstance(result, str) and result in variants else default)
            )
        if len(outcomes) > 1:
            return ConfiguredSplit(
                "varies",
                note="the targeting gives these users different "
                "rules, so there is no single configured split",
            )
    kind, detail = outcomes.pop()
    if kind == "fixed":
        return ConfiguredSplit(
            "fixed", {str(detail): 1.0}, f"the targeting sends every such user to {detail}"
        )
    if detail is None:
        return ConfiguredSplit("varies", note="the fractional rule's weights are not numbers")
    weights: dict[str, float] = {}
    for variant, weight in detail:
        weights[variant] = weights.get(variant, 0.0) + weight
    if sum(weights.values()) <= 0:
        return ConfiguredSplit("varies", note="the fractional weights add up to zero")
    return ConfiguredSplit("fractional", weights)
