"""Group commit keeps each webhook's guarantees: webhooks written together are each stored once,
with their events and outbox rows; the same webhook id sent twice at once is stored once and
answered twice with the same events; a webhook the database refuses fails alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.events import EngagementType, LeadAttributes, LeadReceivedV1
from services.intake.repository import Webhook
from services.intake.store import GroupCommit
from tests.support.databases import engine_without_relays

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        yield database


def webhook(run: str, n: int, events: int = 2, event_id: uuid.UUID | None = None) -> Webhook:
    return Webhook(
        source="webform",
        webhook_id=f"{run}-{n}",
        kind="lead",
        events=[
            LeadReceivedV1(
                event_id=event_id or uuid.uuid4(),
                lead_id=uuid.uuid4(),
                occurred_at=NOW,
                source="webform",
                webhook_id=f"{run}-{n}",
                engagement=EngagementType.form_submit,
                attributes=LeadAttributes(title="VP Sales"),
            )
            for _ in range(events)
        ],
        received_at=NOW,
    )


async def counts(engine: AsyncEngine, run: str) -> tuple[int, int, int]:
    like = f"{run}-%"
    async with engine.connect() as connection:
        inbox = await connection.scalar(
            text("SELECT count(*) FROM webhook_inbox WHERE webhook_id LIKE :w"), {"w": like}
        )
        events = await connection.scalar(
            text("SELECT count(*) FROM intake_events WHERE webhook_id LIKE :w"), {"w": like}
        )
        staged = await connection.scalar(
            text(
                "SELECT count(*) FROM outbox WHERE event_id IN (SELECT event_id FROM intake_events WHERE webhook_id LIKE :w)"
            ),
            {"w": like},
        )
    return inbox or 0, events or 0, staged or 0


async def test_concurrent_webhooks_are_each_stored_once_with_their_events(engine: AsyncEngine) -> None:
    run = uuid.uuid4().hex[:10]
    writer = GroupCommit(engine, max_group=16, writers=2)
    hooks = [webhook(run, n) for n in range(100)]
    # Every webhook sent twice at once (a sender retrying before the first answer).
    answers = await asyncio.gather(*(writer.store(hook) for hook in hooks + hooks))

    assert await counts(engine, run) == (100, 200, 200)
    first, again = answers[:100], answers[100:]
    assert sum(answer.duplicate for answer in answers) == 100
    for hook, one, other in zip(hooks, first, again, strict=True):
        expected = [str(event.event_id) for event in hook.events]
        assert [e.event_id for e in one.events] == expected == [e.event_id for e in other.events]
        assert one.duplicate != other.duplicate


async def test_a_webhook_the_database_refuses_fails_alone(engine: AsyncEngine) -> None:
    run = uuid.uuid4().hex[:10]
    writer = GroupCommit(engine, max_group=16, writers=1)
    taken = uuid.uuid4()
    await writer.store(webhook(run, 0, events=1, event_id=taken))
    # Another webhook whose event id is already stored: a primary-key violation in its group.
    clash = webhook(run, 1, events=1, event_id=taken)
    others = [webhook(run, n) for n in range(2, 12)]
    results = await asyncio.gather(
        *(writer.store(hook) for hook in [*others[:5], clash, *others[5:]]), return_exceptions=True
    )

    failed = [result for result in results if isinstance(result, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], IntegrityError)
    assert isinstance(results[5], IntegrityError)
    assert await counts(engine, run) == (11, 21, 21)
