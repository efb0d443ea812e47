"""The observed split: per-flag, per-variant decision counts over the last minutes.

Prometheus counts decisions since the process started; the console wants how traffic splits
*now*, next to the configured weights. A `TrafficTracker` is a Decider listener that keeps, per
flag, a ring of one-second buckets (variant -> count) covering the longest window it serves.

It runs on the hot path of every decision, so recording is O(1) and takes no lock: a bucket is
a plain dict, replaced (not cleared) when its second comes round again. Two threads that record
in the same flag and second at the same instant may lose one count between them; the console
shows a split, and the exact totals live in `control_plane_decisions_total`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.routing.decisions import Decision

__all__ = ["MAX_WINDOW_SECONDS", "TrafficTracker", "TrafficWindow"]

#: The longest window the console asks for (15 minutes).
MAX_WINDOW_SECONDS = 15 * 60


class _Ring:
    """One flag's buckets: `stamps[i]` is the second that `counts[i]` belongs to."""

    __slots__ = ("counts", "stamps")

    def __init__(self, size: int) -> None:
        self.stamps: list[int] = [-1] * size
        self.counts: list[dict[str, int]] = [{} for _ in range(size)]


@dataclass(frozen=True, slots=True)
class TrafficWindow:
    """Decisions of one flag in the last `seconds`, in total and in `len(series)` buckets."""

    flag_key: str
    seconds: int
    bucket_seconds: int
    totals: dict[str, int]
    #: Per-variant counts, oldest bucket first; the last bucket ends now.
    series: list[dict[str, int]]

    @property
    def decisions(self) -> int:
        return sum(self.totals.values())


class TrafficTracker:
    """Counts decisions per flag, variant and second; `window()` sums the last N seconds.

    Register it with `decider.listeners.append(tracker.observe)`.
    """

    def __init__(
        self, max_seconds: int = MAX_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_seconds < 1:
            raise ValueError("max_seconds must be at least 1")
        self.max_seconds = max_seconds
        # One spare slot: the bucket being filled while the window's oldest is still read.
        self._size = max_seconds + 1
        self._clock = clock
        self._rings: dict[str, _Ring] = {}

    def observe(self, decision: Decision, seconds: float) -> None:
        """Decider listener: count one decision in the current second."""
        self.record(decision.flag_key, decision.variant)

    def record(self, flag_key: str, variant: str, count: int = 1) -> None:
        now = int(self._clock())
        ring = self._rings.get(flag_key)
        if ring is None:
            ring = self._rings.setdefault(flag_key, _Ring(self._size))
        slot = now % self._size
        if ring.stamps[slot] != now:
            # A new dict rather than clear(): a reader copying the old bucket is unaffected.
            ring.counts[slot] = {}
            ring.stamps[slot] = now
        counts = ring.counts[slot]
        counts[variant] = counts.get(variant, 0) + count

    def flags(self) -> list[str]:
        """Flags that had a decision since the tracker started."""
        return sorted(self._rings)

    def window(self, flag_key: str, seconds: int, buckets: int = 30) -> TrafficWindow:
        """The last `seconds` (at most `max_seconds`) of `flag_key`, in about `buckets` buckets.

        Buckets are whole seconds wide (`ceil(seconds / buckets)`), so `seconds` is rounded
        up to a multiple of the bucket width.
        """
        if not 1 <= seconds <= self.max_seconds:
            raise ValueError(f"seconds must be from 1 to {self.max_seconds}")
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        width = -(-seconds // buckets)
        count = -(-seconds // width)
        span = min(width * count, self.max_seconds)
        now = int(self._clock())
        totals: dict[str, int] = {}
        series: list[dict[str, int]] = [{} for _ in range(count)]
        ring = self._rings.get(flag_key)
        if ring is not None:
            for slot in range(self._size):
                age = now - ring.stamps[slot]
                if not 0 <= age < span:
                    continue
                # dict() of a dict is one C call: a consistent copy even while it is written.
                counts = dict(ring.counts[slot])
                if ring.stamps[slot] != now - age:  # the slot was reused while we read it
                    continue
                bucket = series[count - 1 - age // width]
                for variant, number in counts.items():
                    totals[variant] = totals.get(variant, 0) + number
                    bucket[variant] = bucket.get(variant, 0) + number
        return TrafficWindow(
            flag_key=flag_key, seconds=span, bucket_seconds=width, totals=totals, series=series
        )
