"""The flag validator: syntax, schema and meaning of flag files, merged into one flag set.

No I/O here: callers hand in file contents (the loader reads the directory) or parsed
definitions (the admin API, conformance tests). Every problem is a `ValidationIssue` naming the
file, the JSON path, the line when known, and what to do.

    >>> flag = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "off"}
    >>> [issue.path for issue in validate_flag("demo", flag)]
    ['$.flags.demo.defaultVariant']
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.flagstore.documents import parse_flag_file
from control_plane.flagstore.flagset import DEFAULT_SET, default_view, flag_set_id
from control_plane.flagstore.issues import Location, ValidationIssue, locate
from control_plane.flagstore.schema import DocumentParts, check_document, check_flag_structure
from control_plane.flagstore.semantics import check_evaluator_refs, check_flag_semantics
from control_plane.flagstore.shadow_rules import check_shadow_rules
from control_plane.flagstore.text_check import check_text_values

__all__ = [
    "Contribution",
    "FileCheck",
    "FileRead",
    "FlagCheck",
    "Refusal",
    "ValidationResult",
    "describe",
    "merge_reads",
    "read_file",
    "read_parsed",
    "validate_contents",
    "validate_document",
    "validate_evaluators",
    "validate_flag",
]


def validate_flag(
    key: str,
    definition: Any,
    evaluators: Mapping[str, Any] | None = None,
    *,
    location: Location | None = None,
) -> list[ValidationIssue]:
    """Check one flag on its own: members, types, targeting rules and what they mean together.

    Pass the flag set's `evaluators` to check `$ref` targets (None skips that check). Issues
    carry no file; `location` (default `("flags", key)`) is where the flag sits in its document.
    """
    where: Location = location if location is not None else ("flags", key)
    issues: list[ValidationIssue] = []
    if not isinstance(key, str) or not key:
        issues.append(ValidationIssue.at(where, "a flag key must be a non-empty string"))
    check_flag_structure(definition, where, issues)
    check_flag_semantics(definition, where, issues, evaluators=evaluators)
    check_shadow_rules(definition, where, issues)  # control_plane.shadow: mirrored traffic
    return issues


def validate_evaluators(evaluators: Mapping[str, Any]) -> list[ValidationIssue]:
    """Checks between shared evaluators (their rules are checked with their document)."""
    issues: list[ValidationIssue] = []
    check_evaluator_refs(evaluators, issues)
    return issues


def validate_document(document: Any, *, file: str = "") -> list[ValidationIssue]:
    """Check one parsed flag document (as `json.load` returns it) as a standalone flag set."""
    issues: list[ValidationIssue] = []
    check_text_values(document, issues)
    if issues:  # unsafe text is refused before anything else looks at (or hashes) it
        return locate(issues, file=file)
    parts = check_document(document, issues)
    seen: dict[tuple[str, str], Location] = {}
    for key, definition, where in parts.flags:
        set_id = (
            flag_set_id(definition, parts.metadata) if isinstance(definition, dict) else DEFAULT_SET
        )
        if (set_id, key) in seen:
            issues.append(
                ValidationIssue.at(
                    where,
                    f"flag {key!r} is defined twice in flag set "
                    f"{set_id!r}; a key is unique per flag set",
                )
            )
        seen[(set_id, key)] = where
        issues.extend(validate_flag(key, definition, parts.evaluators, location=where))
    issues.extend(validate_evaluators(parts.evaluators))
    return locate(issues, file=file)


@dataclass(frozen=True)
class Refusal:
    """Part of an edit that is refused: one flag (`key`), or a whole file (`key` None)."""

    file: str
    key: str | None
    flag_set_id: str
    issues: tuple[ValidationIssue, ...]
    #: Where the refused flag sits in its file (("flags", key) or ("flags", index)).
    location: Location = field(default=(), compare=False)

    @property
    def reason(self) -> str:
        return "; ".join(issue.format() for issue in self.issues[:3])


@dataclass(frozen=True)
class ValidationResult:
    """Flag files merged into flag sets, with every issue found on the way.

    `sets` (flagSetId -> key -> definition), `set_sources`, `file_metadata` and `evaluators`
    hold what was accepted: every flag and file that has no error of its own; `refused` lists
    the rest with its issues. `flags` and `sources` are the default view of `sets`.
    """

    flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluators: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    issues: tuple[ValidationIssue, ...] = ()
    sets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    set_sources: dict[str, dict[str, str]] = field(default_factory=dict)
    file_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluator_sources: dict[str, str] = field(default_factory=dict)
    refused: tuple[Refusal, ...] = ()

    @property
    def errors(self) -> list[ValidationIssue]:
        return [issue for issue in self.issues if issue.is_error]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [issue for issue in self.issues if not issue.is_error]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def blocking(self) -> list[ValidationIssue]:
        """Errors that belong to no file or flag (no flag files at all): nothing can load."""
        return [issue for issue in self.errors if not issue.file]


def validate_contents(contents: Mapping[str, bytes]) -> ValidationResult:
    """Parse, check and merge flag files given as name -> bytes (names sorted for the merge)."""
    merge = _Merge()
    for name in sorted(contents):
        merge.add(name, contents[name])
    return merge.finish(tuple(sorted(contents)))


def merge_reads(
    reads: list[FileRead],
    check_flag: FlagCheck | None = None,
    check_file: FileCheck | None = None,
) -> ValidationResult:
    """validate_contents over files already read (sorted by name), with optional caches of
    flag checks and of a whole file's flag checks: the same result as validating their bytes
    from scratch."""
    merge = _Merge()
    merge.check_flag = check_flag
    merge.check_file = check_file
    for read in reads:
        merge.add_read(read)
    return merge.finish(tuple(read.name for read in reads))


_FlagId = tuple[str, str]  # (flagSetId, key)

#: validate_flag(key, definition, evaluators, location) with the definition's exact text
#: (None when unknown), so a cache can answer for a definition it has seen.
FlagCheck = Callable[[str, Any, Mapping[str, Any], Location, "str | None"], list[ValidationIssue]]


#: The located issues of every flag of one read (all merged, see `Contribution`) against
#: `evaluators`; `compute` finds them, a cache may answer for a read and evaluators seen before.
FileCheck = Callable[
    ["FileRead", Mapping[str, Any], Callable[[], list[ValidationIssue]]], list[ValidationIssue]
]


def _check_flag(
    key: str, definition: Any, evaluators: Mapping[str, Any], where: Location, identity: str | None
) -> list[ValidationIssue]:
    return validate_flag(key, definition, evaluators, location=where)


@dataclass(frozen=True)
class FileRead:
    """One flag file read on its own: what merging needs, before any cross-file check.

    `parts` is None when the file is refused whole before merging (unreadable, or unsafe
    text); `issues` are its parse issues (located), `document_issues` those of its top level;
    `identities` the exact text of each flag's definition when the reader knows it.
    """

    name: str
    issues: tuple[ValidationIssue, ...]
    parts: DocumentParts | None = None
    set_ids: tuple[str, ...] = ()
    document_issues: tuple[ValidationIssue, ...] = ()
    positions: Mapping[Location, tuple[int, int]] = field(default_factory=dict)
    identities: Mapping[str, str] | None = None

    @functools.cached_property
    def contribution(self) -> Contribution | None:
        """What it adds to a merge, made once (the incremental reload reuses unchanged reads),
        or None when it has no parts or defines a key twice (merged flag by flag)."""
        return _contribution(self)


@dataclass(frozen=True)
class Contribution:
    """What one read adds to a merge when no flag of it is defined twice in it: made once per
    read (`contribution`), merged with dict updates instead of flag by flag."""

    flags: dict[_FlagId, Any]
    where: dict[_FlagId, tuple[str, Location]]
    owners: dict[Location, _FlagId]
    identities: dict[_FlagId, str]
    #: flagSetId -> key -> definition, and key -> file, of its flags that are objects
    sets: dict[str, dict[str, Any]]
    set_sources: dict[str, dict[str, str]]


def _contribution(read: FileRead) -> Contribution | None:
    parts = read.parts
    if parts is None:
        return None
    flags: dict[_FlagId, Any] = {}
    where: dict[_FlagId, tuple[str, Location]] = {}
    owners: dict[Location, _FlagId] = {}
    identities: dict[_FlagId, str] = {}
    sets: dict[str, dict[str, Any]] = {}
    set_sources: dict[str, dict[str, str]] = {}
    for (key, definition, at), set_id in zip(parts.flags, read.set_ids, strict=True):
        flag_id = (set_id, key)
        if flag_id in flags:
            return None
        flags[flag_id] = definition
        where[flag_id] = (read.name, at)
        owners[at[:2]] = flag_id
        if read.identities is not None:
            identities[flag_id] = read.identities[key]
        if isinstance(definition, dict):
            sets.setdefault(set_id, {})[key] = definition
            set_sources.setdefault(set_id, {})[key] = read.name
    return Contribution(flags, where, owners, identities, sets, set_sources)


def read_file(name: str, content: bytes) -> FileRead:
    """Parse one file and check its top level (the per-file half of validate_contents)."""
    parsed = parse_flag_file(name, content)
    if parsed.data is None:
        return FileRead(name, tuple(parsed.issues))
    return read_parsed(name, parsed.data, tuple(parsed.issues), parsed.positions)


def read_parsed(
    name: str,
    data: Any,
    issues: tuple[ValidationIssue, ...],
    positions: Mapping[Location, tuple[int, int]],
    identities: Mapping[str, str] | None = None,
    text_clean: bool = False,
) -> FileRead:
    """The FileRead of parsed `data`; `text_clean` when its text was checked already."""
    found: list[ValidationIssue] = []
    if not text_clean:
        check_text_values(data, found)
    if found:  # refused before merging: nothing downstream sees (or hashes) the text
        return FileRead(
            name, (*issues, *locate(found, file=name, positions=positions)), positions=positions
        )
    parts = check_document(data, found)
    set_ids = tuple(
        flag_set_id(definition, parts.metadata) if isinstance(definition, dict) else DEFAULT_SET
        for _, definition, _ in parts.flags
    )
    return FileRead(
        name,
        issues,
        parts,
        set_ids,
        tuple(locate(found, file=name, positions=positions)),
        positions,
        identities,
    )


class _Merge:
    """Accumulates files; a flag key defined twice in one flag set is an error, as is an
    evaluator name defined twice differently."""

    def __init__(self) -> None:
        self.issues: list[ValidationIssue] = []
        self.flags: dict[_FlagId, Any] = {}
        self.flag_where: dict[_FlagId, tuple[str, Location]] = {}
        #: file -> where a flag sits in it (("flags", key) or ("flags", index)) -> its id
        self.owners: dict[str, dict[Location, _FlagId]] = {}
        self.evaluators: dict[str, Any] = {}
        self.evaluator_file: dict[str, str] = {}
        self.file_metadata: dict[str, dict[str, Any]] = {}
        self.positions: dict[str, Mapping[Location, tuple[int, int]]] = {}
        #: (flagSetId, key) -> the exact text of its definition, when the reader knows it
        self.identities: dict[_FlagId, str] = {}
        #: validate_flag, or a cache of it (see incremental.FlagChecks)
        self.check_flag: FlagCheck | None = None
        #: A cache of a whole read's flag checks (see incremental.FlagChecks.check_file)
        self.check_file: FileCheck | None = None
        #: Each read with parts, in order: its Contribution when merged whole, else the ids
        #: of the flags it added one by one.
        self.merged: list[tuple[FileRead, Contribution | None, list[_FlagId]]] = []

    def _line(self, file: str, location: Location) -> str:
        found = self.positions.get(file, {}).get(location)
        return f"{file}:{found[0]}" if found else file

    def add(self, name: str, content: bytes) -> None:
        self.add_read(read_file(name, content))

    def add_read(self, read: FileRead) -> None:
        """Merge one file as `read_file` read it (the incremental reload caches reads)."""
        name = read.name
        self.issues.extend(read.issues)
        if read.parts is None:
            return
        self.positions[name] = read.positions
        parts = read.parts
        found: list[ValidationIssue] = []
        if parts.metadata:
            self.file_metadata[name] = parts.metadata
        whole = read.contribution
        if whole is not None and self.flags.keys().isdisjoint(whole.flags):
            # The common case: none of its flags is defined elsewhere, so it merges with dict
            # updates (at 10,000 flags, flag by flag was 10 ms of every reload).
            self.flags.update(whole.flags)
            self.flag_where.update(whole.where)
            self.owners[name] = whole.owners  # the read's own: read only
            self.identities.update(whole.identities)
            self.merged.append((read, whole, []))
        else:
            self._add_flags(read, parts, found)
        self._add_evaluators(name, parts, found)
        self.issues.extend(read.document_issues)
        self.issues.extend(locate(found, file=name, positions=read.positions))

    def _add_flags(
        self, read: FileRead, parts: DocumentParts, found: list[ValidationIssue]
    ) -> None:
        name = read.name
        added: list[_FlagId] = []
        owners = self.owners.setdefault(name, {})
        for (key, definition, where), set_id in zip(parts.flags, read.set_ids, strict=True):
            flag_id = (set_id, key)
            owners[where[:2]] = flag_id
            if flag_id in self.flags:
                # Both definitions are refused, so neither wins by file-name order; the last
                # good one (if any) keeps serving until one of them is removed or renamed.
                first_file, first_where = self.flag_where[flag_id]
                in_set = f" in flag set {set_id!r}" if set_id else ""
                advice = (
                    "a flag key may be defined once per flag set, so remove or rename one "
                    "of them (or give one a different flagSetId)"
                )
                found.append(
                    ValidationIssue.at(
                        where,
                        f"flag {key!r}{in_set} is also defined in "
                        f"{self._line(first_file, first_where)}; {advice}",
                    )
                )
                self.issues.extend(
                    locate(
                        [
                            ValidationIssue.at(
                                first_where,
                                f"flag {key!r}{in_set} is also defined in {name}; {advice}",
                            )
                        ],
                        file=first_file,
                        positions=self.positions.get(first_file),
                    )
                )
                continue
            self.flags[flag_id] = definition
            self.flag_where[flag_id] = (name, where)
            if read.identities is not None:
                self.identities[flag_id] = read.identities[key]
            added.append(flag_id)
        self.merged.append((read, None, added))

    def _add_evaluators(
        self, name: str, parts: DocumentParts, found: list[ValidationIssue]
    ) -> None:
        for evaluator, rule in parts.evaluators.items():
            if evaluator in self.evaluators:
                if self.evaluators[evaluator] != rule:
                    first = self.evaluator_file[evaluator]
                    found.append(
                        ValidationIssue.at(
                            ("$evaluators", evaluator),
                            f"evaluator {evaluator!r} is also defined, differently, in "
                            f"{self._line(first, ('$evaluators', evaluator))}; keep one definition",
                        )
                    )
                continue
            self.evaluators[evaluator] = rule
            self.evaluator_file[evaluator] = name

    def _flag_issues(self, flag_ids: Iterable[_FlagId]) -> list[ValidationIssue]:
        check = self.check_flag or _check_flag
        issues: list[ValidationIssue] = []
        for flag_id in flag_ids:
            file, where = self.flag_where[flag_id]
            found = check(
                flag_id[1],
                self.flags[flag_id],
                self.evaluators,
                where,
                self.identities.get(flag_id),
            )
            if found:
                issues.extend(locate(found, file=file, positions=self.positions.get(file)))
        return issues

    def finish(self, files: tuple[str, ...]) -> ValidationResult:
        # File by file, in merge order: the order the flags were merged in.
        for read, whole, added in self.merged:
            if whole is None:
                self.issues.extend(self._flag_issues(added))
            elif self.check_file is None:
                self.issues.extend(self._flag_issues(whole.flags))
            else:
                compute = functools.partial(self._flag_issues, whole.flags)
                self.issues.extend(self.check_file(read, self.evaluators, compute))
        for issue in validate_evaluators(self.evaluators):
            file = (
                self.evaluator_file.get(str(issue.location[1]), "")
                if len(issue.location) > 1
                else ""
            )
            self.issues.extend(locate([issue], file=file, positions=self.positions.get(file)))
        ordered = sorted(
            self.issues,
            key=lambda issue: (
                files.index(issue.file) if issue.file in files else -1,
                issue.line or 0,
                issue.column or 0,
                issue.path,
            ),
        )
        refused = self._refusals(ordered)
        refused_files = {item.file for item in refused if item.key is None}
        refused_flags = {(item.file, item.location) for item in refused if item.key}
        with_refused_flags = {file for file, _ in refused_flags}
        sets: dict[str, dict[str, dict[str, Any]]] = {}
        set_sources: dict[str, dict[str, str]] = {}
        # Definitions are shared, never mutated.
        for read, whole, added in self.merged:
            if read.name in refused_files:
                continue
            if whole is not None and read.name not in with_refused_flags:
                for set_id, members in whole.sets.items():
                    sets.setdefault(set_id, {}).update(members)
                    set_sources.setdefault(set_id, {}).update(whole.set_sources[set_id])
                continue
            for flag_id in whole.flags if whole is not None else added:
                definition = self.flags[flag_id]
                file, where = self.flag_where[flag_id]
                if (file, where[:2]) in refused_flags or not isinstance(definition, dict):
                    continue
                sets.setdefault(flag_id[0], {})[flag_id[1]] = definition
                set_sources.setdefault(flag_id[0], {})[flag_id[1]] = file
        flags, sources = default_view(sets, set_sources)
        return ValidationResult(
            flags=dict(flags),  # type: ignore[arg-type]  # shared definitions, never mutated
            evaluators={
                name: rule
                for name, rule in self.evaluators.items()
                if self.evaluator_file[name] not in refused_files
            },
            sources=sources,
            files=files,
            issues=tuple(ordered),
            sets=sets,
            set_sources=set_sources,
            file_metadata={
                name: meta for name, meta in self.file_metadata.items() if name not in refused_files
            },
            evaluator_sources={
                name: file
                for name, file in self.evaluator_file.items()
                if file not in refused_files
            },
            refused=refused,
        )

    def _refusals(self, issues: list[ValidationIssue]) -> tuple[Refusal, ...]:
        """Errors grouped by what they refuse: the flag they sit in, else their whole file."""
        by_flag: dict[tuple[str, _FlagId, Location], list[ValidationIssue]] = {}
        by_file: dict[str, list[ValidationIssue]] = {}
        for issue in issues:
            if not issue.is_error or not issue.file:
                continue
            owner = self.owners.get(issue.file, {}).get(issue.location[:2])
            if owner is not None:
                by_flag.setdefault((issue.file, owner, issue.location[:2]), []).append(issue)
            else:
                by_file.setdefault(issue.file, []).append(issue)
        refused = [
            Refusal(file=file, key=None, flag_set_id=DEFAULT_SET, issues=tuple(found))
            for file, found in by_file.items()
        ]
        refused.extend(
            Refusal(
                file=file,
                key=flag_id[1],
                flag_set_id=flag_id[0],
                issues=tuple(found),
                location=where,
            )
            for (file, flag_id, where), found in by_flag.items()
            if file not in by_file
        )
        return tuple(refused)


def describe(issues: list[ValidationIssue], *, limit: int = 3) -> str:
    """A one-paragraph summary of `issues` for logs and error details."""
    errors = [issue for issue in issues if issue.is_error] or issues
    shown = "; ".join(issue.format() for issue in errors[:limit])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    noun = "problem" if len(errors) == 1 else "problems"
    return f"{len(errors)} {noun} in the flags: {shown}{more}"
