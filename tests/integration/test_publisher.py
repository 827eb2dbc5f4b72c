"""The publisher on a real broker: a batch that fails part-way leaves nothing behind for asyncio to
complain about, and a publisher that could not start (or was stopped) leaves no producer unclosed."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError

from coxswain.runtime.kafka import Publisher, connection_options
from coxswain.settings import KafkaConfig
from schemas.codec import WireRecord

pytestmark = pytest.mark.asyncio(loop_scope="session")

# A topic that refuses records over 10 kB: the broker fails such a record after it was handed over.
SMALL = "test.publisher-small-records.v1"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def small_topic(infrastructure: None) -> str:
    admin = AIOKafkaAdminClient(**connection_options(KafkaConfig()))
    await admin.start()
    try:
        if SMALL not in await admin.list_topics():
            topic = NewTopic(
                SMALL, num_partitions=1, replication_factor=1, topic_configs={"max.message.bytes": "10000"}
            )
            await admin.create_topics([topic])
    finally:
        await admin.close()
    return SMALL


def record(size: int) -> WireRecord:
    return WireRecord(topic=SMALL, key=b"lead", value=b"x" * size, headers=())


async def test_a_batch_that_fails_part_way_leaves_no_unretrieved_failure(
    small_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = Publisher(KafkaConfig())
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        # The first record is handed over and later refused by the broker; the second is refused
        # by the client before it is handed over, so the batch stops there.
        # (No pytest.raises: its record of the failure would keep the batch's futures alive.)
        try:
            await publisher.publish([record(50_000), record(2_000_000)])
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
