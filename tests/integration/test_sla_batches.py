"""The SLA monitor judges a lead's routings and touches the same however the consumer batches them.

A monitor that lets records gather, or that catches up after a restart or under load, fetches a
routing, its reassignment and the touches after them together. These tests feed the batches
through the consumer runtime (``ConsumerService.process``), which claims a whole batch in the
inbox before the monitor's batch handler runs, against the real PostgreSQL, on a database of
their own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.core.sla import FIRST_TOUCH, deadline_id_for
from coxswain.runtime.consumer import ConsumerService, Delivery, claim_many
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import (
    ActivityAcceptedV1,
    ActivityType,
    Event,
    LeadRoutedV1,
    SlaArmedV1,
    SlaMetV1,
    Stage,
    Tier,
)
from services.scoring import repository as scoring_repository
from services.sla_monitor import repository as sla_repository
from services.sla_monitor import service as sla_monitor
from tests.support.databases import fresh_database
from tests.support.facts import routed_fact

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml").read_text())
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def first_touch_in(minutes: int) -> Agreement:
    """The example agreement with one first-touch deadline for every tier, and the default
    ``sla.credit``: only the owner's touch (or one naming nobody) stops the owner's clock."""
    document = dict(EXAMPLE)
    document["sla"] = {"calendar": "24x7", "policies": {tier.value: {"first_touch": f"{minutes}m"} for tier in Tier}}
    return parse_agreement(document)


AGREEMENT = first_touch_in(10)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with fresh_database("sla_batches") as database:
        yield database


def routed(lead_id: uuid.UUID, at: datetime, rep: str, replaces: uuid.UUID | None = None) -> LeadRoutedV1:
    return routed_fact(rep, at, lead_id=lead_id, pool_id="general", due_in=timedelta(minutes=10), replaces=replaces)


def iris_then_ava(lead_id: uuid.UUID) -> tuple[LeadRoutedV1, LeadRoutedV1]:
    """The lead routed to iris at T0, then reassigned to ava a second later."""
    first = routed(lead_id, T0, "iris")
    return first, routed(lead_id, T0 + timedelta(seconds=1), "ava", replaces=first.assignment_id)


async def touched(engine: AsyncEngine, lead_id: uuid.UUID, at: datetime, rep: str) -> ActivityAcceptedV1:
    """A first touch by ``rep`` that intake received at ``at`` and scoring accepted: the rows both
    wrote before the monitor reads the judgement, and the judgement itself."""
    touch = ActivityAcceptedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=at,
        agreement_version="it-1",
        caused_by=uuid.uuid4(),
        source="crm",
        activity=ActivityType.first_touch,
        rep_id=rep,
        from_stage=Stage.mql,
        to_stage=Stage.mql,
    )
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO intake_events (event_id, lead_id, source, webhook_id, kind, payload, received_at) "
                "VALUES (:e, :l, 'crm', :w, 'activity', '{}', :at)"
            ),
            {"e": touch.caused_by, "l": lead_id, "w": f"wh-{touch.caused_by.hex}", "at": at},
        )
        await scoring_repository.record_facts(connection, [touch], at)
    return touch


def monitor(engine: AsyncEngine, now: datetime) -> ConsumerService:
    return ConsumerService(
        name=sla_monitor.CONSUMER,
        accepts=sla_monitor.ACCEPTS,
        handler=sla_monitor.make_handler(AGREEMENT),
        batch_handler=sla_monitor.make_batch_handler(AGREEMENT),
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(),
        clock=lambda: now,
    )


def deliveries(events: Sequence[Event]) -> list[Delivery]:
    """The events as one fetched batch, in this order."""
    records = [encode(event) for event in events]
    return [Delivery(r.topic, 0, n, r.key, r.value, r.headers) for n, r in enumerate(records)]


async def clocks(engine: AsyncEngine, lead_id: uuid.UUID) -> dict[uuid.UUID, tuple[str, str | None]]:
    """The lead's deadlines: status and who responded, by deadline id."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT deadline_id, status, responded_by FROM deadlines WHERE lead_id = :l"), {"l": lead_id}
        )
        return {row.deadline_id: (row.status, row.responded_by) for row in rows}


async def staged_met(engine: AsyncEngine, lead_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM outbox WHERE topic = :t AND key = :k"),
            {"t": SlaMetV1.topic, "k": str(lead_id).encode()},
        )
        return int(count or 0)


async def test_a_batch_with_a_reassignment_and_the_former_owners_touch_after_it_credits_nobody(
    engine: AsyncEngine,
) -> None:
    """iris's touch came after the lead moved to ava: one at a time, it stops nobody's clock. In
    one batch with both routings, iris's clock must not take it either (it was already claimed
    in the inbox when iris's routing was applied, but not applied yet)."""
    lead = uuid.uuid4()
    first, second = iris_then_ava(lead)
    touch = await touched(engine, lead, T0 + timedelta(seconds=2), "iris")

    await monitor(engine, T0 + timedelta(seconds=3)).process(deliveries([first, second, touch]))

    assert await clocks(engine, lead) == {
        deadline_id_for(first.assignment_id, FIRST_TOUCH): ("cancelled", None),
        deadline_id_for(second.assignment_id, FIRST_TOUCH): ("armed", None),
    }
    assert await staged_met(engine, lead) == 0, "iris's touch stops nobody's clock"


async def test_a_touch_applied_before_both_routings_answers_the_assignment_it_was_made_under(
    engine: AsyncEngine,
) -> None:
    """Catching up, the monitor applied iris's touch before either routing reached it (no clock
    to stop then), and then gets both routings in one batch. The touch was received after the
    lead moved to ava, so it answers neither iris's clock nor, being iris's, ava's."""
    lead = uuid.uuid4()
    first, second = iris_then_ava(lead)
    touch = await touched(engine, lead, T0 + timedelta(seconds=2), "iris")

    await monitor(engine, T0 + timedelta(seconds=3)).process(deliveries([touch]))
    await monitor(engine, T0 + timedelta(seconds=4)).process(deliveries([first, second]))

    assert await clocks(engine, lead) == {
        deadline_id_for(first.assignment_id, FIRST_TOUCH): ("cancelled", None),
        deadline_id_for(second.assignment_id, FIRST_TOUCH): ("armed", None),
    }
    assert await staged_met(engine, lead) == 0, "iris's touch stops nobody's clock"


async def assigned(engine: AsyncEngine, *routings: LeadRoutedV1) -> None:
    """The router's record of these routings, stored before it published them."""
    async with engine.begin() as connection:
        for event in routings:
            await connection.execute(
                text(
                    "INSERT INTO assignments (assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, reason, "
                    "tier, agreement_version, routed_at, decision) VALUES (:a, :k, :l, :r, :p, 'it', 'it', :t, 'it-1', "
                    ":at, '{}')"
                ),
                {
                    "a": event.assignment_id,
                    "k": event.caused_by,
                    "l": event.lead_id,
                    "r": event.rep_id,
                    "p": event.pool_id,
                    "t": event.tier.value,
                    "at": event.routed_at,
                },
            )


async def test_a_touch_applied_before_its_routing_does_not_answer_it_when_a_later_batch_brings_the_reassignment(
    engine: AsyncEngine,
) -> None:
    """Catching up, the monitor applied iris's touch before any routing, then gets iris's routing
    alone, and ava's in a later batch. The touch was received after the lead had moved to ava, so
    it answers nobody, as one at a time: the router's record says so before ava's routing arrives."""
    lead = uuid.uuid4()
    first, second = iris_then_ava(lead)
    await assigned(engine, first, second)
    touch = await touched(engine, lead, T0 + timedelta(seconds=2), "iris")

    await monitor(engine, T0 + timedelta(seconds=3)).process(deliveries([touch]))
    await monitor(engine, T0 + timedelta(seconds=4)).process(deliveries([first]))

    assert await clocks(engine, lead) == {deadline_id_for(first.assignment_id, FIRST_TOUCH): ("armed", None)}

    await monitor(engine, T0 + timedelta(seconds=5)).process(deliveries([second]))

    assert await clocks(engine, lead) == {
        deadline_id_for(first.assignment_id, FIRST_TOUCH): ("cancelled", None),
        deadline_id_for(second.assignment_id, FIRST_TOUCH): ("armed", None),
    }
    assert await staged_met(engine, lead) == 0, "iris's touch stops nobody's clock"


async def test_a_touch_applied_before_its_routing_still_answers_it_when_the_lead_moved_only_afterwards(
    engine: AsyncEngine,
) -> None:
    """The same order of batches, with iris's touch received before the lead moved to ava: it
    answers iris's clock, and ava's routing later replaces a clock already met."""
    lead = uuid.uuid4()
    first = routed(lead, T0, "iris")
    second = routed(lead, T0 + timedelta(seconds=5), "ava", replaces=first.assignment_id)
    await assigned(engine, first, second)
    touch = await touched(engine, lead, T0 + timedelta(seconds=2), "iris")

    await monitor(engine, T0 + timedelta(seconds=6)).process(deliveries([touch]))
    await monitor(engine, T0 + timedelta(seconds=7)).process(deliveries([first]))

    assert await clocks(engine, lead) == {deadline_id_for(first.assignment_id, FIRST_TOUCH): ("met", "iris")}
    assert await staged_met(engine, lead) == 1


async def test_the_owners_touch_in_the_same_batch_as_the_routings_meets_the_new_clock_once(
    engine: AsyncEngine,
) -> None:
    """The same batch with ava's own touch after her routing: her clock is met, once; and a touch
    that comes before its routing in the batch (published first) still answers it."""
    lead = uuid.uuid4()
    first, second = iris_then_ava(lead)
    touch = await touched(engine, lead, T0 + timedelta(seconds=2), "ava")

    await monitor(engine, T0 + timedelta(seconds=3)).process(deliveries([first, touch, second]))

    assert await clocks(engine, lead) == {
        deadline_id_for(first.assignment_id, FIRST_TOUCH): ("cancelled", None),
        deadline_id_for(second.assignment_id, FIRST_TOUCH): ("met", "ava"),
    }
    assert await staged_met(engine, lead) == 1


async def test_a_touch_later_in_the_batch_is_judged_when_the_batch_reaches_it(engine: AsyncEngine) -> None:
    """The runtime claims the whole batch in the inbox before the handler runs, so the owner's
    touch after her routing reads as applied already; it is applied in its turn all the same, as
    one at a time would: the routing arms, the touch meets (its fact is the touch's, traced to it)."""
    lead = uuid.uuid4()
    event = routed(lead, T0, "ava")
    touch = await touched(engine, lead, T0 + timedelta(seconds=2), "ava")
    now = T0 + timedelta(seconds=3)

    async with engine.begin() as connection:
        await claim_many(connection, sla_monitor.CONSUMER, [(e.event_id, e.topic) for e in (event, touch)], now)
        arming, answering = await sla_monitor.make_batch_handler(AGREEMENT)(connection, [event, touch], now)

    assert [type(fact) for fact in arming] == [SlaArmedV1]
    [met] = answering
    assert isinstance(met, SlaMetV1) and (met.response_activity_id, met.responded_by) == (touch.event_id, "ava")


async def test_the_touches_already_applied_are_read_by_lead_whatever_the_statistics(infrastructure: None) -> None:
    """The query for touches applied before their routing must cost a batch its leads' rows, not
    the monitor's whole inbox. PostgreSQL plans a prepared statement once for every execution (a
    generic plan), from the statistics of that moment: planned while the tables were small, the
    first form walked every inbox row of the monitor and looked up each one's fact, 10 ms a batch
    after a few thousand leads in the bench and growing with the inbox. Here the inbox grows by
    20,000 rows behind statistics that say it holds one, and the generic plan must still touch a
    handful of pages. On a database of its own: the plan must not depend on the other tests' rows."""
    async with fresh_database("sla_plans") as engine:
        await _read_the_touches_applied_under_stale_statistics(engine)


async def _read_the_touches_applied_under_stale_statistics(engine: AsyncEngine) -> None:
    lead = uuid.uuid4()
    touch = await touched(engine, lead, T0, "iris")
    async with engine.begin() as connection:
        await claim_many(connection, sla_monitor.CONSUMER, [(touch.event_id, touch.topic)], T0)
        # Statistics taken early on: a thousand facts of other leads, and next to no inbox.
        await connection.execute(
            text(
                "INSERT INTO lead_facts (event_id, lead_id, kind, occurred_at, payload, recorded_at) "
                "SELECT gen_random_uuid(), gen_random_uuid(), 'ActivityAcceptedV1', :now, '{}', :now "
                "FROM generate_series(1, 1000)"
            ),
            {"now": T0},
        )
        await connection.execute(text("ALTER TABLE inbox SET (autovacuum_enabled = false)"))
        await connection.execute(text("ANALYZE inbox, lead_facts, intake_events"))
        await connection.execute(
            text(
                "INSERT INTO inbox (consumer, event_id, topic, processed_at) "
                "SELECT :consumer, gen_random_uuid(), 'activities.accepted.v1', :now FROM generate_series(1, 20000)"
            ),
            {"consumer": sla_monitor.CONSUMER, "now": T0},
        )
    query = str(sla_repository.APPLIED_ACTIVITIES)
    for n, name in enumerate((":lead_ids", ":received_since", ":consumer"), start=1):
        query = query.replace(name, f"${n}")
    async with engine.begin() as connection:
        await connection.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        await connection.execute(text(f"PREPARE applied (uuid[], timestamptz, text) AS {query}"))
        # EXECUTE takes no bind parameters: the values are ours, written out.
        since = (T0 - timedelta(minutes=1)).isoformat()
        explained = await connection.scalar(
            text(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
                f"EXECUTE applied(ARRAY['{lead}']::uuid[], '{since}', '{sla_monitor.CONSUMER}')"
            )
        )
        await connection.execute(text("DEALLOCATE applied"))
    [plan] = explained if isinstance(explained, list) else json.loads(explained)
    assert plan["Plan"]["Actual Rows"] == 1, "the applied touch is found"
    pages = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
    assert pages < 200, f"the query read {pages} pages for one lead: {json.dumps(plan['Plan'])}"
