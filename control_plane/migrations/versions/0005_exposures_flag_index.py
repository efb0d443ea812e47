"""Exposures are found by flag alone: (flag, unit) is replaced by (flag).

Every report query filters exposures by flag and groups by coalesce(unit, decision_id), by
variant or by flag set version (control_plane.experiments.repository): no plan uses `unit` in
the index (SQLite's query plans are the same with either), while every insert pays for it. A
unit is a random 64-character HMAC, so each insert lands on a random page of a large index:
11-12 us per exposure on SQLite at 100,000 rows (more as the table grows, once the index
outgrows the page cache), against 2.0 us for (flag), whose entries are appended in key order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_exposures_flag", "exposures", ["flag"])
    op.drop_index("ix_exposures_flag_unit", table_name="exposures")


def downgrade() -> None:
    op.create_index("ix_exposures_flag_unit", "exposures", ["flag", "unit"])
    op.drop_index("ix_exposures_flag", table_name="exposures")
