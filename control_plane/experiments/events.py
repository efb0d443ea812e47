"""Validation of outcome events (`POST /v1/events`): one event or a batch, all or nothing.

An event names what it measures about (a `decisionId`, or a `flag` and the `targetingKey` the
decision was made for), a `metric` name and a `value`: `true`/`false` (or 1/0 with
`"kind": "binary"`) for a conversion, any finite number for a continuous metric. A metric keeps
the kind of its first event.

A pre-exposure covariate for CUPED is the metric `<metric>.pre`: what the unit did before the
experiment (the same metric over the previous weeks, say), sent once per unit with `flag` and
`targetingKey` (or a `decisionId`) at any time, e.g. `{"flag": "ab-test-router",
"targetingKey": "jane", "metric": "revenue.pre", "value": 41.5}`. It is numeric (a number, or
true/false), `<metric>.pre.pre` is refused, and the report uses it for `<metric>` only
(control_plane.experiments.metric_results). Every problem is reported with the item's index
and field, and a batch with any bad item stores nothing, so a client can fix and resend the
whole batch.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from control_plane.errors import BadRequestInput, InvalidEvents
from control_plane.experiments.hashing import UnitHasher
from control_plane.experiments.metric_results import COVARIATE_SUFFIX
from control_plane.flagstore.store import FlagStore

__all__ = ["MAX_BATCH", "EventParser"]

MAX_BATCH = 1000
_METRIC = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$")
_DECISION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FIELDS = frozenset({"decisionId", "flag", "targetingKey", "metric", "value", "kind", "timestamp"})
_KINDS = ("binary", "continuous")
_MAX_TARGETING_KEY = 1024
#: Events may be sent late (batched by a client), not from the future beyond clock skew.
_MAX_SKEW_SECONDS = 300


class EventParser:
    """Turns a request body into outcome event rows, or raises with per-item errors."""

    def __init__(
        self,
        store: FlagStore,
        hasher: UnitHasher,
        known_kinds: Mapping[str, set[str]] | None = None,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._lock = threading.Lock()
        #: metric -> the kind of its first event (from the database at start, then learned).
        self._kinds = {metric: sorted(kinds)[0] for metric, kinds in (known_kinds or {}).items()}

    def learn_kinds(self, known_kinds: Mapping[str, set[str]]) -> None:
        """Add the kinds already stored (read at start); a kind learned meanwhile stays."""
        with self._lock:
            for metric, kinds in known_kinds.items():
                self._kinds.setdefault(metric, sorted(kinds)[0])

    def parse(self, body: Any) -> list[dict[str, Any]]:
        items = _items(body)
        now = time.time()
        flags = self._store.current.flags if self._store.loaded else {}
        errors: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        with self._lock:
            batch_kinds: dict[str, str] = {}
            for index, item in enumerate(items):
                row = self._parse_item(index, item, flags, now, batch_kinds, errors)
                if row is not None:
                    rows.append(row)
            if errors:
                count = len({error["index"] for error in errors})
                first = errors[0]
                raise InvalidEvents(
                    f"{count} of {len(items)} events are invalid; nothing was stored. First: "
                    f"events[{first['index']}].{first['field']}: {first['message']}",
                    errors=errors,
                )
            for metric, kind in batch_kinds.items():
                self._kinds.setdefault(metric, kind)
        return rows

    def _parse_item(
        self,
        index: int,
        item: Any,
        flags: Mapping[str, Any],
        now: float,
        batch_kinds: dict[str, str],
        errors: list[dict[str, Any]],
    ) -> dict[str, Any] | None:
        def fail(field: str, message: str) -> None:
            errors.append({"index": index, "field": field, "message": message})

        before = len(errors)
        if not isinstance(item, dict):
            fail("", "each event must be a JSON object")
            return None
        for name in sorted(set(item) - _FIELDS):
            fail(name, f"unknown field {name!r}; allowed: {', '.join(sorted(_FIELDS))}")

        decision_id = item.get("decisionId")
        flag = item.get("flag")
        targeting_key = item.get("targetingKey")
        if decision_id is not None and (
            not isinstance(decision_id, str) or not _DECISION_ID.fullmatch(decision_id)
        ):
            fail(
                "decisionId",
                "must be the decisionId of a routing decision (1-64 letters, digits, '-' or '_')",
            )
        if flag is not None and not isinstance(flag, str):
            fail("flag", "must be a flag key (a string)")
        elif flag is not None and flag not in flags:
            fail("flag", f"no flag named {flag!r} is serving")
        if targeting_key is not None and (
            not isinstance(targeting_key, str) or not 0 < len(targeting_key) <= _MAX_TARGETING_KEY
        ):
            fail(
                "targetingKey",
                f"must be a non-empty string of at most {_MAX_TARGETING_KEY} characters",
            )
        if decision_id is None:
            if flag is None:
                fail("flag", "give either decisionId, or flag and targetingKey")
            if targeting_key is None:
                fail("targetingKey", "give either decisionId, or flag and targetingKey")
        elif targeting_key is not None:
            fail("targetingKey", "give decisionId or targetingKey, not both")

        metric = item.get("metric")
        if not isinstance(metric, str) or not _METRIC.fullmatch(metric):
            fail(
                "metric",
                "must be a name of 1-128 characters: a letter, then letters, "
                "digits, '_', '.', ':' or '-'",
            )
            metric = None
        elif metric.endswith(COVARIATE_SUFFIX * 2):
            fail(
                "metric",
                f"{metric!r} would be the covariate of a covariate; a covariate is "
                f"'<metric>{COVARIATE_SUFFIX}' for a metric that is not one itself",
            )
            metric = None
        kind, value = self._value(item, fail)
        if metric is not None and kind is not None:
            known = batch_kinds.get(metric) or self._kinds.get(metric)
            if known is not None and known != kind:
                fail(
                    "value",
                    f"metric {metric!r} is {known}; this value makes it {kind} "
                    "(use another metric name)",
                )
            batch_kinds.setdefault(metric, kind)
        at = self._timestamp(item.get("timestamp"), now, fail)
        if len(errors) > before:
            return None
        assert metric is not None
        assert value is not None
        assert kind is not None
        return {
            "id": secrets.token_hex(16),
            "decision_id": decision_id,
            "flag": flag,
            "unit": self._hasher(targeting_key) if targeting_key is not None else None,
            "metric": metric,
            "kind": kind,
            "value": value,
            "at": at,
        }

    @staticmethod
    def _value(item: dict[str, Any], fail: Any) -> tuple[str | None, float | None]:
        kind = item.get("kind")
        if kind is not None and kind not in _KINDS:
            fail("kind", "must be 'binary' or 'continuous'")
            return None, None
        if "value" not in item:
            fail("value", "is required: true/false for a conversion, a number otherwise")
            return None, None
        value = item["value"]
        if isinstance(value, bool):
            if kind == "continuous":
                fail("value", "a continuous metric needs a number, not true/false")
                return None, None
            return "binary", float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            fail("value", "must be true/false or a finite number")
            return None, None
        if kind == "binary":
            if value not in (0, 1):
                fail("value", f"a binary metric takes true/false or 0/1, not {value}")
                return None, None
            return "binary", float(value)
        return "continuous", float(value)

    @staticmethod
    def _timestamp(value: Any, now: float, fail: Any) -> float:
        if value is None:
            return now
        if not isinstance(value, str):
            fail("timestamp", "must be an RFC 3339 time string, e.g. 2025-01-31T12:00:00Z")
            return now
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            fail("timestamp", f"{value!r} is not an RFC 3339 time (2025-01-31T12:00:00Z)")
            return now
        if moment.tzinfo is None:
            fail("timestamp", "needs a time zone (Z or +hh:mm)")
            return now
        at = moment.timestamp()
        if at > now + _MAX_SKEW_SECONDS:
            fail("timestamp", "is in the future")
        return at


def _items(body: Any) -> list[Any]:
    if isinstance(body, dict) and "events" in body and set(body) == {"events"}:
        body = body["events"]
        if not isinstance(body, list):
            raise BadRequestInput("body.events must be an array of events", source="body.events")
    items = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
    if items is None:
        raise BadRequestInput(
            'the body must be an event object, an array of events, or {"events": [...]}',
            source="body",
        )
    if not items:
        raise BadRequestInput("the batch holds no events", source="body")
    if len(items) > MAX_BATCH:
        raise BadRequestInput(
            f"the batch holds {len(items)} events; at most {MAX_BATCH}", source="body"
        )
    return items
