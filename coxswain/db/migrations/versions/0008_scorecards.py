"""Scorecards: one row per issued period, so each period is issued exactly once

Revision ID: 0008_scorecards
Revises: 0007_merge
Create Date: 2026-11-25 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_scorecards"
down_revision: str | Sequence[str] | None = "0007_merge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind long transactions and blocking the services.
    op.execute("SET lock_timeout = '5s'")
    op.create_table(
        "scorecard_periods",
        sa.Column("cadence", sa.String(length=8), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("agreement_version", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scorecard", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("cadence", "period_start", name=op.f("pk_scorecard_periods")),
        sa.UniqueConstraint("label", name=op.f("uq_scorecard_periods_label")),
        sa.UniqueConstraint("event_id", name=op.f("uq_scorecard_periods_event_id")),
    )
    op.create_index("ix_scorecard_periods_period_end", "scorecard_periods", ["period_end"], unique=False)


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_index("ix_scorecard_periods_period_end", table_name="scorecard_periods")
    op.drop_table("scorecard_periods")
