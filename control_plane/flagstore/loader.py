"""Read the flag directory and merge its files into one validated flag set (no versioning).

Every `*.flagd.json`, `*.flagd.yaml` and `*.flagd.yml` in the directory (not its subfolders)
is a flag file. Hidden files (a leading dot) are skipped: editors and the admin API write their
temporary and lock files under such names before renaming them into place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.errors import FlagValidationError
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.validate import ValidationResult, describe, validate_contents

__all__ = [
    "FLAG_FILE_PATTERNS",
    "FlagFiles",
    "LoadedFlags",
    "check_files",
    "flag_files",
    "load_directory",
    "load_files",
    "read_flag_file",
    "read_flag_files",
    "validate_path",
    "with_read_problems",
]

FLAG_FILE_PATTERNS = ("*.flagd.json", "*.flagd.yaml", "*.flagd.yml")

#: A validated, merged flag set as read from files (flags, evaluators, sources, warnings).
LoadedFlags = ValidationResult


def flag_files(directory: Path) -> list[Path]:
    """The flag files of `directory`, sorted by name (the merge order)."""
    files: set[Path] = set()
    for pattern in FLAG_FILE_PATTERNS:
        files.update(path for path in directory.glob(pattern) if not path.name.startswith("."))
    return sorted(files)


@dataclass(frozen=True)
class FlagFiles:
    """The bytes of every flag file at one moment, or why they could not be read."""

    source: str  # the directory or file, for messages
    contents: dict[str, bytes] = field(default_factory=dict)
    problems: tuple[ValidationIssue, ...] = ()

    @property
    def digest(self) -> str:
        """Hash of names and bytes: equal digests mean nothing changed on disk."""
        hasher = hashlib.sha256()
        for name in sorted(self.contents):
            hasher.update(name.encode() + b"\0" + self.contents[name] + b"\0")
        for problem in self.problems:
            hasher.update(problem.message.encode())
        return hasher.hexdigest()


def _problem(file: str, message: str) -> ValidationIssue:
    return ValidationIssue(file=file, path="$", message=message)


def read_flag_files(directory: Path) -> FlagFiles:
    """Read every flag file of `directory` (never raises: problems are carried along)."""
    if not directory.is_dir():
        return FlagFiles(
            str(directory),
            problems=(
                _problem(
                    "",
                    f"the flag directory {directory} does not exist; create it or point "
                    "CP_FLAGS_DIR / --flags at the right folder",
                ),
            ),
        )
    contents: dict[str, bytes] = {}
    problems: list[ValidationIssue] = []
    for path in flag_files(directory):
        try:
            contents[path.name] = path.read_bytes()
        except FileNotFoundError:
            continue  # deleted (or renamed away) between listing and reading
        except OSError as exc:
            problems.append(
                _problem(path.name, f"cannot read the file: {exc.strerror}; check its permissions")
            )
    return FlagFiles(str(directory), contents, tuple(problems))


def read_flag_file(path: Path) -> FlagFiles:
    """One flag file on its own (any name; .yaml/.yml is read as YAML, anything else as JSON)."""
    try:
        return FlagFiles(str(path), {path.name: path.read_bytes()})
    except OSError as exc:
        return FlagFiles(
            str(path), problems=(_problem(path.name, f"cannot read the file: {exc.strerror}"),)
        )


def check_files(files: FlagFiles) -> LoadedFlags:
    """Validate and merge `files` without raising; read problems come first among the issues.

    No flag files at all is an error: an empty or mistyped directory (or every file removed at
    once) must not silently unpublish every flag.
    """
    return with_read_problems(files, validate_contents(files.contents))


def with_read_problems(files: FlagFiles, result: ValidationResult) -> ValidationResult:
    """`result` with the problems of reading `files` first (and "no flag files" if none)."""
    problems = files.problems
    if not files.contents and not problems:
        problems = (
            _problem(
                "",
                f"no flag files in {files.source}; flag files are named "
                f"{', '.join(FLAG_FILE_PATTERNS)}",
            ),
        )
    if problems:
        result = ValidationResult(files=result.files, issues=(*problems, *result.issues))
    return result


def load_files(files: FlagFiles) -> LoadedFlags:
    """Validate and merge `files`; raises FlagValidationError carrying every issue."""
    result = check_files(files)
    if not result.ok:
        raise FlagValidationError(describe(list(result.issues)), issues=result.issues)
    return result


def load_directory(directory: Path) -> LoadedFlags:
    """Merge every flag file of `directory`; raises FlagValidationError on any problem."""
    return load_files(read_flag_files(directory))


def validate_path(path: Path) -> LoadedFlags:
    """Validate a flag directory or one flag file without raising (for `control-plane validate`).

    A single file is checked as a standalone flag set, as flagd's file provider would load it.
    """
    return check_files(read_flag_files(path) if path.is_dir() else read_flag_file(path))
