"""Bad records on every consumed topic go to its dead-letter topic with the reason, and every
consumer keeps going: the real ConsumerService of each service, real Kafka, real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.db.database import create_engine
from coxswain.runtime.consumer import ConsumerService, Handler, utc_now
from coxswain.runtime.kafka import Publisher, connection_options
from coxswain.runtime.outbox import OutboxRelay
from coxswain.settings import ConsumerConfig, DatabaseConfig, KafkaConfig
from coxswain_app.wiring import CONSUMERS
from schemas.codec import MAX_RECORD_BYTES, encode
from schemas.events import EVENTS_BY_TOPIC, Event, LeadAttributes, LeadReceivedV1, dead_letter_topic
from tests.support.stack import TopicWatcher

pytestmark = pytest.mark.asyncio(loop_scope="session")

RUN = uuid.uuid4().hex[:8]
TOPICS = sorted({topic for spec in CONSUMERS.values() for topic in spec.accepts})
# What each kind of bad record is, and what its dead letter must say about it.
BAD_RECORDS: dict[str, str] = {
    "malformed": "value is not valid JSON",
    "oversized": f"the limit is {MAX_RECORD_BYTES}",
    "wrong-version": "is not accepted on",
    "no-type": "missing ce_type header",
    "wrong-shape": "value does not match",
    "tombstone": "record has no value",
}


def bad_record(topic: str, kind: str) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    ce_type = EVENTS_BY_TOPIC[topic].ce_type.encode()
    if kind == "malformed":
        return b'{"event_id": ', [("ce_type", ce_type)]
    if kind == "oversized":
        return b'{"pad": "' + b"x" * MAX_RECORD_BYTES + b'"}', [("ce_type", ce_type)]
    if kind == "wrong-version":
        return b'{"event_id": "00000000-0000-0000-0000-000000000000"}', [("ce_type", ce_type[:-2] + b"v9")]
    if kind == "no-type":
        return b"{}", []
    if kind == "wrong-shape":
        return orjson.dumps({"event_id": str(uuid.uuid4()), "unexpected": True}), [("ce_type", ce_type)]
    return None, [("ce_type", ce_type)]


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    database = create_engine(DatabaseConfig())
    yield database
    await database.dispose()


async def test_bad_records_on_every_consumed_topic_are_dead_lettered_and_every_consumer_goes_on(
    engine: AsyncEngine,
) -> None:
    kafka = KafkaConfig()
    seen: dict[str, set[uuid.UUID]] = {name: set() for name in CONSUMERS}

    def recording(group: str) -> Handler:
        async def handle(_: AsyncConnection, event: Event, __: datetime) -> Sequence[Event]:
            seen[group].add(event.event_id)
            return []

        return handle

    # Groups of their own, so the services' consumer groups and inbox rows are untouched.
    services = [
        ConsumerService(
            name=f"{name}-dlq-{RUN}",
            accepts=spec.accepts,
            handler=recording(name),
            engine=engine,
            kafka=kafka,
            config=ConsumerConfig(consumer_handler_retries=0),
            clock=utc_now,
        )
        for name, spec in CONSUMERS.items()
    ]
    producer = AIOKafkaProducer(**connection_options(kafka), acks="all", max_request_size=2 * MAX_RECORD_BYTES)
    await producer.start()
    try:
        for topic in TOPICS:
            for kind in BAD_RECORDS:
                value, headers = bad_record(topic, kind)
                await producer.send_and_wait(topic, value, key=f"dlq-{RUN}-{kind}".encode(), headers=headers)
        # A good record after the bad ones: it must still be handled.
        good = LeadReceivedV1(
            event_id=uuid.uuid4(),
            lead_id=uuid.uuid4(),
            occurred_at=datetime.now(UTC),
            source="webform",
            webhook_id=f"msg_after_poison_{RUN}",
            engagement="form_submit",
            attributes=LeadAttributes(country="US"),
        )
        record = encode(good)
        await producer.send_and_wait(record.topic, record.value, key=record.key, headers=list(record.headers))
    finally:
        await producer.stop()

    expected = {
        (f"{name}-dlq-{RUN}", topic, kind)
        for name, spec in CONSUMERS.items()
        for topic in spec.accepts
        for kind in BAD_RECORDS
    }
    stop = asyncio.Event()
    publisher = Publisher(kafka)
    await publisher.start()
    tasks = [asyncio.create_task(service.run(stop)) for service in services]
    tasks.append(asyncio.create_task(OutboxRelay(engine, publisher).run(stop)))
    try:
        async with TopicWatcher([dead_letter_topic(topic) for topic in TOPICS]) as watcher:
            deadline = asyncio.get_running_loop().time() + 120
            while asyncio.get_running_loop().time() < deadline:
                dead = [
                    r
                    for r in watcher.records
                    if r.key.startswith(f"dlq-{RUN}-") and r.headers["dlq_consumer"].endswith(RUN)
                ]
                if len({(r.headers["dlq_consumer"], r.headers["dlq_topic"], r.key) for r in dead}) >= len(expected):
                    break
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.stop()

    assert [result for result in results if isinstance(result, BaseException)] == []
    got = {(r.headers["dlq_consumer"], r.headers["dlq_topic"], r.key.removeprefix(f"dlq-{RUN}-")) for r in dead}
    assert got == expected
    for letter in dead:
        kind = letter.key.removeprefix(f"dlq-{RUN}-")
        assert BAD_RECORDS[kind] in letter.headers["dlq_reason"], (kind, letter.headers["dlq_reason"])
        assert letter.topic == dead_letter_topic(letter.headers["dlq_topic"])
        assert letter.headers["dlq_error_type"] == "DecodeError"
    readers_of_leads = [name for name, spec in CONSUMERS.items() if LeadReceivedV1.topic in spec.accepts]
    assert readers_of_leads
    for name in readers_of_leads:
        assert good.event_id in seen[name], name
