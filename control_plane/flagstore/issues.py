"""Validation issues: what is wrong in a flag file, where, and what to do about it.

Every check of the flag validator reports `ValidationIssue`s. An issue names the file, a JSON
path into it (`$.flags.ab-test-router.defaultVariant`), the line and column when they are known,
and a message that says what to change. Issues are plain data so the admin API can return them
as JSON and the CLI can print them as `file:line:col: path: message`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "ERROR",
    "WARNING",
    "Location",
    "Severity",
    "ValidationIssue",
    "errors_in",
    "format_path",
    "locate",
]

Severity = Literal["error", "warning"]
ERROR: Severity = "error"
WARNING: Severity = "warning"

#: A path into a JSON document as keys and indexes: ("flags", "my-flag", "targeting", "if", 1).
Location = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_$-]+$")


def format_path(location: Location) -> str:
    """`("flags", "a-b", "variants", 0)` -> `$.flags.a-b.variants[0]` (odd keys are quoted)."""
    parts = ["$"]
    for step in location:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _PLAIN_KEY.match(step):
            parts.append(f".{step}")
        else:
            # A lone surrogate stays escaped, so the path can always be encoded as UTF-8.
            readable = not any("\ud800" <= char <= "\udfff" for char in step)
            parts.append(f"[{json.dumps(step, ensure_ascii=not readable)}]")
    return "".join(parts)


@dataclass(frozen=True)
class ValidationIssue:
    """One problem (or warning) found in a flag file."""

    file: str
    path: str
    message: str
    severity: Severity = ERROR
    line: int | None = None
    column: int | None = None
    #: The same path as a tuple, for tools that walk the document; not part of the JSON.
    location: Location = field(default=(), compare=False, repr=False)

    @classmethod
    def at(
        cls, location: Location, message: str, *, severity: Severity = ERROR, file: str = ""
    ) -> ValidationIssue:
        return cls(
            file=file,
            path=format_path(location),
            message=message,
            severity=severity,
            location=location,
        )

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def format(self, file: str | None = None) -> str:
        """`file:line:col: path: message` (the form editors and CI logs link to)."""
        where = file if file is not None else (self.file or "<flags>")
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        label = "" if self.is_error else "warning: "
        return f"{where}: {self.path}: {label}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The issue as JSON-ready data (for problem+json bodies and the status endpoint)."""
        return {
            "file": self.file,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "severity": self.severity,
        }


def locate(
    issues: Iterable[ValidationIssue],
    *,
    file: str,
    positions: Mapping[Location, tuple[int, int]] | None = None,
) -> list[ValidationIssue]:
    """Attach `file` and, from `positions`, the line/column of the nearest enclosing node."""
    located = []
    for issue in issues:
        line = column = None
        if positions:
            location = issue.location
            while True:
                found = positions.get(location)
                if found is not None:
                    line, column = found
                    break
                if not location:
                    break
                location = location[:-1]
        located.append(
            replace(
                issue,
                file=file,
                line=line if line is not None else issue.line,
                column=column if column is not None else issue.column,
            )
        )
    return located


def errors_in(issues: Iterable[ValidationIssue]) -> list[ValidationIssue]:
    return [issue for issue in issues if issue.is_error]
