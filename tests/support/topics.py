"""Reading what is on a topic, for tests that check what was published."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from coxswain.runtime.kafka import connection_options
from coxswain.settings import KafkaConfig


async def records_on(topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` (aiokafka's ``ConsumerRecord``), read from the beginning to the end
    each partition had when the read began; each partition's records in their order."""
    consumer = AIOKafkaConsumer(**connection_options(KafkaConfig()), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        seen: list[Any] = []
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            seen += [record for tp in sorted(batch) for record in batch[tp]]
        return seen
    finally:
        await consumer.stop()
