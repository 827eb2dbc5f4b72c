"""The relay's statements are planned against the outbox as it is when they run, on real
PostgreSQL: a delete prepared while the outbox was a few pages does not scan the whole heap once
the outbox has grown to thousands of pages (docs/benchmarks.md, 5 December, afternoon)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.db.database import create_relay_engine
from coxswain.runtime.outbox import DELETE_PUBLISHED, RELAY_LOCK
from coxswain.settings import DatabaseConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Rows enough to grow the outbox to a few thousand pages, as a minute of leads between two
# autovacuum runs does.
GROWN_TO = 20_000


@pytest_asyncio.fixture(loop_scope="session")
async def relay_engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    engine = create_relay_engine(DatabaseConfig())
    yield engine
    await engine.dispose()


async def scans_of_the_heap_once_grown(connection: AsyncConnection) -> int:
    """Whole-heap scans of an outbox by the relay's delete, run as the relay runs it, once that
    outbox has grown after the statement was prepared and run on it small.

    The outbox is a temporary table of the same shape, in this transaction: it hides the real one
    from this session only (PostgreSQL looks in the session's temporary schema first), and the
    rollback drops it."""
    await connection.execute(text("CREATE TEMPORARY TABLE outbox (LIKE public.outbox INCLUDING ALL)"))

    async def delete_published(ids: list[int]) -> None:
        assert await connection.scalar(DELETE_PUBLISHED, {"ids": ids, "gate": RELAY_LOCK})

    # Past the five executions after which PostgreSQL may settle on one plan for all of them.
    for attempt in range(8):
        await delete_published([attempt])
    await connection.execute(
        text(
            "INSERT INTO outbox (event_id, topic, key, value, headers, created_at) "
            "SELECT gen_random_uuid(), 't', '\\x00', convert_to(repeat('x', 600), 'UTF8'), '{}', now() "
            "FROM generate_series(1, :rows)"
        ),
        {"rows": GROWN_TO},
    )
    before = await heap_scans(connection)
    await delete_published([5, 6, 7])
    return await heap_scans(connection) - before


async def heap_scans(connection: AsyncConnection) -> int:
    """Sequential scans of this session's outbox in this transaction, counted as they happen."""
    return int(await connection.scalar(text("SELECT pg_stat_get_xact_numscans('pg_temp.outbox'::regclass)")))


async def test_the_relays_delete_uses_the_index_once_the_outbox_has_grown(relay_engine: AsyncEngine) -> None:
    async with relay_engine.connect() as connection:
        try:
            assert await scans_of_the_heap_once_grown(connection) == 0
        finally:
            await connection.rollback()


async def test_a_plan_made_once_for_a_small_outbox_scans_it_whole_once_grown(engine: AsyncEngine) -> None:
    """The premise: with PostgreSQL's default plan cache, the same delete keeps the plan it was
    given while the outbox was small."""
    async with engine.connect() as connection:
        try:
            assert await scans_of_the_heap_once_grown(connection) == 1
        finally:
            await connection.rollback()
