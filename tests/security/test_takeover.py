"""A consumer that is SIGKILLed (no goodbye to its group) loses its partitions to the other
instance after its session timeout, 1.5 s here (docs/event-path.md), not after aiokafka's 10 s:
the survivor processes the dead instance's share, and the time it took is printed."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.db.database import create_engine
from coxswain.settings import DatabaseConfig
from schemas.events import LeadReceivedV1
from tests.security.test_operability import publish_leads, scoring_process
from tests.support.stack import ServiceProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

ASSIGNED = re.compile(r"partitions assigned: \[(.*?)\]")
# The log's logfmt escapes the quotes: topic=\'leads.received.v1\', partition=0
PARTITION = re.compile(r"topic=\\?'([^'\\]+)\\?', partition=(\d+)")


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    database = create_engine(DatabaseConfig())
    yield database
    await database.dispose()


def assigned(process: ServiceProcess) -> set[tuple[str, int]]:
    """The leads.received.v1 partitions the process holds now: its last assignment."""
    found = ASSIGNED.findall(process.log_text())
    if not found:
        return set()
    return {(topic, int(n)) for topic, n in PARTITION.findall(found[-1]) if topic == LeadReceivedV1.topic}


async def test_a_killed_consumers_partitions_are_served_again_by_the_other(engine: AsyncEngine, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = scoring_process(tmp_path / "a", free_port())
    second = scoring_process(tmp_path / "b", free_port())
    try:
        first.start()
        await asyncio.to_thread(first.wait_for_log, "partitions assigned", 90)
        second.start()
        # Both hold a share of leads.received.v1 once the group has rebalanced.
        await wait_until(lambda: bool(assigned(second)) and bool(assigned(first)), "both consumers assigned", within=90)
        orphaned = assigned(second)

        second.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        # Leads on every partition, so the dead instance's partitions get work at once.
        events = await publish_leads(30, "takeover")

        async def all_processed() -> bool:
            async with engine.connect() as connection:
                count: int | None = await connection.scalar(
                    text("SELECT count(*) FROM inbox WHERE consumer = 'scoring' AND event_id = ANY(:ids)"),
                    {"ids": [event.event_id for event in events]},
                )
            return count == len(events)

        deadline = time.monotonic() + 60
        while not await all_processed():
            assert time.monotonic() < deadline, first.log_text()[-3000:]
            await asyncio.sleep(0.05)
        took = time.monotonic() - killed_at
        assert orphaned <= assigned(first), "the survivor now holds the killed instance's partitions"
        print(f"takeover: every lead processed {took:.2f} s after the SIGKILL")
    finally:
        second.stop()
        first.stop()
