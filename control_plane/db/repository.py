"""Every query the control plane makes, as keyword-only functions taking the session.

Callers own the unit of work (`with database.session() as session: ...`); these functions only
read, add and flush, so several calls commit or roll back together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.db.models import ApiToken, AuditEvent, FlagSetVersion, utc_now
from control_plane.errors import Conflict, TokenNotFound, VersionNotFound

__all__ = [
    "MAX_VERSION",
    "add_audit_event",
    "add_token",
    "add_version",
    "count_versions",
    "get_version",
    "latest_version",
    "list_audit_events",
    "list_tokens",
    "list_versions",
    "lock_versions",
    "revoke_token",
    "token_by_hash",
    "token_by_name",
]


# -- flag set versions -----------------------------------------------------------------------

#: Largest storable version number: the column is a 32-bit INTEGER on PostgreSQL. Numbers
#: outside 1..MAX_VERSION are never stored, so they are answered without a query (a 2**63
#: would overflow the driver's parameter and fail the query instead of finding nothing).
MAX_VERSION = 2**31 - 1


def latest_version(*, session: Session) -> FlagSetVersion | None:
    """The newest stored version, or None when nothing was recorded yet."""
    statement = select(FlagSetVersion).order_by(FlagSetVersion.version.desc()).limit(1)
    return session.scalars(statement).first()


def latest_version_number(*, session: Session) -> int | None:
    """The newest stored version's number (without loading its document), or None."""
    statement = select(FlagSetVersion.version).order_by(FlagSetVersion.version.desc()).limit(1)
    return session.scalars(statement).first()


def get_version(*, session: Session, version: int) -> FlagSetVersion:
    """The stored version `version`; VersionNotFound for any other number, in range or not."""
    if not 1 <= version <= MAX_VERSION:
        raise VersionNotFound(
            f"no flag set version {version} is stored (versions are 1..{MAX_VERSION})"
        )
    row = session.get(FlagSetVersion, version)
    if row is None:
        raise VersionNotFound(f"no flag set version {version} is stored")
    return row


#: One transaction-scoped advisory lock per schema for numbering flag set versions.
_VERSIONS_LOCK = text(
    "SELECT pg_advisory_xact_lock("
    "hashtextextended('control-plane:flag-set-versions:' || current_schema(), 0))"
)


def lock_versions(*, session: Session) -> None:
    """Make this transaction the only one numbering a version until it ends (PostgreSQL).

    Without it, writers racing for the next number (control planes on one database, the file
    watcher beside an admin edit) each read the same newest version, and all but one fail
    with IntegrityError and retry: with six at once the last could lose every attempt (seen
    in tests/test_db_recorder.py, one run in three). Taken first, before the newest version
    is read, so the diff is against the real predecessor too. Released at commit or rollback.
    SQLite lets one writer at a time in already; other databases keep the retry."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_VERSIONS_LOCK)


def add_version(
    *,
    session: Session,
    content_hash: str,
    document: dict[str, Any],
    diff: dict[str, Any],
    source: str,
    actor: str,
    message: str,
    bucketing: str,
    created_at: datetime | None = None,
) -> FlagSetVersion:
    """Store the next version number; a concurrent writer that took it first makes the flush
    raise IntegrityError (the caller retries in a new unit of work)."""
    number = (session.scalar(select(func.max(FlagSetVersion.version))) or 0) + 1
    row = FlagSetVersion(
        version=number,
        content_hash=content_hash,
        document=document,
        diff=diff,
        source=source,
        actor=actor,
        message=message,
        bucketing=bucketing,
        created_at=created_at or utc_now(),
    )
    session.add(row)
    session.flush()
    return row


def list_versions(
    *, session: Session, limit: int, before: int | None = None
) -> list[FlagSetVersion]:
    """Newest first, at most `limit`, only versions below `before` when given (a cursor)."""
    statement = select(FlagSetVersion).order_by(FlagSetVersion.version.desc()).limit(limit)
    if before is not None and before <= MAX_VERSION:  # a larger cursor excludes nothing
        statement = statement.where(FlagSetVersion.version < before)
    return list(session.scalars(statement))


def count_versions(*, session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(FlagSetVersion)) or 0)


# -- tokens ----------------------------------------------------------------------------------


def token_by_name(*, session: Session, name: str) -> ApiToken | None:
    return session.scalars(select(ApiToken).where(ApiToken.name == name)).first()


def token_by_hash(*, session: Session, token_hash: str) -> ApiToken | None:
    """The active (not revoked) token with this SHA-256, if any."""
    statement = select(ApiToken).where(
        ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None)
    )
    return session.scalars(statement).first()


def add_token(
    *, session: Session, name: str, role: str, token_hash: str, created_by: str
) -> ApiToken:
    if token_by_name(session=session, name=name) is not None:
        raise Conflict(f"a token named {name!r} exists already (names are never reused)")
    row = ApiToken(
        name=name, role=role, token_hash=token_hash, created_by=created_by, created_at=utc_now()
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:  # a concurrent create took the name between check and insert
        raise Conflict(f"a token named {name!r} exists already") from exc
    return row


def list_tokens(*, session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(*, session: Session, name: str, actor: str) -> ApiToken:
    """Mark the token revoked (kept for the audit trail); revoking twice is harmless."""
    row = token_by_name(session=session, name=name)
    if row is None:
        raise TokenNotFound(f"no token named {name!r} is stored")
    if row.revoked_at is None:
        row.revoked_at = utc_now()
        row.revoked_by = actor
        session.flush()
    return row


# -- audit events ----------------------------------------------------------------------------


def add_audit_event(
    *, session: Session, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> AuditEvent:
    row = AuditEvent(actor=actor, action=action, target=target, detail=detail or {}, at=utc_now())
    session.add(row)
    session.flush()
    return row


def list_audit_events(
    *, session: Session, limit: int, before: int | None = None
) -> list[AuditEvent]:
    """Newest first; `before` is the id cursor of the previous page's last event."""
    statement = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before is not None:
        statement = statement.where(AuditEvent.id < before)
    return list(session.scalars(statement))
