"""Outbox buckets with leases: relays publish in parallel, one relay per bucket, no global lock

Revision ID: 0011_outbox_buckets
Revises: 0010_one_judgement
Create Date: 2026-12-03 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_outbox_buckets"
down_revision: str | Sequence[str] | None = "0010_one_judgement"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Fail fast instead of queueing behind long transactions and blocking the services.
    op.execute("SET lock_timeout = '5s'")
    # Rows staged before this revision are all in bucket 0: their relative order is kept, because
    # one relay publishes a bucket at a time.
    op.add_column("outbox", sa.Column("bucket", sa.SmallInteger(), server_default="0", nullable=False))
    op.create_index("ix_outbox_bucket_id", "outbox", ["bucket", "id"], unique=False)
    op.create_table(
        "outbox_leases",
        sa.Column("bucket", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), server_default=sa.text("'epoch'"), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name=op.f("pk_outbox_leases")),
    )
    op.create_table(
        "outbox_relays",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_outbox_relays")),
    )


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_table("outbox_relays")
    op.drop_table("outbox_leases")
    op.drop_index("ix_outbox_bucket_id", table_name="outbox")
    op.drop_column("outbox", "bucket")
