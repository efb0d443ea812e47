"""Line and column of every value in a JSON text, and the keys an object repeats.

`json.loads` gives the data but forgets where each value was; an operator needs the line. This
scanner walks a text that `json.loads` already accepted and records, for each path, where its
value starts. It also reports duplicate keys, which `json.loads` silently resolves to the last.
"""

from __future__ import annotations

import bisect
import re
from contextlib import suppress
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, not in typeshed

from control_plane.flagstore.issues import Location

__all__ = ["JsonPositions", "scan_json"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")


class JsonPositions:
    """path -> (line, column), both 1-based; plus the duplicate keys found."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.positions: dict[Location, tuple[int, int]] = {}
        self.duplicates: list[tuple[Location, int, int]] = []

    def line_column(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def _skip(self, index: int) -> int:
        match = _WHITESPACE.match(self._text, index)
        return match.end() if match else index

    def scan(self) -> None:
        self._value(self._skip(0), ())

    def _value(self, index: int, path: Location) -> int:
        text = self._text
        self.positions[path] = self.line_column(index)
        char = text[index]
        if char == "{":
            return self._object(index + 1, path)
        if char == "[":
            return self._array(index + 1, path)
        if char == '"':
            return int(scanstring(text, index + 1)[1])
        match = _NUMBER.match(text, index)
        if match and match.end() > index:
            return match.end()
        for literal in _LITERALS:
            if text.startswith(literal, index):
                return index + len(literal)
        raise ValueError(f"unexpected character {char!r} at offset {index}")

    def _object(self, index: int, path: Location) -> int:
        text = self._text
        seen: set[str] = set()
        index = self._skip(index)
        if text[index] == "}":
            return index + 1
        while True:
            key_at = index
            key, index = scanstring(text, index + 1)
            if key in seen:
                self.duplicates.append(((*path, key), *self.line_column(key_at)))
            seen.add(key)
            index = self._skip(index)  # the colon
            index = self._skip(index + 1)
            index = self._skip(self._value(index, (*path, key)))
            if text[index] == "}":
                return index + 1
            index = self._skip(index + 1)  # the comma

    def _array(self, index: int, path: Location) -> int:
        text = self._text
        index = self._skip(index)
        if text[index] == "]":
            return index + 1
        position = 0
        while True:
            index = self._skip(self._value(index, (*path, position)))
            position += 1
            if text[index] == "]":
                return index + 1
            index = self._skip(index + 1)


def scan_json(text: str) -> JsonPositions:
    """Positions of a JSON text that `json.loads` accepts (best effort: stops at a surprise)."""
    positions = JsonPositions(text)
    # Positions found before a surprise still help; the data itself came from json.loads.
    with suppress(ValueError, IndexError, RecursionError):
        positions.scan()
    return positions
