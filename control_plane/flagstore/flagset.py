"""An immutable, merged flag set: what every evaluator, replica and API serves at one version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["BUCKETING_GENERATION", "FlagSet", "content_hash"]

#: The fractional bucketing generation our pinned evaluator (openfeature-flagd-core 1.0.0) uses:
#: murmur3_x86_32(utf8(flagKey + targetingKey), seed 0) * totalWeight >> 32. Reported with every
#: flag set so a consumer can tell whether its SDK assigns users the same way (see README).
BUCKETING_GENERATION = "flagd-fractional-v2"


def content_hash(flags: Mapping[str, Any], evaluators: Mapping[str, Any] | None = None) -> str:
    """Stable SHA-256 of the flag definitions (key order does not matter)."""
    canonical = json.dumps(
        {"flags": flags, "$evaluators": evaluators or {}},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class FlagSet:
    """The merged flags of one accepted version.

    `flags` maps key -> flagd flag definition (as in a flagd file), `evaluators` holds shared
    `$evaluators`, `sources` maps key -> the file (or "api") the flag came from.
    """

    version: int
    flags: Mapping[str, Mapping[str, Any]]
    evaluators: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    content_hash: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))
        object.__setattr__(self, "evaluators", MappingProxyType(dict(self.evaluators)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        if not self.content_hash:
            object.__setattr__(self, "content_hash", content_hash(self.flags, self.evaluators))

    @property
    def metadata(self) -> dict[str, str | int]:
        """Flag set metadata; flagd merges it into every evaluation's flag metadata."""
        return {
            "flagSetVersion": self.version,
            "flagSetHash": self.content_hash[:12],
            "bucketing": BUCKETING_GENERATION,
        }

    def to_flagd(self) -> dict[str, Any]:
        """The flag set as one flagd flag-configuration document."""
        document: dict[str, Any] = {
            "$schema": "https://flagd.dev/schema/v0/flags.json",
            "flags": {key: dict(value) for key, value in self.flags.items()},
            "metadata": self.metadata,
        }
        if self.evaluators:
            document["$evaluators"] = dict(self.evaluators)
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_flagd(), sort_keys=True)
