"""Shadow results per flag and shadow backend, kept in memory by the serving process.

What is kept: counts (mirrored, dropped, compared, shadow errors, status mismatches), per
field the number of compared requests where it differed (against the candidate, and between
two primaries for noise calibration), the set of differing fields per request (to tell the
share of requests with a real difference once noise is known), the newest latency pairs, and
the newest diff examples (values already redacted). Everything is bounded: at most
MAX_FIELDS distinct fields and MAX_FIELD_SETS distinct sets are tracked (more are counted
under OTHER_FIELDS), latencies and examples are windows. Results start empty when the process
starts and are per process (one report per replica); see the docs on shadow traffic.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.experiments.rank_tests import mann_whitney, quantile_exceedance
from control_plane.experiments.stats import nearest_rank
from control_plane.shadow.diff import Answer, BodyDiff
from control_plane.shadow.noise import is_noisy

__all__ = ["OTHER_FIELDS", "Comparison", "ShadowResults"]

MAX_FIELDS = 500
MAX_FIELD_SETS = 2000
#: Where fields beyond MAX_FIELDS are counted (always counted as a real difference).
OTHER_FIELDS = "(other fields)"
_VALUE_CHARS = 300


@dataclass(frozen=True, slots=True)
class Comparison:
    """One mirrored request: the primary's answer, the shadow's, and their difference."""

    flag: str
    variant: str
    primary_backend: str
    backend: str
    decision_id: str
    primary: Answer
    shadow: Answer
    body: BodyDiff
    #: The primary asked a second time (noise calibration), with its difference to the first.
    second: Answer | None = None
    noise: BodyDiff | None = None


@dataclass
class _Pair:
    variant: str
    primary_backend: str
    mirrored: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    compared: int = 0
    shadow_errors: int = 0
    primary_errors: int = 0
    status_mismatches: int = 0
    bodies_skipped: int = 0
    field_diffs: Counter[str] = field(default_factory=Counter)
    field_sets: Counter[frozenset[str]] = field(default_factory=Counter)
    noise_pairs: int = 0
    noise_status_mismatches: int = 0
    noise_diffs: Counter[str] = field(default_factory=Counter)
    primary_seconds: deque[float] = field(default_factory=deque)
    shadow_seconds: deque[float] = field(default_factory=deque)
    examples: deque[dict[str, Any]] = field(default_factory=deque)


class ShadowResults:
    """Thread-safe accumulator; `record` from the mirror workers, `report` from the API."""

    def __init__(self, *, latency_window: int = 10_000, examples: int = 20) -> None:
        self.latency_window = latency_window
        self.max_examples = examples
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._lock = threading.Lock()

    def _pair(self, flag: str, backend: str, variant: str, primary: str) -> _Pair:
        key = (flag, backend)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = _Pair(
                variant,
                primary,
                primary_seconds=deque(maxlen=self.latency_window),
                shadow_seconds=deque(maxlen=self.latency_window),
                examples=deque(maxlen=self.max_examples),
            )
        return pair

    def mirrored(self, flag: str, variant: str, primary: str, backend: str) -> None:
        with self._lock:
            self._pair(flag, backend, variant, primary).mirrored += 1

    def dropped(self, flag: str, variant: str, primary: str, backend: str, reason: str) -> None:
        with self._lock:
            self._pair(flag, backend, variant, primary).dropped[reason] += 1

    def record(self, comparison: Comparison) -> frozenset[str]:
        """Count one comparison; the fields it differs on that are not known noise."""
        c = comparison
        with self._lock:
            pair = self._pair(c.flag, c.backend, c.variant, c.primary_backend)
            pair.compared += 1
            if c.primary.status is None:
                pair.primary_errors += 1
            if c.shadow.status is None:
                pair.shadow_errors += 1
            status_differs = c.primary.status != c.shadow.status
            pair.status_mismatches += status_differs
            if c.body.mode == "skipped":
                pair.bodies_skipped += 1
            fields = frozenset(_bounded(pair.field_diffs, c.body.fields))
            pair.field_diffs.update(fields)
            if fields in pair.field_sets or len(pair.field_sets) < MAX_FIELD_SETS:
                pair.field_sets[fields] += 1
            else:
                pair.field_sets[frozenset({OTHER_FIELDS})] += 1
            if c.second is not None and c.noise is not None:
                pair.noise_pairs += 1
                pair.noise_status_mismatches += c.primary.status != c.second.status
                pair.noise_diffs.update(_bounded(pair.noise_diffs, c.noise.fields))
            if c.primary.status is not None and c.shadow.status is not None:
                pair.primary_seconds.append(c.primary.seconds)
                pair.shadow_seconds.append(c.shadow.seconds)
            noisy = self._noisy(pair)
            real = frozenset(name for name in fields if name not in noisy)
            if real or status_differs:
                pair.examples.append(_example(c, real, noisy))
            return real

    @staticmethod
    def _noisy(pair: _Pair) -> set[str]:
        if not pair.noise_pairs or not pair.compared:
            return set()
        return {
            name
            for name, count in pair.noise_diffs.items()
            if is_noisy(
                pair.field_diffs.get(name, 0) / pair.compared, count / pair.noise_pairs, count
            )
        }

    def flags(self) -> list[str]:
        with self._lock:
            return sorted({flag for flag, _ in self._pairs})

    def report(self, flag: str, declared: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """One entry per shadow backend of `flag` seen or `declared` (backend -> its info)."""
        with self._lock:
            pairs = {backend: pair for (key, backend), pair in self._pairs.items() if key == flag}
            rows = [
                _pair_json(backend, pair, self._noisy(pair), (declared or {}).get(backend))
                for backend, pair in pairs.items()
            ]
        for backend, info in (declared or {}).items():
            if backend not in pairs:
                rows.append(
                    _pair_json(backend, _Pair(info["variant"], info["primary"]), set(), info)
                )
        return sorted(rows, key=lambda row: (row["variant"], row["backend"]))


def _bounded(counts: Counter[str], fields: Mapping[str, Any]) -> set[str]:
    names = set()
    for name in fields:
        names.add(name if name in counts or len(counts) < MAX_FIELDS else OTHER_FIELDS)
    return names


def _short(value: Any) -> Any:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    return value if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS] + "…"


def _example(c: Comparison, real: frozenset[str], noisy: set[str]) -> dict[str, Any]:
    return {
        "decisionId": c.decision_id,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": {"primary": c.primary.status, "shadow": c.shadow.status},
        "errors": {"primary": c.primary.error, "shadow": c.shadow.error},
        "latencyMs": {
            "primary": round(c.primary.seconds * 1000, 3),
            "shadow": round(c.shadow.seconds * 1000, 3),
        },
        "fields": {
            name: {
                "primary": _short(values[0]),
                "shadow": _short(values[1]),
                "noisy": name in noisy,
            }
            for name, values in sorted(c.body.fields.items())[:20]
        },
        "differingFields": sorted(real),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _latency(primary: list[float], shadow: list[float]) -> dict[str, Any]:
    p50, p99 = nearest_rank(primary, 0.5), nearest_rank(primary, 0.99)
    s50, s99 = nearest_rank(shadow, 0.5), nearest_rank(shadow, 0.99)
    shift = mann_whitney(primary, shadow)
    exceed = quantile_exceedance(primary, shadow, 0.99) if primary and shadow else None
    return {
        "samples": len(primary),
        "primaryMs": {"p50": _ms(p50), "p99": _ms(p99)},
        "shadowMs": {"p50": _ms(s50), "p99": _ms(s99)},
        "p50Ratio": round(s50 / p50, 4) if p50 and s50 is not None else None,
        "p99Ratio": round(s99 / p99, 4) if p99 and s99 is not None else None,
        # The shadow slower than the primary (one-sided), rank-based: robust to tails.
        "mannWhitney": None
        if shift is None
        else {
            "z": round(shift.statistic, 4),
            "pValue": shift.p_value,
            "pShadowSlower": shift.p_greater,
        },
        # More of the shadow's latencies above the pooled p99 than the primary's.
        "p99Exceedance": None
        if exceed is None
        else {
            "threshold": _ms(exceed.threshold),
            "primaryAbove": exceed.control_above,
            "shadowAbove": exceed.treatment_above,
            "pValue": exceed.p_value,
            "pShadowSlower": exceed.p_greater,
        },
        "test": "Mann-Whitney U (shadow stochastically slower, one-sided) and pooled-p99 "
        "exceedance (two-proportion z), control_plane.experiments.rank_tests",
    }


def _pair_json(
    backend: str, pair: _Pair, noisy: set[str], declared: Mapping[str, Any] | None
) -> dict[str, Any]:
    compared = pair.compared
    rows = [
        {
            "field": name,
            "diffs": count,
            "rate": count / compared if compared else 0.0,
            "noiseDiffs": pair.noise_diffs.get(name, 0),
            "noiseRate": (
                pair.noise_diffs.get(name, 0) / pair.noise_pairs if pair.noise_pairs else None
            ),
        }
        for name, count in pair.field_diffs.most_common()
    ]
    differing = sum(
        count
        for fields, count in pair.field_sets.items()
        if any(name not in noisy for name in fields)
    )
    return {
        "variant": pair.variant,
        "primaryBackend": pair.primary_backend,
        "backend": backend,
        "declared": declared is not None,
        "sample": declared.get("sample") if declared else None,
        "mirrored": pair.mirrored,
        "dropped": dict(pair.dropped),
        "droppedTotal": sum(pair.dropped.values()),
        "compared": compared,
        "shadowErrors": pair.shadow_errors,
        "primaryErrors": pair.primary_errors,
        "bodiesSkipped": pair.bodies_skipped,
        "statusMismatches": pair.status_mismatches,
        "statusMismatchRate": pair.status_mismatches / compared if compared else None,
        "diffRate": differing / compared if compared else None,
        "differing": differing,
        "fields": [row for row in rows if row["field"] not in noisy],
        "noisyFields": [row for row in rows if row["field"] in noisy],
        "noise": {
            "pairs": pair.noise_pairs,
            "statusMismatches": pair.noise_status_mismatches,
            "fields": dict(pair.noise_diffs.most_common(50)),
        },
        "latency": _latency(list(pair.primary_seconds), list(pair.shadow_seconds)),
        "examples": list(reversed(pair.examples)),
    }
