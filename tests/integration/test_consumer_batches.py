"""The consumer applies a batch whole (one inbox claim, one outbox insert) and falls back to record
by record when a handler fails: either way each event takes effect once, redeliveries are no-ops,
and a bad record goes to the dead-letter topic without spoiling the others."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime.consumer import ConsumerService, Delivery, PermanentError, RetrySoon
from coxswain.runtime.kafka import connection_options
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import Event, LeadReceivedV1
from tests.support.databases import engine_without_relays
from tests.support.facts import webform_lead
from tests.support.infra import start_group_at_end

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
TOPIC = LeadReceivedV1.topic


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        yield database


class Recorder:
    """A handler whose effect is a row written in the batch's transaction, and one fact per event."""

    def __init__(
        self,
        consumer: str,
        always: dict[uuid.UUID, Exception] | None = None,
        once: set[uuid.UUID] | None = None,
        contended: Counter[uuid.UUID] | None = None,
    ) -> None:
        self.effects = f"{consumer}-effects"
        self.always = dict(always or {})
        self.once = set(once or ())
        self.contended = Counter(contended or {})
        self.calls: Counter[uuid.UUID] = Counter()

    async def __call__(self, connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        self.calls[event.event_id] += 1
        await connection.execute(
            text("INSERT INTO inbox (consumer, event_id, topic, processed_at) VALUES (:c, :e, 'effect', :now)"),
            {"c": self.effects, "e": event.event_id, "now": now},
        )
        if event.event_id in self.always:
            raise self.always[event.event_id]
        if self.contended[event.event_id] > 0:
            self.contended[event.event_id] -= 1
            raise Contended("another instance holds a lock this batch needs")
        if event.event_id in self.once:
            self.once.discard(event.event_id)
            raise RuntimeError("serialization failure, try again")
        assert isinstance(event, LeadReceivedV1)
        return [event.model_copy(update={"event_id": fact_id(event.event_id)})]


class Contended(RetrySoon):
    """A passing conflict, as the router's busy routing locks are."""


def fact_id(event_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(event_id, "fact")


def delivery(event: LeadReceivedV1 | None, offset: int) -> Delivery:
    if event is None:
        return Delivery(TOPIC, 0, offset, b"k", b"not json", (("ce_type", LeadReceivedV1.ce_type.encode()),))
    record = encode(event)
    return Delivery(TOPIC, 0, offset, record.key, record.value, record.headers)


def service(engine: AsyncEngine, name: str, handler: Recorder) -> ConsumerService:
    return ConsumerService(
        name=name,
        accepts={TOPIC: (LeadReceivedV1,)},
        handler=handler,
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(consumer_handler_retries=1),
        clock=lambda: NOW,
    )


async def effects(engine: AsyncEngine, recorder: Recorder) -> Counter[uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT event_id FROM inbox WHERE consumer = :c"), {"c": recorder.effects})
        return Counter(row.event_id for row in rows)


async def outbox_topics(engine: AsyncEngine, event_ids: Sequence[uuid.UUID], consumer: str) -> Counter[str]:
    async with engine.connect() as connection:
        facts = await connection.execute(
            text("SELECT topic FROM outbox WHERE event_id = ANY(:ids)"), {"ids": [fact_id(e) for e in event_ids]}
        )
        dead = await connection.execute(
            text(
                "SELECT o.topic FROM outbox o JOIN inbox i ON i.event_id = o.event_id "
                "WHERE i.consumer = :c AND o.topic LIKE '%.dlq'"
            ),
            {"c": consumer},
        )
        return Counter([row.topic for row in facts] + [row.topic for row in dead])


async def test_whole_batch_applies_each_event_once_and_dead_letters_the_undecodable(engine: AsyncEngine) -> None:
    name = f"test-batch-{uuid.uuid4().hex[:8]}"
    recorder = Recorder(name)
    first, second = webform_lead(NOW), webform_lead(NOW)
    batch = [delivery(first, 1), delivery(second, 2), delivery(first, 3), delivery(None, 4)]

    await service(engine, name, recorder).process(batch)
    await service(engine, name, recorder).process(batch)  # the whole batch redelivered

    assert recorder.calls == {first.event_id: 1, second.event_id: 1}
    assert await effects(engine, recorder) == {first.event_id: 1, second.event_id: 1}
    assert await outbox_topics(engine, [first.event_id, second.event_id], name) == {TOPIC: 2, f"{TOPIC}.dlq": 1}


async def test_a_failing_handler_sends_only_its_record_to_the_dead_letter_topic(engine: AsyncEngine) -> None:
    name = f"test-batch-{uuid.uuid4().hex[:8]}"
    good, bad, after = webform_lead(NOW), webform_lead(NOW), webform_lead(NOW)
    recorder = Recorder(name, always={bad.event_id: PermanentError("no rep is eligible")})

    await service(engine, name, recorder).process([delivery(good, 1), delivery(bad, 2), delivery(after, 3)])

    # The whole-batch attempt was rolled back; what is committed is each good event once, the bad one not at all.
    assert await effects(engine, recorder) == {good.event_id: 1, after.event_id: 1}
    assert await outbox_topics(engine, [good.event_id, bad.event_id, after.event_id], name) == {
        TOPIC: 2,
        f"{TOPIC}.dlq": 1,
    }
    async with engine.connect() as connection:
        headers = await connection.scalar(
            text(
                "SELECT o.headers FROM outbox o JOIN inbox i ON i.event_id = o.event_id "
                "WHERE i.consumer = :c AND o.topic LIKE '%.dlq'"
            ),
            {"c": name},
        )
    assert ["dlq_reason", "no rep is eligible"] in headers
    assert ["dlq_offset", "2"] in headers


async def test_a_handler_failing_once_is_retried_and_nothing_is_dead_lettered(engine: AsyncEngine) -> None:
    name = f"test-batch-{uuid.uuid4().hex[:8]}"
    flaky, other = webform_lead(NOW), webform_lead(NOW)
    recorder = Recorder(name, once={flaky.event_id})

    await service(engine, name, recorder).process([delivery(flaky, 1), delivery(other, 2)])

    assert await effects(engine, recorder) == {flaky.event_id: 1, other.event_id: 1}
    assert await outbox_topics(engine, [flaky.event_id, other.event_id], name) == {TOPIC: 2}


async def test_a_batch_that_meets_a_passing_conflict_is_applied_again_soon_and_quietly(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a real Kafka consumer: a handler that raises ``RetrySoon`` (busy routing locks) gets
    its batch again, is counted, and nothing is dead-lettered or logged as a warning."""
    name = f"test-retry-{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig()
    await start_group_at_end(name, [TOPIC])
    event = webform_lead(NOW)
    recorder = Recorder(name, contended=Counter({event.event_id: 2}))
    consumer = ConsumerService(
        name=name,
        accepts={TOPIC: (LeadReceivedV1,)},
        handler=recorder,
        engine=engine,
        kafka=kafka,
        config=ConsumerConfig(),
        clock=lambda: NOW,
    )
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    running = asyncio.create_task(consumer.run(stop))
    producer = AIOKafkaProducer(**connection_options(kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        record = encode(event)
        await producer.send_and_wait(TOPIC, record.value, key=record.key, headers=list(record.headers))
        for _ in range(2400):  # a guard against a hang (2 minutes), not a measurement
            if await effects(engine, recorder):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await producer.stop()
        await running

    assert recorder.calls[event.event_id] == 3, "given back twice, applied the third time"
    assert await effects(engine, recorder) == {event.event_id: 1}
    assert await outbox_topics(engine, [event.event_id], name) == {TOPIC: 1}, "nothing dead-lettered"
    retried = REGISTRY.get_sample_value("coxswain_batches_retried_total", {"consumer": name, "reason": "Contended"})
    assert retried == 2
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("coxswain")
    ]
    assert warnings == [], "a passing conflict is not a fault"
