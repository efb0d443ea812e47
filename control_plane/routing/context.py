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
from dataclasses import dataclass
from typing import Any

from control_plane.errors import BadRequestInput
from control_plane.json_input import unsafe_character
from control_plane.routing.tester_tokens import InvalidTesterToken, TesterTokens
from control_plane.settings import HeaderRule

__all__ = ["RESERVED_ATTRIBUTES", "TESTER_TOKEN_HEADER", "ContextMapper", "RequestContext"]

#: The header carrying a tester token (see control_plane.routing.tester_tokens).
TESTER_TOKEN_HEADER = "x-tester-token"  # noqa: S105 - a header name, not a secret

#: Attributes flagd sets itself; a request may not supply them.
RESERVED_ATTRIBUTES = frozenset({"$flagd"})
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_MAX_BODY_ATTRIBUTES = 64


@dataclass(slots=True)
class RequestContext:
    """What one request says about itself, by the header rules (and its body's `context`)."""

    targeting_key: str | None
    attributes: dict[str, Any]
    #: Subject of a valid tester token, when the request carried one.
    tester: str | None = None
    #: Attributes dropped, each with why (a pin sent without a valid tester token).
    ignored: list[str] | None = None
    #: Why the tester token was refused (kept for pins found later, in the body).
    token_problem: str | None = None

    def ignore(self, what: str, why: str) -> None:
        if self.ignored is None:
            self.ignored = []
        self.ignored.append(f"{what} ({why})")


class ContextMapper:
    """Compiled header rules; `from_raw_headers` is on the hot path, so it does little work.

    Rules marked `tester_only` (pins) take effect only with a valid `x-tester-token`, checked
    by `tester_tokens`; without one (or with no tester token key configured) they are ignored
    and the request context says why.
    """

    def __init__(
        self,
        rules: Iterable[HeaderRule],
        *,
        max_header_bytes: int = 4096,
        tester_tokens: TesterTokens | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.tester_tokens = tester_tokens
        self._patterns = {
            rule.header: re.compile(rule.pattern) for rule in self.rules if rule.pattern
        }
        self._by_header_bytes: dict[bytes, HeaderRule | None] = {
            rule.header.encode(): rule for rule in self.rules
        }
        self._by_header_bytes[TESTER_TOKEN_HEADER.encode()] = None  # the token itself
        self._by_attribute = {rule.attribute: rule for rule in self.rules}
        #: The longest value each header may have: its rule's bound within the global one.
        self._limits = {rule.header: min(rule.max_length, max_header_bytes) for rule in self.rules}

    def from_headers(
        self, headers: Mapping[str, str], flag_key: str | None = None
    ) -> RequestContext:
        """The request context from a case-insensitive header mapping of text values."""
        pairs = [
            (rule, raw) for rule in self.rules if (raw := headers.get(rule.header)) is not None
        ]
        return self._collect(pairs, headers.get(TESTER_TOKEN_HEADER), flag_key)

    def from_raw_headers(
        self, raw_headers: Iterable[tuple[bytes, bytes]], flag_key: str | None = None
    ) -> RequestContext:
        """The same as `from_headers`, straight from ASGI's (lower-cased) header pairs."""
        by_header = self._by_header_bytes
        pairs: list[tuple[HeaderRule, str]] = []
        token: str | None = None
        for name, raw in raw_headers:
            if name in by_header:
                rule = by_header[name]
                if rule is None:
                    token = raw.decode("latin-1")  # base64url and dots: ASCII when valid
                else:
                    pairs.append((rule, _utf8(rule, raw)))
        return self._collect(pairs, token, flag_key)

    def _collect(
        self, values: Iterable[tuple[HeaderRule, str]], token: str | None, flag_key: str | None
    ) -> RequestContext:
        """Convert each (rule, header text) and file it as targeting key or attribute."""
        context = RequestContext(None, {})
        if token is not None:
            self._check_token(context, token.strip(), flag_key)
        for rule, text in values:
            value = self._convert(rule, text)
            if rule.tester_only and context.tester is None:
                context.ignore(rule.header, context.token_problem or "no tester token")
            elif rule.attribute == "targetingKey":
                context.targeting_key = value
            else:
                context.attributes[rule.attribute] = value
        return context

    def _check_token(self, context: RequestContext, token: str, flag_key: str | None) -> None:
        if self.tester_tokens is None:
            context.token_problem = "tester tokens are not enabled"  # noqa: S105 - a reason
            return
        try:
            context.tester = self.tester_tokens.verify(token, flag_key).subject
        except InvalidTesterToken as exc:
            context.token_problem = f"tester token {exc.reason}"

    def merge_body_context(self, context: RequestContext, body: Any) -> None:
        """Add attributes from a JSON body's `context` object; header values win on conflict."""
        if body is None:
            return
        if not isinstance(body, Mapping):
            raise BadRequestInput("the body must be a JSON object", source="body")
        given = body.get("context", {})
        if not isinstance(given, Mapping):
            raise BadRequestInput("body.context must be a JSON object", source="body.context")
        if len(given) > _MAX_BODY_ATTRIBUTES:
            raise BadRequestInput(
                f"body.context has {len(given)} attributes; at most {_MAX_BODY_ATTRIBUTES}",
                source="body.context",
            )
        for key, value in given.items():
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
                context.targeting_key = context.targeting_key or value
            elif key not in context.attributes:
                rule = self._by_attribute.get(key)
                if rule is None:
                    context.attributes[key] = value
                    continue
                # A body attribute that a header rule also fills obeys that rule's type and
                # bounds (`canary-weight: 12.5` is refused here just as the header is), and a
                # pin needs a tester token here too.
                checked = self._check_body(rule, where, value)
                if rule.tester_only and context.tester is None:
                    context.ignore(where, context.token_problem or "no tester token")
                else:
                    context.attributes[key] = checked

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
        """The typed value of `raw` by `rule`; errors name `source` (default: the header).

        On the path of every request: the error texts are built only when there is an error."""
        limit = self._limits[rule.header]
        if len(raw) > limit:
            raise _refusal(
                rule, source, f"is {len(raw)} characters long; at most {limit} are allowed"
            )
        value = raw.strip()
        problem = unsafe_character(value, strict=True)
        if problem is not None:
            raise _refusal(rule, source, f"contains {problem}")
        kind = rule.type
        if kind == "string":
            pattern = self._patterns.get(rule.header)
            if pattern is not None and not pattern.fullmatch(value):
                raise _refusal(rule, source, f"value {value!r} does not match {pattern.pattern}")
            return value
        if kind == "boolean":
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise _refusal(rule, source, f"must be true or false, got {value!r}")
        number: float
        try:
            number = float(value)
        except ValueError:
            expected = "an integer" if kind == "integer" else "a number"
            raise _refusal(rule, source, f"must be {expected}, got {value!r}") from None
        if not math.isfinite(number):
            raise _refusal(rule, source, f"must be a finite number, got {value!r}")
        if kind == "integer" and not number.is_integer():
            # Weights feed flagd's fractional, which takes whole numbers only; 12.5 would make
            # the evaluation fail and serve the default variant silently. Refuse it instead.
            raise _refusal(rule, source, f"must be a whole number, got {value!r}")
        if rule.minimum is not None and number < rule.minimum:
            raise _refusal(rule, source, f"must be at least {_fmt(rule.minimum)}, got {value}")
        if rule.maximum is not None and number > rule.maximum:
            raise _refusal(rule, source, f"must be at most {_fmt(rule.maximum)}, got {value}")
        if number.is_integer():
            return int(number)  # `30` and `30.0` are the same weight to flagd
        return number


def _refusal(rule: HeaderRule, source: str | None, problem: str) -> BadRequestInput:
    """The error for a value that breaks `rule`, naming its header or `source` (a body path)."""
    if source is None:
        return BadRequestInput(f"header {rule.header} {problem}", source=rule.header)
    return BadRequestInput(f"{source} {problem}", source=source)


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
        return all(isinstance(k, str) and _is_context_value(v, depth + 1) for k, v in value.items())
    return False
