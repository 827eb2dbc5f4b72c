"""Retention: indexes the pruning pass reads decided SLA deadlines and timers by

Revision ID: 0016_decided_clock_indexes
Revises: 0015_crm_writes
Create Date: 2026-12-04 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_decided_clock_indexes"
down_revision: str | Sequence[str] | None = "0015_crm_writes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_deadlines_decided_at", "deadlines", "status <> 'armed'"),
    ("ix_sla_timers_decided_at", "sla_timers", "status <> 'pending'"),
)


def upgrade() -> None:
    # Built without blocking the monitor's writes: both tables hold a row per deadline ever armed.
    with op.get_context().autocommit_block():
        for name, table, where in INDEXES:
            op.create_index(
                name,
                table,
                ["decided_at"],
                unique=False,
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _ in INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
