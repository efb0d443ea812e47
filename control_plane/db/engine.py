"""The database handle: one engine and session factory per app, built from a URL, never at import.

SQLite (the embedded default) gets a busy timeout and foreign keys, because the flag watcher
thread and API threads write to the same file; PostgreSQL needs nothing special.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database"]

_SQLITE_BUSY_MS = 10_000


class Database:
    """An engine plus a session factory; `session()` is a unit of work (commit or roll back)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, **engine_options: Any) -> Database:
        """A Database for a SQLAlchemy URL (`sqlite:///file.db`, `postgresql+psycopg://...`)."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, **engine_options)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine_options.setdefault("pool_pre_ping", True)
            engine = create_engine(parsed, **engine_options)
        return cls(engine)

    @property
    def url(self) -> str:
        """The URL with any password masked (safe to print)."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema up to `revision` with Alembic (idempotent)."""
        from control_plane.db.migrate import upgrade

        upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()
