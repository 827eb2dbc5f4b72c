"""Retention: indexes the pruning pass reads by age (inbox, webhook ids, delivered alerts)

Revision ID: 0013_retention_indexes
Revises: 0012_audit_log
Create Date: 2026-12-04 05:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013_retention_indexes"
down_revision: str | Sequence[str] | None = "0012_audit_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_inbox_processed_at", "inbox", ["processed_at"]),
    ("ix_webhook_inbox_received_at", "webhook_inbox", ["received_at"]),
    ("ix_sla_alert_deliveries_created_at", "sla_alert_deliveries", ["created_at"]),
)


def upgrade() -> None:
    # Built without blocking the services' writes: the inbox is the largest table there is.
    with op.get_context().autocommit_block():
        for name, table, columns in INDEXES:
            op.create_index(name, table, columns, unique=False, postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _ in INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
