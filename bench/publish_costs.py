"""What publishing a relay's pass costs the publishing process, a record at a time and as Coxswain does.

    python -m bench.publish_costs 127.0.0.1:9092 [--records 222] [--passes 30] [--rounds 8]

A relay publishes its buckets' rows in passes of hundreds of records under load (about 222 a pass
in the bench's throughput phase), five or six records a lead, all keyed by the lead's id. This
measures, by itself, the CPU of the process that publishes such passes and waits for Kafka's
acknowledgements, two ways, in alternating rounds:

- ``one send a record``: aiokafka's ``send`` for each record with its default partitioner, then
  every record's future awaited (how ``Publisher.publish`` worked until 7 December);
- ``publisher``: ``coxswain.runtime.kafka.Publisher.publish``, a batch a partition with each key's
  hash kept (docs/event-path.md, "Producer").

Both use the same producer settings (``acks=all``, idempotence, ``linger_ms=0``) and records shaped
like the pipeline's facts (CloudEvents headers, a JSON value of about 700 bytes). It prints each
way's CPU microseconds a record, round by round, and their medians. Topics ``bench.publish-costs-*``
(six partitions each) are created on the broker when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from coxswain.runtime.kafka import Publisher, create_topics
from coxswain.settings import KafkaConfig
from schemas.codec import WireRecord

TOPICS = ("bench.publish-costs-a", "bench.publish-costs-b", "bench.publish-costs-c")
PARTITIONS = 6
RECORDS_A_LEAD = 6
WAYS = ("one send a record", "publisher")


@dataclass(frozen=True)
class PublishCost:
    way: str
    records: int  # measured, over every round
    cpu_us_per_record: list[float]  # a round each

    @property
    def median(self) -> float:
        return statistics.median(self.cpu_us_per_record)


def leads_records(leads: int) -> list[WireRecord]:
    """Each lead's facts, one after the other, over the three topics, keyed by the lead's id."""
    records = []
    for _ in range(leads):
        lead = str(uuid.uuid4())
        for n in range(RECORDS_A_LEAD):
            event = str(uuid.uuid4())
            headers = (
                ("ce_specversion", b"1.0"),
                ("ce_id", event.encode()),
                ("ce_source", b"/coxswain/scoring"),
                ("ce_type", b"io.coxswain.lead.routed.v1"),
                ("ce_time", b"2026-12-07T13:00:00.123456Z"),
                ("ce_subject", lead.encode()),
                ("content-type", b"application/json"),
            )
            value = orjson.dumps({"event_id": event, "lead_id": lead, "reason": "x" * 600})
            records.append(WireRecord(TOPICS[n % len(TOPICS)], lead.encode(), value, headers))
    return records


async def _send_each(producer: Any, records: Sequence[WireRecord]) -> None:
    pending = [
        await producer.send(record.topic, value=record.value, key=record.key, headers=list(record.headers))
        for record in records
    ]
    await asyncio.gather(*pending)


async def measure(bootstrap: str, records_a_pass: int = 222, passes: int = 30, rounds: int = 8) -> list[PublishCost]:
    config = KafkaConfig(kafka_bootstrap_servers=bootstrap, kafka_topic_partitions=PARTITIONS)
    await create_topics(config, TOPICS)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0, request_timeout_ms=15000
    )
    publisher = Publisher(config)
    await producer.start()
    try:
        ways: dict[str, Callable[[Sequence[WireRecord]], Awaitable[None]]] = {
            WAYS[0]: lambda records: _send_each(producer, records),
            WAYS[1]: publisher.publish,
        }
        for publish in ways.values():  # metadata, connections, the producers' ids
            await publish(leads_records(2))
        costs: dict[str, list[float]] = {way: [] for way in ways}
        leads_a_pass = max(records_a_pass // RECORDS_A_LEAD, 1)
        for _ in range(rounds):
            for way, publish in ways.items():
                sent = [leads_records(leads_a_pass) for _ in range(passes)]
                started = time.process_time()
                for records in sent:
                    await publish(records)
                costs[way].append((time.process_time() - started) * 1e6 / sum(map(len, sent)))
        counted = rounds * passes * leads_a_pass * RECORDS_A_LEAD
        return [PublishCost(way, counted, each) for way, each in costs.items()]
    finally:
        await producer.stop()
        await publisher.stop()


def report(costs: Sequence[PublishCost]) -> str:
    lines = ["way                 records  CPU µs a record, median (each round)"]
    for cost in costs:
        rounds = " ".join(f"{each:.1f}" for each in cost.cpu_us_per_record)
        lines.append(f"{cost.way:<19} {cost.records:>8}  {cost.median:6.1f}  ({rounds})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bootstrap", help="a Kafka broker's host:port")
    parser.add_argument("--records", type=int, default=222, help="records a pass (whole leads of six)")
    parser.add_argument("--passes", type=int, default=30, help="passes a round for each way")
    parser.add_argument("--rounds", type=int, default=8, help="rounds, the two ways in turn")
    args = parser.parse_args()
    costs = asyncio.run(measure(args.bootstrap, args.records, args.passes, args.rounds))
    print(report(costs))
    print(orjson.dumps([{**cost.__dict__, "median": cost.median} for cost in costs]).decode())


if __name__ == "__main__":
    main()
