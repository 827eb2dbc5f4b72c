"""CRM write-back: crm_writes, the writes a CRM connector completed, one row per assignment

``coxswain run crm-sync`` inserts a row in the transaction that claims the routed fact in the
inbox, after the owner and the task are written: a redelivery finds the task here (or, after a
crash before the commit, in the CRM by its assignment id) and creates no second one. The row
keeps the task id, so a reassignment or a release closes that task. ``connection`` is the
CRM connection (COXSWAIN_CRM_CONNECTION): two HubSpot accounts keep separate rows.

Revision ID: 0015_crm_writes
Revises: 0014_monthly_partitions
Create Date: 2026-12-04 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_crm_writes"
down_revision: str | Sequence[str] | None = "0014_monthly_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crm_writes",
        sa.Column("connection", sa.String(length=64), nullable=False),
        sa.Column("assignment_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("rep_id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_reason", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("connection", "assignment_id", name=op.f("pk_crm_writes")),
    )
    op.create_index(op.f("ix_crm_writes_lead_id"), "crm_writes", ["lead_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_crm_writes_lead_id"), table_name="crm_writes")
    op.drop_table("crm_writes")
