"""An independent Kafka consumer, in its own process, that notes when each record arrives.

It starts at the end of each topic (only records produced after it said ``ready`` count), keeps
the key (the lead id) and the arrival time of every record, and for the topics named in
``--fields`` also those fields of the JSON value (and, with ``--record-time``, the record's own
Kafka timestamp in seconds, last: when the producer created it). It stops when every ``--expect`` count is
reached, when nothing arrived for ``--idle`` seconds (counted from ``ready`` until the first
record), or at ``--timeout``, then writes a JSON
file: ``{topic: [[key, seen_at, field...], ...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.watcher")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated")
    parser.add_argument("--out", required=True)
    parser.add_argument("--expect", action="append", default=[], help="TOPIC=COUNT, may repeat")
    parser.add_argument("--fields", action="append", default=[], help="TOPIC=FIELD,FIELD: JSON fields to keep")
    parser.add_argument("--record-time", action="store_true", help="append each record's Kafka timestamp (s)")
    parser.add_argument("--idle", type=float, default=0.0, help="stop after this long without a record (0: never)")
    parser.add_argument("--timeout", type=float, default=120.0)
    return parser.parse_args(argv)


async def watch(args: argparse.Namespace) -> dict[str, list[list[Any]]]:
    topics = args.topics.split(",")
    expected = {topic: int(count) for topic, count in (item.split("=", 1) for item in args.expect)}
    fields = {topic: names.split(",") for topic, names in (item.split("=", 1) for item in args.fields)}
    seen: dict[str, list[list[Any]]] = {topic: [] for topic in topics}
    sighted: set[bytes] = set()
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=args.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="latest"
    )
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for tp in await _assignment(consumer, len(topics)):
            await consumer.position(tp)  # resolves "latest" now, before the producers start
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        deadline = time.monotonic() + args.timeout
        last = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.time()
            for tp, records in batch.items():
                keep = fields.get(tp.topic)
                rows = seen[tp.topic]
                for record in records:
                    if not first_sighting(record.headers, sighted):
                        continue
                    row: list[Any] = [(record.key or b"").decode(), now]
                    if keep:
                        value = orjson.loads(record.value)
                        row.extend(value.get(name) for name in keep)
                    if args.record_time:
                        row.append(record.timestamp / 1000)
                    rows.append(row)
            if batch:
                last = time.monotonic()
            elif args.idle and time.monotonic() - last > args.idle:
                break
            if expected and all(len(seen[topic]) >= count for topic, count in expected.items()):
                break
    finally:
        await consumer.stop()
    return seen


def first_sighting(headers: Sequence[tuple[str, bytes]] | None, sighted: set[bytes]) -> bool:
    """False for a record whose event id (``ce_id``) was seen before: a fact published again (a
    relay killed after Kafka acknowledged a batch and before deleting it sends it twice), which
    every consumer skips. Counted twice it would end a wait for N leads one lead early."""
    for name, value in headers or ():
        if name == "ce_id":
            if value in sighted:
                return False
            sighted.add(bytes(value))
    return True


async def _assignment(consumer: AIOKafkaConsumer, topics: int) -> set[TopicPartition]:
    for _ in range(300):
        assigned: set[TopicPartition] = consumer.assignment()
        if len({tp.topic for tp in assigned}) == topics:
            return assigned
        await asyncio.sleep(0.05)
    raise SystemExit("the watcher was not assigned every topic's partitions (do the topics exist?)")


if __name__ == "__main__":
    arguments = parse_args()
    result = uvloop.run(watch(arguments))
    Path(arguments.out).write_bytes(orjson.dumps(result))
