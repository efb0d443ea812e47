"""The JSON text of the documents the sync service sends, written flag by flag.

`json.dumps(document, sort_keys=True, ensure_ascii=False)` of a 10,000-flag document is one C
call of about 50 ms that holds the interpreter lock: while replicas were connected, every edit
stalled every decision of the process for that long, on the sync server's thread. The same
text is written here member by member (JSON without indentation is the concatenation of its
members' texts), so no single call holds the lock for long, and for the default view (what
replicas ask for unless they send a selector) each flag's text is kept while its definition is
the same object from the same file and the files' metadata is unchanged: an edit of one flag
serialises one flag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from control_plane.flagstore import FlagSet

__all__ = ["DefaultViewTexts", "dumps", "dumps_by_member"]


def dumps(value: Any) -> str:
    """The text the sync service sends for `value` (sorted keys, UTF-8 as is)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def dumps_by_member(document: Mapping[str, Any], flags_text: str | None = None) -> str:
    """`dumps(document)`, its `flags` written one flag at a time (or given as `flags_text`)."""
    parts = []
    for name in sorted(document):
        if name == "flags":
            text = flags_text
            if text is None:
                flags = document["flags"]
                text = _object(dumps(key) + ": " + dumps(flags[key]) for key in sorted(flags))
        else:
            text = dumps(document[name])
        parts.append(dumps(name) + ": " + text)
    return _object(parts)


class DefaultViewTexts:
    """`dumps(flag_set.to_flagd())`, serialising only the flags that changed since the last."""

    def __init__(self) -> None:
        #: key -> (definition, its file, `"key": <merged flag>`) of the last flag set
        self._flags: dict[str, tuple[Any, str | None, str]] = {}
        self._metadata: dict[str, dict[str, Any]] | None = None
        #: Flags serialised (not answered from the cache) since created, for tests.
        self.encoded = 0

    def text(self, flag_set: FlagSet) -> str:
        metadata = {name: dict(meta) for name, meta in flag_set.file_metadata.items()}
        if metadata != self._metadata:  # every inheriting flag may read differently
            self._flags, self._metadata = {}, metadata
        known, flags, sources = self._flags, flag_set.flags, flag_set.sources
        kept: dict[str, tuple[Any, str | None, str]] = {}
        parts = []
        for key in sorted(flags):
            definition, source = flags[key], sources.get(key)
            found = known.get(key)
            if found is None or found[0] is not definition or found[1] != source:
                self.encoded += 1
                found = (definition, source, dumps(key) + ": " + dumps(flag_set.merged_view(key)))
            kept[key] = found
            parts.append(found[2])
        self._flags = kept
        return dumps_by_member(flag_set.document({}), _object(parts))


def _object(members: Any) -> str:
    return "{" + ", ".join(members) + "}"
