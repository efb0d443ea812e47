"""The VersionRecorder that keeps every accepted flag set in the database, with audit and diff.

Each record stores the version number, content hash, time, source (file / api / rollback),
actor, message, the full flag set document and the diff from the previous version. A restart
that loads the same content as the newest stored version reuses its number instead of adding
a duplicate, so numbering survives restarts and replicas agree on what version N means.

Routing never depends on the database (issue 9): when it cannot be reached for the first flag
set this process serves, that set is served as version `UNRECORDED` (0) instead of being
refused, so a restart during an outage still routes. Later edits need the database: while it
is down they are refused and the store retries them, and the last served set keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import compress
from operator import is_not
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from control_plane.db import repository
from control_plane.db.engine import Database
from control_plane.db.json_text import JsonText
from control_plane.db.models import FlagSetVersion
from control_plane.flagstore.digest import MemberTexts, canonical_json
from control_plane.flagstore.flagset import BUCKETING_GENERATION, FlagSet, as_dict
from control_plane.flagstore.history import RecordRequest
from control_plane.flagstore.version_diff import diff_documents

__all__ = ["UNRECORDED", "DatabaseRecorder", "flag_set_document", "flag_set_from_row"]

log = logging.getLogger(__name__)

#: How often a record is retried when another writer took the same version number.
_ATTEMPTS = 5
#: The version of a flag set served while the database could not record it.
UNRECORDED = 0


def flag_set_document(flag_set: FlagSet) -> dict[str, Any]:
    """What a version row stores: flags, shared evaluators, and the file each flag came from.

    The flags' own definitions, not copies (read only, like every definition of a FlagSet)."""
    return {
        "flags": as_dict(flag_set.flags),
        "$evaluators": as_dict(flag_set.evaluators),
        "sources": as_dict(flag_set.sources),
    }


class _DocumentTexts:
    """The JSON text of each version document, written only where the flags changed: each
    flag's text is kept while its definition is the same object, the sources' text while the
    sources are equal (at 10,000 flags one json.dumps of the document was 45 ms per edit)."""

    def __init__(self) -> None:
        self.flags = MemberTexts()
        self._sources: tuple[dict[str, str], str] = ({}, "{}")

    def document(self, flag_set: FlagSet) -> JsonText:
        members = flag_set_document(flag_set)
        sources = members["sources"]
        if sources != self._sources[0]:
            self._sources = (sources, canonical_json(sources))
        text = "".join(
            (
                '{"flags":',
                self.flags.text(members["flags"]),
                ',"$evaluators":',
                canonical_json(members["$evaluators"]),
                ',"sources":',
                self._sources[1],
                "}",
            )
        )
        return JsonText(members, text)


def flag_set_from_row(row: FlagSetVersion) -> FlagSet:
    document = row.document
    return FlagSet(
        version=row.version,
        flags=document.get("flags", {}),
        evaluators=document.get("$evaluators", {}),
        sources=document.get("sources", {}),
        content_hash=row.content_hash,
    )


@dataclass(frozen=True)
class _Recorded:
    """The newest version this recorder wrote or matched, as it has it in memory."""

    version: int
    content_hash: str
    document: dict[str, Any]
    #: The flag set's own definitions: an object the next set still holds is unchanged.
    flags: Mapping[str, Any]


class DatabaseRecorder:
    """VersionRecorder over a Database (control_plane.flagstore.history.VersionRecorder).

    The newest version is kept in memory: while the database's newest version is still that
    one, an edit is diffed against it without loading its document (at 10,000 flags, reading
    it back cost 0.4 s of an edit of one flag), and flags the store did not re-read are not
    compared at all."""

    def __init__(self, database: Database) -> None:
        self.database = database
        #: Whether this recorder has answered a version yet (the first may be UNRECORDED).
        self._answered = False
        self._last: _Recorded | None = None
        self.texts = _DocumentTexts()

    def latest(self) -> FlagSet | None:
        try:
            with self.database.session() as session:
                row = repository.latest_version(session=session)
                if row is None:
                    return None
                # The database answers: from now on a version it cannot record is refused.
                self._answered = True
                return flag_set_from_row(row)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            if self._answered:
                raise
            log.warning("cannot read the latest flag set version (%s)", _first_line(exc))
            return None

    def record(self, request: RecordRequest) -> int:
        try:
            version = self._record(request)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            if self._answered:
                raise  # the store keeps serving what it serves and retries this edit
            self._answered = True
            log.error(
                "the database cannot record flag set %s (%s); serving it as version %d "
                "(unrecorded) so routing starts; edits wait for the database",
                request.flag_set.content_hash[:12],
                _first_line(exc),
                UNRECORDED,
            )
            return UNRECORDED
        self._answered = True
        return version

    def _record(self, request: RecordRequest) -> int:
        flag_set = request.flag_set
        document = self.texts.document(flag_set)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self.database.session() as session:
                    repository.lock_versions(session=session)
                    latest = self._latest(session)
                    if (
                        latest is not None
                        and latest.content_hash == flag_set.content_hash
                        and latest.document.get("sources") == document["sources"]
                    ):
                        # Same flags from the same files (a restart, another replica): same
                        # version. A rollback to the newest content never gets here, because
                        # the store only records content that differs from what it serves.
                        self._last = _Recorded(
                            latest.version, latest.content_hash, document, flag_set.flags
                        )
                        return latest.version
                    changed = _changed_objects(flag_set.flags, latest.flags) if latest else None
                    row = repository.add_version(
                        session=session,
                        content_hash=flag_set.content_hash,
                        document=document,
                        diff=diff_documents(
                            latest.document if latest else None,
                            document,
                            changed_flags=changed,
                        ),
                        source=request.source,
                        actor=request.actor,
                        message=request.message,
                        bucketing=BUCKETING_GENERATION,
                    )
                    version = row.version
                self._last = _Recorded(version, flag_set.content_hash, document, flag_set.flags)
                log.info(
                    "flag set version %d recorded (source=%s, actor=%s)",
                    version,
                    request.source,
                    request.actor,
                )
                return version
            except IntegrityError:
                if attempt == _ATTEMPTS:
                    raise
                log.info("version number taken by a concurrent writer; retrying")
        raise AssertionError("unreachable")  # pragma: no cover

    def _latest(self, session: Any) -> _Recorded | None:
        """The database's newest version: from memory while it is the one last recorded here,
        else read (another process recorded since, or nothing was recorded here yet)."""
        number = repository.latest_version_number(session=session)
        if number is None:
            return None
        last = self._last
        if last is not None and last.version == number:
            return last
        row = repository.latest_version(session=session)
        if row is None:  # pragma: no cover - deleted between the two reads
            return None
        return _Recorded(row.version, row.content_hash, row.document, {})


def _changed_objects(flags: Mapping[str, Any], before: Mapping[str, Any]) -> list[str]:
    """Keys whose definition is not the very object `before` holds (C-level maps: a Python
    loop over 10,000 flags was 3 ms of every edit)."""
    flags, before = as_dict(flags), as_dict(before)  # dict lookups, not a proxy's
    keys = list(flags)
    return list(compress(keys, map(is_not, map(flags.__getitem__, keys), map(before.get, keys))))


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
