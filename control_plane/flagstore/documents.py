"""Parse one flag file (JSON or YAML bytes) into data plus where each value sits.

Syntax errors become issues with the file's line and column; so do duplicate keys, which both
parsers would otherwise resolve silently to the last one. A half-written file is just a file
with a syntax error: the store refuses it and keeps serving the last good flag set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from control_plane.flagstore._json_lines import scan_json
from control_plane.flagstore._yaml_lines import load_yaml
from control_plane.flagstore.issues import Location, ValidationIssue, format_path

__all__ = ["ParsedFile", "is_yaml_name", "parse_flag_file"]

_YAML_SUFFIXES = (".yaml", ".yml")


def is_yaml_name(name: str) -> bool:
    return name.lower().endswith(_YAML_SUFFIXES)


@dataclass
class ParsedFile:
    """A flag file's data (None when unreadable) and positions, or the issues that stopped it."""

    name: str
    data: Any = None
    positions: dict[Location, tuple[int, int]] = field(default_factory=dict)
    issues: list[ValidationIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(issue.is_error for issue in self.issues)


def _issue(
    name: str,
    message: str,
    line: int | None = None,
    column: int | None = None,
    location: Location = (),
) -> ValidationIssue:
    return ValidationIssue(
        file=name,
        path=format_path(location),
        message=message,
        line=line,
        column=column,
        location=location,
    )


def parse_flag_file(name: str, content: bytes) -> ParsedFile:
    """Parse `content` as YAML when `name` ends in .yaml/.yml, else as JSON."""
    parsed = ParsedFile(name=name)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        parsed.issues.append(
            _issue(
                name,
                f"the file is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8",
            )
        )
        return parsed
    if not text.strip():
        parsed.issues.append(
            _issue(
                name,
                "the file is empty; a flag file holds an object with a 'flags' member "
                "(if an editor is still writing it, this clears up when it finishes)",
            )
        )
        return parsed
    if is_yaml_name(name):
        _parse_yaml(parsed, text)
    else:
        _parse_json(parsed, text)
    return parsed


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON; flagd cannot read it")


def _parse_json(parsed: ParsedFile, text: str) -> None:
    name = parsed.name
    try:
        parsed.data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        parsed.issues.append(
            _issue(
                name,
                f"invalid JSON: {exc.msg} (an unfinished edit, a trailing comma or a missing "
                "quote?)",
                exc.lineno,
                exc.colno,
            )
        )
        return
    except ValueError as exc:  # NaN / Infinity
        parsed.issues.append(_issue(name, str(exc)))
        return
    except RecursionError:
        parsed.issues.append(_issue(name, "the JSON is nested too deeply to read"))
        return
    scanned = scan_json(text)
    parsed.positions = scanned.positions
    for location, line, column in scanned.duplicates:
        parsed.issues.append(
            _issue(
                name,
                f"key {location[-1]!r} appears twice in the same object; JSON readers keep "
                "only the last one, so delete or rename one of them",
                line,
                column,
                location,
            )
        )


def _parse_yaml(parsed: ParsedFile, text: str) -> None:
    name = parsed.name
    try:
        document = load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        parsed.issues.append(
            _issue(
                name,
                f"invalid YAML: {what or 'syntax error'} (check the indentation and quoting "
                "on this line and the one before)",
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
            )
        )
        return
    except yaml.YAMLError as exc:
        parsed.issues.append(_issue(name, f"invalid YAML: {exc}"))
        return
    except RecursionError:
        parsed.issues.append(_issue(name, "the YAML is nested too deeply to read"))
        return
    parsed.data = document.data
    parsed.positions = document.positions
    for location, line, column in document.duplicates:
        parsed.issues.append(
            _issue(
                name,
                f"key {location[-1]!r} appears twice in the same mapping; only the last one "
                "would count, so delete or rename one of them",
                line,
                column,
                location,
            )
        )
    for location, message in document.problems:
        found = document.positions.get(location)
        parsed.issues.append(
            _issue(
                name, message, found[0] if found else None, found[1] if found else None, location
            )
        )
