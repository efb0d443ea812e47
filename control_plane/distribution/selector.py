"""Sync selectors: which flag set a replica asked for, in the forms flagd accepts.

flagd replicas send a selector in the `flagd-selector` gRPC header (or the deprecated
`selector` request field). We accept:

- `""`: the default view (see `flagset`): the default flag set plus named-set flags whose key
  no other set uses;
- `flagSetId=<id>`: the flags of that flag set (a flag's own metadata `flagSetId`, else its
  file's), keys as that set scopes them;
- `source=<file>` or a bare `<file>`: the flags defined in one flag file. The file may be given
  as flagd names sources: a path (`/etc/flagd/routing.flagd.json`, `rawflags/x.json`) or a
  `file:` URI; its last path component is matched, with or without the `.flagd.json` suffix;
- terms combined with commas (a flag must match all of them).

A selector naming a flag set or a file the serving flag set does not have is an error
(`SelectorNotFound`, gRPC NOT_FOUND), never a silent empty set; a malformed selector or an
unknown key is `SelectorError` (INVALID_ARGUMENT). A stream that was opened on a set that later
loses all its flags receives an empty set: that is an edit, not a typo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from control_plane.errors import ControlPlaneError
from control_plane.flagstore import FlagSet
from control_plane.flagstore.flagset import DEFAULT_SET
from control_plane.flagstore.loader import FLAG_FILE_PATTERNS

__all__ = ["Selector", "SelectorError", "SelectorNotFound"]

_KNOWN_KEYS = ("source", "flagSetId")
_FILE_SUFFIXES = tuple(pattern.removeprefix("*") for pattern in FLAG_FILE_PATTERNS)


class SelectorError(ControlPlaneError):
    title = "Invalid sync selector"


class SelectorNotFound(SelectorError):
    title = "Sync selector names nothing"


def _source_name(value: str) -> str:
    """A flagd source as we name files: `file:/a/b/x.flagd.json` -> `x.flagd.json`."""
    value = value.removeprefix("file://").removeprefix("file:")
    return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


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

    def _value(self, term: str) -> str | None:
        for key, value in self.terms:
            if key == term:
                return value
        return None

    def document(self, flag_set: FlagSet, *, check: bool = True) -> dict[str, Any]:
        """The flagd document a replica with this selector receives for `flag_set`.

        With `check`, a flag set or file that `flag_set` does not have raises
        SelectorNotFound (a stream checks when it opens; later documents may be empty)."""
        if self.everything:
            return flag_set.to_flagd()
        set_id = self._value("flagSetId")
        source = self._value("source")
        if set_id is not None and set_id not in flag_set.sets:
            if check:
                known = ", ".join(repr(name) for name in sorted(flag_set.sets) if name) or "none"
                raise SelectorNotFound(
                    f"selector {self.text!r}: no flag set {set_id!r} (flag sets: {known})"
                )
            return flag_set.document({})
        files = {
            name for sources in flag_set.set_sources.values() for name in sources.values()
        } | set(flag_set.file_metadata)
        wanted = _source_name(source) if source is not None else None
        matched = (
            {name for name in files if wanted in (name, _strip_suffix(name))}
            if wanted is not None
            else files
        )
        if wanted is not None and not matched and check:
            raise SelectorNotFound(
                f"selector {self.text!r}: no flag file {wanted!r} "
                f"(files: {', '.join(sorted(files)) or 'none'})"
            )
        sets = (
            [set_id]
            if set_id is not None
            else [DEFAULT_SET, *sorted(name for name in flag_set.sets if name)]
        )
        flags: dict[str, dict[str, Any]] = {}
        for chosen in sets:
            for key in flag_set.sets.get(chosen, {}):
                if key not in flags and flag_set.source_of(chosen, key) in matched:
                    flags[key] = flag_set.merged(chosen, key)
        return flag_set.document(flags)
