"""The flag validator: syntax, schema and meaning of flag files, merged into one flag set.

No I/O here: callers hand in file contents (the loader reads the directory) or parsed
definitions (the admin API, conformance tests). Every problem is a `ValidationIssue` naming the
file, the JSON path, the line when known, and what to do.

    >>> flag = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "off"}
    >>> [issue.path for issue in validate_flag("demo", flag)]
    ['$.flags.demo.defaultVariant']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.flagstore.documents import parse_flag_file
from control_plane.flagstore.issues import Location, ValidationIssue, locate
from control_plane.flagstore.schema import check_document, check_flag_structure
from control_plane.flagstore.semantics import check_evaluator_refs, check_flag_semantics
from control_plane.flagstore.shadow_rules import check_shadow_rules
from control_plane.flagstore.text_check import check_text_values

__all__ = [
    "ValidationResult",
    "describe",
    "validate_contents",
    "validate_document",
    "validate_evaluators",
    "validate_flag",
]


def validate_flag(key: str, definition: Any, evaluators: Mapping[str, Any] | None = None, *,
                  location: Location | None = None) -> list[ValidationIssue]:
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
    for key, (definition, where) in parts.flags.items():
        issues.extend(validate_flag(key, definition, parts.evaluators, location=where))
    issues.extend(validate_evaluators(parts.evaluators))
    return locate(issues, file=file)


@dataclass(frozen=True)
class ValidationResult:
    """Flag files merged into one flag set, with every issue found on the way.

    `flags`, `evaluators` and `sources` (flag key -> file) are meaningful only when `ok`.
    """

    flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluators: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    issues: tuple[ValidationIssue, ...] = ()

    @property
    def errors(self) -> list[ValidationIssue]:
        return [issue for issue in self.issues if issue.is_error]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [issue for issue in self.issues if not issue.is_error]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_contents(contents: Mapping[str, bytes]) -> ValidationResult:
    """Parse, check and merge flag files given as name -> bytes (names sorted for the merge)."""
    merge = _Merge()
    for name in sorted(contents):
        merge.add(name, contents[name])
    return merge.finish(tuple(sorted(contents)))


class _Merge:
    """Accumulates files; a flag key or evaluator name defined twice is an error."""

    def __init__(self) -> None:
        self.issues: list[ValidationIssue] = []
        self.flags: dict[str, Any] = {}
        self.flag_where: dict[str, tuple[str, Location]] = {}
        self.evaluators: dict[str, Any] = {}
        self.evaluator_file: dict[str, str] = {}
        self.positions: dict[str, dict[Location, tuple[int, int]]] = {}

    def _line(self, file: str, location: Location) -> str:
        found = self.positions.get(file, {}).get(location)
        return f"{file}:{found[0]}" if found else file

    def add(self, name: str, content: bytes) -> None:
        parsed = parse_flag_file(name, content)
        self.issues.extend(parsed.issues)
        if parsed.data is None:
            return
        self.positions[name] = parsed.positions
        found: list[ValidationIssue] = []
        check_text_values(parsed.data, found)
        if found:  # refused before merging: nothing downstream sees (or hashes) the text
            self.issues.extend(locate(found, file=name, positions=parsed.positions))
            return
        parts = check_document(parsed.data, found)
        for key, (definition, where) in parts.flags.items():
            if key in self.flags:
                first_file, first_where = self.flag_where[key]
                found.append(ValidationIssue.at(
                    where, f"flag {key!r} is also defined in {self._line(first_file, first_where)}"
                           f"; a flag key may be defined in one file only, so remove or rename "
                           f"one of them"))
                continue
            self.flags[key] = definition
            self.flag_where[key] = (name, where)
        for evaluator, rule in parts.evaluators.items():
            if evaluator in self.evaluators:
                if self.evaluators[evaluator] != rule:
                    first = self.evaluator_file[evaluator]
                    found.append(ValidationIssue.at(
                        ("$evaluators", evaluator),
                        f"evaluator {evaluator!r} is also defined, differently, in "
                        f"{self._line(first, ('$evaluators', evaluator))}; keep one definition"))
                continue
            self.evaluators[evaluator] = rule
            self.evaluator_file[evaluator] = name
        self.issues.extend(locate(found, file=name, positions=parsed.positions))

    def finish(self, files: tuple[str, ...]) -> ValidationResult:
        for key, definition in self.flags.items():
            file, where = self.flag_where[key]
            self.issues.extend(locate(validate_flag(key, definition, self.evaluators,
                                                    location=where),
                                      file=file, positions=self.positions.get(file)))
        for issue in validate_evaluators(self.evaluators):
            file = self.evaluator_file.get(str(issue.location[1]), "") \
                if len(issue.location) > 1 else ""
            self.issues.extend(locate([issue], file=file, positions=self.positions.get(file)))
        ordered = sorted(self.issues, key=lambda issue: (
            files.index(issue.file) if issue.file in files else -1, issue.line or 0,
            issue.column or 0, issue.path))
        return ValidationResult(
            flags={key: dict(value) for key, value in self.flags.items()
                   if isinstance(value, dict)},
            evaluators=dict(self.evaluators),
            sources={key: where[0] for key, where in self.flag_where.items()},
            files=files,
            issues=tuple(ordered),
        )


def describe(issues: list[ValidationIssue], *, limit: int = 3) -> str:
    """A one-paragraph summary of `issues` for logs and error details."""
    errors = [issue for issue in issues if issue.is_error] or issues
    shown = "; ".join(issue.format() for issue in errors[:limit])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    noun = "problem" if len(errors) == 1 else "problems"
    return f"{len(errors)} {noun} in the flags: {shown}{more}"

