"""Retention: the indexes the pruning pass reads closed crm_writes rows and old CRM activity keys by

Revision ID: 0018_crm_write_retention
Revises: 0017_crm_cursors
Create Date: 2026-12-04 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_crm_write_retention"
down_revision: str | Sequence[str] | None = "0017_crm_cursors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Built without blocking crm-sync's writes: one row per assignment ever written to a CRM.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_crm_writes_closed_at",
            "crm_writes",
            ["closed_at"],
            unique=False,
            postgresql_where=sa.text("closed_at IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_crm_activity_keys_published_at",
            "crm_activity_keys",
            ["published_at"],
            unique=False,
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_crm_activity_keys_published_at",
            table_name="crm_activity_keys",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.drop_index("ix_crm_writes_closed_at", table_name="crm_writes", postgresql_concurrently=True, if_exists=True)
