"""Outbox: the index by bucket keeps one entry a row, so a relay's read skips rows long deleted

Every full relay reads its buckets once a second, at each renewal of its leases, through the index
on ``bucket``. Its 32 keys repeat in every row, so PostgreSQL stored them deduplicated: one entry a
bucket and page holding the row pointers of every row of that bucket, waiting and deleted alike. An
index scan marks an entry whose rows are all dead to every transaction so that later scans skip it,
but an entry shared with a waiting row never is, so each read visited again the heap pages of the
rows deleted since the last vacuum, up to a minute's worth: in the bench's two-instance phase 20 ms
a read, against 8.3 with one instance (docs/benchmarks-history.md, 7 December, night). With one entry
a row, a read visits a deleted row once and marks it; the next reads pass over it in the index
(``coxswain.db.database.RELAY_SETTINGS`` keeps the relay's reads on index scans, which mark).

Built and dropped concurrently: relays keep publishing meanwhile.

Revision ID: 0023_outbox_bucket_each_row
Revises: 0022_outbox_sample
Create Date: 2026-12-07 21:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023_outbox_bucket_each_row"
down_revision: str | Sequence[str] | None = "0022_outbox_sample"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_outbox_bucket_each_row",
            "outbox",
            ["bucket"],
            postgresql_with={"deduplicate_items": "off"},
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index("ix_outbox_bucket", table_name="outbox", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_outbox_bucket", "outbox", ["bucket"], postgresql_concurrently=True, if_not_exists=True)
        op.drop_index("ix_outbox_bucket_each_row", table_name="outbox", postgresql_concurrently=True, if_exists=True)
