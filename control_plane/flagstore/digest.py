"""The content hash of a flag set, built from per-flag canonical JSON kept between reloads.

`flagset.content_hash` serialises every flag on every call: at 10,000 flags that is the largest
single cost of a reload after validation. `ContentHasher.digest` returns the same digest (the
same canonical text, hashed the same way) but serialises only flags it has not seen: a flag's
canonical text is kept while its definition object stays the same (the incremental reader and
partial acceptance hand unchanged flags on as the same objects), and the sorted key order while
the keys stay the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from control_plane.flagstore.flagset import DEFAULT_SET

__all__ = ["ContentHasher"]

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


class _Members:
    """`"key":<canonical definition>` per key of one flag mapping, and the sorted keys."""

    def __init__(self) -> None:
        self.pairs: dict[str, tuple[Any, str]] = {}
        self.order: list[str] = []
        self.keys: frozenset[str] = frozenset()

    def text(self, flags: Mapping[str, Any]) -> str:
        if flags.keys() != self.keys:
            self.keys = frozenset(flags)
            self.order = sorted(self.keys)
            self.pairs = {key: value for key, value in self.pairs.items() if key in self.keys}
        pairs = self.pairs
        parts = []
        for key in self.order:
            definition = flags[key]
            cached = pairs.get(key)
            if cached is None or cached[0] is not definition:
                cached = pairs[key] = (definition, f"{_CANONICAL(key)}:{_CANONICAL(definition)}")
            parts.append(cached[1])
        return "{" + ",".join(parts) + "}"


class ContentHasher:
    """content_hash(flags, evaluators, sets=..., file_metadata=...) with per-flag reuse."""

    def __init__(self) -> None:
        self._default = _Members()
        self._sets: dict[str, _Members] = {}

    def digest(
        self,
        flags: Mapping[str, Any],
        evaluators: Mapping[str, Any] | None = None,
        *,
        sets: Mapping[str, Mapping[str, Any]] | None = None,
        file_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str:
        # The text json.dumps(canonical, sort_keys=True, ...) writes in flagset.content_hash:
        # top-level members in sorted order ($evaluators, fileMetadata, flags, sets).
        parts = ['{"$evaluators":', _CANONICAL(dict(evaluators or {}))]
        shown = {name: dict(meta) for name, meta in (file_metadata or {}).items() if meta}
        if file_metadata:
            parts += [',"fileMetadata":', _CANONICAL(shown)]
        parts += [',"flags":', self._default.text(flags)]
        named = {
            set_id: members for set_id, members in (sets or {}).items() if set_id != DEFAULT_SET
        }
        if named:
            for gone in self._sets.keys() - named.keys():
                del self._sets[gone]
            texts = [
                _CANONICAL(set_id)
                + ":"
                + self._sets.setdefault(set_id, _Members()).text(named[set_id])
                for set_id in sorted(named)
            ]
            parts += [',"sets":{', ",".join(texts), "}"]
        parts.append("}")
        return hashlib.sha256("".join(parts).encode()).hexdigest()
