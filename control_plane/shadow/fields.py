"""Field paths of a JSON body, and the patterns (`ignoreFields`, `redactFields`) that match them.

A path is the tuple of keys and indexes from the root (`("choices", 0, "text")`), printed as
`choices[0].text`; the whole body of a non-JSON answer is the one field `$body`, and the root
of a JSON scalar is `$`. A pattern is the same dotted form where `*` (a key) or `[*]` (an
index) match anything; a pattern also matches everything below what it names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["BODY_FIELD", "ROOT_FIELD", "FieldPath", "Patterns", "format_field"]

FieldPath = tuple[str | int, ...]
BODY_FIELD = "$body"
ROOT_FIELD = "$"
_PLAIN = re.compile(r"^[A-Za-z0-9_$@-]+$")
_TOKEN = re.compile(r"\[(\*|\d+)\]|\.?([^.\[\]]+)")
_ANY = object()


def format_field(path: FieldPath) -> str:
    if not path:
        return ROOT_FIELD
    text = ""
    for step in path:
        if isinstance(step, int):
            text += f"[{step}]"
        elif _PLAIN.match(step):
            text += f".{step}" if text else step
        else:
            text += f"[{step!r}]"
    return text


@lru_cache(maxsize=512)
def _parse(pattern: str) -> tuple[object, ...]:
    steps: list[object] = []
    for index, name in _TOKEN.findall(pattern):
        if index:
            steps.append(_ANY if index == "*" else int(index))
        else:
            steps.append(_ANY if name == "*" else name)
    return tuple(steps)


class Patterns:
    """A set of field patterns; `matches(path)` when one names the path or an ancestor."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._parsed = tuple(_parse(pattern) for pattern in patterns)

    def __bool__(self) -> bool:
        return bool(self._parsed)

    def matches(self, path: FieldPath) -> bool:
        for steps in self._parsed:
            if len(steps) <= len(path) and all(
                step is _ANY or step == part for step, part in zip(steps, path, strict=False)
            ):
                return True
        return False
