"""CRM activities polled back: crm_cursors, how far each connection has read each object, and
crm_activity_keys, the activities it already published

``coxswain run crm-sync`` with ``COXSWAIN_CRM_KIND=salesforce`` polls Task, Event, Lead and
Opportunity changes (SOQL, ``SystemModstamp >= cursor - overlap``). The activities a poll finds
are published through the outbox in the transaction that records their keys here and moves the
cursor forward, so a crash publishes nothing or everything, and a change read again (the
overlap, a second process of the same connection, a restart) finds its key and is not
published twice. The index on crm_writes (connection, contact_id) maps a CRM record (a
Salesforce Lead id) back to the Coxswain lead it was written for.

Revision ID: 0017_crm_cursors
Revises: 0016_decided_clock_indexes
Create Date: 2026-12-04 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_crm_cursors"
down_revision: str | Sequence[str] | None = "0016_decided_clock_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crm_cursors",
        sa.Column("connection", sa.String(length=64), nullable=False),
        sa.Column("sobject", sa.String(length=64), nullable=False),
        sa.Column("cursor", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("connection", "sobject", name=op.f("pk_crm_cursors")),
    )
    op.create_table(
        "crm_activity_keys",
        sa.Column("connection", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("connection", "key", name=op.f("pk_crm_activity_keys")),
    )
    op.create_index("ix_crm_writes_contact", "crm_writes", ["connection", "contact_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_crm_writes_contact", table_name="crm_writes")
    op.drop_table("crm_activity_keys")
    op.drop_table("crm_cursors")
