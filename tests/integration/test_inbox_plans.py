"""The consumers' look-up of a batch in the inbox stays a probe per record however large the inbox
grows, on real PostgreSQL, with the plan the consumer's connection caches for it
(docs/benchmarks-history.md, 7 December, after midnight)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.db.sql import clause
from coxswain.runtime.consumer import COUNT_CLAIMED

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONSUMER = "router"
# A consumer's inbox after a few hours of leads: every record it applied, within retention.
GROWN_TO = 20_000
BATCH = 30
# What the look-up was before: the ids a filter on the consumer's whole inbox once the cached plan
# says so.
COUNT_CLAIMED_AS_A_FILTER = "SELECT count(*) FROM inbox WHERE consumer = :c AND event_id = ANY(CAST(:ids AS uuid[]))"


async def entries_read_once_grown(connection: AsyncConnection, statement: str) -> int:
    """Index entries read by ``statement`` (run as a consumer runs it, so from the connection's
    plan cache) for a batch of ``BATCH`` records, all claimed, in an inbox that was analysed with
    one row and has since grown to ``GROWN_TO``.

    The inbox is a temporary table of the same shape, in this transaction: it hides the real one
    from this session only (PostgreSQL looks in the session's temporary schema first), and the
    rollback drops it."""
    await connection.execute(text("CREATE TEMPORARY TABLE inbox (LIKE public.inbox INCLUDING ALL)"))
    grow = text(
        "INSERT INTO inbox (consumer, event_id, topic, processed_at) "
        "SELECT :c, gen_random_uuid(), 'leads.qualified.v1', now() FROM generate_series(1, :rows)"
    )
    await connection.execute(grow, {"c": CONSUMER, "rows": 1})
    await connection.execute(text("ANALYZE inbox"))
    await connection.execute(grow, {"c": CONSUMER, "rows": GROWN_TO})
    ids = list((await connection.scalars(text("SELECT event_id FROM inbox LIMIT :n"), {"n": BATCH})).all())
    # Past the five executions after which PostgreSQL may settle on one plan for all of them.
    for _ in range(8):
        assert await connection.scalar(clause(statement), {"c": CONSUMER, "ids": ids}) == BATCH
    before = await entries_read(connection)
    assert await connection.scalar(clause(statement), {"c": CONSUMER, "ids": ids}) == BATCH
    return await entries_read(connection) - before


async def entries_read(connection: AsyncConnection) -> int:
    """Entries of this session's inbox's primary key read in this transaction, as they are read."""
    return int(
        await connection.scalar(
            text(
                "SELECT pg_stat_get_xact_tuples_returned(indexrelid) FROM pg_index "
                "WHERE indrelid = 'pg_temp.inbox'::regclass AND indisprimary"
            )
        )
    )


async def test_a_batch_is_looked_up_one_probe_per_record_in_a_grown_inbox(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        try:
            assert await entries_read_once_grown(connection, COUNT_CLAIMED) <= 2 * BATCH
        finally:
            await connection.rollback()


async def test_the_ids_as_a_filter_read_the_consumers_whole_inbox_once_grown(engine: AsyncEngine) -> None:
    """The premise: the cached plan of the look-up as it was reads every entry of the consumer."""
    async with engine.connect() as connection:
        try:
            assert await entries_read_once_grown(connection, COUNT_CLAIMED_AS_A_FILTER) >= GROWN_TO
        finally:
            await connection.rollback()


async def test_the_look_up_counts_only_the_ids_the_consumer_claimed(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        try:
            await connection.execute(text("CREATE TEMPORARY TABLE inbox (LIKE public.inbox INCLUDING ALL)"))
            claimed = list(
                (
                    await connection.scalars(
                        text(
                            "INSERT INTO inbox (consumer, event_id, topic, processed_at) "
                            "SELECT c, gen_random_uuid(), 't', now() FROM unnest(ARRAY[:c, 'scoring', :c]) AS c "
                            "RETURNING event_id"
                        ),
                        {"c": CONSUMER},
                    )
                ).all()
            )
            unknown = [await connection.scalar(text("SELECT gen_random_uuid()"))]
            count = clause(COUNT_CLAIMED)
            assert await connection.scalar(count, {"c": CONSUMER, "ids": claimed}) == 2  # not scoring's
            assert await connection.scalar(count, {"c": CONSUMER, "ids": [claimed[0], *unknown]}) == 1
            assert await connection.scalar(count, {"c": CONSUMER, "ids": []}) == 0
        finally:
            await connection.rollback()
