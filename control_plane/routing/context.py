"""Turn request headers into an OpenFeature evaluation context, by the declared header rules.

Each rule names one header, the context attribute it fills and the value's type and bounds. A
value that breaks its rule is refused with BadRequestInput naming the header, so a gateway bug
shows up as a clear 400 rather than as silently mis-bucketed traffic.

Header values are UTF-8 (what gateways send); bytes that are not valid UTF-8, and any control
character, are refused. So `x-user-id: josé` is the same targeting key, and lands in the same
bucket, whether it comes in a header, in a `/v1/route` body or through OFREP.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from control_plane.errors import BadRequestInput
from control_plane.json_input import unsafe_character
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
        self._by_attribute = {rule.attribute: rule for rule in self.rules}

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
            (rule, _utf8(rule, raw))
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
            elif key not in attributes:
                rule = self._by_attribute.get(key)
                # A body attribute that a header rule also fills obeys that rule's type and
                # bounds: `canary-weight: 12.5` is refused here just as the header is.
                attributes[key] = value if rule is None else self._check_body(rule, where, value)
        return targeting_key

    def _check_body(self, rule: HeaderRule, where: str, value: Any) -> Any:
        if rule.type == "string":
            if not isinstance(value, str):
                raise BadRequestInput(f"{where} must be a string", source=where)
            return self._convert(rule, value, source=where)
        if rule.type == "boolean":
            if not isinstance(value, bool):
                raise BadRequestInput(f"{where} must be true or false", source=where)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestInput(f"{where} must be a number", source=where)
        return self._convert(rule, str(value), source=where)

    def _convert(self, rule: HeaderRule, raw: str, *, source: str | None = None) -> Any:
        """The typed value of `raw` by `rule`; errors name `source` (default: the header)."""
        header = f"header {rule.header}" if source is None else source
        source = rule.header if source is None else source
        if len(raw) > min(rule.max_length, self.max_header_bytes):
            raise BadRequestInput(
                f"{header} is {len(raw)} characters long; at most "
                f"{min(rule.max_length, self.max_header_bytes)} are allowed",
                source=source,
            )
        value = raw.strip()
        problem = unsafe_character(value, strict=True)
        if problem is not None:
            raise BadRequestInput(f"{header} contains {problem}", source=source)
        if rule.type == "string":
            pattern = self._patterns.get(rule.header)
            if pattern is not None and not pattern.fullmatch(value):
                raise BadRequestInput(
                    f"{header} value {value!r} does not match {pattern.pattern}",
                    source=source,
                )
            return value
        if rule.type == "boolean":
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise BadRequestInput(f"{header} must be true or false, got {value!r}",
                                  source=source)
        number: float
        try:
            number = float(value)
        except ValueError:
            kind = "an integer" if rule.type == "integer" else "a number"
            raise BadRequestInput(f"{header} must be {kind}, got {value!r}",
                                  source=source) from None
        if not math.isfinite(number):
            raise BadRequestInput(f"{header} must be a finite number, got {value!r}",
                                  source=source)
        if rule.type == "integer" and not number.is_integer():
            # Weights feed flagd's fractional, which takes whole numbers only; 12.5 would make
            # the evaluation fail and serve the default variant silently. Refuse it instead.
            raise BadRequestInput(f"{header} must be a whole number, got {value!r}",
                                  source=source)
        if rule.minimum is not None and number < rule.minimum:
            raise BadRequestInput(
                f"{header} must be at least {_fmt(rule.minimum)}, got {value}",
                source=source,
            )
        if rule.maximum is not None and number > rule.maximum:
            raise BadRequestInput(
                f"{header} must be at most {_fmt(rule.maximum)}, got {value}",
                source=source,
            )
        if number.is_integer():
            return int(number)  # `30` and `30.0` are the same weight to flagd
        return number


def _utf8(rule: HeaderRule, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestInput(
            f"header {rule.header} is not valid UTF-8 (byte {exc.start}: {exc.reason})",
            source=rule.header,
        ) from None


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
