"""Shadow mode: a candidate agreement decides beside the one in force, and only says so.

The shadow reads the live inputs (``leads.received.v1`` and ``crm.activities.v1``) from the
earliest offset with no consumer group, so it commits nothing and every start rebuilds its
in-memory engine (``coxswain.simulation.engine``) from the whole history: what was on the
topics when it started is merged by append time before it is replayed, so a restart replays the
same order and re-emits the same facts, with the same ids, which consumers dedupe. It never
reads or writes a live table; its only output is ``shadow.decisions.v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from coxswain.core.agreement import Agreement
from coxswain.simulation.engine import Engine, Input
from schemas.codec import DecodeError, WireRecord, decode, encode
from schemas.events import ActivityRecordedV1, LeadReceivedV1, ShadowDecisionV1

log = logging.getLogger(__name__)

INPUT_TOPICS: dict[str, tuple[type[LeadReceivedV1] | type[ActivityRecordedV1], ...]] = {
    LeadReceivedV1.topic: (LeadReceivedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
}


class Shadow:
    """The candidate's engine and the decisions it has not published yet."""

    def __init__(self, agreement: Agreement) -> None:
        self.agreement = agreement
        self.engine = Engine(agreement)
        self._stages = 0
        self._routes = 0

    def feed(self, events: Iterable[Input]) -> list[ShadowDecisionV1]:
        for event in events:
            self.engine.feed(event)
        return self.decisions()

    def tick(self, now: datetime) -> list[ShadowDecisionV1]:
        """Fire re-evaluations due by ``now`` (the facts are dated at their due time)."""
        self.engine.advance(now)
        return self.decisions()

    def decisions(self) -> list[ShadowDecisionV1]:
        results, version = self.engine.results, self.agreement.version
        facts = [
            ShadowDecisionV1(
                event_id=uuid.uuid5(change.caused_by, f"shadow/{version}/stage_changed/{change.to_stage.value}"),
                lead_id=change.lead_id,
                occurred_at=change.at,
                agreement_version=version,
                caused_by=change.caused_by,
                kind="stage_changed",
                to_stage=change.to_stage,
            )
            for change in results.stage_changes[self._stages :]
        ]
        facts += [
            ShadowDecisionV1(
                event_id=uuid.uuid5(routed.decision_key, f"shadow/{version}/routed"),
                lead_id=routed.lead_id,
                occurred_at=routed.at,
                agreement_version=version,
                caused_by=routed.decision_key,
                kind="routed",
                rep_id=routed.rep_id,
                pool_id=routed.pool_id,
                due_at=routed.due,
            )
            for routed in results.assignments[self._routes :]
        ]
        self._stages, self._routes = len(results.stage_changes), len(results.assignments)
        return facts


def decode_input(topic: str, value: bytes | None, headers: Any) -> Input | None:
    try:
        event = decode(topic, value, tuple(headers or ()), INPUT_TOPICS[topic])
    except DecodeError:
        return None  # the live consumers dead-letter it; the shadow skips it as well
    assert isinstance(event, (LeadReceivedV1, ActivityRecordedV1))
    return event


def records(facts: Iterable[ShadowDecisionV1]) -> list[WireRecord]:
    return [encode(fact) for fact in facts]


async def catch_up(consumer: Any) -> list[Input]:
    """Everything on the input topics up to their end offsets at start, merged by append time."""
    partitions = consumer.assignment()
    end = await consumer.end_offsets(list(partitions))
    pending = {tp for tp, offset in end.items() if offset > 0}
    per_partition: dict[Any, list[tuple[int, int, Input]]] = {}
    while pending:
        batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
        for tp, found in batch.items():
            for record in found:
                if record.offset >= end[tp]:
                    continue
                event = decode_input(tp.topic, record.value, record.headers)
                if event is not None:
                    per_partition.setdefault(tp, []).append((record.timestamp, record.offset, event))
            if await consumer.position(tp) >= end[tp]:
                pending.discard(tp)
    merged = heapq.merge(*per_partition.values(), key=lambda item: (item[0], item[1]))
    return [event for _, _, event in merged]


async def run(agreement: Agreement, kafka: Any, publisher: Any, stop: asyncio.Event, tick_seconds: float = 1.0) -> None:
    """Consume, decide in memory, publish the candidate's decisions; until ``stop``."""
    from aiokafka import AIOKafkaConsumer

    from coxswain.runtime.kafka import connection_options

    # No group: every partition of both topics, from the start, nothing committed.
    consumer = AIOKafkaConsumer(
        *INPUT_TOPICS,
        **connection_options(kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    shadow = Shadow(agreement)
    try:
        history = await catch_up(consumer)
        facts = shadow.feed(history)
        await publisher.publish(records(facts))
        log.info(
            "shadow caught up: agreement_version=%s inputs=%d decisions=%d",
            agreement.version,
            len(history),
            len(facts),
        )
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=int(tick_seconds * 1000), max_records=1000)
            arrived = sorted(
                (
                    (record.timestamp, record.offset, event)
                    for tp, found in batch.items()
                    for record in found
                    if (event := decode_input(tp.topic, record.value, record.headers)) is not None
                ),
                key=lambda item: (item[0], item[1]),
            )
            facts = shadow.feed(event for _, _, event in arrived)
            facts += shadow.tick(datetime.now(UTC))
            if facts:
                await publisher.publish(records(facts))
                log.info("shadow decisions published: count=%d", len(facts))
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
