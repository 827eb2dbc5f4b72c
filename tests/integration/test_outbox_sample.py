"""The outbox's backlog gauges on real PostgreSQL: one process counts the outbox per window and
every other reads the figure it stored, so the count's cost does not grow with the number of
processes; a sampler never waits behind another's count."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.runtime.metrics import read_outbox_sample
from tests.support.databases import fresh_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Longer than the test: a window that has not passed until the test says so.
HOUR = 3600.0


@pytest_asyncio.fixture(loop_scope="session")
async def database(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    """A database of its own: no relay publishes and deletes these rows, and no other test's
    rows are counted."""
    async with fresh_database("outbox_sample") as engine:
        yield engine


async def stage(engine: AsyncEngine, count: int, age_s: float = 0.0) -> None:
    async with engine.begin() as connection:
        for _ in range(count):
            await connection.execute(
                text(
                    "INSERT INTO outbox (event_id, topic, key, value, headers, created_at) "
                    "VALUES (:event_id, 'test.outbox-sample.v1', 'k', 'v', '{}', now() - make_interval(secs => :age))"
                ),
                {"event_id": uuid.uuid4(), "age": age_s},
            )


async def test_one_sampler_counts_per_window_and_the_others_read_its_figure(database: AsyncEngine) -> None:
    await stage(database, 3)

    first = await read_outbox_sample(database, HOUR)
    assert (first.backlog, first.counted) == (3, True)

    # Two more facts wait, but the window has not passed: every other sampler (another process,
    # another instance) reports the stored figure instead of counting again.
    await stage(database, 2)
    others = [await read_outbox_sample(database, HOUR) for _ in range(3)]
    assert [(sample.backlog, sample.counted) for sample in others] == [(3, False)] * 3

    # Once the window has passed, the next sampler counts and stores the new figure.
    counted = await read_outbox_sample(database, 0.0)
    assert (counted.backlog, counted.counted) == (5, True)
    assert (await read_outbox_sample(database, HOUR)).backlog == 5


async def test_the_oldest_age_is_read_at_each_sample_from_when_the_fact_was_created(database: AsyncEngine) -> None:
    empty = await read_outbox_sample(database, 0.0)
    assert (empty.backlog, empty.oldest_age_s) == (0, 0.0)

    await stage(database, 1, age_s=90.0)
    counted = await read_outbox_sample(database, 0.0)
    assert counted.oldest_age_s >= 90.0

    # A reader of the stored figure reports the age as of its own read, not the counter's.
    await asyncio.sleep(0.2)
    later = await read_outbox_sample(database, HOUR)
    assert not later.counted
    assert later.oldest_age_s >= counted.oldest_age_s + 0.2


async def test_a_sampler_does_not_wait_behind_another_count(database: AsyncEngine) -> None:
    await stage(database, 4)
    stored = await read_outbox_sample(database, 0.0)
    async with database.connect() as counting:
        # Another process in the middle of its count holds the row.
        await counting.execute(text("SELECT id FROM outbox_sample FOR UPDATE"))
        await stage(database, 1)
        # Its window has passed, but the row is taken: it reads the previous figure at once
        # (without SKIP LOCKED it would wait for the other's transaction, here forever).
        sample = await asyncio.wait_for(read_outbox_sample(database, 0.0), timeout=30)
        assert (sample.backlog, sample.counted) == (stored.backlog, False)
        await counting.rollback()
    assert (await read_outbox_sample(database, 0.0)).backlog == stored.backlog + 1
