"""The pipeline baseline: bare aiokafka consume -> produce hops, each its own process.

The same Kafka settings as the services (idempotent producer with acks=all, linger, manual
offset commit after the produce is acknowledged, read_committed) and the same number of hops as
intake -> scoring -> router -> sla monitor, with nothing else: no database, no decoding, no
business logic. The chain's rate is what Kafka and aiokafka alone allow on this machine.

    python -m bench.relay_baseline hop --src bench.hop0 --dst bench.hop1 --group hop1
    python -m bench.relay_baseline produce --topic bench.hop0 --count 100000
    python -m bench.relay_baseline paced --topic bench.hop0 --rate 100 --duration 5 --out sent.json

``paced`` is the chain's latency at an offered load: records start at a fixed rate whatever the
acks do (no coordinated omission), each record's key and the time it was handed to the producer
go to ``--out``; a watcher at the far end notes when each arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import uuid
from pathlib import Path

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

HEADERS = [("ce_type", b"io.coxswain.lead.received.v1"), ("content-type", b"application/json")]


def producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0, request_timeout_ms=15000
    )


def payload(index: int) -> tuple[bytes, bytes]:
    """A record of the size of a lead.received event: key = a lead id, value ~ 700 bytes of JSON."""
    lead = str(uuid.uuid4())
    value = {
        "event_id": str(uuid.uuid4()),
        "lead_id": lead,
        "occurred_at": "2026-01-01T00:00:00Z",
        "source": "bench",
        "webhook_id": f"msg_{index}",
        "engagement": "demo_request",
        "attributes": {
            "email": f"bench-{index}@example.com",
            "first_name": "Bench",
            "last_name": "Lead",
            "title": "VP Marketing",
            "company": "Example",
            "company_size": 300,
            "industry": "software",
            "country": "US",
        },
        "padding": "x" * 300,
    }
    return lead.encode(), orjson.dumps(value)


async def produce(args: argparse.Namespace) -> None:
    records = [payload(index) for index in range(args.count)]
    client = producer(args.bootstrap)
    await client.start()
    try:
        for start in range(0, len(records), 1000):
            pending = [
                await client.send(args.topic, value=value, key=key, headers=HEADERS)
                for key, value in records[start : start + 1000]
            ]
            for future in pending:
                await future
    finally:
        await client.stop()


async def paced(args: argparse.Namespace) -> None:
    total = int(args.rate * args.duration)
    records = [payload(index) for index in range(total)]
    sent: list[tuple[str, float]] = []
    client = producer(args.bootstrap)
    await client.start()
    try:
        pending = []
        start = time.time() + 0.05
        for index, (key, value) in enumerate(records):
            delay = start + index / args.rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append((key.decode(), time.time()))
            pending.append(await client.send(args.topic, value=value, key=key, headers=HEADERS))
        for future in pending:
            await future
    finally:
        await client.stop()
    await asyncio.to_thread(Path(args.out).write_bytes, orjson.dumps(sent))


async def hop(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = producer(args.bootstrap)
    consumer = AIOKafkaConsumer(
        args.src,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=args.max_batch,
        isolation_level="read_committed",
    )
    await client.start()
    await consumer.start()
    announced = False
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            if not announced and consumer.assignment():
                sys.stdout.write("ready\n")
                sys.stdout.flush()
                announced = True
            if not batch:
                continue
            pending = [
                await client.send(args.dst, value=record.value, key=record.key, headers=list(record.headers or ()))
                for records in batch.values()
                for record in records
            ]
            for future in pending:
                await future
            await consumer.commit(
                {TopicPartition(tp.topic, tp.partition): records[-1].offset + 1 for tp, records in batch.items()}
            )
    finally:
        await consumer.stop()
        await client.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_baseline")
    parser.add_argument("--bootstrap", required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    hop_parser = commands.add_parser("hop")
    hop_parser.add_argument("--src", required=True)
    hop_parser.add_argument("--dst", required=True)
    hop_parser.add_argument("--group", required=True)
    hop_parser.add_argument("--max-batch", type=int, default=500)
    produce_parser = commands.add_parser("produce")
    produce_parser.add_argument("--topic", required=True)
    produce_parser.add_argument("--count", type=int, required=True)
    paced_parser = commands.add_parser("paced")
    paced_parser.add_argument("--topic", required=True)
    paced_parser.add_argument("--rate", type=float, required=True)
    paced_parser.add_argument("--duration", type=float, required=True)
    paced_parser.add_argument("--out", required=True)
    args = parser.parse_args()
    commands_by_name = {"hop": hop, "produce": produce, "paced": paced}
    uvloop.run(commands_by_name[args.command](args))


if __name__ == "__main__":
    main()
