"""A canary spec: which variants, the weight steps, how long each lasts, when to stop.

JSON form (what `POST /v1/canaries/{flag}` takes; every field has a default):

    {"stableVariant": "stable", "canaryVariant": "canary", "steps": [5, 10, 25, 50, 100],
     "intervalSeconds": 60, "minRequests": 100, "builtinChecks": true,
     "checks": {
       "errorRate": {"minSamples": 3000, "floor": 0.001, "max": 0.25, "alpha": 0.025},
       "latency": {"minSamples": 500, "floorMs": 5, "quantile": 0.9, "maxRatio": 1.1,
                   "alpha": 0.025}},
     "metrics": [{"name": "error-rate", "query": "<PromQL>", "thresholdRange": {"max": 0.05},
                  "provider": {"address": "http://prometheus:9090"}}],
     "trafficQuery": null, "failureThreshold": 2, "idleIntervals": 3}

A step passes when it has lasted `intervalSeconds`, the canary answered at least `minRequests`
calls in it, and its latest interval check passed; a check still short of its `minSamples`
(waiting) lets the canary step up, but not to a weight of 100 (no stable traffic is left to
compare with) nor to promotion. At the end of each interval the built-in
checks (on the calls the control plane records; `builtinChecks: false` turns them off) compare
the canary with the stable variant over the same time windows, and every metric in `metrics`
(PromQL instant queries, Flagger's `thresholdRange` shape) is queried. A failed built-in check
or metric is one failed check; `failureThreshold` of them roll the canary back (one blip does
not). control_plane.experiments.canary.gates has the statistics of the built-in checks and
control_plane.experiments.canary.intervals the interval semantics; `idleIntervals` intervals
without canary traffic are reported.

The fields of earlier versions still work: `maxErrorRate` is `checks.errorRate.max`, and
`maxP99LatencyRatio: R` is `checks.latency: {"quantile": 0.99, "maxRatio": R}` (judged by the
statistical test, no longer by a ratio of two p99s); giving one together with a different value
in `checks` is refused, naming both.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from control_plane.errors import InvalidCanary
from control_plane.experiments.canary.templating import VARIABLES, unknown_variables

__all__ = [
    "BuiltinChecks",
    "CanarySpec",
    "ErrorRateCheck",
    "LatencyCheck",
    "MetricCheck",
    "Provider",
    "ThresholdRange",
    "check_address",
    "parse_spec",
]

#: An http(s) base URL of a Prometheus server (a path prefix is allowed, a query is not); the
#: prometheus_url setting uses the same pattern.
PROMETHEUS_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
_MAX_QUERY = 10_000


def check_address(address: str) -> str:
    """`address` if it is an http(s) base URL, ValueError saying what is expected otherwise."""
    if len(address) > 2000 or not PROMETHEUS_URL.match(address):
        raise ValueError(
            "must be an http:// or https:// base URL of a Prometheus server, "
            "such as http://127.0.0.1:9090"
        )
    return address.rstrip("/")


def _check_query(query: str) -> str:
    unknown = unknown_variables(query)
    if unknown:
        raise ValueError(
            f"unknown template variable {{{{ {unknown[0]} }}}}; the variables "
            f"are {', '.join(VARIABLES)}"
        )
    return query


class Provider(BaseModel):
    """Where a metric is queried: a Prometheus server (default: the prometheus_url setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["prometheus"] = "prometheus"
    address: str

    _address = field_validator("address")(check_address)


class ThresholdRange(BaseModel):
    """The accepted values of a metric, bounds included (Flagger's `thresholdRange`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _a_finite_range(self) -> ThresholdRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("bounds must be finite numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"from {self.min:g} to {self.max:g}"
        return f"at least {self.min:g}" if self.min is not None else f"at most {self.max:g}"


class MetricCheck(BaseModel):
    """One PromQL instant query judged at the end of each interval."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    query: str = Field(min_length=1, max_length=_MAX_QUERY)
    threshold_range: ThresholdRange = Field(alias="thresholdRange")
    provider: Provider | None = None

    _query = field_validator("query")(_check_query)


class ErrorRateCheck(BaseModel):
    """The built-in error-rate check: canary against stable, errors being 5xx or no answer."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    #: Canary calls (over the run) before the check judges; until then it waits.
    min_samples: int = Field(default=3000, alias="minSamples", ge=1, le=10_000_000)
    #: A canary error rate at or below this never fails.
    floor: float = Field(default=0.001, ge=0, le=1)
    #: A canary error rate above this fails whatever the stable variant does (Flagger's
    #: thresholdRange max); null: no ceiling.
    max: float | None = Field(default=0.25, ge=0, le=1)
    #: Significance of the sequential comparison with the stable variant (always valid: it
    #: holds however many intervals are judged).
    alpha: float = Field(default=0.025, gt=0, lt=0.5)


class LatencyCheck(BaseModel):
    """The built-in latency check: the canary's share of calls above a pooled quantile."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    #: Answered canary calls (over the run) before the check judges; until then it waits.
    min_samples: int = Field(default=500, alias="minSamples", ge=1, le=10_000_000)
    #: A canary latency quantile at or below this many milliseconds never fails.
    floor_ms: float = Field(default=5.0, alias="floorMs", ge=0, le=3_600_000)
    #: The quantile compared (0.5: the median, 0.99: the tail).
    quantile: float = Field(default=0.9, gt=0, lt=1)
    #: The slowdown tolerated: canary latencies are divided by it before the comparison.
    max_ratio: float = Field(default=1.1, alias="maxRatio", ge=1, le=1000)
    alpha: float = Field(default=0.025, gt=0, lt=0.5)


class BuiltinChecks(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    error_rate: ErrorRateCheck = Field(default_factory=ErrorRateCheck, alias="errorRate")
    latency: LatencyCheck = Field(default_factory=LatencyCheck)


#: Old top-level fields -> (check, {field in the check: value from the old one}, valid range).
_LEGACY: dict[str, tuple[str, Callable[[float], dict[str, float]], tuple[float, float]]] = {
    "maxErrorRate": ("errorRate", lambda value: {"max": value}, (0.0, 1.0)),
    "maxP99LatencyRatio": (
        "latency",
        lambda value: {"quantile": 0.99, "maxRatio": value},
        (1.0, 1000.0),
    ),
}


class _Contradiction(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _migrate(data: Any) -> Any:
    """Move the old top-level thresholds into `checks`, refusing a contradiction."""
    if not isinstance(data, dict) or not any(data.get(name) is not None for name in _LEGACY):
        return data
    data = dict(data)
    checks = data.get("checks")
    if checks is None:
        checks = {}
    if not isinstance(checks, dict):
        return data  # the model's own validation names the bad `checks`
    checks = dict(checks)
    for name, (check, fields, (low, high)) in _LEGACY.items():
        value = data.get(name)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            continue  # null: not given; a bad value is named by the field's own validation
        given = checks.get(check)
        given = dict(given) if isinstance(given, dict) else {}
        for field, migrated in fields(value).items():
            if field in given and given[field] != migrated:
                raise _Contradiction(
                    name,
                    f"{name} {value:g} is the old form of checks.{check}.{field} "
                    f"{migrated:g}, which says {given[field]}; give one of them",
                )
            given[field] = migrated
        checks[check] = given
        data[name] = None
    data["checks"] = checks
    return data


class CanarySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    stable_variant: str = Field(
        default="stable", alias="stableVariant", min_length=1, max_length=256
    )
    canary_variant: str = Field(
        default="canary", alias="canaryVariant", min_length=1, max_length=256
    )
    #: Canary weights in percent, strictly increasing; after the last one passes, promote.
    steps: tuple[int, ...] = Field(default=(5, 10, 25, 50, 100), min_length=1, max_length=100)
    interval_seconds: float = Field(default=60.0, alias="intervalSeconds", gt=0, le=7 * 86400)
    #: Canary calls a step needs before it may pass.
    min_requests: int = Field(default=100, alias="minRequests", ge=1, le=10_000_000)
    #: Old form of checks.errorRate.max (moved there on parsing; null afterwards).
    max_error_rate: float | None = Field(default=None, alias="maxErrorRate", ge=0, le=1)
    #: Old form of checks.latency {quantile: 0.99, maxRatio} (moved there; null afterwards).
    max_p99_latency_ratio: float | None = Field(
        default=None, alias="maxP99LatencyRatio", ge=1, le=1000
    )
    #: Judge the calls the control plane records (`checks`); false when the traffic is only
    #: measured by `metrics` (e.g. a gateway it cannot see).
    builtin_checks: bool = Field(default=True, alias="builtinChecks")
    checks: BuiltinChecks = Field(default_factory=BuiltinChecks)
    metrics: tuple[MetricCheck, ...] = Field(default=(), max_length=20)
    #: PromQL for the canary's requests in the interval; when set, it (not the recorded calls)
    #: says whether the canary saw traffic.
    traffic_query: str | None = Field(
        default=None, alias="trafficQuery", min_length=1, max_length=_MAX_QUERY
    )
    #: Failed metric checks (out of range, query failed, no data) in a run before rollback.
    failure_threshold: int = Field(default=2, alias="failureThreshold", ge=1, le=1000)
    #: Consecutive intervals with no canary request before the run reports itself idle.
    idle_intervals: int = Field(default=3, alias="idleIntervals", ge=1, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _old_fields(cls, data: Any) -> Any:
        return _migrate(data)

    _traffic_query = field_validator("traffic_query")(
        lambda value: None if value is None else _check_query(value)
    )

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

    @model_validator(mode="after")
    def _something_judges(self) -> CanarySpec:
        if not self.builtin_checks and not self.metrics:
            raise ValueError(
                "builtinChecks is false and there are no metrics: nothing would judge the canary"
            )
        names = [metric.name for metric in self.metrics]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two metrics are named {name!r}; names must be unique")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def parse_spec(body: Any) -> CanarySpec:
    """A CanarySpec from a JSON body; InvalidCanary naming every bad field otherwise."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidCanary(
            "the canary spec must be a JSON object",
            errors=[{"field": "", "message": 'expected an object such as {"steps": [5, 25, 100]}'}],
        )
    try:
        body = _migrate(body)
    except _Contradiction as exc:
        raise InvalidCanary(
            f"invalid canary spec: {exc.field}: {exc}",
            errors=[{"field": exc.field, "message": str(exc)}],
        ) from None
    try:
        return CanarySpec.model_validate(body)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "spec",
                "message": error["msg"],
            }
            for error in exc.errors()
        ]
        first = errors[0]
        raise InvalidCanary(
            f"invalid canary spec: {first['field']}: {first['message']}", errors=errors
        ) from None
