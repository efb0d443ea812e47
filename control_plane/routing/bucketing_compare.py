"""`control-plane simulate FLAG --compare-bucketing v2 v3`: who a bucketing change would move.

Evaluates the synthetic users with the compiled evaluator twice, the flag set declaring one
fractional bucketing generation and then the other (providers.compiled implements v2 and v3),
and reports how many users move from each variant to each other one, with sample targeting
keys, so an operator can see what upgrading an SDK that buckets the other way would do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.errors import FlagNotFound
from control_plane.flagstore.flagset import FlagSet
from providers.compiled import CompiledFlagSet, Generation

__all__ = ["BucketingComparison", "compare_bucketing", "format_comparison"]

SAMPLES = 5


@dataclass
class BucketingComparison:
    flag_key: str
    users: int
    before: Generation
    after: Generation
    #: (variant before, variant after) -> users, for users whose variant changes.
    moves: Counter[tuple[str, str]] = field(default_factory=Counter)
    samples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    stayed: int = 0


def _declaring(document: dict[str, Any], generation: Generation) -> dict[str, Any]:
    return {**document, "metadata": {**document.get("metadata", {}), "bucketing": generation}}


def compare_bucketing(
    flag_set: FlagSet,
    flag_key: str,
    users: int,
    attributes: Mapping[str, Any],
    before: Generation,
    after: Generation,
    *,
    key_prefix: str = "user-",
) -> BucketingComparison:
    """Evaluate `users` synthetic users under both generations and count who moves."""
    if flag_key not in flag_set.flags:
        known = ", ".join(sorted(flag_set.flags)) or "none"
        raise FlagNotFound(f"no flag named {flag_key!r} (flags: {known})")
    document = flag_set.to_flagd()
    old = CompiledFlagSet.from_document(_declaring(document, before))
    new = CompiledFlagSet.from_document(_declaring(document, after))
    result = BucketingComparison(flag_key, users, before, after)
    for index in range(users):
        key = f"{key_prefix}{index}"
        was = old.evaluate(flag_key, key, attributes).variant or "(no variant)"
        now = new.evaluate(flag_key, key, attributes).variant or "(no variant)"
        if was == now:
            result.stayed += 1
            continue
        result.moves[(was, now)] += 1
        sample = result.samples.setdefault((was, now), [])
        if len(sample) < SAMPLES:
            sample.append(key)
    return result


def format_comparison(result: BucketingComparison) -> str:
    """The report printed by `control-plane simulate --compare-bucketing`."""
    moved = sum(result.moves.values())
    share = moved / result.users if result.users else 0.0
    lines = [
        f"flag {result.flag_key}: bucketing {result.before} -> {result.after} over "
        f"{result.users} synthetic users: {moved} would move ({share:.2%}), "
        f"{result.stayed} stay",
        "",
    ]
    if not moved:
        lines.append("nobody moves: the flag's answers do not depend on the bucketing")
        return "\n".join(lines)
    lines.append(f"{'from':<16} {'to':<16} {'users':>8}  sample targeting keys")
    for (was, now), count in result.moves.most_common():
        samples = ", ".join(result.samples[(was, now)])
        lines.append(f"{was:<16} {now:<16} {count:>8}  {samples}")
    return "\n".join(lines)
