"""The relay's statements are planned against the outbox as it is when they run, on real
PostgreSQL: a delete prepared while the outbox was a few pages does not scan the whole heap once
the outbox has grown to thousands of pages (docs/benchmarks-history.md, 5 December, afternoon), and the
delete of published rows finds them by the primary key whatever the outbox's statistics say
(7 December)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

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


# Rows a relay's delete removes at once under load: a batch published while the last one waited.
DELETED = 800
# Rows the outbox held at its fullest (after an outage, say), which its primary key keeps the size
# of until it is rebuilt.
FULLEST = 200_000


async def indexes_the_delete_scans(engine: AsyncEngine, with_bucket_and_id: bool) -> set[str]:
    """The outbox's indexes the relay's delete of ``DELETED`` published rows scans, planned as the
    relay plans it, in an outbox that once held ``FULLEST`` rows, was vacuumed while it held a
    single one (as a queue is: its statistics then say it holds about one) and has grown again
    since, and whose other indexes are smaller on disk than its primary key (rebuilt, or newer);
    ``with_bucket_and_id`` adds the index on (bucket, id) the outbox had before migration 0021.

    A temporary table of the outbox's shape hides the real one from this session only. Outside a
    transaction, since VACUUM cannot run in one; dropped at the end."""
    async with engine.connect() as connection:
        session = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await session.execute(text("CREATE TEMPORARY TABLE outbox (LIKE public.outbox INCLUDING ALL)"))
        try:
            if with_bucket_and_id:
                await session.execute(text("CREATE INDEX outbox_bucket_id ON outbox (bucket, id)"))
            grow = text(
                "INSERT INTO outbox (event_id, topic, key, value, headers, bucket, created_at) "
                "SELECT gen_random_uuid(), 't', '\\x00', '\\x00', '{}', g % 32, now() "
                "FROM generate_series(1, :rows) AS g"
            )
            await session.execute(grow, {"rows": FULLEST})
            await session.execute(text("DELETE FROM outbox WHERE id < (SELECT max(id) FROM outbox)"))
            await session.execute(text("VACUUM outbox"))
            indexes = (
                await session.execute(
                    text(
                        "SELECT indexrelid::regclass::text AS name, indisprimary AS primary_key FROM pg_index "
                        "WHERE indrelid = 'pg_temp.outbox'::regclass"
                    )
                )
            ).all()
            (primary,) = [index.name for index in indexes if index.primary_key]
            for index in indexes:
                if not index.primary_key:
                    await session.execute(text(f"REINDEX INDEX {index.name}"))
            await session.execute(grow, {"rows": GROWN_TO})
            ids = list(
                (await session.scalars(text("SELECT id FROM outbox ORDER BY id LIMIT :n"), {"n": DELETED})).all()
            )
            explained = await session.scalar(
                text(f"EXPLAIN (ANALYZE, FORMAT JSON) {DELETE_PUBLISHED.text}"), {"ids": ids, "gate": RELAY_LOCK}
            )
            assert await session.scalar(text("SELECT count(*) FROM outbox WHERE id = ANY(:ids)"), {"ids": ids}) == 0
        finally:
            await session.execute(text("DROP TABLE IF EXISTS pg_temp.outbox"))
    scanned = set(index_names(explained[0]["Plan"]))
    return scanned - {primary}


def index_names(node: dict[str, Any]) -> list[str]:
    """The indexes a plan's nodes scan."""
    own = [node["Index Name"]] if "Index Name" in node else []
    return own + [name for child in node.get("Plans", []) for name in index_names(child)]


async def test_the_relays_delete_looks_rows_up_by_the_primary_key_only(relay_engine: AsyncEngine) -> None:
    assert await indexes_the_delete_scans(relay_engine, with_bucket_and_id=False) == set()


async def test_an_index_on_bucket_and_id_served_the_delete_by_id_once_it_looked_smaller(
    relay_engine: AsyncEngine,
) -> None:
    """The premise: with the index the outbox had before migration 0021, the same delete walks it,
    once per id (the bench saw 190,000 buffers for 865 rows)."""
    assert await indexes_the_delete_scans(relay_engine, with_bucket_and_id=True) == {"outbox_bucket_id"}
