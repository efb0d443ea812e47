"""Sync selectors: which part of the flag set a replica asked for.

flagd replicas may send a selector (the `flagd-selector` gRPC header, or the deprecated
`selector` request field). We accept:

- `""`: the whole flag set;
- `source=<file>`: the flags defined in one flag file (`routing.flagd.json`, or just `routing`);
- `flagSetId=<id>`: the flags whose own metadata carries that `flagSetId`;
- a bare `<file>` (no `=`), which is how flagd's older selectors named a source.

Terms may be combined with commas; a flag must match all of them. A selector that matches no
flag is valid (the replica gets an empty flag set and later flags as they appear); a malformed
selector or an unknown key is refused, naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.errors import ControlPlaneError
from control_plane.flagstore import FlagSet
from control_plane.flagstore.loader import FLAG_FILE_PATTERNS

__all__ = ["Selector", "SelectorError"]

_KNOWN_KEYS = ("source", "flagSetId")
_FILE_SUFFIXES = tuple(pattern.removeprefix("*") for pattern in FLAG_FILE_PATTERNS)


class SelectorError(ControlPlaneError):
    title = "Invalid sync selector"


def _strip_suffix(name: str) -> str:
    for suffix in _FILE_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


@dataclass(frozen=True)
class Selector:
    """A parsed selector; `terms` is empty for "everything"."""

    text: str
    terms: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Selector:
        text = (text or "").strip()
        if not text:
            return cls(text="")
        terms: list[tuple[str, str]] = []
        for raw in text.split(","):
            part = raw.strip()
            if not part:
                raise SelectorError(f"selector {text!r} has an empty term")
            key, sep, value = part.partition("=")
            if not sep:
                key, value = "source", part
            key, value = key.strip(), value.strip()
            if key not in _KNOWN_KEYS:
                raise SelectorError(
                    f"selector {text!r}: unknown key {key!r} (known: {', '.join(_KNOWN_KEYS)})"
                )
            if not value:
                raise SelectorError(f"selector {text!r}: {key!r} needs a value")
            terms.append((key, value))
        return cls(text=text, terms=tuple(terms))

    @property
    def everything(self) -> bool:
        return not self.terms

    def matches(self, key: str, definition: Mapping[str, Any], source: str | None) -> bool:
        for term, value in self.terms:
            if term == "source":
                if source is None or value not in (source, _strip_suffix(source)):
                    return False
            elif term == "flagSetId":
                metadata = definition.get("metadata")
                if not isinstance(metadata, Mapping) or metadata.get("flagSetId") != value:
                    return False
        return True

    def document(self, flag_set: FlagSet) -> dict[str, Any]:
        """The flagd document a replica with this selector receives for `flag_set`."""
        document = flag_set.to_flagd()
        if self.everything:
            return document
        document["flags"] = {
            key: definition
            for key, definition in document["flags"].items()
            if self.matches(key, definition, flag_set.sources.get(key))
        }
        return document
