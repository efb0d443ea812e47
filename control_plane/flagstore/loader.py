"""Read the flag directory and merge its files into one flag set (without versioning)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.errors import FlagValidationError

__all__ = ["FLAG_FILE_PATTERNS", "LoadedFlags", "load_directory"]

FLAG_FILE_PATTERNS = ("*.flagd.json", "*.flagd.yaml", "*.flagd.yml")


@dataclass(frozen=True)
class LoadedFlags:
    flags: dict[str, dict[str, Any]]
    evaluators: dict[str, Any]
    sources: dict[str, str]


def flag_files(directory: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in FLAG_FILE_PATTERNS:
        files.update(directory.glob(pattern))
    return sorted(files)


def load_directory(directory: Path) -> LoadedFlags:
    """Merge every flag file of `directory`; raises FlagValidationError on any problem."""
    if not directory.is_dir():
        raise FlagValidationError(f"flag directory {directory} does not exist")
    flags: dict[str, dict[str, Any]] = {}
    evaluators: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path in flag_files(directory):
        document = json.loads(path.read_text(encoding="utf-8"))
        for key, definition in document.get("flags", {}).items():
            if key in flags:
                raise FlagValidationError(
                    f"flag {key!r} is defined in both {sources[key]} and {path.name}"
                )
            flags[key] = definition
            sources[key] = path.name
        evaluators.update(document.get("$evaluators", {}))
    return LoadedFlags(flags=flags, evaluators=evaluators, sources=sources)
