"""Turn request headers into an OpenFeature evaluation context, by the declared header rules.

Each rule names one header, the context attribute it fills and the value's type and bounds. A
value that breaks its rule is refused with BadRequestInput naming the header, so a gateway bug
shows up as a clear 400 rather than as silently mis-bucketed traffic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from control_plane.errors import BadRequestInput
from control_plane.settings import HeaderRule

__all__ = ["RESERVED_ATTRIBUTES", "ContextMapper"]

#: Attributes flagd sets itself; a request may not supply them.
RESERVED_ATTRIBUTES = frozenset({"$flagd"})
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_MAX_BODY_ATTRIBUTES = 64


class ContextMapper:
    """Compiled header rules; `from_headers` is on the hot path, so it does little work."""

    def __init__(self, rules: Iterable[HeaderRule], *, max_header_bytes: int = 4096) -> None:
        self.rules = tuple(rules)
        self.max_header_bytes = max_header_bytes
        self._patterns = {
            rule.header: re.compile(rule.pattern) for rule in self.rules if rule.pattern
        }
        self._by_header_bytes = {rule.header.encode(): rule for rule in self.rules}

    def from_headers(self, headers: Mapping[str, str]) -> tuple[str | None, dict[str, Any]]:
        """(targeting key, attributes) from a case-insensitive header mapping."""
        return self._collect(
            (rule, raw) for rule in self.rules
            if (raw := headers.get(rule.header)) is not None
        )

    def from_raw_headers(
        self, raw_headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[str | None, dict[str, Any]]:
        """The same as `from_headers`, straight from ASGI's (lower-cased) header pairs."""
        by_header = self._by_header_bytes
        return self._collect(
            (rule, raw.decode("latin-1"))  # latin-1 decodes every byte
            for name, raw in raw_headers
            if (rule := by_header.get(name)) is not None
        )

    def _collect(
        self, values: Iterable[tuple[HeaderRule, str]]
    ) -> tuple[str | None, dict[str, Any]]:
        """Convert each (rule, header text) and file it as targeting key or attribute."""
        targeting_key: str | None = None
        attributes: dict[str, Any] = {}
        for rule, text in values:
            value = self._convert(rule, text)
            if rule.attribute == "targetingKey":
                targeting_key = value
            else:
                attributes[rule.attribute] = value
        return targeting_key, attributes

    def merge_body_context(
        self, targeting_key: str | None, attributes: dict[str, Any], body: Any
    ) -> str | None:
        """Add attributes from a JSON body's `context` object; header values win on conflict."""
        if body is None:
            return targeting_key
        if not isinstance(body, Mapping):
            raise BadRequestInput("the body must be a JSON object", source="body")
        context = body.get("context", {})
        if not isinstance(context, Mapping):
            raise BadRequestInput("body.context must be a JSON object", source="body.context")
        if len(context) > _MAX_BODY_ATTRIBUTES:
            raise BadRequestInput(
                f"body.context has {len(context)} attributes; at most {_MAX_BODY_ATTRIBUTES}",
                source="body.context",
            )
        for key, value in context.items():
            where = f"body.context.{key}"
            if key in RESERVED_ATTRIBUTES:
                raise BadRequestInput(f"{where} is reserved for flagd", source=where)
            if not _is_context_value(value):
                raise BadRequestInput(
                    f"{where} must be a string, number, boolean or a list/object of those",
                    source=where,
                )
            if key == "targetingKey":
                if not isinstance(value, str):
                    raise BadRequestInput(f"{where} must be a string", source=where)
                targeting_key = targeting_key or value
            else:
                attributes.setdefault(key, value)
        return targeting_key

    def _convert(self, rule: HeaderRule, raw: str) -> Any:
        header = rule.header
        if len(raw) > min(rule.max_length, self.max_header_bytes):
            raise BadRequestInput(
                f"header {header} is {len(raw)} characters long; at most "
                f"{min(rule.max_length, self.max_header_bytes)} are allowed",
                source=header,
            )
        value = raw.strip()
        if rule.type == "string":
            if not value.isprintable():
                raise BadRequestInput(f"header {header} contains control characters",
                                      source=header)
            pattern = self._patterns.get(header)
            if pattern is not None and not pattern.fullmatch(value):
                raise BadRequestInput(
                    f"header {header} value {value!r} does not match {pattern.pattern}",
                    source=header,
                )
            return value
        if rule.type == "boolean":
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise BadRequestInput(f"header {header} must be true or false, got {value!r}",
                                  source=header)
        number: float
        try:
            number = int(value) if rule.type == "integer" else float(value)
        except ValueError:
            kind = "an integer" if rule.type == "integer" else "a number"
            raise BadRequestInput(f"header {header} must be {kind}, got {value!r}",
                                  source=header) from None
        if isinstance(number, float) and not math.isfinite(number):
            raise BadRequestInput(f"header {header} must be a finite number, got {value!r}",
                                  source=header)
        if rule.minimum is not None and number < rule.minimum:
            raise BadRequestInput(
                f"header {header} must be at least {_fmt(rule.minimum)}, got {value}",
                source=header,
            )
        if rule.maximum is not None and number > rule.maximum:
            raise BadRequestInput(
                f"header {header} must be at most {_fmt(rule.maximum)}, got {value}",
                source=header,
            )
        if isinstance(number, float) and number.is_integer():
            return int(number)  # flagd fractional weights must be integers
        return number


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _is_context_value(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str | bool | int | float) and not (
        isinstance(value, float) and not math.isfinite(value)
    ):
        return True
    if depth >= 3:
        return False
    if isinstance(value, list):
        return all(_is_context_value(item, depth + 1) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_context_value(v, depth + 1)
                   for k, v in value.items())
    return False
