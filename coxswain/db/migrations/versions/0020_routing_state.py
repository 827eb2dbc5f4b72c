"""routing_state: a run of decisions takes its routing locks and reads what they protect in one
round trip

A run of routing decisions waits for its routing locks (transaction-scoped advisory locks, in
ascending key order: services/router/locks.py) and then reads the routing state those locks
protect: the pools' rotations, the accounts, the domains' newest open leads, the leads' holders,
the decisions already stored, the reps' counters. The read must come after the locks: under READ
COMMITTED a statement's snapshot is taken when it starts, so a read in the statement that waited
would miss what the locks' previous holder committed meanwhile (a stored decision, a rep's
counters). That cost a round trip of its own for the locks, in every scoring batch that routes.

``routing_state`` does both in one call: it waits for ``wait_keys`` (ascending, as given), then
runs the read as a query of its own, which in a VOLATILE function takes a fresh snapshot (the
pattern of ``erasure_tombstones``, 0019_erasures), so it sees every commit of the locks' previous
holders. With no keys it is the read alone. It returns one row of JSON arrays, the shape
``services/router/repository.load_state`` decodes; a change to the read is a new migration that
replaces the function.

Revision ID: 0020_routing_state
Revises: 0019_erasures
Create Date: 2026-12-06 09:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020_routing_state"
down_revision: str | Sequence[str] | None = "0019_erasures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.execute(ROUTING_STATE)


def downgrade() -> None:
    op.execute("SET lock_timeout = '5s'")
    op.execute(
        "DROP FUNCTION routing_state(integer, integer[], text[], text[], text[], integer[], uuid[], uuid[], text[])"
    )


ROUTING_STATE = """
CREATE FUNCTION routing_state(
    lock_class integer,
    wait_keys integer[],
    want_pools text[],
    want_candidates text[],
    want_domains text[],
    want_limits integer[],
    want_leads uuid[],
    want_keys uuid[],
    want_reps text[]
) RETURNS TABLE (rotations jsonb, accounts jsonb, held jsonb, previous jsonb, decided jsonb, counters jsonb)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    -- In the order given (ascending): unnest yields the array in order.
    PERFORM count(pg_advisory_xact_lock(lock_class, k)) FROM unnest(wait_keys) AS k;
    RETURN QUERY
    WITH rot AS MATERIALIZED (
        SELECT pool_id, current, assigned, away FROM pool_rotation
        WHERE pool_id = ANY(want_pools) ORDER BY pool_id FOR UPDATE
    ),
    acct AS (SELECT domain, owner_rep_id FROM accounts WHERE domain = ANY(want_candidates)),
    -- Per domain, as many of its newest open leads as the run has leads from it, plus one: a
    -- lead never counts as its own domain's holder, so each decision still finds the newest other.
    newest AS (
        SELECT d.domain, h.lead_id, h.rep_id, h.opened_at
        FROM unnest(want_domains, want_limits) AS d(domain, n),
        LATERAL (
            SELECT lead_id, rep_id, opened_at FROM lead_routing
            WHERE open AND domain = d.domain ORDER BY opened_at DESC, lead_id DESC LIMIT d.n
        ) AS h
    ),
    prev AS MATERIALIZED (
        SELECT lead_id, assignment_id, rep_id, pool_id, domain, tier, load, open, opened_at, owners
        FROM lead_routing WHERE lead_id = ANY(want_leads) ORDER BY lead_id FOR UPDATE
    )
    SELECT
        (SELECT COALESCE(jsonb_agg(jsonb_build_array(pool_id, current, assigned, away)), '[]') FROM rot),
        (SELECT COALESCE(jsonb_agg(jsonb_build_array(domain, owner_rep_id)), '[]') FROM acct),
        (SELECT COALESCE(jsonb_agg(jsonb_build_array(domain, lead_id, rep_id, opened_at)
            ORDER BY domain, opened_at DESC, lead_id DESC), '[]') FROM newest),
        (SELECT COALESCE(jsonb_agg(jsonb_build_array(lead_id, assignment_id, rep_id, pool_id, domain, tier, load,
            open, opened_at, owners)), '[]') FROM prev),
        (SELECT COALESCE(jsonb_agg(decision_key), '[]') FROM assignments WHERE decision_key = ANY(want_keys)),
        (SELECT COALESCE(jsonb_agg(jsonb_build_array(rep_id, open_load, open_leads, day, assigned_on_day)), '[]')
            FROM rep_counters WHERE rep_id = ANY(want_reps) OR rep_id IN (SELECT owner_rep_id FROM acct)
            OR rep_id IN (SELECT rep_id FROM newest) OR rep_id IN (SELECT rep_id FROM prev));
END
$$
"""
