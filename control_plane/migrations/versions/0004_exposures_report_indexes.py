"""Exposures keep only the index the reports use: (flag, unit); (flag, at) is dropped.

Every report query on exposures filters by flag and groups by unit (or decision id) or by flag
set version (control_plane.experiments.repository); none filters or sorts by `at` within a
flag, and joins from outcome events use the primary key. Each secondary index costs every
insert of the experiment writer: with two an insert took 8.7-13 us, with the key alone 3.1-3.3.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_exposures_flag_at", table_name="exposures")


def downgrade() -> None:
    op.create_index("ix_exposures_flag_at", "exposures", ["flag", "at"])
