"""Scoring routes the leads it qualifies in its own transaction (``coxswain_app.wiring.routing_in_scoring``).

The lead reaches its rep one relay, one Kafka hop and one consumer transaction sooner; the router
still reads ``leads.qualified.v1`` from Kafka, and the inbox claim made in scoring's transaction
turns that into a no-op. When routing fails there, the batch is applied again without it and the
router applies the fact from Kafka as before.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import load_agreement
from coxswain.runtime.consumer import (
    BatchHandler,
    ConsumerService,
    Delivery,
    PermanentError,
    RetrySoon,
)
from coxswain.runtime.metrics import BATCHES_ALREADY_APPLIED, HANDOVERS_LEFT
from coxswain.runtime.service import HandOverFailed, Process, Wired, handing_over
from coxswain.settings import ScoringConfig, Settings
from coxswain_app.wiring import CONSUMERS, ROUTER_GATHER_MS_WHEN_SCORING_ROUTES, consumer_service, routing_in_scoring
from schemas.codec import encode
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityType,
    EngagementType,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadRoutedV1,
    LeadStageChangedV1,
)
from services.router import spec as router_spec
from services.scoring import service as scoring
from services.scoring import spec as scoring_spec
from tests.support.databases import fresh_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday, in working hours


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with fresh_database("routing_in_scoring") as database:
        yield database


def received(n: int) -> LeadReceivedV1:
    """A lead the example agreement qualifies at once (a demo request: its fast lane)."""
    lead_id = uuid.uuid4()
    return LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=NOW,
        source="hubspot",
        webhook_id=f"inline-{lead_id}-{n}",
        engagement=EngagementType.demo_request,
        attributes=LeadAttributes(
            title="Sales Manager", company_size=100, industry="Software", country="US", email=f"{n}@{lead_id.hex}.io"
        ),
    )


def fused(engine: AsyncEngine, inline: bool = True) -> BatchHandler:
    settings = Settings()
    settings.scoring = ScoringConfig(scoring_routes_inline=inline)
    wired = CONSUMERS["scoring"].wire(Process("scoring", engine, lambda: AGREEMENT, lambda: NOW, settings))
    assert wired.batch_handler is not None
    return wired.batch_handler


async def rows(engine: AsyncEngine, sql: str, **params: object) -> list[tuple[object, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(sql), params)]


def of_kind(facts: Sequence[Event], kind: type[Event]) -> list[Event]:
    return [fact for fact in facts if isinstance(fact, kind)]


async def test_a_lead_scoring_qualifies_is_routed_in_the_same_transaction(engine: AsyncEngine) -> None:
    event = received(1)
    async with engine.begin() as connection:
        [facts] = await fused(engine)(connection, [event], NOW)

    [qualified] = of_kind(facts, LeadQualifiedV1)
    [routed] = of_kind(facts, LeadRoutedV1)
    assert isinstance(routed, LeadRoutedV1) and routed.lead_id == event.lead_id
    # The routed fact follows the qualification it decides: staged, and so published, after it.
    assert facts.index(routed) > facts.index(qualified)
    assert await rows(engine, "SELECT consumer FROM inbox WHERE event_id = :e", e=qualified.event_id) == [("router",)]
    # The move to MQL, which the router reads too (it frees nothing), is claimed for it alike.
    [changed] = of_kind(facts, LeadStageChangedV1)
    assert await rows(engine, "SELECT consumer FROM inbox WHERE event_id = :e", e=changed.event_id) == [("router",)]
    [(rep, key)] = await rows(
        engine, "SELECT rep_id, decision_key FROM assignments WHERE lead_id = :l", l=event.lead_id
    )
    assert (rep, key) == (routed.rep_id, qualified.event_id)


def router_consumer(engine: AsyncEngine, inline: bool = True) -> ConsumerService:
    """The router's consumer as ``run_consumer`` builds it, without its Kafka loop."""
    settings = Settings()
    settings.scoring = ScoringConfig(scoring_routes_inline=inline)
    spec = CONSUMERS["router"]
    wired = spec.wire(Process("router", engine, lambda: AGREEMENT, lambda: NOW, settings))
    return consumer_service("router", spec, wired, engine, settings, clock=lambda: NOW)


async def test_the_routers_records_gather_only_while_scoring_routes_them(engine: AsyncEngine) -> None:
    """Off the lead's path, the router fetches a tenth of a second's records at once; when scoring
    does not route, every lead waits on the router again, and it fetches each record at once."""
    assert router_consumer(engine).gather_ms == ROUTER_GATHER_MS_WHEN_SCORING_ROUTES > 0
    assert router_consumer(engine, inline=False).gather_ms == 0


def delivered(facts: Sequence[Event]) -> list[Delivery]:
    records = [encode(fact) for fact in facts]
    return [Delivery(r.topic, 0, offset, r.key, r.value, r.headers) for offset, r in enumerate(records)]


def already_applied() -> float:
    return float(BATCHES_ALREADY_APPLIED.labels("router")._value.get())


async def test_the_router_skips_what_scoring_routed_when_kafka_delivers_it(engine: AsyncEngine) -> None:
    event = received(2)
    async with engine.begin() as connection:
        [facts] = await fused(engine)(connection, [event], NOW)
    handed = [fact for fact in facts if isinstance(fact, (LeadQualifiedV1, LeadStageChangedV1))]
    assert len(handed) == 2
    staged_before = await rows(engine, "SELECT count(*) FROM outbox WHERE key = :k", k=str(event.lead_id).encode())
    skipped_before = already_applied()

    await router_consumer(engine).process(delivered(handed))

    assert await rows(engine, "SELECT count(*) FROM assignments WHERE lead_id = :l", l=event.lead_id) == [(1,)]
    # Nothing staged: no second routed fact, no dead letter; known from the inbox without a transaction.
    assert (
        await rows(engine, "SELECT count(*) FROM outbox WHERE key = :k", k=str(event.lead_id).encode()) == staged_before
    )
    assert already_applied() == skipped_before + 1


async def test_a_batch_not_wholly_applied_is_applied_as_usual(engine: AsyncEngine) -> None:
    """Scoring switched off routing for one lead (or it fell back): its qualification, in the same
    batch as one routed in scoring, is routed by the router; the other is still skipped by the claim."""
    routed_inline, left = received(7), received(8)
    async with engine.begin() as connection:
        [inline_facts] = await fused(engine)(connection, [routed_inline], NOW)
        [left_facts] = await fused(engine, inline=False)(connection, [left], NOW)
    skipped_before = already_applied()

    await router_consumer(engine).process(
        delivered([*of_kind(inline_facts, LeadQualifiedV1), *of_kind(left_facts, LeadQualifiedV1)])
    )

    assert already_applied() == skipped_before
    for lead in (routed_inline, left):
        assert await rows(engine, "SELECT count(*) FROM assignments WHERE lead_id = :l", l=lead.lead_id) == [(1,)]


async def test_with_routing_in_scoring_off_the_router_does_not_look_first(engine: AsyncEngine) -> None:
    """Switched off, nearly nothing the router reads was applied for it: no look-up before the
    transaction (it would be a round trip wasted per batch); the claim still skips what was."""
    event = received(9)
    async with engine.begin() as connection:
        [facts] = await fused(engine)(connection, [event], NOW)
    skipped_before = already_applied()

    await router_consumer(engine, inline=False).process(delivered(of_kind(facts, LeadQualifiedV1)))

    assert already_applied() == skipped_before
    assert await rows(engine, "SELECT count(*) FROM assignments WHERE lead_id = :l", l=event.lead_id) == [(1,)]


async def test_a_disqualification_frees_the_reps_capacity_in_the_same_transaction(engine: AsyncEngine) -> None:
    """Scoring judges the rep's activity; the router releases the lead's load in that transaction."""
    event = received(6)
    handler = fused(engine)
    async with engine.begin() as connection:
        [facts] = await handler(connection, [event], NOW)
    [routed] = of_kind(facts, LeadRoutedV1)
    assert isinstance(routed, LeadRoutedV1)
    [(load_before,)] = await rows(engine, "SELECT open_load FROM rep_counters WHERE rep_id = :r", r=routed.rep_id)
    [(held, was_open)] = await rows(engine, "SELECT load, open FROM lead_routing WHERE lead_id = :l", l=event.lead_id)
    assert was_open and isinstance(held, int) and held > 0
    disqualified = ActivityRecordedV1(
        event_id=uuid.uuid4(),
        lead_id=event.lead_id,
        occurred_at=NOW,
        source="crm",
        webhook_id=f"inline-dq-{event.lead_id}",
        activity=ActivityType.disqualified,
        rep_id=routed.rep_id,
        reason="no-budget",
    )
    async with engine.begin() as connection:
        [judged] = await handler(connection, [disqualified], NOW)

    [accepted] = of_kind(judged, ActivityAcceptedV1)
    assert await rows(engine, "SELECT consumer FROM inbox WHERE event_id = :e", e=accepted.event_id) == [("router",)]
    assert await rows(engine, "SELECT open FROM lead_routing WHERE lead_id = :l", l=event.lead_id) == [(False,)]
    [(load_after,)] = await rows(engine, "SELECT open_load FROM rep_counters WHERE rep_id = :r", r=routed.rep_id)
    assert isinstance(load_before, int) and load_after == load_before - held


@pytest.mark.parametrize("failure", [RetrySoon("routing locks busy"), PermanentError("refused")])
async def test_routing_that_fails_in_scoring_is_left_to_the_router(engine: AsyncEngine, failure: Exception) -> None:
    """The batch is rolled back, the router's claims and writes with it, and applied again at once
    without handing over: scoring's own work commits, and the router's consumer applies the
    qualification from Kafka."""
    tried: list[uuid.UUID] = []

    async def route_then_fail(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> list[list[Event]]:
        tried.append(events[0].lead_id)
        await connection.execute(
            text(
                "INSERT INTO inbox (consumer, event_id, topic, processed_at) VALUES ('written-then-failed', :e, 't', :n)"
            ),
            {"e": events[0].event_id, "n": now},
        )
        raise failure

    event = received(3)
    left_before = HANDOVERS_LEFT.labels("router", type(failure).__name__)._value.get()
    handler = handing_over(scoring.make_batch_handler(AGREEMENT), "router", (LeadQualifiedV1,), route_then_fail)
    with pytest.raises(HandOverFailed):
        async with engine.begin() as connection:
            await handler(connection, [event], NOW)
    assert await rows(engine, "SELECT count(*) FROM leads WHERE lead_id = :l", l=event.lead_id) == [(0,)]
    assert await rows(engine, "SELECT count(*) FROM inbox WHERE consumer = 'written-then-failed'") == [(0,)]

    async with engine.begin() as connection:  # as the consumer applies the batch again
        [facts] = await handler(connection, [event], NOW)

    assert tried == [event.lead_id]
    [qualified] = of_kind(facts, LeadQualifiedV1)
    assert not of_kind(facts, LeadRoutedV1)
    assert await rows(engine, "SELECT consumer FROM inbox WHERE event_id = :e", e=qualified.event_id) == []
    assert await rows(engine, "SELECT stage FROM leads WHERE lead_id = :l", l=event.lead_id) == [("mql",)]
    # On-call sees how often routing fell back to the router, and why.
    assert HANDOVERS_LEFT.labels("router", type(failure).__name__)._value.get() == left_before + 1
    # Only that batch: the next one is handed over again.
    other = received(33)
    with pytest.raises(HandOverFailed):
        async with engine.begin() as connection:
            await handler(connection, [other], NOW)
    assert tried == [event.lead_id, other.lead_id]


async def test_a_failed_hand_over_is_applied_again_by_the_consumer(engine: AsyncEngine) -> None:
    """Through the consumer: the first try gives the batch back (a retry, not a fault), the
    second commits scoring's work alone."""
    settings = Settings()
    spec = CONSUMERS["scoring"]

    def wire(process: Process) -> Wired:
        own = scoring_spec.SPEC.wire(process)
        assert own.batch_handler is not None

        async def busy(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> list[list[Event]]:
            raise RetrySoon("routing locks busy")

        fused = handing_over(own.batch_handler, "router", (LeadQualifiedV1,), busy)
        return Wired(own.handler, fused)

    process = Process("scoring", engine, lambda: AGREEMENT, lambda: NOW, settings)
    service = consumer_service("scoring", replace(spec, wire=wire), wire(process), engine, settings, clock=lambda: NOW)
    event = received(34)
    with pytest.raises(HandOverFailed):
        await service.process(delivered([event]))
    assert await rows(engine, "SELECT count(*) FROM leads WHERE lead_id = :l", l=event.lead_id) == [(0,)]

    await service.process(delivered([event]))

    assert await rows(engine, "SELECT stage FROM leads WHERE lead_id = :l", l=event.lead_id) == [("mql",)]
    assert await rows(engine, "SELECT count(*) FROM assignments WHERE lead_id = :l", l=event.lead_id) == [(0,)]


async def test_the_per_record_path_routes_too(engine: AsyncEngine) -> None:
    """The consumer's fallback (record by record, each in a savepoint) uses the same fused handler."""
    event = received(4)
    wired = routing_in_scoring(scoring_spec.SPEC, router_spec.SPEC).wire(
        Process("scoring", engine, lambda: AGREEMENT, lambda: NOW, Settings())
    )
    async with engine.begin() as connection, connection.begin_nested():
        facts = await wired.handler(connection, event, NOW)
    assert of_kind(facts, LeadRoutedV1)
    assert await rows(engine, "SELECT count(*) FROM assignments WHERE lead_id = :l", l=event.lead_id) == [(1,)]


async def test_switched_off_scoring_only_qualifies(engine: AsyncEngine) -> None:
    event = received(5)
    async with engine.begin() as connection:
        [facts] = await fused(engine, inline=False)(connection, [event], NOW)
    assert of_kind(facts, LeadQualifiedV1)
    assert not of_kind(facts, LeadRoutedV1)
    assert await rows(engine, "SELECT count(*) FROM assignments WHERE lead_id = :l", l=event.lead_id) == [(0,)]
