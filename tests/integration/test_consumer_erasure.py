"""A fact published before an erasure and applied after it (a consumer that was behind) reaches
the handler without the person's values, whichever way the batch is applied; a fact that
occurred after the erasure (the person came back) and facts about other leads are applied as they
are. The tombstone is the one the real erasure writes (services/admin/privacy.py). A batch applied
while an erasure runs escapes neither: one already being applied is waited for and scrubbed, one
that comes during the erasure is given back and applied again after it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.privacy import ERASED
from coxswain.runtime.consumer import ConsumerService, Delivery, ErasureInProgress, Handler, PermanentError
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import Event, LeadAttributes, LeadReceivedV1
from services.admin.privacy import Found, erase
from services.reporting.consumer import record
from tests.support.databases import engine_without_relays
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

ERASED_AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TOPIC = LeadReceivedV1.topic
PERSON = LeadAttributes(
    email="quilla.varnhagen@varnhagen.example",
    first_name="Quilla",
    last_name="Varnhagen",
    title="Head of Quilla Varnhagen's office",
    company="Lindqvist Optics",
    country="DE",
)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        yield database


class Seen:
    """A handler that keeps the events it was given; fails for the ids in ``failing``."""

    def __init__(self, failing: Sequence[uuid.UUID] = ()) -> None:
        self.events: dict[uuid.UUID, LeadReceivedV1] = {}
        self.failing = set(failing)

    async def __call__(self, connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        assert isinstance(event, LeadReceivedV1)
        if event.event_id in self.failing:
            raise PermanentError("refused")
        self.events[event.event_id] = event
        return []


def received(lead_id: uuid.UUID, occurred_at: datetime) -> LeadReceivedV1:
    return LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=occurred_at,
        source="webform",
        webhook_id=f"msg_{uuid.uuid4().hex}",
        engagement="demo_request",
        attributes=PERSON,
    )


def deliveries(events: Sequence[LeadReceivedV1]) -> list[Delivery]:
    out = []
    for offset, event in enumerate(events):
        record = encode(event)
        out.append(Delivery(TOPIC, 0, offset, record.key, record.value, record.headers))
    return out


async def erased(engine: AsyncEngine, lead_id: uuid.UUID, *aliases: uuid.UUID) -> None:
    async with engine.begin() as connection:
        await erase(connection, Found(lead_id, aliases), None, ERASED_AT)


def consumer(engine: AsyncEngine, handler: Handler) -> ConsumerService:
    return ConsumerService(
        name=f"test-erasure-{uuid.uuid4().hex[:8]}",
        accepts={TOPIC: (LeadReceivedV1,)},
        handler=handler,
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(consumer_handler_retries=0),
        clock=lambda: ERASED_AT + timedelta(minutes=5),
    )


FORGOTTEN = LeadAttributes(company="Lindqvist Optics", country="DE")


@pytest.mark.parametrize("way", ["whole batch", "record by record"])
async def test_facts_from_before_the_erasure_are_applied_without_the_persons_values(
    engine: AsyncEngine, way: str
) -> None:
    lead, alias, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await erased(engine, lead, alias)
    before = received(lead, ERASED_AT - timedelta(seconds=1))
    at_the_erasure = received(lead, ERASED_AT)
    under_the_alias = received(alias, ERASED_AT - timedelta(hours=1))
    came_back = received(lead, ERASED_AT + timedelta(seconds=1))
    someone_else = received(other, ERASED_AT - timedelta(seconds=1))
    failing = received(other, ERASED_AT)  # forces the record-by-record way
    events = [before, at_the_erasure, under_the_alias, came_back, someone_else]
    handler = Seen(failing=[failing.event_id])

    await consumer(engine, handler).process(deliveries([*events, failing] if way == "record by record" else events))

    assert handler.events.keys() == {event.event_id for event in events}
    for forgotten in (before, at_the_erasure, under_the_alias):
        assert handler.events[forgotten.event_id].attributes == FORGOTTEN
        assert handler.events[forgotten.event_id] == forgotten.model_copy(update={"attributes": FORGOTTEN})
    assert handler.events[came_back.event_id] == came_back
    assert handler.events[someone_else.event_id] == someone_else


async def test_text_that_carries_the_persons_values_is_erased_too(engine: AsyncEngine) -> None:
    lead = uuid.uuid4()
    await erased(engine, lead)
    late = received(lead, ERASED_AT - timedelta(days=1)).model_copy(
        update={"external_id": "hubspot-quilla.varnhagen@varnhagen.example"}
    )
    handler = Seen()

    await consumer(engine, handler).process(deliveries([late]))

    assert handler.events[late.event_id].external_id == f"hubspot-{ERASED}"


class Gated:
    """Reporting's real handler, held open before the batch commits until ``gate`` is set."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        await record(connection, event, now)
        self.entered.set()
        await self.gate.wait()
        return []


async def erasure_waits_for_a_batch(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
                "AND query LIKE '%lock_erasure%'"
            )
        )
    return bool(waiting)


async def test_a_batch_being_applied_when_the_erasure_starts_is_waited_for_and_scrubbed(engine: AsyncEngine) -> None:
    lead = uuid.uuid4()
    fact = received(lead, datetime.now(UTC))
    handler = Gated()
    applying = asyncio.create_task(consumer(engine, handler).process(deliveries([fact])))
    await handler.entered.wait()

    async def erasing() -> None:
        async with engine.begin() as connection:
            await erase(connection, Found(lead, ()), PERSON.email, datetime.now(UTC))

    erasure = asyncio.create_task(erasing())
    try:
        await wait_until(lambda: erasure_waits_for_a_batch(engine), "the erasure to wait for the batch", within=20)
    finally:
        handler.gate.set()
        await applying
        await erasure

    async with engine.connect() as connection:
        payload = await connection.scalar(
            text("SELECT payload FROM report_facts WHERE event_id = :event_id"), {"event_id": fact.event_id}
        )
    assert payload["attributes"] == FORGOTTEN.model_dump(mode="json")


async def test_a_batch_that_comes_while_an_erasure_runs_is_given_back_and_applied_after_it(
    engine: AsyncEngine,
) -> None:
    lead = uuid.uuid4()
    fact = received(lead, ERASED_AT - timedelta(seconds=1))
    handler = Seen()
    applier = consumer(engine, handler)
    async with engine.connect() as erasing:
        await erasing.begin()
        await erase(erasing, Found(lead, ()), None, ERASED_AT)

        with pytest.raises(ErasureInProgress):
            await applier.process(deliveries([fact]))
        assert handler.events == {}

        await erasing.commit()

    await applier.process(deliveries([fact]))
    assert handler.events[fact.event_id].attributes == FORGOTTEN
