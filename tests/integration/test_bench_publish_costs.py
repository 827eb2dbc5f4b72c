"""The bench's publish-cost probe times both ways of publishing on a real broker, and each way
publishes every record it times (it is never part of `make bench`, so only this keeps it from
rotting)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.publish_costs import PARTITIONS, TOPICS, WAYS, measure, report
from coxswain.runtime.kafka import connection_options
from coxswain.settings import KafkaConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def records_on_the_topics() -> int:
    consumer = AIOKafkaConsumer(**connection_options(KafkaConfig()), group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for topic in TOPICS for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_each_way_is_timed_on_every_record_it_publishes(infrastructure: None) -> None:
    bootstrap = KafkaConfig().kafka_bootstrap_servers
    await measure(bootstrap, records_a_pass=6, passes=1, rounds=1)  # the topics exist from here on
    before = await records_on_the_topics()

    costs = await measure(bootstrap, records_a_pass=12, passes=2, rounds=3)

    assert [cost.way for cost in costs] == list(WAYS)
    assert [cost.records for cost in costs] == [72, 72]  # 3 rounds of 2 passes of 12 records
    assert all(len(cost.cpu_us_per_record) == 3 and min(cost.cpu_us_per_record) > 0 for cost in costs)
    # Timed and published: both ways' rounds, and each way's two warm-up leads of six records.
    assert await records_on_the_topics() - before == 2 * 72 + 2 * 12
    printed = report(costs).splitlines()
    assert len(printed) == 3 and printed[1].startswith(WAYS[0]) and printed[2].startswith(WAYS[1])
