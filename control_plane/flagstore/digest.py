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
from itertools import compress
from operator import is_not
from typing import Any

from control_plane.flagstore.flagset import DEFAULT_SET

__all__ = ["ContentHasher", "MemberTexts", "canonical_json"]

#: The canonical JSON text of a value: sorted keys, no spaces, UTF-8 as is.
canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_UNSET = object()  # no definition is this object: its member is written


class MemberTexts:
    """The canonical JSON of a flag mapping, writing only members it has not written before.

    `"key":<canonical definition>` per key is kept while the key's definition is the same
    object (the store hands unchanged flags on as they are; never change one in place), and
    the sorted keys while the keys stay the same. The version recorder keeps one too.

    Finding the changed members is done with C-level maps (identity of each value against the
    last call's), so at 10,000 flags an edit of one costs about a millisecond, not a Python
    loop over every flag."""

    def __init__(self) -> None:
        self.keys: frozenset[str] = frozenset()
        self.order: list[str] = []
        #: The definitions and member texts of the last call, in `order`.
        self.values: list[Any] = []
        self.parts: list[str] = []
        #: Members serialised (not answered from the cache) since created, for tests.
        self.encoded = 0

    def text(self, flags: Mapping[str, Any]) -> str:
        """`canonical_json(dict(flags))`, from the cache for every unchanged member."""
        if flags.keys() != self.keys:
            known = dict(zip(self.order, zip(self.values, self.parts, strict=True), strict=True))
            self.keys = frozenset(flags)
            self.order = sorted(self.keys)
            kept = [known.get(key, (_UNSET, "")) for key in self.order]
            self.values = [value for value, _ in kept]
            self.parts = [part for _, part in kept]
        values = list(map(flags.__getitem__, self.order))
        changed = list(compress(range(len(values)), map(is_not, values, self.values)))
        for index in changed:
            key = self.order[index]
            self.parts[index] = f"{canonical_json(key)}:{canonical_json(values[index])}"
        self.encoded += len(changed)
        self.values = values
        return "{" + ",".join(self.parts) + "}"


class ContentHasher:
    """content_hash(flags, evaluators, sets=..., file_metadata=...) with per-flag reuse."""

    def __init__(self) -> None:
        self._default = MemberTexts()
        self._sets: dict[str, MemberTexts] = {}

    @property
    def encoded(self) -> int:
        """Flags serialised (new or edited, not answered from the cache) since created."""
        return self._default.encoded + sum(members.encoded for members in self._sets.values())

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
        parts = ['{"$evaluators":', canonical_json(dict(evaluators or {}))]
        shown = {name: dict(meta) for name, meta in (file_metadata or {}).items() if meta}
        if file_metadata:
            parts += [',"fileMetadata":', canonical_json(shown)]
        parts += [',"flags":', self._default.text(flags)]
        named = {
            set_id: members for set_id, members in (sets or {}).items() if set_id != DEFAULT_SET
        }
        if named:
            for gone in self._sets.keys() - named.keys():
                del self._sets[gone]
            texts = [
                canonical_json(set_id)
                + ":"
                + self._sets.setdefault(set_id, MemberTexts()).text(named[set_id])
                for set_id in sorted(named)
            ]
            parts += [',"sets":{', ",".join(texts), "}"]
        parts.append("}")
        return hashlib.sha256("".join(parts).encode()).hexdigest()
