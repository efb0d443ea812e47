"""Refuse flag documents holding text that cannot be stored or evaluated safely.

A lone UTF-16 surrogate (`"\\ud800"`) and NUL (`"\\u0000"`) are valid JSON escapes, so a flag
file or an API body can carry them; but PostgreSQL refuses NUL in JSON and text, a surrogate
cannot be encoded as UTF-8 (the content hash, the database and `mmh3` all fail on it), and
control characters in a key make file, log and URL output ambiguous. So every object key and
string value of a flag document is checked before it is merged, hashed or recorded:

- keys (flag keys, variant names, evaluator names, any member name): no control character at
  all (C0, DEL, C1) and no surrogate;
- string values: no surrogate and no control character except TAB, LF and CR, which text such
  as a description may hold.

The same rule as the HTTP edge's check of request bodies (control_plane.json_input); this one
runs on the file watcher's path too, and reports issues with a file, JSON path and line.
"""

from __future__ import annotations

import re
from typing import Any

from control_plane.flagstore.issues import Location, ValidationIssue

__all__ = ["MAX_TEXT_ISSUES", "check_text_values", "find_unsafe_text", "unsafe_character"]

#: At most this many text issues are reported per document (the first ones, in document order).
MAX_TEXT_ISSUES = 20

_UNSAFE_VALUE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_UNSAFE_KEY = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def unsafe_character(text: str, *, key: bool = False) -> str | None:
    """What the first unsafe character of `text` is and where, or None when there is none."""
    match = (_UNSAFE_KEY if key else _UNSAFE_VALUE).search(text)
    if match is None:
        return None
    code = ord(match.group())
    if 0xD800 <= code <= 0xDFFF:
        kind = "a lone UTF-16 surrogate"
    elif code == 0:
        kind = "a NUL character"
    else:
        kind = "a control character"
    return f"{kind} (U+{code:04X}) at position {match.start()}"


def find_unsafe_text(data: Any, *, limit: int = MAX_TEXT_ISSUES) -> list[tuple[Location, str]]:
    """(location, problem) for each unsafe key or string in `data`, in document order.

    Iterative, so a deeply nested document cannot exhaust the recursion limit here.
    """
    found: list[tuple[Location, str]] = []
    stack: list[tuple[Location, Any]] = [((), data)]
    while stack and len(found) < limit:
        location, value = stack.pop()
        if isinstance(value, str):
            problem = unsafe_character(value)
            if problem is not None:
                found.append((location, f"the string contains {problem}"))
        elif isinstance(value, dict):
            children: list[tuple[Location, Any]] = []
            for name, child in value.items():
                if isinstance(name, str):
                    problem = unsafe_character(name, key=True)
                    if problem is not None:
                        found.append(((*location, name), f"the key contains {problem}"))
                        continue
                children.append(((*location, name), child))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([((*location, index), item) for index, item in enumerate(value)]))
    return found[:limit]


def check_text_values(data: Any, issues: list[ValidationIssue]) -> None:
    """Append an error issue for each unsafe key or string value in the parsed document."""
    for location, problem in find_unsafe_text(data):
        issues.append(
            ValidationIssue.at(
                location,
                f"{problem}; flag files may not hold NUL, other control characters or "
                "lone surrogates (they cannot be stored or hashed); remove it",
            )
        )
