"""Reporting: the facts reports are computed from, and each lead's report dimensions

Revision ID: 0006_reporting
Revises: 0001
Create Date: 2026-11-24 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_reporting"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind long transactions and blocking the services.
    op.execute("SET lock_timeout = '5s'")
    op.create_table(
        "report_facts",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agreement_version", sa.String(length=64), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_report_facts")),
    )
    op.create_index(op.f("ix_report_facts_lead_id"), "report_facts", ["lead_id"], unique=False)
    op.create_index("ix_report_facts_kind_occurred_at", "report_facts", ["kind", "occurred_at"], unique=False)
    # SLA facts find the routing (and so the team) of their assignment.
    op.create_index(
        "ix_report_facts_routed_assignment",
        "report_facts",
        [sa.text("(payload->>'assignment_id')")],
        postgresql_where=sa.text("kind = 'LeadRoutedV1'"),
    )
    op.create_table(
        "report_leads",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("campaign", sa.String(length=256), nullable=True),
        sa.Column("persona", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_report_leads")),
    )


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_table("report_leads")
    op.drop_index("ix_report_facts_routed_assignment", table_name="report_facts")
    op.drop_index("ix_report_facts_kind_occurred_at", table_name="report_facts")
    op.drop_index(op.f("ix_report_facts_lead_id"), table_name="report_facts")
    op.drop_table("report_facts")
