"""Advisory locks a batch handler needs before it reads anything (scoring's identity keys) are
taken in the statement that claims the batch (``ClaimLocks``), not in a round trip of their own:
the claim waits for their holder, and the handler's first read, a statement later, sees what the
holder committed. So two events of one person applied at once by two instances still resolve to
one lead."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.db.leads import canonical_lead_id
from coxswain.runtime.consumer import claim_batch
from services.scoring import service
from services.scoring.repository import IDENTITY_LOCK_CLASS
from tests.integration.test_deferred_writes import AGREEMENT, delivery, scoring
from tests.integration.test_lead_merges import received
from tests.support.databases import engine_without_relays

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
TEST_LOCK_CLASS = 0x7E57


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        yield database


async def waits_for_lock_class(engine: AsyncEngine, lock_class: int) -> bool:
    """Whether a transaction waits for an advisory lock of ``lock_class`` within five seconds."""
    async with engine.connect() as connection:
        for _ in range(100):
            waiting = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
                    "AND classid = :c AND NOT granted"
                ),
                {"c": lock_class},
            )
            await connection.rollback()
            if waiting:
                return True
            await asyncio.sleep(0.05)
    return False


async def test_the_claim_waits_for_the_locks_and_the_next_statement_sees_their_holders_commit(
    engine: AsyncEngine,
) -> None:
    key, consumer = f"key-{uuid.uuid4()}", f"test-claim-locks-{uuid.uuid4().hex[:8]}"
    written = uuid.uuid4()

    async def claim_then_read() -> int:
        async with engine.begin() as connection:
            await claim_batch(connection, consumer, [(uuid.uuid4(), "t", None)], NOW, (TEST_LOCK_CLASS, [key]))
            found = await connection.scalar(text("SELECT count(*) FROM inbox WHERE event_id = :e"), {"e": written})
            return int(found or 0)

    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(:k))"), {"c": TEST_LOCK_CLASS, "k": key})
        await holder.execute(
            text("INSERT INTO inbox (consumer, event_id, topic, processed_at) VALUES (:c, :e, 't', :now)"),
            {"c": f"{consumer}-holder", "e": written, "now": NOW},
        )
        claiming = asyncio.create_task(claim_then_read())
        assert await waits_for_lock_class(engine, TEST_LOCK_CLASS), "the claim did not wait for the lock"
        assert not claiming.done()
        await holder.commit()
    assert await claiming == 1


async def test_two_events_of_one_person_at_once_resolve_to_one_lead(engine: AsyncEngine) -> None:
    """The first event is applied in a transaction left open, as another instance's batch would
    be; scoring's consumer applies the second (the same contact, now with an email: a new
    provisional id) meanwhile. Its claim waits for the identity keys, so it folds the second into
    the first's lead instead of making a second lead of the same person."""
    run = uuid.uuid4().hex[:8]
    first = received(run, 0, None)
    second = received(run, 1, f"{run}@northwind-test.io")
    assert first.lead_id != second.lead_id
    consumer = scoring(engine)
    async with engine.connect() as other_instance:
        await service.apply_batch(other_instance, [first], AGREEMENT, NOW)
        applying = asyncio.create_task(consumer.process([delivery(second, 0)]))
        assert await waits_for_lock_class(engine, IDENTITY_LOCK_CLASS), "scoring did not wait for the identity keys"
        await other_instance.commit()
    await applying
    async with engine.connect() as connection:
        assert await canonical_lead_id(connection, second.lead_id) == first.lead_id
        assert await stored_leads(connection, [first.lead_id, second.lead_id]) == [first.lead_id]


async def stored_leads(connection: AsyncConnection, lead_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    rows = await connection.execute(text("SELECT lead_id FROM leads WHERE lead_id = ANY(:ids)"), {"ids": lead_ids})
    return [row.lead_id for row in rows]
