"""Compare two answers to the same request: status, and the body field by field or as text.

JSON bodies (both parse as JSON) are walked together: objects key by key, arrays index by
index, numbers equal within the tolerance (booleans are not numbers), other values by
equality; a difference is reported at the deepest path where the two disagree (a missing key,
an extra array item or a type change is one difference at that path). Fields matching
`ignoreFields` are skipped; values under `redactFields` are replaced in what is kept.
Anything else is compared as bytes: the field `$body`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from control_plane.shadow.fields import BODY_FIELD, FieldPath, Patterns, format_field

__all__ = ["REDACTED", "Answer", "BodyDiff", "diff_answers", "diff_json", "parse_body", "redacted"]

#: Differences kept per comparison (a wholly different body reports this many fields).
MAX_FIELDS = 200
#: What a redacted value reads as in diff examples.
REDACTED = "[redacted]"
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Answer:
    """One backend's answer: status (None: no answer), seconds to the response head, body."""

    status: int | None
    seconds: float
    body: bytes = b""
    error: str | None = None
    truncated: bool = False


@dataclass(slots=True)
class BodyDiff:
    """The fields that differ (printed paths -> (primary value, candidate value))."""

    mode: str  # "json", "text", or "skipped" (no body to compare)
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def parse_body(body: bytes) -> tuple[bool, Any]:
    """(True, value) when the body is JSON, else (False, None)."""
    if not body:
        return False, None
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


def diff_json(
    primary: Any,
    candidate: Any,
    *,
    tolerance: float,
    ignore: Patterns,
    redact: Patterns | None = None,
) -> dict[str, tuple[Any, Any]]:
    """Differing fields of two parsed JSON values (at most MAX_FIELDS), values redacted."""
    walk = _Walk(tolerance, ignore, redact or Patterns(()))
    walk.walk(primary, candidate, ())
    return walk.found


class _Walk:
    def __init__(self, tolerance: float, ignore: Patterns, redact: Patterns) -> None:
        self.tolerance = tolerance
        self.ignore = ignore
        self.redact = redact
        self.found: dict[str, tuple[Any, Any]] = {}

    def walk(self, a: Any, b: Any, path: FieldPath) -> None:
        if len(self.found) >= MAX_FIELDS or (self.ignore and self.ignore.matches(path)):
            return
        if isinstance(a, dict) and isinstance(b, dict) and len(path) < _MAX_DEPTH:
            for key in sorted(a.keys() | b.keys()):
                if key in a and key in b:
                    self.walk(a[key], b[key], (*path, key))
                elif not (self.ignore and self.ignore.matches((*path, key))):
                    self.differ((*path, key), a.get(key), b.get(key))
            return
        if isinstance(a, list) and isinstance(b, list) and len(path) < _MAX_DEPTH:
            for index in range(max(len(a), len(b))):
                if index < len(a) and index < len(b):
                    self.walk(a[index], b[index], (*path, index))
                elif not (self.ignore and self.ignore.matches((*path, index))):
                    self.differ(
                        (*path, index),
                        a[index] if index < len(a) else None,
                        b[index] if index < len(b) else None,
                    )
            return
        if _number(a) and _number(b):
            if not (
                a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= self.tolerance)
            ):
                self.differ(path, a, b)
            return
        if type(a) is not type(b) or a != b:
            self.differ(path, a, b)

    def differ(self, path: FieldPath, a: Any, b: Any) -> None:
        if len(self.found) < MAX_FIELDS:
            self.found[format_field(path)] = (
                redacted(a, path, self.redact),
                redacted(b, path, self.redact),
            )


def redacted(value: Any, path: FieldPath, redact: Patterns) -> Any:
    """`value` (found at `path`) with every part matching a redact pattern replaced."""
    if not redact:
        return value
    if redact.matches(path):
        return REDACTED
    if isinstance(value, dict):
        return {key: redacted(item, (*path, key), redact) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted(item, (*path, index), redact) for index, item in enumerate(value)]
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def diff_answers(
    primary: Answer,
    candidate: Answer,
    *,
    tolerance: float,
    ignore: Patterns,
    redact: Patterns | None = None,
) -> BodyDiff:
    """The body difference of two answers (skipped when either gave none or was cut off)."""
    if (
        primary.status is None
        or candidate.status is None
        or primary.truncated
        or candidate.truncated
    ):
        return BodyDiff("skipped")
    ok_a, value_a = parse_body(primary.body)
    ok_b, value_b = parse_body(candidate.body)
    if ok_a and ok_b:
        return BodyDiff(
            "json", diff_json(value_a, value_b, tolerance=tolerance, ignore=ignore, redact=redact)
        )
    if primary.body == candidate.body or (ignore and ignore.matches((BODY_FIELD,))):
        return BodyDiff("text")
    if redact is not None and redact.matches((BODY_FIELD,)):
        return BodyDiff("text", {BODY_FIELD: (REDACTED, REDACTED)})
    return BodyDiff("text", {BODY_FIELD: (_text(primary.body), _text(candidate.body))})


def _text(body: bytes, limit: int = 200) -> str:
    return body[:limit].decode("utf-8", "replace")
