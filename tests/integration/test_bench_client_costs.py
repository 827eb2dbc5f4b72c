"""The bench's client-cost probe runs its four ways against a real PostgreSQL (it is never part of
`make bench`, so only this keeps it from rotting)."""

from __future__ import annotations

import pytest

from bench.client_costs import measure, report
from coxswain.settings import DatabaseConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_each_way_is_measured_in_order(infrastructure: None) -> None:
    costs = await measure(DatabaseConfig().database_url, calls=20)

    assert [cost.way for cost in costs] == [
        "asyncpg prepared statement",
        "SQLAlchemy execute, connection open",
        "checked out and returned (autocommit)",
        "in a transaction (engine.begin)",
    ]
    assert all(cost.cpu_us > 0 and cost.wall_us > 0 for cost in costs)
    printed = report(costs).splitlines()
    assert len(printed) == 5 and printed[1].startswith("asyncpg prepared statement")
