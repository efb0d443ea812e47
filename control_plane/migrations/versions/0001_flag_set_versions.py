"""Flag set versions: every accepted flag set with its hash, source, actor, document and diff.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "flag_set_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("document", _JSON, nullable=False),
        sa.Column("diff", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_flag_set_versions")),
    )
    op.create_index(
        op.f("ix_flag_set_versions_content_hash"), "flag_set_versions", ["content_hash"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_flag_set_versions_content_hash"), table_name="flag_set_versions")
    op.drop_table("flag_set_versions")
