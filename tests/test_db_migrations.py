"""Schema migrations: upgrades keep existing history, and the models match the migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import db_support
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from control_plane.db import Database, repository
from control_plane.db.migrate import alembic_config, current_revision, head_revision, upgrade
from control_plane.db.models import Base

database_url = db_support.database_url
empty_database = db_support.empty_database


def test_upgrade_from_initial_revision_keeps_history(empty_database: Database) -> None:
    """A database created at revision 0001 with a history row keeps it after upgrading to head."""
    upgrade(empty_database.engine, "0001")
    assert current_revision(empty_database.engine) == "0001"
    document = {
        "flags": {"f": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}},
        "$evaluators": {},
        "sources": {"f": "a.flagd.json"},
    }
    with empty_database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO flag_set_versions (version, content_hash, created_at, source, "
                "actor, message, document, diff) VALUES (1, :hash, :at, 'file', "
                "'file-watcher', 'first', :document, :diff)"
            ),
            {
                "hash": "ab" * 32,
                "at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
                "document": json.dumps(document),
                "diff": json.dumps({"flags": []}),
            },
        )
    assert "api_tokens" not in inspect(empty_database.engine).get_table_names()

    empty_database.migrate()

    assert current_revision(empty_database.engine) == head_revision()
    with empty_database.session() as session:
        row = repository.get_version(session=session, version=1)
        assert row.content_hash == "ab" * 32
        assert row.message == "first"
        assert row.document == document
        assert row.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        # Revision 0002 back-filled the bucketing generation the old row was served with.
        assert row.bucketing == "flagd-fractional-v2"
        # ...and the next version continues the numbering.
        new = repository.add_version(
            session=session,
            content_hash="cd" * 32,
            document=document,
            diff={},
            source="api",
            actor="ops",
            message="",
            bucketing="flagd-fractional-v2",
        )
        assert new.version == 2
    assert {"api_tokens", "audit_events"} <= set(inspect(empty_database.engine).get_table_names())


def test_migrate_is_idempotent(empty_database: Database) -> None:
    """Running the migrations twice (every service start does) changes nothing the second time."""
    empty_database.migrate()
    with empty_database.session() as session:
        repository.add_audit_event(session=session, actor="a", action="token.create", target="t")
    empty_database.migrate()
    assert current_revision(empty_database.engine) == head_revision()
    with empty_database.session() as session:
        assert len(repository.list_audit_events(session=session, limit=10)) == 1


def test_models_match_migrations(empty_database: Database) -> None:
    """The ORM models and the migrated schema agree (a model change without a migration fails)."""
    empty_database.migrate()
    with empty_database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_downgrade_to_initial_and_back_keeps_versions(empty_database: Database) -> None:
    """Downgrading to 0001 and upgrading again keeps the stored versions (tokens are dropped)."""
    empty_database.migrate()
    with empty_database.session() as session:
        repository.add_version(
            session=session,
            content_hash="ef" * 32,
            document={"flags": {}},
            diff={},
            source="file",
            actor="file-watcher",
            message="",
            bucketing="flagd-fractional-v2",
        )
    upgrade_then = head_revision()
    config = alembic_config(empty_database.engine)
    with empty_database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    assert current_revision(empty_database.engine) == "0001"
    empty_database.migrate()
    assert current_revision(empty_database.engine) == upgrade_then
    with empty_database.session() as session:
        assert repository.get_version(session=session, version=1).content_hash == "ef" * 32
