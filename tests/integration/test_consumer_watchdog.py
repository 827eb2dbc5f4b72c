"""A consumer stuck in its loop is stopped and started again by its watchdog: the batch it was
stuck in is rolled back and applied once by the new consumer, and the stall is logged with where
the loop was, and counted."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime.consumer import ConsumerService, ConsumerStalled, Handler
from coxswain.runtime.kafka import Publisher, background_task_failure, connection_options, rebalancing
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import Event, LeadReceivedV1
from tests.support.databases import engine_without_relays
from tests.support.facts import webform_lead
from tests.support.infra import start_group_at_end

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
TOPIC = LeadReceivedV1.topic


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        yield database


class HangsOnce:
    """A handler whose first call never returns (a lost wake-up, a call without a timeout); later
    calls write one row in the batch's transaction, so a rolled-back attempt leaves nothing."""

    def __init__(self, effects: str) -> None:
        self.effects = effects
        self.calls = 0

    async def __call__(self, connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        self.calls += 1
        await connection.execute(
            text("INSERT INTO inbox (consumer, event_id, topic, processed_at) VALUES (:c, :e, 'effect', :now)"),
            {"c": self.effects, "e": event.event_id, "now": now},
        )
        if self.calls == 1:
            await asyncio.Event().wait()
        return []


def watched(engine: AsyncEngine, name: str, handler: Handler) -> ConsumerService:
    """A consumer whose watchdog calls it stalled after a second."""
    return ConsumerService(
        name=name,
        accepts={TOPIC: (LeadReceivedV1,)},
        handler=handler,
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(consumer_stall_seconds=1.0),
        clock=lambda: NOW,
    )


async def keep_running(service: ConsumerService, stop: asyncio.Event) -> int:
    """What the process does with a consumer (coxswain_app.wiring): start it again when it stops
    on a stall. Returns how many times it was started again."""
    restarts = 0
    while not stop.is_set():
        try:
            await service.run(stop)
        except ConsumerStalled:
            restarts += 1
    return restarts


async def test_a_consumer_stuck_in_a_batch_is_started_again_and_applies_it_once(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"watchdog-{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig()
    await start_group_at_end(name, [TOPIC])
    handler = HangsOnce(f"{name}-effects")
    service = watched(engine, name, handler)
    event = webform_lead(NOW)
    caplog.set_level(logging.INFO)
    stop = asyncio.Event()
    running = asyncio.create_task(keep_running(service, stop))
    producer = AIOKafkaProducer(**connection_options(kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        record = encode(event)
        await producer.send_and_wait(TOPIC, record.value, key=record.key, headers=list(record.headers))
        for _ in range(600):  # a guard against a hang (a minute), not a measurement
            if await effects(engine, handler.effects):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await producer.stop()
    # Without a watchdog the loop never returns from the stuck batch, stop or not.
    restarts = await asyncio.wait_for(running, 30)

    assert handler.calls == 2, "stuck once, then applied by the consumer started in its place"
    assert await effects(engine, handler.effects) == [event.event_id], "the stuck attempt left nothing behind"
    assert restarts == 1
    stalls = REGISTRY.get_sample_value("coxswain_consumer_stalls_total", {"consumer": name, "reason": "loop"})
    assert stalls == 1
    [report] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "stalled" in r.getMessage()]
    assert f"consumer={name}" in report
    assert "its loop has not come round" in report
    assert "in HangsOnce.__call__" in report, "the log says where the loop was stuck"


async def test_a_consumer_that_keeps_coming_round_is_never_restarted(engine: AsyncEngine) -> None:
    name = f"watchdog-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(name, [TOPIC])

    async def quick(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        return []

    service = watched(engine, name, quick)
    stop = asyncio.Event()
    running = asyncio.create_task(keep_running(service, stop))
    await asyncio.sleep(4.0)  # several stall periods with nothing to read: idle is not stuck
    await service.check()  # ready
    stop.set()
    assert await running == 0
    assert REGISTRY.get_sample_value("coxswain_consumer_stalls_total", {"consumer": name, "reason": "loop"}) is None


async def effects(engine: AsyncEngine, consumer: str) -> list[uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT event_id FROM inbox WHERE consumer = :c"), {"c": consumer})
        return [row.event_id for row in rows]


async def test_a_consumer_reads_as_rebalancing_until_its_group_assigns_it_partitions() -> None:
    """The watchdog's second signal reads aiokafka's subscription state: this fails if an aiokafka
    upgrade moves it, rather than the check going quietly blind."""
    kafka = KafkaConfig()
    consumer = AIOKafkaConsumer(
        **connection_options(kafka), group_id=f"watchdog-{uuid.uuid4().hex[:8]}", enable_auto_commit=False
    )
    consumer.subscribe([TOPIC])
    assert rebalancing(consumer)
    await consumer.start()
    try:
        for _ in range(600):  # a guard against a hang (a minute), not a measurement
            await consumer.getmany(timeout_ms=100)
            if consumer.assignment():
                break
        assert consumer.assignment()
        assert not rebalancing(consumer)
    finally:
        await consumer.stop()


async def test_a_paused_process_says_how_long_it_was_away_and_carries_on(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole process not running (SIGSTOP, a VM pause; here the event loop blocked) is not a
    stuck loop: it is reported, and the consumer is not started again for it."""
    name = f"watchdog-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(name, [TOPIC])

    async def quick(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        return []

    service = watched(engine, name, quick)
    caplog.set_level(logging.INFO)
    stop = asyncio.Event()
    running = asyncio.create_task(keep_running(service, stop))
    await asyncio.sleep(3.0)  # joined and watched
    time.sleep(3.5)  # noqa: ASYNC251 - the point: nothing in this process runs meanwhile
    await asyncio.sleep(3.0)  # the watchdog looks again
    stop.set()
    assert await asyncio.wait_for(running, 30) == 0, "not started again"
    assert REGISTRY.get_sample_value("coxswain_consumer_paused_total", {"consumer": name}) == 1
    [report] = [r.getMessage() for r in caplog.records if "consumer paused" in r.getMessage()]
    assert f"consumer={name}" in report


def end_metadata_task(client: Any) -> None:
    """What a broker that went away mid-request did to aiokafka's metadata task under uvloop (see
    ``background_task_failure``): the task ends with the transport's RuntimeError."""

    async def closed_transport(*_: object) -> bool:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    client._metadata_update = closed_transport
    client.force_metadata_update()  # wakes the task, which ends


async def test_a_consumer_whose_kafka_client_lost_its_metadata_task_is_started_again(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"watchdog-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(name, [TOPIC])
    applied: list[uuid.UUID] = []

    async def record(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        applied.append(event.event_id)
        return []

    service = watched(engine, name, record)
    caplog.set_level(logging.INFO)
    stop = asyncio.Event()
    running = asyncio.create_task(keep_running(service, stop))
    for _ in range(600):  # a guard against a hang (a minute), not a measurement
        if service.kafka_consumer is not None and service.kafka_consumer.assignment():
            break
        await asyncio.sleep(0.1)
    broken = service.kafka_consumer
    end_metadata_task(broken._client)
    for _ in range(600):  # a guard against a hang (a minute), not a measurement
        if service.kafka_consumer is not broken and service.kafka_consumer.assignment():
            break
        await asyncio.sleep(0.1)
    event = webform_lead(NOW)
    producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        record_ = encode(event)
        await producer.send_and_wait(TOPIC, record_.value, key=record_.key, headers=list(record_.headers))
        for _ in range(600):  # a guard against a hang (a minute), not a measurement
            if event.event_id in applied:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await producer.stop()
    assert await asyncio.wait_for(running, 30) == 1
    assert service.kafka_consumer is not broken
    assert applied == [event.event_id], "applied by the consumer started in its place"
    assert REGISTRY.get_sample_value("coxswain_consumer_stalls_total", {"consumer": name, "reason": "client"}) == 1
    [report] = [r.getMessage() for r in caplog.records if "consumer stalled" in r.getMessage()]
    assert "background task of its Kafka client ended (RuntimeError(" in report


async def test_a_publisher_whose_producer_lost_its_metadata_task_replaces_it_and_publishes(
    infrastructure: None,
) -> None:
    publisher = Publisher(KafkaConfig())
    try:
        first = await publisher.start()
        end_metadata_task(first.client)
        await asyncio.sleep(0.1)  # the task ends
        assert background_task_failure(first) is not None
        event = webform_lead(NOW)
        await asyncio.wait_for(publisher.publish([encode(event)]), 30)
        assert await publisher.start() is not first
        assert background_task_failure(await publisher.start()) is None
    finally:
        await publisher.stop()
