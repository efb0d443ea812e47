"""SQLAlchemy models of the control plane's own tables, on one declarative `Base`.

Other packages add their tables by declaring models on this same `Base` (in their own module)
and a new Alembic revision in control_plane/migrations/versions; the schema is never created
with `create_all` outside tests, so every change is a migration and an upgrade keeps history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, MetaData, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["ApiToken", "AuditEvent", "Base", "FlagSetVersion", "JsonDocument", "UtcDateTime"]

#: Constraint names Alembic can find again on every database (SQLite has no ALTER of unnamed ones).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON on every database; JSONB on PostgreSQL (indexable, compact).
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FlagSetVersion(Base):
    """One accepted flag set: the full document, who made it, how, and what changed."""

    __tablename__ = "flag_set_versions"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    #: "file" (an edit of the flag directory), "api" (PUT /v1/flags/{key}) or "rollback".
    source: Mapped[str] = mapped_column(String(16))
    #: Who: "file-watcher" for file edits, the token's name for API writes.
    actor: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text, default="")
    #: {"flags": {...}, "$evaluators": {...}, "sources": {key: file name}}.
    document: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    #: Changes from the previous version (see control_plane.flagstore.version_diff).
    diff: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    #: Fractional bucketing generation the version was served with (added in revision 0002,
    #: which back-filled older rows with the generation pinned at the time).
    bucketing: Mapped[str] = mapped_column(String(32), server_default="flagd-fractional-v2")


class ApiToken(Base):
    """An admin API token created through the API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(128), default=None)


class AuditEvent(Base):
    """A write that is not a flag set version (token created or revoked), attributed."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utc_now)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
