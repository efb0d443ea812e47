"""`GET /v1/traffic[/{flag}]`: each routing flag's backends, configured weights and observed split.

The configured split is what the flag's targeting gives a request without attributes (the
fractional weights it reaches, or the one variant it serves), read from the serving flag set;
the observed split is what the `TrafficTracker` counted over the last `minutes`. Viewer role.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from control_plane.console.traffic import TrafficTracker, TrafficWindow
from control_plane.errors import FlagNotFound, FlagsNotLoaded, NotARoutingFlag
from control_plane.flagstore import FlagSet
from control_plane.flagstore.splits import configured_split
from control_plane.http.components import Components
from control_plane.http.deps import ComponentsDep, TrackerDep, ViewerDep
from control_plane.http.schemas import WireModel, problems
from control_plane.routing.backends import routing_table

__all__ = ["router", "routing_flag_traffic"]

router = APIRouter(tags=["console"])

#: The targeting key of the probe request the configured split is read for.
_PROBE = "console-probe"


class VariantTraffic(WireModel):
    variant: str
    backend: str | None = Field(description="null: counted, but no longer in the flag")
    url: str | None
    configured_share: float | None
    decisions: int
    observed_share: float | None


class ConfiguredSplitBody(WireModel):
    kind: str
    note: str | None
    shares: dict[str, float] | None
    context: str


class TrafficWindowBody(WireModel):
    seconds: int | float
    bucket_seconds: int | float
    decisions: int


class FlagTraffic(WireModel):
    flag: str
    flag_set_version: int
    source: str | None
    state: str | None
    default_variant: str | None
    description: str | None
    experiment: bool
    configured: ConfiguredSplitBody
    variants: list[VariantTraffic]
    window: TrafficWindowBody
    series: list[dict[str, Any]] = Field(description="Decisions per variant per bucket")


class AllTraffic(WireModel):
    flag_set_version: int
    minutes: int
    flags: list[FlagTraffic]


Minutes = Annotated[int, Query(ge=1, le=15, description="window length in minutes")]
Buckets = Annotated[int, Query(ge=1, le=120, description="buckets in the time series")]


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def routing_flag_traffic(flag_set: FlagSet, flag_key: str, window: TrafficWindow) -> dict[str, Any]:
    """The JSON body for one routing flag (see the module docstring)."""
    flag: Mapping[str, Any] | None = flag_set.flags.get(flag_key)
    if flag is None:
        raise FlagNotFound(f"no flag named {flag_key!r}")
    table = routing_table(flag)
    if table is None:
        raise NotARoutingFlag(
            f"flag {flag_key!r} is not a routing flag: each variant must be "
            "an object with 'backend' and 'url'"
        )
    split = configured_split(flag, flag_key, flag_set.evaluators, [(_PROBE, {})])
    shares = split.shares
    total = window.decisions
    variants = [
        {
            "variant": name,
            "backend": backend.name,
            "url": backend.url,
            "configuredShare": shares.get(name, 0.0) if shares else None,
            "decisions": window.totals.get(name, 0),
            "observedShare": _share(window.totals.get(name, 0), total),
        }
        for name, backend in table.items()
    ]
    # Variants counted in the window that the serving flag no longer has (it was just edited).
    variants += [
        {
            "variant": name,
            "backend": None,
            "url": None,
            "configuredShare": None,
            "decisions": count,
            "observedShare": _share(count, total),
        }
        for name, count in sorted(window.totals.items())
        if name not in table
    ]
    metadata = flag.get("metadata") or {}
    return {
        "flag": flag_key,
        "flagSetVersion": flag_set.version,
        "source": flag_set.sources.get(flag_key),
        "state": flag.get("state"),
        "defaultVariant": flag.get("defaultVariant"),
        "description": metadata.get("description"),
        "experiment": metadata.get("experiment") is True,
        "configured": {
            "kind": split.kind,
            "note": split.note,
            "shares": shares,
            "context": "a request without targeting attributes",
        },
        "variants": variants,
        "window": {
            "seconds": window.seconds,
            "bucketSeconds": window.bucket_seconds,
            "decisions": total,
        },
        "series": window.series,
    }


def _serving(components: Components) -> FlagSet:
    store = components.store
    if not store.loaded:
        raise FlagsNotLoaded("no valid flag set has been loaded yet; see /v1/flags/status")
    flag_set: FlagSet = store.current
    return flag_set


def _windows(
    components: Components, tracker: TrafficTracker, seconds: int, buckets: int
) -> Callable[[str], TrafficWindow]:
    """flag -> its window; with `serve --workers N` (control_plane.workers) summed over every
    process, each of which counts its own decisions."""
    if components.workers is not None:
        return components.workers.windows(tracker, seconds, buckets)
    return lambda flag_key: tracker.window(flag_key, seconds, buckets)


@router.get(
    "/v1/traffic",
    summary="Every routing flag: backends, configured and observed split",
    response_model=AllTraffic,
    responses=problems(400, 401, 503),
)
def all_traffic(
    principal: ViewerDep,
    components: ComponentsDep,
    tracker: TrackerDep,
    minutes: Minutes = 5,
    buckets: Buckets = 30,
) -> dict[str, Any]:
    flag_set = _serving(components)
    window = _windows(components, tracker, minutes * 60, buckets)
    flags = [
        routing_flag_traffic(flag_set, key, window(key))
        for key in sorted(flag_set.flags)
        if routing_table(flag_set.flags[key]) is not None
    ]
    return {"flagSetVersion": flag_set.version, "minutes": minutes, "flags": flags}


@router.get(
    "/v1/traffic/{flag_key}",
    summary="One routing flag: backends, configured and observed split",
    response_model=FlagTraffic,
    responses=problems(400, 401, 404, 422, 503),
)
def flag_traffic(
    flag_key: str,
    principal: ViewerDep,
    components: ComponentsDep,
    tracker: TrackerDep,
    minutes: Minutes = 5,
    buckets: Buckets = 30,
) -> dict[str, Any]:
    flag_set = _serving(components)
    return routing_flag_traffic(
        flag_set, flag_key, _windows(components, tracker, minutes * 60, buckets)(flag_key)
    )
