"""A consumer process under SIGTERM finishes its batch, commits, leaves its group and exits 0; its
successor starts exactly where it stopped. Its health endpoints report the database and Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.db.database import create_engine
from coxswain.runtime.kafka import connection_options
from coxswain.settings import DatabaseConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import LeadAttributes, LeadReceivedV1
from tests.support.stack import ServiceProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

AGREEMENT = Path(__file__).parents[1] / "e2e" / "agreement.yaml"
TOPIC = LeadReceivedV1.topic
GROUP = "scoring"
LEADS = 500


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    database = create_engine(DatabaseConfig())
    yield database
    await database.dispose()


async def committed(group: str) -> int:
    admin = AIOKafkaAdminClient(**connection_options(KafkaConfig()))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == TOPIC and meta.offset > 0)
    finally:
        await admin.close()


async def members(group: str) -> int:
    admin = AIOKafkaAdminClient(**connection_options(KafkaConfig()))
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
        # Raw DescribeGroups answer: (error, group, state, protocol type, protocol, members, ...).
        return len(response.groups[0][5])
    finally:
        await admin.close()


async def end_offset() -> int:
    consumer = AIOKafkaConsumer(TOPIC, **connection_options(KafkaConfig()), group_id=None)
    await consumer.start()
    try:
        for _ in range(200):
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        return sum((await consumer.end_offsets(list(consumer.assignment()))).values())
    finally:
        await consumer.stop()


async def processed(engine: AsyncEngine, ids: list[uuid.UUID]) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM inbox WHERE consumer = :c AND event_id = ANY(:ids)"), {"c": GROUP, "ids": ids}
        )
    return int(count or 0)


async def publish_leads(count: int, tag: str) -> list[LeadReceivedV1]:
    """``count`` new leads straight onto leads.received.v1 (one page view each), as intake would."""
    events = [
        LeadReceivedV1(
            event_id=uuid.uuid4(),
            lead_id=uuid.uuid4(),
            occurred_at=datetime.now(UTC),
            source="webform",
            webhook_id=f"msg_{tag}_{n}",
            engagement="page_view",
            attributes=LeadAttributes(country="US"),
        )
        for n in range(count)
    ]
    producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            record = encode(event)
            await producer.send(record.topic, record.value, key=record.key, headers=list(record.headers))
        await producer.flush()
    finally:
        await producer.stop()
    return events


def scoring_process(log_dir: Path, health_port: int) -> ServiceProcess:
    env = {
        **os.environ,
        "COXSWAIN_AGREEMENT_FILE": str(AGREEMENT),
        "COXSWAIN_CONSUMER_MAX_BATCH": "20",
        "COXSWAIN_HEALTH_PORT": str(health_port),
    }
    return ServiceProcess("scoring", env, log_dir)


async def test_sigterm_mid_stream_commits_what_was_processed_and_the_successor_resumes_there(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    health_port = free_port()
    scoring = scoring_process(tmp_path, health_port)
    # Drain whatever earlier tests left, so the group's offsets account only for our records below.
    scoring.start()
    await asyncio.to_thread(scoring.wait_for_log, "partitions assigned", 90)
    await wait_until(_caught_up, "the consumer to catch up", within=120)
    await asyncio.to_thread(scoring.kill, signal.SIGTERM)
    assert scoring.process is not None and scoring.process.returncode == 0, scoring.log_text()[-2000:]
    baseline = await committed(GROUP)

    events = await publish_leads(LEADS, "sigterm")
    ids = [event.event_id for event in events]

    scoring.start()
    await asyncio.to_thread(scoring.wait_for_log, "partitions assigned", 90)
    await wait_until(lambda: _processed_some(engine, ids), "some leads processed", within=120)
    await asyncio.to_thread(scoring.kill, signal.SIGTERM)
    assert scoring.process is not None and scoring.process.returncode == 0, scoring.log_text()[-2000:]
    assert "consumer scoring stopped" in scoring.log_text()
    done_before_stop = await processed(engine, ids)
    assert 0 < done_before_stop < LEADS, "stopped mid-stream"
    # Everything processed was committed, nothing more: the successor neither skips nor repeats.
    assert await committed(GROUP) - baseline == done_before_stop
    # It left the group on the way out instead of letting the session time out.
    assert await members(GROUP) == 0

    scoring.start()
    await wait_until(lambda: _processed_all(engine, ids), "every lead processed", within=120)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health_port}", timeout=5) as client:
        await wait_until(lambda: _ready(client), "readiness", within=30)
        live = await client.get("/healthz")
        ready = await client.get("/readyz")
    await asyncio.to_thread(scoring.kill, signal.SIGTERM)
    assert scoring.process is not None and scoring.process.returncode == 0
    assert await committed(GROUP) - baseline == LEADS
    assert live.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready", "database": "ok", "kafka": "ok", "consumer": "ok"}


async def _caught_up() -> bool:
    return await committed(GROUP) >= await end_offset() > 0 or await end_offset() == 0


async def _processed_some(engine: AsyncEngine, ids: list[uuid.UUID]) -> bool:
    return await processed(engine, ids) > LEADS // 10


async def _processed_all(engine: AsyncEngine, ids: list[uuid.UUID]) -> bool:
    return await processed(engine, ids) == LEADS


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False
