"""A canary spec: which variants, the weight steps, how long each lasts, when to stop.

JSON form (what `POST /v1/canaries/{flag}` takes; every field has a default):

    {"stableVariant": "stable", "canaryVariant": "canary", "steps": [5, 10, 25, 50, 100],
     "intervalSeconds": 60, "minRequests": 100, "maxErrorRate": 0.05,
     "maxP99LatencyRatio": 1.5}

A step passes when it has lasted `intervalSeconds` and the canary answered at least
`minRequests` calls in it with an error rate (5xx or no answer) of at most `maxErrorRate` and a
p99 latency of at most `maxP99LatencyRatio` times the stable variant's.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from control_plane.errors import InvalidCanary

__all__ = ["CanarySpec", "parse_spec"]


class CanarySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    stable_variant: str = Field(default="stable", alias="stableVariant", min_length=1,
                                max_length=256)
    canary_variant: str = Field(default="canary", alias="canaryVariant", min_length=1,
                                max_length=256)
    #: Canary weights in percent, strictly increasing; after the last one passes, promote.
    steps: tuple[int, ...] = Field(default=(5, 10, 25, 50, 100), min_length=1, max_length=100)
    interval_seconds: float = Field(default=60.0, alias="intervalSeconds", gt=0, le=7 * 86400)
    min_requests: int = Field(default=100, alias="minRequests", ge=1, le=10_000_000)
    max_error_rate: float = Field(default=0.05, alias="maxErrorRate", ge=0, le=1)
    max_p99_latency_ratio: float = Field(default=1.5, alias="maxP99LatencyRatio", gt=0,
                                         le=1000)

    @field_validator("steps")
    @classmethod
    def _increasing_percentages(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        for step in steps:
            if not 1 <= step <= 100:
                raise ValueError(f"step {step} is not a percentage from 1 to 100")
        for before, after in itertools.pairwise(steps):
            if after <= before:
                raise ValueError(f"steps must increase: {after} follows {before}")
        return steps

    @model_validator(mode="after")
    def _two_variants(self) -> CanarySpec:
        if self.stable_variant == self.canary_variant:
            raise ValueError("stableVariant and canaryVariant must differ")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def parse_spec(body: Any) -> CanarySpec:
    """A CanarySpec from a JSON body; InvalidCanary naming every bad field otherwise."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidCanary("the canary spec must be a JSON object", errors=[
            {"field": "", "message": "expected an object such as {\"steps\": [5, 25, 100]}"}])
    try:
        return CanarySpec.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(part) for part in error["loc"]) or "spec",
                   "message": error["msg"]} for error in exc.errors()]
        first = errors[0]
        raise InvalidCanary(f"invalid canary spec: {first['field']}: {first['message']}",
                            errors=errors) from None
