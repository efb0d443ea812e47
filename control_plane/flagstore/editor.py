"""Write flag changes made through the admin API back to the flag files, safely.

An edit (PUT of one flag, or a rollback to a stored version) is first applied to the files'
bytes in memory and run through the same loader and validator as a file edit; only a valid
result is written, each file atomically (temp file + os.replace), while the store's lock keeps
the file watcher from reloading half-way; then the store reloads and records the new version
with the caller's source and actor.

A refused edit changes nothing: keys and string values holding NUL, control characters or lone
surrogates are refused by the validator before anything is written, and if the reload or the
version recorder fails after the write (a database error), the files are written back as they
were before the store lock is released. An edit may carry a Precondition (If-Match), checked
against the flag as it is in its file at the moment of writing, under the same lock.
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

from control_plane.errors import FlagNotFound, FlagValidationError
from control_plane.flagstore.documents import parse_flag_file
from control_plane.flagstore.flagset import FlagSet
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.loader import (
    FLAG_FILE_PATTERNS,
    FlagFiles,
    check_files,
    load_directory,
    load_files,
)
from control_plane.flagstore.preconditions import Precondition, flag_etag, flag_set_etag
from control_plane.flagstore.schema import check_document
from control_plane.flagstore.store import FlagStore
from control_plane.flagstore.text_check import find_unsafe_text, unsafe_character
from control_plane.flagstore.validate import describe

__all__ = ["API_FILE", "RESERVED_KEYS", "FlagEditor", "WriteResult", "current_definition"]

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

    def put_flag(
        self,
        key: str,
        definition: Any,
        *,
        actor: str,
        message: str = "",
        source: str = "api",
        precondition: Precondition | None = None,
    ) -> WriteResult:
        """Create or replace flag `key` in its file (new keys go to api.flagd.json).

        `source` is recorded with the new version ("canary" for the canary controller);
        `precondition` (If-Match / If-None-Match) is checked against the flag's ETag on disk."""
        _check_key(key)
        _check_text(key, definition)
        if key in RESERVED_KEYS:
            raise FlagValidationError(
                f"flag key {key!r} is reserved",
                issues=[
                    _issue(
                        API_FILE,
                        key,
                        f"the key {key!r} is reserved by the admin API "
                        f"(/v1/flags/{key}); choose another key",
                    )
                ],
            )
        if not isinstance(definition, dict):
            raise FlagValidationError(
                "the flag definition must be a JSON object",
                issues=[
                    _issue(
                        API_FILE,
                        key,
                        "the request body must be a JSON object with 'state', "
                        "'variants', 'defaultVariant' and optional 'targeting'",
                    )
                ],
            )

        def plan(snapshot: dict[str, bytes]) -> dict[str, bytes | None]:
            _check_flag(precondition, key, snapshot)
            name = self._file_defining(key, snapshot) or API_FILE
            document = self._editable(name, snapshot)
            document.setdefault("flags", {})[key] = definition
            return {name: _serialize(name, document)}

        return self._write(
            plan, source=source, actor=actor, message=message or f"PUT /v1/flags/{key}"
        )

    def delete_flag(
        self,
        key: str,
        *,
        actor: str,
        message: str = "",
        source: str = "api",
        precondition: Precondition | None = None,
    ) -> WriteResult:
        """Remove flag `key` from its file (the file stays, possibly with no flags).

        FlagNotFound when no flag file defines it; `precondition` as for `put_flag`."""
        _check_key(key)

        def plan(snapshot: dict[str, bytes]) -> dict[str, bytes | None]:
            _check_flag(precondition, key, snapshot)
            name = self._file_defining(key, snapshot)
            if name is None:
                raise FlagNotFound(f"no flag file defines a flag named {key!r}")
            document = self._editable(name, snapshot)
            del document["flags"][key]
            return {name: _serialize(name, document)}

        return self._write(
            plan, source=source, actor=actor, message=message or f"DELETE /v1/flags/{key}"
        )

    def restore(
        self,
        document: Mapping[str, Any],
        *,
        actor: str,
        message: str = "",
        source: str = "rollback",
        precondition: Precondition | None = None,
    ) -> WriteResult:
        """Rewrite the flag files so they hold exactly `document` (a stored version).

        `precondition` is checked against the ETag of the serving flag set."""
        flags: Mapping[str, Any] = document.get("flags", {})
        evaluators: Mapping[str, Any] = document.get("$evaluators", {})
        sources: Mapping[str, str] = document.get("sources", {})

        def plan(snapshot: dict[str, bytes]) -> dict[str, bytes | None]:
            if precondition is not None:
                current = (
                    flag_set_etag(self.store.current.content_hash) if self.store.loaded else None
                )
                precondition.check(current, what="the flag set")
            by_file: dict[str, dict[str, Any]] = {}
            for key, definition in flags.items():
                by_file.setdefault(_flag_file_name(sources.get(key)), {})[key] = definition
            if not by_file:
                by_file[API_FILE] = {}
            changes: dict[str, bytes | None] = {
                name: None for name in snapshot if name not in by_file
            }
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
            files = self.store.read_files()
            snapshot = dict(files.contents)
            changes: dict[str, bytes | None] = plan(snapshot)
            self._validate(files, changes)
            for name, content in changes.items():
                undo[name] = snapshot.get(name)  # before writing: a failed write is undone too
                self._put(name, content)
                written.append(name)

        def write_back() -> bool:
            for name, content in undo.items():
                self._put(name, content)
            return bool(undo)

        with self._lock:
            flag_set = self.store.write_and_reload(
                write, source=source, actor=actor, message=message, undo=write_back
            )
        changed = flag_set.version != previous[0]
        return WriteResult(flag_set=flag_set, changed=changed, files=tuple(written))

    def _put(self, name: str, content: bytes | None) -> None:
        """Write (or with None, delete) one flag file; a deletion is announced to the store."""
        target = self.directory / name
        if content is None:
            self.store.note_removed(name)
            target.unlink(missing_ok=True)
        else:
            _atomic_write(target, content)

    def _validate(self, files: FlagFiles, changes: dict[str, bytes | None]) -> None:
        """Validate the would-be directory contents with the store's own loader."""
        contents = {
            name: content
            for name, content in {**files.contents, **changes}.items()
            if content is not None
        }
        # Unreadable files still count; "the directory has no flag files" no longer applies.
        problems = tuple(problem for problem in files.problems if problem.file != files.source)
        checked = FlagFiles(files.source, contents, problems)
        if self.store.strict:
            load_files(checked)  # all or nothing: any error anywhere refuses the write
            return
        # Partial acceptance is for file edits of many flags: an API write is refused (4xx)
        # when any file it writes has an error; invalid flags elsewhere do not block it.
        result = check_files(checked)
        own = [issue for issue in result.errors if issue.file in changes or not issue.file]
        if own:
            raise FlagValidationError(describe(own), issues=tuple(own))

    # -- reading the current files -------------------------------------------------------

    def _file_defining(self, key: str, snapshot: dict[str, bytes]) -> str | None:
        for name, content in snapshot.items():
            document = _parse(name, content)
            if isinstance(document, dict) and key in (document.get("flags") or {}):
                return name
        return None

    def _editable(
        self, name: str, snapshot: dict[str, bytes], *, required: bool = True
    ) -> dict[str, Any]:
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
        raise FlagValidationError(
            f"{name} is not a flag file that can be edited",
            issues=[_issue(name, "", "fix this file by hand first")],
        )


def _check_key(key: str) -> None:
    problem = unsafe_character(key, key=True)
    if problem is not None:
        raise FlagValidationError(
            f"the flag key contains {problem}",
            issues=[
                _issue(
                    API_FILE,
                    key,
                    f"the flag key contains {problem}; flag keys may not hold "
                    "control characters or lone surrogates",
                )
            ],
        )


def _check_text(key: str, definition: Any) -> None:
    """Refuse unsafe text before it is serialised (a lone surrogate cannot even be encoded)."""
    found = find_unsafe_text(definition)
    if found:
        issues = [
            ValidationIssue.at(("flags", key, *location), problem, file=API_FILE)
            for location, problem in found
        ]
        raise FlagValidationError(f"{issues[0].path}: {found[0][1]}", issues=issues)


def current_definition(key: str, snapshot: Mapping[str, bytes]) -> Any:
    """Flag `key` as its file defines it now (parsed as the store parses it), or None."""
    for name in sorted(snapshot):
        parsed = parse_flag_file(name, snapshot[name])
        if parsed.data is None:
            continue
        for found_key, definition, _where in check_document(parsed.data, []).flags:
            if found_key == key:
                return definition
    return None


def _check_flag(precondition: Precondition | None, key: str, snapshot: Mapping[str, bytes]) -> None:
    if precondition is None or not precondition.present:
        return
    definition = current_definition(key, snapshot)
    current = flag_etag(definition) if isinstance(definition, dict) else None
    precondition.check(current, what=f"flag {key!r}")


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
    descriptor, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
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
