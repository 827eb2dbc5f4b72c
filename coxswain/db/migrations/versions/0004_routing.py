"""Routing: account ownership, lead holders and open load, rep counters, roster overrides,
unassigned queue, re-entry state of pool rotation

Revision ID: 0004_routing
Revises: 0001
Create Date: 2026-11-24 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_routing"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.add_column(
        "pool_rotation",
        sa.Column(
            "away", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
    )
    op.create_table(
        "accounts",
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("owner_rep_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_accounts")),
    )
    op.create_table(
        "lead_routing",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("assignment_id", sa.Uuid(), nullable=False),
        sa.Column("rep_id", sa.String(length=64), nullable=False),
        sa.Column("pool_id", sa.String(length=64), nullable=False),
        sa.Column("owners", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=True),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("load", sa.Integer(), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_lead_routing")),
    )
    op.create_index(
        "ix_lead_routing_open_domain",
        "lead_routing",
        ["domain", "opened_at"],
        unique=False,
        postgresql_where=sa.text("open"),
    )
    op.create_table(
        "rep_counters",
        sa.Column("rep_id", sa.String(length=64), nullable=False),
        sa.Column("open_load", sa.Integer(), nullable=False),
        sa.Column("open_leads", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("assigned_on_day", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rep_id", name=op.f("pk_rep_counters")),
    )
    op.create_table(
        "rep_overrides",
        sa.Column("rep_id", sa.String(length=64), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rep_id", name=op.f("pk_rep_overrides")),
    )
    op.create_table(
        "pool_member_overrides",
        sa.Column("pool_id", sa.String(length=64), nullable=False),
        sa.Column("rep_id", sa.String(length=64), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pool_id", "rep_id", name=op.f("pk_pool_member_overrides")),
    )
    op.create_table(
        "roster_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_revision")),
    )
    op.execute("INSERT INTO roster_revision (id, revision, updated_at) VALUES (1, 0, now())")
    op.create_table(
        "unassigned_leads",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("decision_key", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("waiting_for", sa.String(length=64), nullable=True),
        sa.Column("pool_id", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("agreement_version", sa.String(length=64), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_tried_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_unassigned_leads")),
        sa.UniqueConstraint("decision_key", name=op.f("uq_unassigned_leads_decision_key")),
    )
    op.create_index(op.f("ix_unassigned_leads_parked_at"), "unassigned_leads", ["parked_at"], unique=False)


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_index(op.f("ix_unassigned_leads_parked_at"), table_name="unassigned_leads")
    op.drop_table("unassigned_leads")
    op.drop_table("roster_revision")
    op.drop_table("pool_member_overrides")
    op.drop_table("rep_overrides")
    op.drop_table("rep_counters")
    op.drop_index("ix_lead_routing_open_domain", table_name="lead_routing", postgresql_where=sa.text("open"))
    op.drop_table("lead_routing")
    op.drop_table("accounts")
    op.drop_column("pool_rotation", "away")
