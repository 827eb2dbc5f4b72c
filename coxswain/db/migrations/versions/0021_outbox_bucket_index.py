"""Outbox: the index by bucket holds the bucket alone

``ix_outbox_bucket_id`` on (bucket, id) let PostgreSQL look published rows up by id in it: the
relay's delete (``id = ANY(:published)``) could be planned as a scan of that index with the id a
condition on its second column, which walks the whole index once per id. The outbox is a queue,
vacuumed while nearly empty, so its statistics often say it holds a row or two; then that plan
looks cheapest whenever the index is smaller on disk than the primary key. The bench saw it with
two instances: deletes of 40 to 865 rows at 10 to 800 ms, 5,000 to 190,000 buffers each
(docs/benchmarks-history.md, 7 December). Reading by bucket needs the bucket only (a read for several
buckets sorts by id, with either index), and an index of the bucket alone cannot serve a look-up
by id, so the primary key is the only index such a delete can use.

Built and dropped concurrently: relays keep publishing meanwhile.

Revision ID: 0021_outbox_bucket_index
Revises: 0020_routing_state
Create Date: 2026-12-07 00:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021_outbox_bucket_index"
down_revision: str | Sequence[str] | None = "0020_routing_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_outbox_bucket", "outbox", ["bucket"], postgresql_concurrently=True, if_not_exists=True)
        op.drop_index("ix_outbox_bucket_id", table_name="outbox", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_outbox_bucket_id", "outbox", ["bucket", "id"], postgresql_concurrently=True, if_not_exists=True
        )
        op.drop_index("ix_outbox_bucket", table_name="outbox", postgresql_concurrently=True, if_exists=True)
