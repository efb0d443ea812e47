"""JSON columns whose text the caller wrote already: `JsonText` is stored as its `text`.

SQLAlchemy serialises a JSON column's value with one `json.dumps` of the whole object when the
row is flushed. A flag set version's document at 10,000 flags is a 1.5 MB text, and that one C
call took 45 ms of a one-flag edit with the interpreter lock held (every decision waited). The
version recorder assembles the text from per-flag texts it keeps between versions and hands in
a `JsonText`; the engine's serializer (`dump_json`, set in `Database.from_url`) stores that text.
The stored JSON is the same document, so readers and migrations see no difference; an engine
without this serializer still stores a `JsonText` correctly (it is a dict), only slower.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["JsonText", "dump_json"]


class JsonText(dict[str, Any]):
    """A JSON object and its text (which must encode exactly these members)."""

    __slots__ = ("text",)

    def __init__(self, members: Mapping[str, Any], text: str) -> None:
        super().__init__(members)
        self.text = text


def dump_json(value: Any) -> str:
    """The engine's JSON serializer: a JsonText's own text, else `json.dumps`."""
    if isinstance(value, JsonText):
        return value.text
    return json.dumps(value)
