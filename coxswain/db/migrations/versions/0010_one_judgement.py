"""One judgement per input: who an SLA response is credited to, ladders that span reassignments,
pacing that counts from when a target was first watched and alerts again only as it worsens

Revision ID: 0010_one_judgement
Revises: 0008_scorecards
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_one_judgement"
down_revision: str | Sequence[str] | None = "0008_scorecards"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind long transactions and blocking the services.
    op.execute("SET lock_timeout = '5s'")
    # Adding a column with a constant default rewrites nothing on PostgreSQL 11+.
    op.add_column("deadlines", sa.Column("responded_by", sa.String(length=64), nullable=True))
    op.add_column("deadlines", sa.Column("superseded_by", sa.Uuid(), nullable=True))
    op.add_column("deadlines", sa.Column("reassignments", sa.Integer(), server_default="0", nullable=False))
    op.add_column("deadlines", sa.Column("paged", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("sla_timers", sa.Column("carried", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("mql_pacing_alerts", sa.Column("level", sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "mql_pacing_watch",
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("target_id", name=op.f("pk_mql_pacing_watch")),
    )
    op.create_index("ix_lead_facts_caused_by", "lead_facts", ["caused_by"], unique=False)


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_index("ix_lead_facts_caused_by", table_name="lead_facts")
    op.drop_table("mql_pacing_watch")
    op.drop_column("mql_pacing_alerts", "level")
    op.drop_column("sla_timers", "carried")
    for column in ("paged", "reassignments", "superseded_by", "responded_by"):
        op.drop_column("deadlines", column)
