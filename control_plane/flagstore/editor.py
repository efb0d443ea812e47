"""Write flag changes made through the admin API back to the flag files, safely.

An edit (PUT of one flag, or a rollback to a stored version) is first applied to the files'
bytes in memory and run through the same loader and validator as a file edit; only a valid
result is written, each file atomically (temp file + os.replace), while the store's lock keeps
the file watcher from reloading half-way; then the store reloads and records the new version
with the caller's source and actor. A refused edit changes nothing on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from control_plane.errors import FlagValidationError
from control_plane.flagstore.flagset import FlagSet
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.loader import (
    FLAG_FILE_PATTERNS,
    FlagFiles,
    load_directory,
    load_files,
    read_flag_files,
)
from control_plane.flagstore.store import FlagStore

__all__ = ["API_FILE", "RESERVED_KEYS", "FlagEditor", "WriteResult"]

log = logging.getLogger(__name__)

#: Where a flag created through the API goes (existing flags stay in their own file).
API_FILE = "api.flagd.json"
#: Keys that would collide with admin API paths under /v1/flags/.
RESERVED_KEYS = frozenset({"history", "status", "rollback"})
_SCHEMA = "https://flagd.dev/schema/v0/flags.json"


@dataclass(frozen=True)
class WriteResult:
    """The serving flag set after the write, and whether it is a new version."""

    flag_set: FlagSet
    changed: bool
    files: tuple[str, ...]


class FlagEditor:
    """Applies admin API edits to the flag directory of one store."""

    def __init__(self, store: FlagStore) -> None:
        self.store = store
        self.directory = store.directory
        self._lock = threading.Lock()  # one API write at a time (the store lock is re-entrant)

    # -- public operations ---------------------------------------------------------------

    def put_flag(self, key: str, definition: Any, *, actor: str,
                 message: str = "", source: str = "api") -> WriteResult:
        """Create or replace flag `key` in its file (new keys go to api.flagd.json).

        `source` is recorded with the new version ("canary" for the canary controller)."""
        if key in RESERVED_KEYS:
            raise FlagValidationError(
                f"flag key {key!r} is reserved", issues=[_issue(
                    API_FILE, key, f"the key {key!r} is reserved by the admin API "
                                   f"(/v1/flags/{key}); choose another key")])
        if not isinstance(definition, dict):
            raise FlagValidationError(
                "the flag definition must be a JSON object", issues=[_issue(
                    API_FILE, key, "the request body must be a JSON object with 'state', "
                                   "'variants', 'defaultVariant' and optional 'targeting'")])

        def plan(snapshot: dict[str, bytes]) -> dict[str, bytes | None]:
            name = self._file_defining(key, snapshot) or API_FILE
            document = self._editable(name, snapshot)
            document.setdefault("flags", {})[key] = definition
            return {name: _serialize(name, document)}

        return self._write(plan, source=source, actor=actor,
                           message=message or f"PUT /v1/flags/{key}")

    def restore(self, document: Mapping[str, Any], *, actor: str, message: str = "",
                source: str = "rollback") -> WriteResult:
        """Rewrite the flag files so they hold exactly `document` (a stored version)."""
        flags: Mapping[str, Any] = document.get("flags", {})
        evaluators: Mapping[str, Any] = document.get("$evaluators", {})
        sources: Mapping[str, str] = document.get("sources", {})

        def plan(snapshot: dict[str, bytes]) -> dict[str, bytes | None]:
            by_file: dict[str, dict[str, Any]] = {}
            for key, definition in flags.items():
                by_file.setdefault(_flag_file_name(sources.get(key)), {})[key] = definition
            if not by_file:
                by_file[API_FILE] = {}
            changes: dict[str, bytes | None] = {name: None for name in snapshot
                                                if name not in by_file}
            for index, name in enumerate(sorted(by_file)):
                file_document = self._editable(name, snapshot, required=False)
                file_document["flags"] = by_file[name]
                # Shared evaluators are merged across files; keep them in one (the first).
                file_document.pop("$evaluators", None)
                if index == 0 and evaluators:
                    file_document["$evaluators"] = dict(evaluators)
                changes[name] = _serialize(name, file_document)
            return changes

        return self._write(plan, source=source, actor=actor, message=message)

    # -- the write protocol --------------------------------------------------------------

    def _write(self, plan: Any, *, source: str, actor: str, message: str) -> WriteResult:
        written: list[str] = []
        undo: dict[str, bytes | None] = {}
        previous: list[int | None] = []

        def write() -> None:
            previous.append(self.store.current.version if self.store.loaded else None)
            files = read_flag_files(self.directory)
            snapshot = dict(files.contents)
            changes: dict[str, bytes | None] = plan(snapshot)
            self._validate(files, changes)
            for name, content in changes.items():
                undo[name] = snapshot.get(name)
                target = self.directory / name
                if content is None:
                    target.unlink(missing_ok=True)
                else:
                    _atomic_write(target, content)
                written.append(name)

        with self._lock:
            try:
                flag_set = self.store.write_and_reload(write, source=source, actor=actor,
                                                       message=message)
            except FlagValidationError:
                if undo:  # written, then refused by the reload (a concurrent manual edit?)
                    self._undo(undo)
                raise
        changed = flag_set.version != previous[0]
        return WriteResult(flag_set=flag_set, changed=changed, files=tuple(written))

    def _validate(self, files: FlagFiles, changes: dict[str, bytes | None]) -> None:
        """Validate the would-be directory contents with the store's own loader."""
        contents = {name: content for name, content in {**files.contents, **changes}.items()
                    if content is not None}
        # Unreadable files still count; "the directory has no flag files" no longer applies.
        problems = tuple(problem for problem in files.problems if problem.file != files.source)
        load_files(FlagFiles(files.source, contents, problems))

    def _undo(self, undo: dict[str, bytes | None]) -> None:
        def write_back() -> None:
            for name, content in undo.items():
                if content is None:
                    (self.directory / name).unlink(missing_ok=True)
                else:
                    _atomic_write(self.directory / name, content)

        try:
            self.store.write_and_reload(write_back, source="file", actor="file-watcher")
        except FlagValidationError:
            log.warning("flag files restored after a refused API write, but the directory is "
                        "still invalid (edited by hand meanwhile?)")

    # -- reading the current files -------------------------------------------------------

    def _file_defining(self, key: str, snapshot: dict[str, bytes]) -> str | None:
        for name, content in snapshot.items():
            document = _parse(name, content)
            if isinstance(document, dict) and key in (document.get("flags") or {}):
                return name
        return None

    def _editable(self, name: str, snapshot: dict[str, bytes], *,
                  required: bool = True) -> dict[str, Any]:
        """The parsed document of file `name`, or a new one if the file does not exist."""
        content = snapshot.get(name)
        if content is None:
            return {"$schema": _SCHEMA, "flags": {}}
        document = _parse(name, content)
        if isinstance(document, dict) and isinstance(document.get("flags", {}), dict):
            return document
        if not required:
            return {"$schema": _SCHEMA, "flags": {}}  # a rollback replaces a broken file
        # The file cannot be edited as it is: let the validator say why, naming the file.
        load_directory(self.directory)
        raise FlagValidationError(f"{name} is not a flag file that can be edited",
                                  issues=[_issue(name, "", "fix this file by hand first")])


def _flag_file_name(name: str | None) -> str:
    if not name:
        return API_FILE
    base = Path(name).name
    if any(Path(base).match(pattern) for pattern in FLAG_FILE_PATTERNS):
        return base
    return API_FILE


def _parse(name: str, content: bytes) -> Any:
    try:
        text = content.decode("utf-8-sig")
        if name.lower().endswith((".yaml", ".yml")):
            return yaml.safe_load(text)
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError):
        return None


def _serialize(name: str, document: dict[str, Any]) -> bytes:
    if name.lower().endswith((".yaml", ".yml")):
        text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        return text.encode("utf-8")
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _atomic_write(target: Path, content: bytes) -> None:
    """Write via a temp file in the same directory and os.replace, so readers never see half."""
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            shutil.copymode(target, temp_name)
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _issue(file: str, key: str, message: str) -> ValidationIssue:
    location: tuple[str | int, ...] = ("flags", key) if key else ()
    return ValidationIssue.at(location, message, file=file)
