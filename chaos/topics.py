"""Independent readers of the topics: no consumer group, from the earliest offset."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger("chaos")


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: dict[str, Any]
    headers: dict[str, str]


def _record(raw: Any) -> Record:
    try:
        value = orjson.loads(raw.value) if raw.value else {}
    except orjson.JSONDecodeError:
        value = {"_undecodable": True}
    if not isinstance(value, dict):
        value = {"_undecodable": True}
    headers = {name: bytes(data).decode(errors="replace") for name, data in (raw.headers or ())}
    return Record(raw.topic, raw.partition, raw.offset, value, headers)


def _consumer(bootstrap: str, topics: list[str]) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        client_id="chaos-reader",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=5000,
    )


async def _start(consumer: AIOKafkaConsumer, topics: list[str]) -> set[TopicPartition]:
    """Without a group the consumer takes every partition of its topics once metadata is in."""
    await consumer.start()
    for _ in range(200):
        assigned: set[TopicPartition] = consumer.assignment()
        if {tp.topic for tp in assigned} >= set(topics):
            return assigned
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no partitions assigned for {topics}")


class Follower:
    """Follows topics live and calls back once per record; survives broker restarts."""

    def __init__(self, bootstrap: str, topics: list[str], on_record: Callable[[Record], None]) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._on_record = on_record

    async def run(self, stop: asyncio.Event) -> None:
        positions: dict[TopicPartition, int] = {}
        while not stop.is_set():
            consumer = _consumer(self._bootstrap, self._topics)
            try:
                for tp in await _start(consumer, self._topics):
                    if tp in positions:
                        consumer.seek(tp, positions[tp])
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200)
                    for tp, records in batch.items():
                        for raw in records:
                            self._on_record(_record(raw))
                        positions[tp] = records[-1].offset + 1
            except Exception as exc:
                log.info("follower reconnecting after %s", type(exc).__name__)
                await asyncio.sleep(1)
            finally:
                await consumer.stop()


async def read_all(bootstrap: str, topics: list[str]) -> list[Record]:
    """Every record now in the topics, from the beginning up to the current end offsets."""
    consumer = _consumer(bootstrap, topics)
    try:
        partitions = sorted(await _start(consumer, topics))
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        records: list[Record] = []
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, raws in batch.items():
                records.extend(_record(raw) for raw in raws if raw.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def group_lag(bootstrap: str) -> dict[str, int]:
    """Records not yet committed by each consumer group, over the topics it has committed on."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="chaos-admin")
    await admin.start()
    try:
        lag: dict[str, int] = {}
        for group, *_ in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group)
            topics = sorted({tp.topic for tp in committed})
            if not topics:
                continue
            consumer = _consumer(bootstrap, topics)
            try:
                partitions = sorted(await _start(consumer, topics))
                ends = await consumer.end_offsets(partitions)
            finally:
                await consumer.stop()
            lag[group] = sum(max(ends[tp] - (committed[tp].offset if tp in committed else 0), 0) for tp in partitions)
        return lag
    finally:
        await admin.close()
