"""Checking untrusted text and JSON once, where it enters: every string is encodable and sane.

A lone UTF-16 surrogate (`"\\ud800"`) is valid JSON and a valid Python `str`, yet it cannot be
encoded as UTF-8: `mmh3.hash()` (flagd's fractional bucketing) segfaults on it and databases
refuse it. NUL ends C strings and PostgreSQL refuses it in text. So every string that enters
from a request body, a header, the path or the query is checked here and refused with a
BadRequestInput naming where it was, before any of it reaches an evaluator or a database.

Limits: JSON nesting at most `MAX_JSON_DEPTH` levels (deeper input would exhaust Python's
recursion limit in whatever walks it next); NaN and Infinity (not JSON) are refused.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from control_plane.errors import BadRequestInput

__all__ = ["MAX_JSON_DEPTH", "check_json", "check_text", "loads_checked", "unsafe_character"]

#: Deepest JSON nesting accepted in any request body.
MAX_JSON_DEPTH = 400

# C0 controls except TAB, LF and CR (which text such as a description may hold), DEL, C1
# controls, and surrogates (only lone ones can exist in a str; a pair decodes to one character).
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Header values and identifiers: no control character at all.
_UNSAFE_STRICT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def unsafe_character(text: str, *, strict: bool = False) -> str | None:
    """A description of the first unsafe character of `text`, or None when it has none."""
    match = (_UNSAFE_STRICT if strict else _UNSAFE).search(text)
    if match is None:
        return None
    char = match.group()
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        kind = "a lone UTF-16 surrogate"
    elif code == 0:
        kind = "a NUL character"
    else:
        kind = "a control character"
    return f"{kind} (U+{code:04X}) at position {match.start()}"


def check_text(text: str, *, source: str, strict: bool = False) -> str:
    """`text` itself, or BadRequestInput naming `source` when it holds an unsafe character."""
    problem = unsafe_character(text, strict=strict)
    if problem is not None:
        raise BadRequestInput(f"{source} contains {problem}", source=source)
    return text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def loads_checked(raw: bytes, *, source: str = "body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse `raw` as UTF-8 JSON and check every key and string in it.

    BadRequestInput (source: `source`, or the path of the offending value such as
    `body.context.targetingKey`) for bytes that are not UTF-8, text that is not JSON, nesting
    deeper than `max_depth`, or a string holding a lone surrogate or a control character.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestInput(
            f"{source} is not valid UTF-8 (byte {exc.start}: {exc.reason})", source=source
        ) from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadRequestInput(
            f"{source} is nested deeper than {max_depth} levels", source=source
        ) from None
    except ValueError as exc:
        raise BadRequestInput(f"{source} is not valid JSON: {exc}", source=source) from None
    check_json(data, source=source, max_depth=max_depth)
    return data


def check_json(data: Any, *, source: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Walk parsed JSON (iteratively: no recursion to exhaust) and check depth and strings."""
    stack: list[tuple[Any, str, int]] = [(data, source, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            check_text(value, source=where)
        elif isinstance(value, float) and not math.isfinite(value):
            # 1e999 parses as inf: as unusable as NaN, and no JSON encoder can answer it back.
            raise BadRequestInput(f"{where} is a number out of range", source=where)
        elif isinstance(value, dict | list):
            if depth >= max_depth:
                raise BadRequestInput(
                    f"{source} is nested deeper than {max_depth} levels", source=where
                )
            if isinstance(value, dict):
                for key, item in value.items():
                    check_text(key, source=f"{where} key {_short(key)}")
                    stack.append((item, f"{where}.{_component(key)}", depth + 1))
            else:
                stack.extend(
                    (item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)
                )


def _component(key: str) -> str:
    """A key as a path component, cut short: the path names the place, not the whole key."""
    return key if len(key) <= 64 else key[:61] + "..."


def _short(key: str) -> str:
    """A key, printable and short, for an error message (the key itself may be the problem)."""
    return ascii(key[:40])
