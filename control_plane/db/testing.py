"""Throw-away databases for tests and tools: a SQLite file, or a fresh PostgreSQL schema.

`scratch_database_url(base_url, directory)` gives a URL to an empty database and a cleanup
function. On PostgreSQL it creates a uniquely named schema and points `search_path` at it through
the URL, so tests stay isolated (and can run twice, or in parallel) on one shared server.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

__all__ = ["scratch_database_url"]


def scratch_database_url(base_url: str | None, directory: Path) -> tuple[str, Callable[[], None]]:
    """(URL of an empty database, cleanup). `base_url` None means a SQLite file in `directory`."""
    if not base_url:
        path = directory / f"scratch-{secrets.token_hex(4)}.db"
        return f"sqlite:///{path}", lambda: None
    url = make_url(base_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"scratch databases support SQLite and PostgreSQL, not {url.drivername}")
    schema = f"cp_test_{secrets.token_hex(6)}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})

    def cleanup() -> None:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return scoped.render_as_string(hide_password=False), cleanup
