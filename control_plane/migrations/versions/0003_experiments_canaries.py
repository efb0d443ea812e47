"""Experiments and canaries: exposures, outcome events, backend call samples, canary runs.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "exposures",
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("flag", sa.String(length=256), nullable=False),
        sa.Column("variant", sa.String(length=256), nullable=False),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("flag_set_version", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name=op.f("pk_exposures")),
    )
    op.create_index("ix_exposures_flag_unit", "exposures", ["flag", "unit"])
    op.create_index("ix_exposures_flag_at", "exposures", ["flag", "at"])
    op.create_table(
        "outcome_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("decision_id", sa.String(length=64), nullable=True),
        sa.Column("flag", sa.String(length=256), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcome_events")),
    )
    op.create_index("ix_outcome_events_flag_metric", "outcome_events", ["flag", "metric"])
    op.create_index("ix_outcome_events_decision_id", "outcome_events", ["decision_id"])
    op.create_table(
        "call_samples",
        sa.Column("decision_id", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=256), nullable=False),
        sa.Column("flag", sa.String(length=256), nullable=False),
        sa.Column("backend", sa.String(length=256), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("error", sa.String(length=32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("decision_id", "variant", name=op.f("pk_call_samples")),
    )
    op.create_index("ix_call_samples_flag_variant_at", "call_samples", ["flag", "variant", "at"])
    op.create_table(
        "experiment_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_experiment_keys")),
    )
    op.create_table(
        "canary_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("flag", sa.String(length=256), nullable=False),
        sa.Column("active_flag", sa.String(length=256), nullable=True),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canary_runs")),
        sa.UniqueConstraint("active_flag", name=op.f("uq_canary_runs_active_flag")),
    )
    op.create_index("ix_canary_runs_flag", "canary_runs", ["flag"])
    op.create_table(
        "canary_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=True),
        sa.Column("flag_set_version", sa.Integer(), nullable=True),
        sa.Column("detail", _JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["canary_runs.id"], name=op.f("fk_canary_events_run_id_canary_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canary_events")),
    )
    op.create_index(op.f("ix_canary_events_run_id"), "canary_events", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_canary_events_run_id"), table_name="canary_events")
    op.drop_table("canary_events")
    op.drop_index("ix_canary_runs_flag", table_name="canary_runs")
    op.drop_table("canary_runs")
    op.drop_table("experiment_keys")
    op.drop_index("ix_call_samples_flag_variant_at", table_name="call_samples")
    op.drop_table("call_samples")
    op.drop_index("ix_outcome_events_decision_id", table_name="outcome_events")
    op.drop_index("ix_outcome_events_flag_metric", table_name="outcome_events")
    op.drop_table("outcome_events")
    op.drop_index("ix_exposures_flag_at", table_name="exposures")
    op.drop_index("ix_exposures_flag_unit", table_name="exposures")
    op.drop_table("exposures")
