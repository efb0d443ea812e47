"""The console's traffic view over every process: windows to JSON and back, and their sum.

Each process counts the decisions it made (control_plane.console.traffic); a worker returns
its windows as JSON on its internal port and the primary adds them to its own, bucket by
bucket. The processes share CLOCK_MONOTONIC, so their one-second buckets line up; a window
read a few milliseconds apart may put a decision at a bucket edge one bucket off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from control_plane.console.traffic import TrafficWindow

__all__ = ["sum_windows", "window_from_json", "window_json"]


def window_json(window: TrafficWindow) -> dict[str, Any]:
    return {
        "seconds": window.seconds,
        "bucketSeconds": window.bucket_seconds,
        "totals": window.totals,
        "series": window.series,
    }


def window_from_json(flag_key: str, data: Mapping[str, Any]) -> TrafficWindow:
    """A window a worker sent; raises ValueError when it is not one."""
    try:
        totals = {str(k): int(v) for k, v in data["totals"].items()}
        series = [{str(k): int(v) for k, v in bucket.items()} for bucket in data["series"]]
        return TrafficWindow(
            flag_key=flag_key,
            seconds=int(data["seconds"]),
            bucket_seconds=int(data["bucketSeconds"]),
            totals=totals,
            series=series,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a traffic window: {exc}") from exc


def sum_windows(first: TrafficWindow, others: Sequence[TrafficWindow]) -> TrafficWindow:
    """`first` plus `others` (same flag, seconds and buckets; a mismatched one is skipped)."""
    totals = dict(first.totals)
    series = [dict(bucket) for bucket in first.series]
    for window in others:
        if (
            window.flag_key != first.flag_key
            or window.seconds != first.seconds
            or len(window.series) != len(series)
        ):
            continue
        for variant, count in window.totals.items():
            totals[variant] = totals.get(variant, 0) + count
        for mine, theirs in zip(series, window.series, strict=True):
            for variant, count in theirs.items():
                mine[variant] = mine.get(variant, 0) + count
    return TrafficWindow(
        flag_key=first.flag_key,
        seconds=first.seconds,
        bucket_seconds=first.bucket_seconds,
        totals=totals,
        series=series,
    )
