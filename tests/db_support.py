"""Database fixtures shared by the persistence tests: SQLite always, PostgreSQL when
TEST_DATABASE_URL is set (each test gets a fresh schema there, dropped afterwards, so the
suite is isolated and can run twice or in parallel against one server).

Test modules bind them by assignment (`database = db_support.database`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.db import Database
from control_plane.db.testing import scratch_database_url

__all__ = ["BACKENDS", "database", "database_url", "empty_database"]

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database: a SQLite file, or a fresh schema on TEST_DATABASE_URL."""
    base = None
    if request.param == "postgresql":
        base = os.environ.get("TEST_DATABASE_URL")
        if not base:
            pytest.skip("TEST_DATABASE_URL is not set (PostgreSQL tests run when it is)")
    url, cleanup = scratch_database_url(base, tmp_path)
    try:
        yield url
    finally:
        cleanup()


@pytest.fixture
def empty_database(database_url: str) -> Iterator[Database]:
    """A Database handle on an empty (never migrated) database."""
    db = Database.from_url(database_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def database(empty_database: Database) -> Database:
    """A Database migrated to the packaged head revision."""
    empty_database.migrate()
    return empty_database
