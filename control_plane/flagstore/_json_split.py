"""A JSON flag file split into its top-level members and flags, each with where its text is.

The store re-reads a file whenever one byte of it changes, and files commonly hold hundreds of
flags. `split_json` parses a file flag by flag (each value by the C decoder) and remembers each
flag's text span, so a later version of the file that differs only inside one flag's span is
read by decoding that flag alone (`resplit`). Each flag keeps its exact text (`flag_texts`):
equal texts are equal definitions, with no doubt about `1` against `true` or `1.0`.

Only the common shape is handled: an object whose `flags` member is an object, no duplicate key
anywhere, no NaN or Infinity. Anything else returns None and the caller reads the file the
general way (documents.parse_flag_file), which reports every problem with its line.

Line numbers are found lazily (`LazyPositions`): the general scanner runs over the one flag or
member an issue sits in, only when an issue needs its line.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, not in typeshed
from typing import Any

from control_plane.flagstore._json_lines import JsonPositions
from control_plane.flagstore.issues import Location

__all__ = ["JsonSplit", "LazyPositions", "resplit", "split_json"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _Unusual(Exception):
    """The text is not of the common shape: the caller reads it the general way."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Unusual("a duplicate key")
    return result


def _constant(token: str) -> Any:
    raise _Unusual(token)


_DECODE = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant).raw_decode


@dataclass
class JsonSplit:
    """One JSON flag document: data, and the span of each flag's and member's value."""

    text: str
    data: dict[str, Any]
    #: flag key -> (start, end) of its value in `text`
    flag_spans: dict[str, tuple[int, int]]
    #: top-level member -> (start, end) of its value
    member_spans: dict[str, tuple[int, int]]
    top: int  # where the top-level object starts
    _texts: dict[str, str] | None = field(default=None, repr=False)

    @property
    def flag_texts(self) -> dict[str, str]:
        """flag key -> the exact text of its value (the flag's identity)."""
        if self._texts is None:
            text = self.text
            self._texts = {key: text[start:end] for key, (start, end) in self.flag_spans.items()}
        return self._texts

    def positions(self) -> LazyPositions:
        return LazyPositions(self)


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    return match.end() if match else index


def _expect(text: str, index: int, char: str) -> int:
    if index >= len(text) or text[index] != char:
        raise _Unusual(f"expected {char!r}")
    return index + 1


def _members(text: str, index: int) -> Generator[tuple[str, int], int, None]:
    """(key, where its value starts) of the object whose `{` is at `index`; the caller decodes
    each value and sends back where it ended."""
    index = _skip(text, _expect(text, index, "{"))
    if index < len(text) and text[index] == "}":
        return
    while True:
        index = _expect(text, index, '"')
        key, index = scanstring(text, index)
        index = _skip(text, _expect(text, _skip(text, index), ":"))
        end = yield key, index
        index = _skip(text, end)
        if index < len(text) and text[index] == "}":
            return
        index = _skip(text, _expect(text, index, ","))


def _object(text: str, index: int) -> tuple[dict[str, Any], dict[str, tuple[int, int]], int]:
    """Decode the object at `index` member by member: (data, spans, end)."""
    data: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    members = _members(text, index)
    end = index
    try:
        key, start = next(members)
        while True:
            if key in data:
                raise _Unusual("a duplicate key")
            value, end = _DECODE(text, start)
            data[key] = value
            spans[key] = (start, end)
            key, start = members.send(end)
    except StopIteration:
        pass
    closing = _skip(text, end if spans else _skip(text, index + 1))
    return data, spans, _expect(text, closing, "}")


def split_json(text: str) -> JsonSplit | None:
    """`text` split flag by flag, or None when it is not of the common shape (see above)."""
    try:
        top = _skip(text, 0)
        data: dict[str, Any] = {}
        member_spans: dict[str, tuple[int, int]] = {}
        flag_spans: dict[str, tuple[int, int]] = {}
        members = _members(text, top)
        end = top
        try:
            key, start = next(members)
            while True:
                if key in data:
                    raise _Unusual("a duplicate key")
                if key == "flags":
                    value, flag_spans, end = _object(text, start)
                else:
                    value, end = _DECODE(text, start)
                data[key] = value
                member_spans[key] = (start, end)
                key, start = members.send(end)
        except StopIteration:
            pass
        closing = _skip(text, end if member_spans else _skip(text, top + 1))
        if _skip(text, _expect(text, closing, "}")) != len(text) or "flags" not in data:
            return None
    except (_Unusual, ValueError, IndexError, RecursionError):
        return None
    return JsonSplit(text, data, flag_spans, member_spans, top)


def _common_prefix(a: str, b: str) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:  # the longest prefix is in [low, high]; slices compare as memcmp
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: str, b: str, limit: int) -> int:
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle :] == b[len(b) - middle :]:
            low = middle
        else:
            high = middle - 1
    return low


def resplit(previous: JsonSplit, text: str) -> JsonSplit | None:
    """`text` split by decoding only the flag it changed from `previous`, or None when the
    change is not confined to one flag's value (then split the whole text)."""
    old = previous.text
    prefix = _common_prefix(old, text)
    suffix = _common_suffix(old, text, min(len(old), len(text)) - prefix)
    changed_end = len(old) - suffix  # the change is old[prefix:changed_end]
    hit = None
    for key, (start, end) in previous.flag_spans.items():
        if start <= prefix and changed_end <= end:
            hit = key
            break
        if start > prefix:
            break
    if hit is None:
        return None
    start, end = previous.flag_spans[hit]
    delta = len(text) - len(old)
    try:
        value, new_end = _DECODE(text, start)
    except (_Unusual, ValueError, IndexError, RecursionError):
        return None
    if new_end != end + delta:
        return None  # the change reached past the flag's value
    flag_spans: dict[str, tuple[int, int]] = {}
    for key, (first, last) in previous.flag_spans.items():
        if first > start:
            flag_spans[key] = (first + delta, last + delta)
        elif key == hit:
            flag_spans[key] = (start, new_end)
        else:
            flag_spans[key] = (first, last)
    member_spans = {
        key: (first, last + delta)
        if first <= start < last
        else ((first + delta, last + delta) if first > start else (first, last))
        for key, (first, last) in previous.member_spans.items()
    }
    flags = dict(previous.data["flags"])
    flags[hit] = value
    data = dict(previous.data)
    data["flags"] = flags
    split = JsonSplit(text, data, flag_spans, member_spans, previous.top)
    if previous._texts is not None:
        texts = dict(previous._texts)
        texts[hit] = text[start:new_end]
        split._texts = texts
    return split


class LazyPositions(Mapping[Location, tuple[int, int]]):
    """path -> (line, column) of a split document, as scan_json finds them, scanned per flag
    (or top-level member) when first asked."""

    def __init__(self, split: JsonSplit) -> None:
        self._split = split
        self._scanner: JsonPositions | None = None
        self._scanned: set[Location] = set()

    def _positions(self) -> JsonPositions:
        if self._scanner is None:
            self._scanner = JsonPositions(self._split.text)
        return self._scanner

    def _scan(self, root: Location, start: int) -> None:
        if root in self._scanned:
            return
        self._scanned.add(root)
        with contextlib.suppress(ValueError, IndexError, RecursionError):  # as scan_json
            self._positions()._value(start, root)

    def get(self, location: Location, default: Any = None) -> Any:
        split = self._split
        if not location:
            return self._positions().line_column(split.top)
        if location[0] == "flags" and len(location) > 1:
            span = split.flag_spans.get(location[1])  # type: ignore[arg-type]
            if span is None:
                return default
            self._scan(location[:2], span[0])
        else:
            span = split.member_spans.get(location[0])  # type: ignore[arg-type]
            if span is None:
                return default
            if len(location) == 1:
                return self._positions().line_column(span[0])
            self._scan(location[:1], span[0])
        return self._positions().positions.get(location, default)

    def __getitem__(self, location: Location) -> tuple[int, int]:
        found = self.get(location)
        if found is None:
            raise KeyError(location)
        return found  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Location]:
        return iter(())  # only looked up, never listed

    def __len__(self) -> int:
        return 1  # truthy: `locate` consults it

    def __bool__(self) -> bool:
        return True
