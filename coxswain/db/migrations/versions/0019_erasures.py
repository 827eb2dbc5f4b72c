"""erasures: a tombstone per erased lead id (the lead and its aliases) with the time of the erasure

A consumer that is behind may apply, after an erasure, a fact published before it that carries
the person's values. The consumer runtime reads this table in the statement that claims a batch in
the inbox and applies such facts without those values. It holds ids and times only, never a
personal value.

Revision ID: 0019_erasures
Revises: 0018_crm_write_retention
Create Date: 2026-12-04 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_erasures"
down_revision: str | Sequence[str] | None = "0018_crm_write_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.create_table(
        "erasures",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", name=op.f("pk_erasures")),
    )


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_table("erasures")
