"""`control-plane validate [PATH]`: check a flag directory or file before it goes live.

Prints every issue as `file:line:col: path: message` (the form editors and CI annotate), then
exits 1 if any is an error; prints a one-line summary and exits 0 when the flags are valid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from control_plane.cli.common import settings_from
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.loader import validate_path

__all__ = ["EXIT_INVALID", "EXIT_NO_SUCH_PATH", "add_validate", "run_validate"]

EXIT_INVALID = 1
EXIT_NO_SUCH_PATH = 2


def _shown_file(path: Path, issue: ValidationIssue) -> str:
    if not issue.file:
        return str(path)
    return str(path / issue.file) if path.is_dir() else str(path)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def run_validate(path: Path, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate `path` (a flag directory or one flag file); return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not path.exists():
        print(f"control-plane validate: {path}: no such file or directory", file=err)
        return EXIT_NO_SUCH_PATH
    result = validate_path(path)
    for issue in result.issues:
        print(issue.format(_shown_file(path, issue)), file=out)
    errors, warnings = len(result.errors), len(result.warnings)
    if errors:
        print(
            f"{path}: invalid: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}", file=err
        )
        return EXIT_INVALID
    print(
        f"{path}: ok: {_plural(len(result.flags), 'flag')} and "
        f"{_plural(len(result.evaluators), 'evaluator')} in "
        f"{_plural(len(result.files), 'file')}, {_plural(warnings, 'warning')}",
        file=out,
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    path = args.path if args.path is not None else settings_from(args).flags_dir
    return run_validate(path)


def add_validate(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    validate = commands.add_parser(
        "validate",
        help="check flag files (syntax, schema, meaning) without serving them",
        description="Validate a flag directory (every *.flagd.json/.yaml/.yml, merged) or one "
        "flag file. Prints each issue as file:line:col: path: message; exit status "
        "1 on any error, 2 if PATH does not exist, 0 when valid.",
    )
    validate.add_argument(
        "path",
        nargs="?",
        type=Path,
        metavar="PATH",
        help="flag directory or file (default: CP_FLAGS_DIR or ./flags)",
    )
    validate.set_defaults(command=_validate)
