"""Real Kafka and PostgreSQL for the integration and end-to-end tests.

The tests run their own broker and cluster (own ports, own state dir) via the same scripts as
`make run`, so a developer's demo stack and a test run never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.db.database import upgrade
from coxswain.runtime.kafka import all_topics, connection_options, create_topics
from coxswain.settings import DatabaseConfig, KafkaConfig

ROOT = Path(__file__).resolve().parents[2]
# Several test runs may share a machine (developers, CI): each port base gets its own broker,
# cluster and state dir.
PORT_BASE = int(os.environ.get("COXSWAIN_TEST_PORT_BASE", "29000"))
STATE_DIR = ROOT / ".local" / f"test-{PORT_BASE}"
KAFKA_PORT, KAFKA_CONTROLLER_PORT, PG_PORT = PORT_BASE + 92, PORT_BASE + 93, PORT_BASE + 432

ENVIRONMENT = {
    "COXSWAIN_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA_PORT}",
    "COXSWAIN_DATABASE_URL": f"postgresql+asyncpg://coxswain:coxswain@127.0.0.1:{PG_PORT}/coxswain",
    "COXSWAIN_KAFKA_TOPIC_PARTITIONS": "3",
    # The local broker allows it (deploy/local/kafka.sh): a killed consumer's partitions move in ~2 s.
    "COXSWAIN_KAFKA_SESSION_TIMEOUT_MS": "1500",
}


def start() -> None:
    env = {
        **os.environ,
        "COXSWAIN_STATE_DIR": str(STATE_DIR),
        "KAFKA_PORT": str(KAFKA_PORT),
        "KAFKA_CONTROLLER_PORT": str(KAFKA_CONTROLLER_PORT),
        "PG_PORT": str(PG_PORT),
    }
    subprocess.run([str(ROOT / "deploy" / "local" / "stack.sh"), "up"], env=env, check=True)
    os.environ.update(ENVIRONMENT)


async def reset_database() -> None:
    engine = create_async_engine(ENVIRONMENT["COXSWAIN_DATABASE_URL"])
    async with engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    # Alembic runs its own event loop; keep it off ours.
    await asyncio.to_thread(upgrade, DatabaseConfig())


async def reset_topics() -> None:
    """Delete and recreate every Coxswain topic so each test session starts from empty logs."""
    config = KafkaConfig()
    admin = AIOKafkaAdminClient(**connection_options(config))
    await admin.start()
    try:
        ours = set(all_topics())
        existing = [name for name in await admin.list_topics() if name in ours]
        if existing:
            await admin.delete_topics(existing)
        for _ in range(100):
            if not ours & set(await admin.list_topics()):
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    for _ in range(50):
        try:
            await create_topics(config)
            return
        except Exception:  # topics still marked for deletion: wait and retry
            await asyncio.sleep(0.3)
    await create_topics(config)


async def start_group_at_end(group: str, topics: list[str]) -> None:
    """A new consumer group reads from the earliest offset; a test's group must only see what the
    test sends, not what earlier tests left on the shared topics."""
    config = KafkaConfig()
    consumer = AIOKafkaConsumer(**connection_options(config), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        # The topics were created with this many partitions (`topics create`, test infrastructure).
        partitions = [TopicPartition(t, p) for t in topics for p in range(config.kafka_topic_partitions)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: offset for tp, offset in ends.items()})
    finally:
        await consumer.stop()
