"""The batches of the consumers on a lead's way run on connections that plan each statement once
for all its calls, on real PostgreSQL; every other connection keeps PostgreSQL's own choice, which
planned the routing state again at every call of a batch of one or two leads, at more than it
cost to run (docs/benchmarks-history.md, 6 December, morning)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.db.database import create_engine
from coxswain.settings import DatabaseConfig
from coxswain_app.wiring import CONSUMERS, consumer_engine
from services.router import repository

pytestmark = pytest.mark.asyncio(loop_scope="session")

# More calls than the five after which PostgreSQL may settle on the generic plan of its own accord.
CALLS = 8


@pytest_asyncio.fixture(loop_scope="session")
async def process_engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseConfig())
    yield engine
    await engine.dispose()


async def plans_of_the_named_reps(connection: AsyncConnection) -> tuple[int, int]:
    """(custom, generic) plans PostgreSQL made for the router's read of the reps a run names and
    the roster revision, called as a batch of one lead calls it, ``CALLS`` times on this
    connection; rolled back. (The read of the routing state runs inside the function
    ``routing_state`` now, whose plans ``pg_prepared_statements`` does not show; PL/pgSQL plans
    its queries by the same rule.)"""
    try:
        for _ in range(CALLS):
            await repository.named_reps(connection, ["plans.example", "example"], {"plans.example": 1}, [uuid.uuid4()])
        row = (
            await connection.execute(
                text(
                    "SELECT custom_plans, generic_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE '%FROM accounts WHERE domain = ANY(%' "
                    "AND statement NOT LIKE '%pg_prepared_statements%'"
                )
            )
        ).one()
        return int(row.custom_plans), int(row.generic_plans)
    finally:
        await connection.rollback()


@pytest.mark.parametrize("name", ["scoring", "router"])
async def test_the_batches_on_a_leads_way_plan_the_reps_a_run_names_once(
    name: str, process_engine: AsyncEngine
) -> None:
    engine = consumer_engine(CONSUMERS[name], DatabaseConfig(), process_engine)
    try:
        async with engine.connect() as connection:
            custom, generic = await plans_of_the_named_reps(connection)
    finally:
        await engine.dispose()
    assert custom == 0
    assert generic >= CALLS


async def test_the_process_engine_plans_the_same_read_again_at_every_call(process_engine: AsyncEngine) -> None:
    """The premise: with PostgreSQL's default plan cache and one lead's arrays, the custom plan
    looks cheaper every time, and the statement is planned again at each call."""
    async with process_engine.connect() as connection:
        custom, generic = await plans_of_the_named_reps(connection)
    assert generic == 0
    assert custom >= CALLS


@pytest.mark.parametrize("name", ["sla_monitor", "reporting"])
async def test_consumers_off_the_way_run_their_batches_on_the_process_engine(
    name: str, process_engine: AsyncEngine
) -> None:
    """Their records gather, off the lead's way, and their statements read time ranges whose
    values decide how many rows match: they keep PostgreSQL's own choice, on the process's
    connections."""
    assert consumer_engine(CONSUMERS[name], DatabaseConfig(), process_engine) is process_engine
