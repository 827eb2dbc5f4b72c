"""Scoring through the real consumer path (Kafka -> consumer loop -> PostgreSQL): the same
LeadReceivedV1 records delivered twice change nothing and emit nothing twice; replayed from
scratch they rebuild the identical state and facts; a contact first seen by its source id and
later with an email stays one lead."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import load_agreement
from coxswain.core.identity import lead_id_for
from coxswain.runtime.consumer import ConsumerService, utc_now
from coxswain.runtime.kafka import connection_options
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import (
    ActivityRecordedV1,
    ActivityType,
    EngagementType,
    Event,
    LeadAttributes,
    LeadReceivedV1,
)
from services.scoring import service as scoring

pytestmark = pytest.mark.asyncio(loop_scope="session")

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TOPICS = (LeadReceivedV1.topic, ActivityRecordedV1.topic)


async def produce(events: Iterable[Event]) -> None:
    producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            record = encode(event)
            await producer.send_and_wait(record.topic, record.value, key=record.key, headers=list(record.headers))
    finally:
        await producer.stop()


async def caught_up(group: str) -> bool:
    """True once the group committed every record now in the scoring topics."""
    config = KafkaConfig()
    reader = AIOKafkaConsumer(**connection_options(config), group_id=None)
    admin = AIOKafkaAdminClient(**connection_options(config))
    await reader.start()
    await admin.start()
    try:
        partitions = [
            TopicPartition(topic, p) for topic in TOPICS for p in sorted(reader.partitions_for_topic(topic) or ())
        ]
        ends = await reader.end_offsets(partitions)
        try:
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
        except KafkaError:  # the group's coordinator is not known yet: it has not committed anything
            return False
        return all(end == 0 or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())
    finally:
        await reader.stop()
        await admin.close()


async def consume(engine: AsyncEngine, group: str, leads: Sequence[uuid.UUID], ready: Any) -> None:
    """Run the scoring consumer under ``group`` until it has committed everything and ``ready``
    holds. Records about other leads (other tests') are consumed but left alone."""
    handle = scoring.make_handler(AGREEMENT)

    async def ours_only(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        return await handle(connection, event, now) if event.lead_id in leads else []

    service = ConsumerService(
        name=group,
        accepts=scoring.ACCEPTS,
        handler=ours_only,
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(),
        clock=utc_now,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        deadline = time.monotonic() + 90
        while not (await caught_up(group) and await ready()):
            assert time.monotonic() < deadline, f"consumer {group} did not catch up"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task


def lead_events(run: str) -> tuple[list[Event], list[uuid.UUID]]:
    """Three people over ten days: one qualifies by score (and will decay), one by the demo fast
    lane, one stays a lead.

    Only marketing events: a replay by a new consumer reads leads.received.v1 and
    crm.activities.v1 side by side, and Kafka orders records within a partition, not across
    topics, so an activity could overtake the events it follows."""
    emails = [f"{run}-{name}@northwind-test.io" for name in ("ana", "bo", "cy")]
    ids = [lead_id_for(email, "hubspot", None) for email in emails]
    vp = LeadAttributes(title="VP Sales", seniority="VP", department="Sales", company_size=300, country="US")
    plan: list[tuple[int, EngagementType, LeadAttributes, int]] = [
        (0, EngagementType.page_view, LeadAttributes(email=emails[0], country="US"), 0),
        (0, EngagementType.pricing_view, LeadAttributes(email=emails[0], title="Sales Manager", company_size=100), 2),
        (1, EngagementType.demo_request, vp.model_copy(update={"email": emails[1]}), 3),
        (0, EngagementType.pricing_view, LeadAttributes(email=emails[0], industry="Software"), 4),
        (2, EngagementType.email_click, LeadAttributes(email=emails[2], title="Student"), 5),
        (0, EngagementType.webinar_attended, LeadAttributes(email=emails[0]), 9),
    ]
    events: list[Event] = [
        LeadReceivedV1(
            event_id=uuid.uuid5(ids[who], f"{run}/{n}"),
            lead_id=ids[who],
            occurred_at=T0 + timedelta(days=day),
            source="hubspot",
            webhook_id=f"{run}-{n}",
            external_id=f"{run}-contact-{who}",
            engagement=kind,
            attributes=attributes,
        )
        for n, (who, kind, attributes, day) in enumerate(plan)
    ]
    return events, ids


async def snapshot(engine: AsyncEngine, ids: Sequence[uuid.UUID]) -> dict[str, Any]:
    """Everything scoring owns about these leads, without the wall-clock columns."""
    async with engine.connect() as connection:
        leads = [
            dict(row._mapping)
            for row in await connection.execute(
                text(
                    "SELECT lead_id, stage, source, attributes, touches, score_total, tier, agreement_version, "
                    "persona, pinned, held_until, recycled_until FROM leads WHERE lead_id = ANY(:ids) ORDER BY lead_id"
                ),
                {"ids": list(ids)},
            )
        ]
        facts = [
            dict(row._mapping)
            for row in await connection.execute(
                text(
                    "SELECT event_id, lead_id, kind, occurred_at, agreement_version, caused_by, payload "
                    "FROM lead_facts WHERE lead_id = ANY(:ids) ORDER BY event_id"
                ),
                {"ids": list(ids)},
            )
        ]
        outbox = [
            (row.event_id, row.topic, bytes(row.value))
            for row in await connection.execute(
                text("SELECT event_id, topic, value FROM outbox WHERE key = ANY(:keys) ORDER BY event_id"),
                {"keys": [str(i).encode() for i in ids]},
            )
        ]
        timers = [
            dict(row._mapping)
            for row in await connection.execute(
                text(
                    "SELECT lead_id, timer_id, due_at, stage, agreement_version FROM scoring_timers "
                    "WHERE lead_id = ANY(:ids) ORDER BY lead_id"
                ),
                {"ids": list(ids)},
            )
        ]
    return {"leads": leads, "facts": facts, "outbox": outbox, "timers": timers}


async def forget(engine: AsyncEngine, ids: Sequence[uuid.UUID]) -> None:
    async with engine.begin() as connection:
        for statement in (
            "DELETE FROM leads WHERE lead_id = ANY(:ids)",
            "DELETE FROM lead_facts WHERE lead_id = ANY(:ids)",
            "DELETE FROM scoring_timers WHERE lead_id = ANY(:ids)",
            "DELETE FROM lead_identities WHERE lead_id = ANY(:ids)",
        ):
            await connection.execute(text(statement), {"ids": list(ids)})
        await connection.execute(
            text("DELETE FROM outbox WHERE key = ANY(:keys)"), {"keys": [str(i).encode() for i in ids]}
        )


async def test_the_same_records_twice_change_nothing_and_a_replay_rebuilds_the_same_state(
    engine: AsyncEngine,
) -> None:
    run = uuid.uuid4().hex[:8]
    events, ids = lead_events(run)
    group = f"scoring-replay-{run}"

    async def all_leads_scored() -> bool:
        async with engine.connect() as connection:
            facts = await connection.scalar(
                text("SELECT count(*) FROM lead_facts WHERE lead_id = ANY(:ids)"), {"ids": ids}
            )
        return bool(facts and facts >= len(events))

    await produce(events)
    await consume(engine, group, ids, all_leads_scored)
    first = await snapshot(engine, ids)

    stages = {row["lead_id"]: row["stage"] for row in first["leads"]}
    assert stages == {ids[0]: "mql", ids[1]: "mql", ids[2]: "lead"}
    kinds = [fact["kind"] for fact in first["facts"]]
    assert kinds.count("LeadQualifiedV1") == 2
    assert kinds.count("LeadScoredV1") == 6
    assert len(first["outbox"]) == len(first["facts"]) == len({row[0] for row in first["outbox"]})
    assert {row["agreement_version"] for row in first["leads"]} == {AGREEMENT.version}
    assert [timer["lead_id"] for timer in first["timers"]] == [ids[0]]  # the MQL decays; nothing else waits

    # The same records again, as a broker redelivery or a producer retry would bring them.
    await produce(events)
    await consume(engine, group, ids, lambda: asyncio.sleep(0, True))
    assert await snapshot(engine, ids) == first

    # Replayed from scratch by a new consumer: the identical state and the identical facts.
    await forget(engine, ids)
    await consume(engine, f"{group}-again", ids, all_leads_scored)
    assert await snapshot(engine, ids) == first
    await forget(engine, ids)


async def test_a_contact_first_seen_by_source_id_then_with_email_stays_one_lead(engine: AsyncEngine) -> None:
    run = uuid.uuid4().hex[:8]
    by_source = lead_id_for(None, "marketo", f"mk-{run}")
    by_email = lead_id_for(f"{run}@northwind-test.io", "marketo", f"mk-{run}")

    def event(n: int, lead_id: uuid.UUID, email: str | None) -> LeadReceivedV1:
        return LeadReceivedV1(
            event_id=uuid.uuid5(lead_id, f"{run}/{n}"),
            lead_id=lead_id,
            occurred_at=T0 + timedelta(hours=n),
            source="marketo",
            webhook_id=f"{run}-{n}",
            external_id=f"mk-{run}",
            engagement=EngagementType.form_submit,
            attributes=LeadAttributes(email=email, title="Director"),
        )

    first, second = event(0, by_source, None), event(1, by_email, f"{run}@northwind-test.io")
    rejected = ActivityRecordedV1(
        event_id=uuid.uuid5(by_email, f"{run}/disqualify"),
        lead_id=by_email,  # the id intake answered the second webhook with
        occurred_at=T0 + timedelta(hours=2),
        source="salesforce",
        webhook_id=f"{run}-dq",
        activity=ActivityType.disqualified,
    )
    handler = scoring.make_handler(AGREEMENT)
    async with engine.begin() as connection:
        for item in (first, second, rejected):
            facts = await handler(connection, item, utc_now())
            assert {fact.lead_id for fact in facts} == {by_source}

    async with engine.connect() as connection:
        keys = {
            row.key: row.lead_id
            for row in await connection.execute(
                text("SELECT key, lead_id FROM lead_identities WHERE lead_id = :l"), {"l": by_source}
            )
        }
        leads = (
            await connection.execute(
                text("SELECT lead_id, stage, touches FROM leads WHERE lead_id = ANY(:ids)"),
                {"ids": [by_source, by_email]},
            )
        ).all()
    assert keys == {
        f"source:marketo:mk-{run}": by_source,
        f"email:{run}@northwind-test.io": by_source,
        f"id:{by_email}": by_source,
    }
    assert [(row.lead_id, row.stage, len(row.touches)) for row in leads] == [(by_source, "disqualified", 2)]
    await forget(engine, [by_source])
