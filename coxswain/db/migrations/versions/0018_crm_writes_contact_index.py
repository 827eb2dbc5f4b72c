"""HubSpot activities: crm_writes looked up by contact

Intake answers a HubSpot webhook event by finding the lead of the contact it names, first among
the contacts crm-sync wrote (``crm_writes.contact_id`` of one connection); without an index that
is a scan of every assignment ever written, inside the request HubSpot waits 5 s for.

Revision ID: 0018_crm_writes_contact_index
Revises: 0016_decided_clock_indexes
Create Date: 2026-12-04 10:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018_crm_writes_contact_index"
down_revision: str | Sequence[str] | None = "0016_decided_clock_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Built without blocking crm-sync's writes.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_crm_writes_contact",
            "crm_writes",
            ["connection", "contact_id", "written_at"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_crm_writes_contact", table_name="crm_writes", postgresql_concurrently=True, if_exists=True)
