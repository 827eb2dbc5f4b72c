"""erasures: a tombstone per erased lead id (the lead and its aliases) with the time of the erasure

A consumer that is behind may apply, after an erasure, a fact published before it that carries
the person's values. The consumer runtime reads this table in the statement that claims a batch in
the inbox and applies such facts without those values. It holds ids and times only, never a
personal value.

Two functions keep a batch applied while an erasure runs from escaping both: ``lock_erasure``
(the erasure, before it reads anything) takes the exclusive advisory locks of the ids' buckets
and waits for the batches holding them; ``erasure_tombstones`` (the consumer's claim) takes the
shared ones without waiting, failing with ``lock_not_available`` while an erasure holds one, and
then reads the tombstones in a snapshot of its own (a VOLATILE function's query takes a fresh one
under READ COMMITTED), so it sees every erasure that committed before its locks were granted.

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
    op.execute(LOCK_ERASURE)
    op.execute(ERASURE_TOMBSTONES)


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.execute("DROP FUNCTION erasure_tombstones(uuid[])")
    op.execute("DROP FUNCTION lock_erasure(uuid[])")
    op.drop_table("erasures")


# Advisory keys (25970, bucket of the lead id). 64 buckets bound the locks a batch of 500 leads
# holds to 64, and an erasure (rare, milliseconds) holds up only the batches of its buckets. The
# class 25970 is 0x6572 ("er"), apart from the router's 0x726F and scoring's 0x1D.
BUCKETS = "SELECT DISTINCT hashtext(id::text) & 63 FROM unnest(lead_ids) AS id WHERE id IS NOT NULL ORDER BY 1"

LOCK_ERASURE = f"""
CREATE FUNCTION lock_erasure(lead_ids uuid[]) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    bucket int;
BEGIN
    FOR bucket IN {BUCKETS} LOOP
        PERFORM pg_advisory_xact_lock(25970, bucket);
    END LOOP;
END
$$
"""

ERASURE_TOMBSTONES = f"""
CREATE FUNCTION erasure_tombstones(lead_ids uuid[]) RETURNS TABLE (tombstone uuid, erased_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT coalesce((SELECT bool_and(pg_try_advisory_xact_lock_shared(25970, b)) FROM ({BUCKETS}) AS k(b)), true)
    THEN
        RAISE EXCEPTION 'an erasure of a lead of this batch is in progress' USING ERRCODE = 'lock_not_available';
    END IF;
    RETURN QUERY SELECT e.lead_id, e.erased_at FROM erasures AS e WHERE e.lead_id = ANY(lead_ids);
END
$$
"""
