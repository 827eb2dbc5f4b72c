"""outbox_sample: the outbox's backlog counted once per window for the whole deployment

Every process of every service exports ``coxswain_outbox_backlog`` and
``coxswain_outbox_oldest_age_seconds``, and each counted the whole outbox for them every 5 s. The
outbox is a queue whose heap holds dead rows until vacuum reaches it, so a count read every page
of it: in the bench's two-instance phase 28 ms and 13,526 buffers a call, in each of seven
processes (docs/benchmarks-history.md, 7 December, early morning). During an outage, when the backlog is
what on-call looks at, the count is largest and there are most processes running it.

This table holds the last count. A sampler whose window has passed takes the row with an UPDATE
that counts, so one process counts per window however many run; the others read the stored
figure (runtime/metrics.sample_outbox). It stores when the oldest waiting fact was created, not
its age, so every reader reports the age as of its own read.

Revision ID: 0022_outbox_sample
Revises: 0021_outbox_bucket_index
Create Date: 2026-12-07 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_outbox_sample"
down_revision: str | Sequence[str] | None = "0021_outbox_bucket_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.create_table(
        "outbox_sample",
        # One row: the check keeps a second from appearing beside it.
        sa.Column("id", sa.SmallInteger(), server_default="1", autoincrement=False, nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), server_default=sa.text("'epoch'"), nullable=False),
        sa.Column("backlog", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("oldest_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_outbox_sample_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_sample")),
    )
    # 'epoch': the first sampler after the upgrade counts at once.
    op.execute("INSERT INTO outbox_sample (id) VALUES (1)")


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.drop_table("outbox_sample")
