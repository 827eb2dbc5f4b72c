"""The publisher on a real broker: every record lands in Kafka's default partition of its key, each
partition's in the order given; a batch that fails part-way leaves nothing behind for asyncio to
complain about, and a publisher that could not start (or was stopped) leaves no producer unclosed."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import warnings

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from coxswain.runtime.kafka import Publisher, connection_options
from coxswain.settings import KafkaConfig
from schemas.codec import WireRecord
from tests.support.topics import records_on

pytestmark = pytest.mark.asyncio(loop_scope="session")

# A topic that refuses records over 10 kB: the broker fails such a record after it was handed over.
SMALL = "test.publisher-small-records.v1"
# Two topics of several partitions each, for where records land and in which order.
SPREAD = ("test.publisher-spread-a.v1", "test.publisher-spread-b.v1")
SPREAD_PARTITIONS = 5


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def topics(infrastructure: None) -> None:
    admin = AIOKafkaAdminClient(**connection_options(KafkaConfig()))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(SMALL, num_partitions=1, replication_factor=1, topic_configs={"max.message.bytes": "10000"})]
        wanted += [NewTopic(name, num_partitions=SPREAD_PARTITIONS, replication_factor=1) for name in SPREAD]
        if missing := [topic for topic in wanted if topic.name not in existing]:
            await admin.create_topics(missing)
    finally:
        await admin.close()


async def read_all(topic: str) -> list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
    """Every record of ``topic``: its partition, key, value and headers, each partition's in order."""
    records = await records_on(topic, SPREAD_PARTITIONS)
    return [(r.partition, r.key, r.value, [(n, bytes(v)) for n, v in r.headers]) for r in records]


async def test_records_land_in_kafka_s_default_partition_of_their_key_in_the_order_given(topics: None) -> None:
    run = uuid.uuid4().hex  # the topics outlive a test run: this run's records are told by their values
    leads = [str(uuid.uuid4()).encode() for _ in range(12)]
    # Two topics, many keys, and one key with far more than one batch of aiokafka's (16 kB) a pass.
    records = [
        WireRecord(topic=SPREAD[n % 2], key=leads[n % 12], value=f"{run} {n} ".encode() + b"x" * 900, headers=())
        for n in range(120)
    ]
    records += [
        WireRecord(
            topic=SPREAD[0], key=leads[0], value=f"{run} {n} ".encode() + b"y" * 900, headers=(("n", str(n).encode()),)
        )
        for n in range(120, 200)
    ]
    publisher = Publisher(KafkaConfig())
    try:
        await publisher.publish(records[:150])
        await publisher.publish(records[150:])
    finally:
        await publisher.stop()

    kafkas = DefaultPartitioner()
    everywhere = list(range(SPREAD_PARTITIONS))
    for topic in SPREAD:
        sent = [record for record in records if record.topic == topic]
        landed = [each for each in await read_all(topic) if each[2].startswith(run.encode())]
        assert sorted(value for _, _, value, _ in landed) == sorted(record.value for record in sent), "each once"
        where = {value: partition for partition, _, value, _ in landed}
        for record in sent:
            assert where[record.value] == kafkas(record.key, everywhere, everywhere), "Kafka's partition of its key"
        for partition in everywhere:
            assert [value for p, _, value, _ in landed if p == partition] == [
                record.value for record in sent if where[record.value] == partition
            ], "each partition's records in the order given"
        assert {value: (key, headers) for _, key, value, headers in landed} == {
            record.value: (record.key, list(record.headers)) for record in sent
        }, "keys and headers as given"


def record(size: int, topic: str = SMALL) -> WireRecord:
    return WireRecord(topic=topic, key=b"lead", value=b"x" * size, headers=())


async def test_a_batch_that_fails_part_way_leaves_no_unretrieved_failure(
    topics: None, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = Publisher(KafkaConfig())
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        # The first record is handed over (its partition's batch before the next partition's) and
        # later refused by the broker; the second is refused by the client before it is handed
        # over, so the publish stops there.
        # (No pytest.raises: its record of the failure would keep the batch's futures alive.)
        try:
            await publisher.publish([record(50_000), record(2_000_000, SPREAD[0])])
        except MessageSizeTooLargeError:
            pass
        else:
            pytest.fail("a record over the client's limit was published")
        await asyncio.sleep(1.0)  # the broker's answer to the first record arrives meanwhile
        await publisher.publish([record(100)])  # the publisher still works
        await publisher.stop()  # the producer lets go of the failed futures
        gc.collect()
    assert [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()] == []


async def test_a_publisher_that_cannot_reach_kafka_leaves_no_producer_unclosed() -> None:
    publisher = Publisher(KafkaConfig(kafka_bootstrap_servers="127.0.0.1:9"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with pytest.raises((KafkaConnectionError, KafkaError)):
                await publisher.start()
        del publisher  # as the wiring drops a publisher whose start failed, without stopping it
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
