"""Incremental validation: a reload re-reads and re-checks only what changed since the last one.

`ReloadCache.check_files(files)` answers exactly what `loader.check_files(files)` answers (the
same flags, issues, lines and refusals; tests/test_incremental_reload.py compares the two over
random edits), but:

- a file whose bytes are those of the last reload is not parsed again (its read is reused);
- a JSON file that changed inside one flag's value is read by decoding that flag alone
  (`_json_split.resplit`), every other flag keeping its text and definition;
- a flag whose exact text, location and referenced evaluators are those of a flag checked
  before is not checked again (`FlagChecks`); only its issues (if any) are located anew.

Line numbers are computed only for issues, per flag. YAML files, the daemon schema's array
form and files with anything unusual are read the general way (`validate.read_file`), cached
by their bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.flagstore._json_split import JsonSplit, resplit, split_json
from control_plane.flagstore.digest import canonical_json
from control_plane.flagstore.documents import is_yaml_name
from control_plane.flagstore.issues import Location, ValidationIssue
from control_plane.flagstore.loader import FlagFiles, LoadedFlags, with_read_problems
from control_plane.flagstore.semantics import refs_in
from control_plane.flagstore.text_check import find_unsafe_text, unsafe_character
from control_plane.flagstore.validate import (
    FileRead,
    merge_reads,
    read_file,
    read_parsed,
    validate_flag,
)

__all__ = ["FlagChecks", "ReloadCache"]

_MISSING = "\0missing"


class FlagChecks:
    """validate_flag, answered from a cache for a flag seen before.

    A flag's issues depend on its key, its location, its definition (known by its exact text)
    and, through `$ref`, the evaluators it reaches (by their canonical JSON, and every
    evaluator's name when one it names is missing: the message lists them).
    """

    def __init__(self) -> None:
        self._issues: dict[tuple[Any, ...], list[ValidationIssue]] = {}
        #: The answers the current merge used: what `sweep` keeps.
        self._used: dict[tuple[Any, ...], list[ValidationIssue]] = {}
        self._refs: dict[str, frozenset[str]] = {}
        self._evaluators: Mapping[str, Any] | None = None
        self._evaluator_keys: dict[str, str] = {}
        self._evaluator_refs: dict[str, frozenset[str]] = {}
        self._dependences: dict[frozenset[str], tuple[Any, ...]] = {}
        #: file -> (its read, the evaluators its flags reach, what they reach, its issues)
        self._files: dict[
            str, tuple[FileRead, frozenset[str], tuple[Any, ...], list[ValidationIssue]]
        ] = {}
        self._files_used: set[str] = set()
        self.checked = 0  # flags checked (not answered from the cache) since created
        self.files_checked = 0  # reads whose flags were looked at, flag by flag, since created

    def __call__(
        self,
        key: str,
        definition: Any,
        evaluators: Mapping[str, Any],
        where: Location,
        identity: str | None,
    ) -> list[ValidationIssue]:
        if identity is None:
            self.checked += 1
            return validate_flag(key, definition, evaluators, location=where)
        refs = self._refs.get(identity)
        if refs is None:
            targeting = definition.get("targeting") if isinstance(definition, dict) else None
            refs = self._refs[identity] = frozenset(name for name, _ in refs_in(targeting, ()))
        cache_key = (
            (key, where, identity, self._dependence(refs, evaluators))
            if refs
            else (key, where, identity)
        )
        found = self._issues.get(cache_key)
        if found is None:
            self.checked += 1
            found = self._issues[cache_key] = validate_flag(
                key, definition, evaluators, location=where
            )
        self._used[cache_key] = found
        return found

    def check_file(
        self,
        read: FileRead,
        evaluators: Mapping[str, Any],
        compute: Callable[[], list[ValidationIssue]],
    ) -> list[ValidationIssue]:
        """The issues of all of `read`'s flags (`compute`), answered without looking at its
        flags when the read is the one checked last time and the evaluators they reach are
        the same: an unchanged file of 100 flags costs one lookup, not 100."""
        self._files_used.add(read.name)
        known = self._files.get(read.name)
        if (
            known is not None
            and known[0] is read
            and (not known[1] or self._dependence(known[1], evaluators) == known[2])
        ):
            return known[3]
        self.files_checked += 1
        issues = compute()
        if read.identities is None:
            return issues  # no texts to know its flags by: checked every time
        refs = frozenset(
            name for text in read.identities.values() for name in self._refs.get(text, ())
        )
        reached = self._dependence(refs, evaluators) if refs else ()
        self._files[read.name] = (read, refs, reached, issues)
        return issues

    def _dependence(self, refs: frozenset[str], evaluators: Mapping[str, Any]) -> tuple[Any, ...]:
        if evaluators is not self._evaluators:  # a new merge: evaluators may have changed
            self._evaluators = evaluators
            self._evaluator_keys = {}
            self._evaluator_refs = {}
            self._dependences = {}
        known = self._dependences.get(refs)
        if known is None:
            known = self._dependences[refs] = self._reached(refs, evaluators)
        return known

    def _reached(self, refs: frozenset[str], evaluators: Mapping[str, Any]) -> tuple[Any, ...]:
        reached: set[str] = set()
        pending = list(refs)
        while pending:
            name = pending.pop()
            if name in reached:
                continue
            reached.add(name)
            if name in evaluators:
                inner = self._evaluator_refs.get(name)
                if inner is None:
                    inner = self._evaluator_refs[name] = frozenset(
                        target for target, _ in refs_in(evaluators[name], ())
                    )
                pending.extend(inner)
        parts: list[Any] = []
        missing = False
        for name in sorted(reached):
            if name in evaluators:
                found = self._evaluator_keys.get(name)
                if found is None:
                    found = self._evaluator_keys[name] = canonical_json(evaluators[name])
                parts.append((name, found))
            else:
                missing = True
                parts.append((name, _MISSING))
        if missing:
            parts.append(tuple(sorted(evaluators)))
        return tuple(parts)

    def sweep(self) -> None:
        """Forget the answers the last merge did not use (flags edited away)."""
        self._issues, self._used = self._used, {}
        self._files = {name: self._files[name] for name in self._files_used if name in self._files}
        self._files_used = set()
        if len(self._refs) > 2 * len(self._issues) + 1000:
            identities = {key[2] for key in self._issues}
            self._refs = {key: value for key, value in self._refs.items() if key in identities}


@dataclass(frozen=True)
class _Cached:
    content: bytes
    read: FileRead
    #: Set when the file was split flag by flag and its text is clean (see text_check).
    split: JsonSplit | None


def _clean(value: Any) -> bool:
    return not find_unsafe_text(value, limit=1)


def _split_read(
    name: str, content: bytes, previous: JsonSplit | None
) -> tuple[FileRead, JsonSplit] | None:
    """The read of a JSON file of the common shape, decoding only changed flags when it can."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return None
    split = resplit(previous, text) if previous is not None else None
    if split is not None and previous is not None:
        fresh = [
            key for key, value in split.flag_texts.items() if previous.flag_texts.get(key) != value
        ]
    else:
        split = split_json(text)
        if split is None:
            return None
        # Flags whose text the last (clean) read of this file had are clean.
        known = previous.flag_texts if previous is not None else {}
        fresh = [key for key, value in split.flag_texts.items() if known.get(key) != value]
    flags = split.data["flags"]
    if any(unsafe_character(key, key=True) is not None for key in split.data):
        return None
    if any(unsafe_character(key, key=True) is not None for key in flags):
        return None
    if not _clean({key: value for key, value in split.data.items() if key != "flags"}):
        return None
    if not all(_clean(flags[key]) for key in fresh):
        return None  # the general reader reports the unsafe text, in document order
    read = read_parsed(
        name, split.data, (), split.positions(), identities=split.flag_texts, text_clean=True
    )
    return read, split


class ReloadCache:
    """What the last reload read and checked, so the next one redoes only what changed."""

    def __init__(self) -> None:
        self._files: dict[str, _Cached] = {}
        self.checks = FlagChecks()
        #: Files read (parsed, not answered from the cache) since created, for tests and stats.
        self.files_read = 0

    def read(self, name: str, content: bytes) -> FileRead:
        cached = self._files.get(name)
        if cached is not None and cached.content == content:
            return cached.read
        self.files_read += 1
        found = (
            None
            if is_yaml_name(name)
            else _split_read(name, content, cached.split if cached is not None else None)
        )
        if found is None:
            read, split = read_file(name, content), None
        else:
            read, split = found
        self._files[name] = _Cached(content, read, split)
        return read

    def check_files(self, files: FlagFiles) -> LoadedFlags:
        """loader.check_files(files), from what is cached where the bytes are unchanged."""
        names = sorted(files.contents)
        reads = [self.read(name, files.contents[name]) for name in names]
        for name in self._files.keys() - set(names):
            del self._files[name]
        result = merge_reads(reads, self.checks, self.checks.check_file)
        self.checks.sweep()
        return with_read_problems(files, result)
