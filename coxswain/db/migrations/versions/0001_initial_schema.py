"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 22:47:05.839668
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind long transactions and blocking the services.
    op.execute("SET lock_timeout = '5s'")
    op.create_table(
        "assignments",
        sa.Column("assignment_id", sa.Uuid(), nullable=False),
        sa.Column("decision_key", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("rep_id", sa.String(length=64), nullable=True),
        sa.Column("pool_id", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("agreement_version", sa.String(length=64), nullable=False),
        sa.Column("routed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("assignment_id", name=op.f("pk_assignments")),
        sa.UniqueConstraint("decision_key", name=op.f("uq_assignments_decision_key")),
    )
    op.create_index(op.f("ix_assignments_lead_id"), "assignments", ["lead_id"], unique=False)
    op.create_table(
        "deadlines",
        sa.Column("deadline_id", sa.Uuid(), nullable=False),
        sa.Column("assignment_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("rep_id", sa.String(length=64), nullable=False),
        sa.Column("milestone", sa.String(length=32), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("armed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("deadline_id", name=op.f("pk_deadlines")),
    )
    op.create_index(
        "ix_deadlines_armed_due", "deadlines", ["due_at"], unique=False, postgresql_where=sa.text("status = 'armed'")
    )
    op.create_index(op.f("ix_deadlines_assignment_id"), "deadlines", ["assignment_id"], unique=False)
    op.create_index(op.f("ix_deadlines_lead_id"), "deadlines", ["lead_id"], unique=False)
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "intake_events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("webhook_id", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_intake_events")),
    )
    op.create_index(op.f("ix_intake_events_lead_id"), "intake_events", ["lead_id"], unique=False)
    op.create_table(
        "leads",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("attributes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("touches", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("score_total", sa.Float(), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=True),
        sa.Column("agreement_version", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_leads")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_table(
        "pool_rotation",
        sa.Column("pool_id", sa.String(length=64), nullable=False),
        sa.Column("current", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("assigned", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pool_id", name=op.f("pk_pool_rotation")),
    )
    op.create_table(
        "webhook_inbox",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("webhook_id", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event_ids", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("lead_ids", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "webhook_id", name=op.f("pk_webhook_inbox")),
    )


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_table("webhook_inbox")
    op.drop_table("pool_rotation")
    op.drop_table("outbox")
    op.drop_table("leads")
    op.drop_index(op.f("ix_intake_events_lead_id"), table_name="intake_events")
    op.drop_table("intake_events")
    op.drop_table("inbox")
    op.drop_index(op.f("ix_deadlines_lead_id"), table_name="deadlines")
    op.drop_index(op.f("ix_deadlines_assignment_id"), table_name="deadlines")
    op.drop_index("ix_deadlines_armed_due", table_name="deadlines", postgresql_where=sa.text("status = 'armed'"))
    op.drop_table("deadlines")
    op.drop_index(op.f("ix_assignments_lead_id"), table_name="assignments")
    op.drop_table("assignments")
