"""The bench's batch-cost probe applies scoring's batches against a real PostgreSQL, routes every
lead it sends, and leaves no database behind (it is never part of `make bench`, so only this keeps
it from rotting)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.batch_costs import measure, report
from coxswain.settings import DatabaseConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _databases_named_like_the_probes() -> set[str]:
    admin = create_async_engine(DatabaseConfig().database_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            rows = await connection.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'batch_costs_%'"))
            return {row.datname for row in rows}
    finally:
        await admin.dispose()


async def test_each_size_is_measured_and_every_lead_routed(infrastructure: None) -> None:
    before = await _databases_named_like_the_probes()

    costs = await measure(DatabaseConfig().database_url, sizes=[1, 5], batches=4)

    assert [(cost.leads_per_batch, cost.batches) for cost in costs] == [(1, 4), (5, 4)]
    # Every measured lead was qualified and routed in scoring's transaction: the batches did the
    # work the figures claim to time.
    assert [cost.routed for cost in costs] == [4, 20]
    assert all(cost.cpu_ms_per_batch > 0 and cost.wall_ms_per_batch > 0 for cost in costs)
    assert costs[1].cpu_ms_per_lead == pytest.approx(costs[1].cpu_ms_per_batch / 5)
    printed = report(costs).splitlines()
    assert len(printed) == 3 and printed[2].endswith("20 of 20")
    assert await _databases_named_like_the_probes() == before
