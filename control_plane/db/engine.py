"""The database handle: one engine and session factory per app, built from a URL, never at import.

Every connection is bounded in time, so an unreachable database is an error after seconds,
never a thread that waits forever (`DatabaseTimeouts`):
- PostgreSQL (psycopg): `connect_timeout` for the whole connection set-up, a server-side
  `statement_timeout` (added to any `options` the URL carries, such as a search_path), and TCP
  keepalives plus `tcp_user_timeout`, so a peer that vanished from the network is noticed.
  A proxy that stops forwarding but keeps the socket open defeats all of these (the kernel
  acknowledges every byte); `interrupt()` is the answer to that: another thread shuts the
  socket down and the blocked call fails.
- SQLite (the embedded default): a busy timeout (the driver's and the pragma) and foreign keys,
  because the flag watcher thread and API threads write to the same file; `interrupt()` aborts
  a running statement.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db.json_text import dump_json

if TYPE_CHECKING:
    from control_plane.settings import Settings

__all__ = ["Database", "DatabaseTimeouts", "interrupt"]


@dataclass(frozen=True)
class DatabaseTimeouts:
    """Time limits of every connection (seconds); see the module docstring for what each does."""

    #: PostgreSQL: connection set-up, TCP connect through authentication (libpq minimum 2).
    connect: int = 5
    #: PostgreSQL: longest statement the server runs before cancelling it.
    statement: float = 30.0
    #: SQLite: how long a write waits for another writer's lock before failing.
    sqlite_busy: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseTimeouts:
        return cls(
            connect=settings.database_connect_timeout,
            statement=settings.database_statement_timeout,
            sqlite_busy=settings.database_sqlite_busy_timeout,
        )


class Database:
    """An engine plus a session factory; `session()` is a unit of work (commit or roll back)."""

    def __init__(self, engine: Engine, timeouts: DatabaseTimeouts | None = None) -> None:
        self.engine = engine
        self.timeouts = timeouts or DatabaseTimeouts()
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(
        cls, url: str | URL, *, timeouts: DatabaseTimeouts | None = None, **engine_options: Any
    ) -> Database:
        """A Database for a SQLAlchemy URL (`sqlite:///file.db`, `postgresql+psycopg://...`)."""
        timeouts = timeouts or DatabaseTimeouts()
        parsed = make_url(url)
        connect_args = dict(engine_options.pop("connect_args", {}))
        engine_options.setdefault("json_serializer", dump_json)  # pre-written JSON text as is
        if parsed.get_backend_name() == "sqlite":
            connect_args.setdefault("timeout", timeouts.sqlite_busy)
            engine = create_engine(parsed, connect_args=connect_args, **engine_options)
            busy_ms = int(timeouts.sqlite_busy * 1000)
            event.listen(
                engine, "connect", lambda connection, _record: _sqlite_pragmas(connection, busy_ms)
            )
        else:
            if parsed.get_driver_name() == "psycopg":
                connect_args = _psycopg_args(parsed, timeouts) | connect_args
            engine_options.setdefault("pool_pre_ping", True)
            engine = create_engine(parsed, connect_args=connect_args, **engine_options)
        return cls(engine, timeouts)

    def derive(self, **engine_options: Any) -> Database:
        """Another Database on the same URL and timeouts, with its own pool and options (the
        experiment writer's, whose connections another thread may interrupt)."""
        return Database.from_url(self.engine.url, timeouts=self.timeouts, **engine_options)

    @property
    def url(self) -> str:
        """The URL with any password masked (safe to print)."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

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


def interrupt(dbapi_connection: Any) -> None:
    """Make whatever `dbapi_connection` is doing fail now; safe to call from another thread.

    sqlite3 has `interrupt()`. A psycopg connection waiting for a server that does not answer
    is unblocked by shutting its socket down (the connection is then unusable: SQLAlchemy sees
    a disconnect and discards it).
    """
    native = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if hasattr(native, "interrupt"):  # sqlite3.Connection
        with contextlib.suppress(Exception):
            native.interrupt()
        return
    pgconn = getattr(native, "pgconn", None)
    fileno = getattr(pgconn, "socket", None) if pgconn is not None else None
    if not isinstance(fileno, int) or fileno < 0:
        return
    with contextlib.suppress(OSError):
        # A duplicate descriptor: shutdown() acts on the shared socket, close() only on ours.
        duplicate = socket.socket(fileno=os.dup(fileno))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


def _psycopg_args(url: URL, timeouts: DatabaseTimeouts) -> dict[str, Any]:
    statement_ms = max(1, int(timeouts.statement * 1000))
    # Options given in the URL (a scratch schema's search_path) are kept: connect_args would
    # otherwise replace them.
    options = " ".join(
        filter(None, [str(url.query.get("options") or ""), f"-c statement_timeout={statement_ms}"])
    )
    return {
        "connect_timeout": max(2, int(timeouts.connect)),
        "options": options,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        # Unacknowledged data for this long closes the connection (a host that vanished).
        "tcp_user_timeout": max(1000, int(timeouts.statement * 1000)),
    }


def _sqlite_pragmas(dbapi_connection: Any, busy_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()
