"""SLA timers, alert webhook queue, marketing MQL counts

Revision ID: 0002_sla
Revises: 0001
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_sla"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.add_column("deadlines", sa.Column("team", sa.String(length=64), nullable=True))
    op.add_column("deadlines", sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("deadlines", sa.Column("calendar", sa.String(length=64), nullable=True))
    op.add_column("deadlines", sa.Column("agreement_version", sa.String(length=64), nullable=True))
    op.add_column("deadlines", sa.Column("responded_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "sla_timers",
        sa.Column("deadline_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("fraction", sa.Float(), nullable=True),
        sa.Column("step", sa.String(length=32), nullable=True),
        sa.Column("step_index", sa.Integer(), nullable=True),
        sa.Column("target", sa.String(length=128), nullable=True),
        sa.Column("exclude_last", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fired_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("deadline_id", "key", name=op.f("pk_sla_timers")),
    )
    op.create_index(
        "ix_sla_timers_pending_due",
        "sla_timers",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    # Deadlines armed before this release keep their breach: it becomes their one timer.
    op.execute(
        "INSERT INTO sla_timers (deadline_id, key, kind, due_at, status) "
        "SELECT deadline_id, 'breach', 'breach', due_at, 'pending' FROM deadlines WHERE status = 'armed'"
    )
    op.create_table(
        "sla_alert_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("alert", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_alert_deliveries")),
        sa.UniqueConstraint("event_id", name=op.f("uq_sla_alert_deliveries_event_id")),
    )
    op.create_index(
        "ix_sla_alert_deliveries_pending_next",
        "sla_alert_deliveries",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "marketing_mqls",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("qualified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_marketing_mqls")),
    )
    op.create_index(op.f("ix_marketing_mqls_qualified_at"), "marketing_mqls", ["qualified_at"], unique=False)
    op.create_table(
        "mql_pacing_alerts",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_mql_pacing_alerts")),
    )


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_table("mql_pacing_alerts")
    op.drop_index(op.f("ix_marketing_mqls_qualified_at"), table_name="marketing_mqls")
    op.drop_table("marketing_mqls")
    op.drop_index(
        "ix_sla_alert_deliveries_pending_next",
        table_name="sla_alert_deliveries",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_table("sla_alert_deliveries")
    op.drop_index("ix_sla_timers_pending_due", table_name="sla_timers", postgresql_where=sa.text("status = 'pending'"))
    op.drop_table("sla_timers")
    for column in ("responded_at", "agreement_version", "calendar", "started_at", "team"):
        op.drop_column("deadlines", column)
