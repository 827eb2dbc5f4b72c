"""Facts a batch hands over to another consumer in its transaction (``handing_over``: scoring's
qualified leads to the router) are claimed in that consumer's inbox in the statement that stages
them, not in a round trip of their own, when the batch's own claim already locked and read their
leads' erasures (``claim_with_the_batch``); a fact of any other lead is claimed at once, as before.
Either way each handed fact is applied once, and one from before its lead's erasure without the
person's values."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime.consumer import ConsumerService, Delivery, one_at_a_time
from coxswain.runtime.service import handing_over
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import Event, LeadReceivedV1
from services.admin.privacy import Found, erase
from tests.integration.test_consumer_erasure import ERASED_AT, FORGOTTEN, PERSON, received
from tests.support.databases import engine_without_relays

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = ERASED_AT + timedelta(minutes=5)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        yield database


class Handing:
    """A consumer whose batch handler makes, for each event, one fact about the lead ``lead_of``
    names (its own by default), carrying the person's values, and hands the facts to ``receiver``,
    which keeps what it is given."""

    def __init__(self, engine: AsyncEngine, lead_of: dict[uuid.UUID, uuid.UUID] | None = None) -> None:
        self.receiver = f"test-handed-{uuid.uuid4().hex[:8]}"
        self.given: dict[uuid.UUID, Event] = {}
        self.lead_of = lead_of or {}
        handler = handing_over(self._first, self.receiver, (LeadReceivedV1,), self._then)
        self.service = ConsumerService(
            name=f"test-handing-{uuid.uuid4().hex[:8]}",
            accepts={LeadReceivedV1.topic: (LeadReceivedV1,)},
            handler=one_at_a_time(handler),
            batch_handler=handler,
            engine=engine,
            kafka=KafkaConfig(),
            config=ConsumerConfig(consumer_handler_retries=0),
            clock=lambda: NOW,
        )

    async def _first(self, _: AsyncConnection, events: Sequence[Event], now: datetime) -> list[list[Event]]:
        return [
            [
                received(self.lead_of.get(event.lead_id, event.lead_id), event.occurred_at).model_copy(
                    update={"event_id": uuid.uuid5(event.event_id, "handed")}
                )
            ]
            for event in events
        ]

    async def _then(self, _: AsyncConnection, facts: Sequence[Event], now: datetime) -> list[list[Event]]:
        self.given.update((fact.event_id, fact) for fact in facts)
        return [[] for _ in facts]

    async def process(self, events: Sequence[LeadReceivedV1]) -> list[str]:
        """Apply ``events`` as one batch; the statements it sent."""
        records = [encode(event) for event in events]
        deliveries = [Delivery(r.topic, 0, n, r.key, r.value, r.headers) for n, r in enumerate(records)]
        sent: list[str] = []

        def note(*args: Any) -> None:
            sent.append(str(args[2]))

        sync_engine = self.service._engine.sync_engine
        event.listen(sync_engine, "before_cursor_execute", note)
        try:
            await self.service.process(deliveries)
        finally:
            event.remove(sync_engine, "before_cursor_execute", note)
        return sent


async def claimed(engine: AsyncEngine, consumer: str) -> set[uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT event_id FROM inbox WHERE consumer = :c"), {"c": consumer})
        return {row.event_id for row in rows}


def claims(sent: Sequence[str]) -> list[int]:
    return [n for n, sql in enumerate(sent) if "INSERT INTO inbox" in sql]


async def test_facts_of_the_batchs_own_leads_are_claimed_in_the_statement_that_stages_them(
    engine: AsyncEngine,
) -> None:
    consumer = Handing(engine)
    events = [received(uuid.uuid4(), NOW), received(uuid.uuid4(), NOW)]

    sent = await consumer.process(events)

    # The batch's own claim, and the last statement: the one that stages the facts.
    assert claims(sent) == [0, len(sent) - 1]
    assert "INSERT INTO outbox" in sent[-1]
    handed = {uuid.uuid5(event.event_id, "handed") for event in events}
    assert consumer.given.keys() == handed
    assert await claimed(engine, consumer.receiver) == handed


async def test_a_fact_of_a_lead_the_batch_did_not_name_is_claimed_at_once(engine: AsyncEngine) -> None:
    """A lead merged into another: only a claim of its own locks and reads the other's erasure."""
    merged, into = uuid.uuid4(), uuid.uuid4()
    consumer = Handing(engine, lead_of={merged: into})
    event = received(merged, NOW)

    sent = await consumer.process([event])

    # The batch's own claim, then one for the handed fact, before the statement that stages it.
    [first, own] = claims(sent)
    assert first == 0 and "erasure_tombstones" in sent[own] and own < len(sent) - 1
    handed = uuid.uuid5(event.event_id, "handed")
    assert consumer.given[handed].lead_id == into
    assert await claimed(engine, consumer.receiver) == {handed}


async def test_a_handed_fact_from_before_its_leads_erasure_arrives_without_the_persons_values(
    engine: AsyncEngine,
) -> None:
    lead = uuid.uuid4()
    async with engine.begin() as connection:
        await erase(connection, Found(lead, ()), None, ERASED_AT)
    consumer = Handing(engine)
    before, after = received(lead, ERASED_AT - timedelta(seconds=1)), received(lead, ERASED_AT + timedelta(seconds=1))

    sent = await consumer.process([before, after])

    assert claims(sent) == [0, len(sent) - 1]
    forgotten = consumer.given[uuid.uuid5(before.event_id, "handed")]
    assert isinstance(forgotten, LeadReceivedV1) and forgotten.attributes == FORGOTTEN
    came_back = consumer.given[uuid.uuid5(after.event_id, "handed")]
    assert isinstance(came_back, LeadReceivedV1) and came_back.attributes == PERSON


async def test_a_batch_applied_again_claims_nothing_twice(engine: AsyncEngine) -> None:
    consumer = Handing(engine)
    events = [received(uuid.uuid4(), NOW)]
    await consumer.process(events)
    consumer.given.clear()

    await consumer.process(events)

    assert consumer.given == {}
    assert await claimed(engine, consumer.receiver) == {uuid.uuid5(events[0].event_id, "handed")}
