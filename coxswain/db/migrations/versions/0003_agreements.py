"""Agreement versions, scoring timers, lead facts and identities; persona and holds on leads

Revision ID: 0003_agreements
Revises: 0001
Create Date: 2026-11-24 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_agreements"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.add_column("leads", sa.Column("persona", sa.String(length=64), nullable=True))
    op.add_column("leads", sa.Column("pinned", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("leads", sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("leads", sa.Column("recycled_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "agreements",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("document", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_agreements")),
    )
    op.create_table(
        "scoring_timers",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("timer_id", sa.Uuid(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("agreement_version", sa.String(length=64), nullable=False),
        sa.Column("armed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_scoring_timers")),
    )
    op.create_index(op.f("ix_scoring_timers_due_at"), "scoring_timers", ["due_at"], unique=False)
    op.create_table(
        "lead_facts",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agreement_version", sa.String(length=64), nullable=True),
        sa.Column("caused_by", sa.Uuid(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_lead_facts")),
    )
    op.create_index(op.f("ix_lead_facts_lead_id"), "lead_facts", ["lead_id"], unique=False)
    op.create_table(
        "lead_identities",
        sa.Column("key", sa.String(length=640), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_lead_identities")),
    )
    op.create_index(op.f("ix_lead_identities_lead_id"), "lead_identities", ["lead_id"], unique=False)


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_index(op.f("ix_lead_identities_lead_id"), table_name="lead_identities")
    op.drop_table("lead_identities")
    op.drop_index(op.f("ix_lead_facts_lead_id"), table_name="lead_facts")
    op.drop_table("lead_facts")
    op.drop_index(op.f("ix_scoring_timers_due_at"), table_name="scoring_timers")
    op.drop_table("scoring_timers")
    op.drop_table("agreements")
    op.drop_column("leads", "recycled_until")
    op.drop_column("leads", "held_until")
    op.drop_column("leads", "pinned")
    op.drop_column("leads", "persona")
