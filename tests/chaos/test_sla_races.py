"""The two SLA races the chaos run found, replayed deterministically through the real consumer
path (inbox, handler, outbox) on the real PostgreSQL: a first touch that intake acknowledged
before the deadline always stops the clock, whatever order the monitor learns about things in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import load_agreement
from coxswain.runtime.consumer import ConsumerService, Delivery
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityType,
    EngagementType,
    Event,
    LeadAttributes,
    LeadReceivedV1,
    LeadRoutedV1,
    Tier,
)
from services.intake.app import store
from services.scoring import service as scoring
from services.sla_monitor.service import ACCEPTS, CONSUMER, make_batch_handler, make_handler
from services.sla_monitor.timers import fire_due

pytestmark = pytest.mark.asyncio(loop_scope="session")

AGREEMENT = load_agreement(Path(__file__).parents[1] / "e2e" / "agreement.yaml")
ROUTED_AT = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DUE = ROUTED_AT + timedelta(seconds=4)


def monitor(engine: AsyncEngine, now: datetime) -> ConsumerService:
    return ConsumerService(
        name=CONSUMER,
        accepts=ACCEPTS,
        handler=make_handler(AGREEMENT),
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(),
        clock=lambda: now,
        batch_handler=make_batch_handler(AGREEMENT),
    )


def delivery(event: Event, offset: int) -> Delivery:
    record = encode(event)
    return Delivery(record.topic, 0, offset, record.key, record.value, record.headers)


def routed(lead_id: uuid.UUID) -> LeadRoutedV1:
    return LeadRoutedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=ROUTED_AT,
        agreement_version=AGREEMENT.version,
        caused_by=uuid.uuid4(),
        assignment_id=uuid.uuid4(),
        rep_id="iris",
        pool_id="iceland",
        rule_id="iceland",
        reason="chaos race",
        tier=Tier.hot,
        routed_at=ROUTED_AT,
        follow_up_due_at=DUE,
        candidates=(),
    )


async def acknowledge_touch(engine: AsyncEngine, lead_id: uuid.UUID, at: datetime) -> ActivityRecordedV1:
    """What intake does with a first touch: store it (the ledger) before it is ever published."""
    webhook_id = f"msg_race_{uuid.uuid4().hex}"
    touch = ActivityRecordedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=at,
        source="crm",
        webhook_id=webhook_id,
        activity=ActivityType.first_touch,
        rep_id="iris",
    )
    async with engine.begin() as connection:
        await store(connection, "crm", webhook_id, "activity", [touch], at)
    return touch


async def judge(engine: AsyncEngine, touch: ActivityRecordedV1) -> ActivityAcceptedV1:
    """What scoring does with it: judge it once against the agreement (here: accept it) and record
    the judgement with the lead's facts, in the transaction that publishes it."""
    received = LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=touch.lead_id,
        occurred_at=ROUTED_AT - timedelta(minutes=1),
        source="webform",
        webhook_id=f"msg_lead_{uuid.uuid4().hex}",
        engagement=EngagementType.demo_request,
        attributes=LeadAttributes(country="IS"),
    )
    async with engine.begin() as connection:
        _, outcome = await scoring.apply_batch(connection, [received, touch], AGREEMENT, touch.occurred_at)
    accepted = outcome.facts[0]
    assert isinstance(accepted, ActivityAcceptedV1), outcome.facts
    return accepted


async def outcome(engine: AsyncEngine, lead_id: uuid.UUID) -> tuple[str, list[str]]:
    async with engine.connect() as connection:
        status = await connection.scalar(
            text("SELECT status FROM deadlines WHERE lead_id = :l AND milestone = 'first_touch'"), {"l": lead_id}
        )
        topics = await connection.scalars(
            text("SELECT topic FROM outbox WHERE key = :k AND topic IN ('sla.met.v1', 'sla.breached.v1')"),
            {"k": str(lead_id).encode()},
        )
        return str(status), sorted(topics.all())


async def test_a_touch_consumed_before_its_routing_still_stops_the_clock(engine: AsyncEngine) -> None:
    lead_id = uuid.uuid4()
    touch = await judge(engine, await acknowledge_touch(engine, lead_id, ROUTED_AT + timedelta(seconds=1)))
    # After a restart the monitor's batch may hold the touch before the routing it answers.
    await monitor(engine, DUE + timedelta(seconds=30)).process([delivery(touch, 0), delivery(routed(lead_id), 0)])
    await fire_due(engine, DUE + timedelta(seconds=31), 1000, "race-test")
    assert await outcome(engine, lead_id) == ("met", ["sla.met.v1"])


async def test_the_timer_waits_for_a_touch_acknowledged_in_time_but_not_yet_applied(engine: AsyncEngine) -> None:
    lead_id = uuid.uuid4()
    await monitor(engine, ROUTED_AT).process([delivery(routed(lead_id), 0)])
    # Intake acknowledged the touch a second before the deadline; the broker is down, so the
    # monitor has not seen it when the deadline passes.
    touch = await judge(engine, await acknowledge_touch(engine, lead_id, DUE - timedelta(seconds=1)))
    await fire_due(engine, DUE + timedelta(seconds=10), 1000, "race-test")
    assert await outcome(engine, lead_id) == ("armed", [])
    await monitor(engine, DUE + timedelta(seconds=20)).process([delivery(touch, 0)])
    await fire_due(engine, DUE + timedelta(seconds=21), 1000, "race-test")
    assert await outcome(engine, lead_id) == ("met", ["sla.met.v1"])


async def test_a_touch_acknowledged_after_the_deadline_does_not_hold_the_breach(engine: AsyncEngine) -> None:
    lead_id = uuid.uuid4()
    await monitor(engine, ROUTED_AT).process([delivery(routed(lead_id), 0)])
    await acknowledge_touch(engine, lead_id, DUE + timedelta(seconds=1))
    await fire_due(engine, DUE + timedelta(seconds=10), 1000, "race-test")
    assert await outcome(engine, lead_id) == ("breached", ["sla.breached.v1"])
