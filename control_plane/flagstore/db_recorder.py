"""The VersionRecorder that keeps every accepted flag set in the database, with audit and diff.

Each record stores the version number, content hash, time, source (file / api / rollback),
actor, message, the full flag set document and the diff from the previous version. A restart
that loads the same content as the newest stored version reuses its number instead of adding
a duplicate, so numbering survives restarts and replicas agree on what version N means.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import IntegrityError

from control_plane.db import repository
from control_plane.db.engine import Database
from control_plane.db.models import FlagSetVersion
from control_plane.flagstore.flagset import BUCKETING_GENERATION, FlagSet
from control_plane.flagstore.history import RecordRequest
from control_plane.flagstore.version_diff import diff_documents

__all__ = ["DatabaseRecorder", "flag_set_document", "flag_set_from_row"]

log = logging.getLogger(__name__)

#: How often a record is retried when another writer took the same version number.
_ATTEMPTS = 5


def flag_set_document(flag_set: FlagSet) -> dict[str, Any]:
    """What a version row stores: flags, shared evaluators, and the file each flag came from."""
    return {
        "flags": {key: dict(value) for key, value in flag_set.flags.items()},
        "$evaluators": dict(flag_set.evaluators),
        "sources": dict(flag_set.sources),
    }


def flag_set_from_row(row: FlagSetVersion) -> FlagSet:
    document = row.document
    return FlagSet(version=row.version, flags=document.get("flags", {}),
                   evaluators=document.get("$evaluators", {}),
                   sources=document.get("sources", {}), content_hash=row.content_hash)


class DatabaseRecorder:
    """VersionRecorder over a Database (control_plane.flagstore.history.VersionRecorder)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def latest(self) -> FlagSet | None:
        with self.database.session() as session:
            row = repository.latest_version(session=session)
            return flag_set_from_row(row) if row is not None else None

    def record(self, request: RecordRequest) -> int:
        flag_set = request.flag_set
        document = flag_set_document(flag_set)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self.database.session() as session:
                    latest = repository.latest_version(session=session)
                    if (latest is not None and latest.content_hash == flag_set.content_hash
                            and latest.document.get("sources") == document["sources"]):
                        # Same flags from the same files (a restart, another replica): same
                        # version. A rollback to the newest content never gets here, because
                        # the store only records content that differs from what it serves.
                        return latest.version
                    row = repository.add_version(
                        session=session, content_hash=flag_set.content_hash,
                        document=document,
                        diff=diff_documents(latest.document if latest else None, document),
                        source=request.source, actor=request.actor, message=request.message,
                        bucketing=BUCKETING_GENERATION,
                    )
                    version = row.version
                log.info("flag set version %d recorded (source=%s, actor=%s)", version,
                         request.source, request.actor)
                return version
            except IntegrityError:
                if attempt == _ATTEMPTS:
                    raise
                log.info("version number taken by a concurrent writer; retrying")
        raise AssertionError("unreachable")  # pragma: no cover
