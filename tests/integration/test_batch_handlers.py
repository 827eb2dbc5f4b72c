"""A polled batch applied whole leaves exactly what the same events applied one at a time leave.

Scoring, the router and the SLA monitor each read the state a batch needs in a few statements,
run the core over the events in order against it in memory, and write the end state once. The
per-record path (a batch of one) is what the consumer falls back to when a record fails, and it
is the reference: each test feeds one seeded stream of events to two fresh databases, one event
at a time to the first and in batches to the second, and compares every fact returned and every
row the service owns.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.core.identity import lead_id_for
from coxswain.db import deferred
from coxswain.runtime import outbox
from coxswain.runtime.consumer import BatchHandler, PermanentError, claim, claim_many, one_at_a_time
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
    ReassignmentRequestedV1,
    Stage,
    Tier,
)
from services.router import service as router
from services.scoring import repository as scoring_repository
from services.scoring import service as scoring
from services.sla_monitor import service as sla_monitor
from tests.support.databases import fresh_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml").read_text())
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday
LATER = T0 + timedelta(days=1)  # sales acts after every routing of the stream
STEP = timedelta(minutes=5)  # between two batches: a 10-minute deadline falls due two batches later
Engines = tuple[AsyncEngine, AsyncEngine]
Snapshot = Callable[[AsyncEngine], Awaitable[dict[str, list[tuple[Any, ...]]]]]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engines(infrastructure: None) -> AsyncIterator[Engines]:
    """Two empty databases at the current schema: one per way of applying the events."""
    async with fresh_database("batch_single") as single, fresh_database("batch_whole") as whole:
        yield single, whole


def rid(rng: random.Random) -> uuid.UUID:
    """Ids drawn from the test's seeded generator: the same stream, and the same orders, every run."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def chunks(events: Sequence[Event], rng: random.Random, largest: int = 12) -> list[list[Event]]:
    out: list[list[Event]] = []
    rest = list(events)
    while rest:
        size = rng.randint(1, largest)
        out.append(rest[:size])
        rest = rest[size:]
    return out


async def apply_both_ways(
    engines: Engines,
    batch: BatchHandler,
    batches: Sequence[Sequence[Event]],
    snapshot: Snapshot,
    consumer: str | None = None,
) -> tuple[list[list[dict[str, Any]]], dict[str, list[tuple[Any, ...]]]]:
    """Apply each batch to the first database one event at a time and to the second whole (each
    batch one transaction, at its own time); assert both left the same; return the facts and rows.

    An event the service refuses (an illegal lifecycle move, a reassignment of a lead never assigned) fails on its own in the first database,
    inside a savepoint, and is left out of the second one's batch: the consumer does the same when
    a whole batch fails (record by record, the bad one to the dead-letter topic).

    ``consumer``: claim the events in that consumer's inbox as the runtime does, each just before
    it is applied one at a time, and the whole batch before the batch handler runs (for a handler
    that reads the inbox)."""
    single, whole = engines
    per_record = one_at_a_time(batch)
    facts: list[list[list[dict[str, Any]]]] = [[], []]
    for n, events in enumerate(batches):
        now = T0 + n * STEP
        applied: list[Event] = []
        async with single.begin() as connection:
            for event in events:
                try:
                    async with connection.begin_nested():
                        if consumer is not None:
                            await claim(connection, consumer, event.event_id, event.topic, now)
                        found = await per_record(connection, event, now)
                except (ValueError, PermanentError):
                    continue
                applied.append(event)
                facts[0].append([fact.model_dump(mode="json") for fact in found])
        async with whole.begin() as connection:
            if consumer is not None:
                await claim_many(connection, consumer, [(event.event_id, event.topic) for event in applied], now)
            # As the consumer applies a batch whole: writes nothing later reads ride in the
            # statement that stages the facts (coxswain.db.deferred), run here with no facts.
            with deferred.deferring(connection):
                results = await batch(connection, applied, now)
                await outbox.stage_records(connection, [], now)
            assert len(results) == len(applied)
            facts[1] += [[fact.model_dump(mode="json") for fact in each] for each in results]
    for n, (single_facts, whole_facts) in enumerate(zip(facts[0], facts[1], strict=True)):
        assert whole_facts == single_facts, f"event {n} of the stream"
    rows = await snapshot(single)
    assert await snapshot(whole) == rows
    return facts[0], rows


async def select(engine: AsyncEngine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(sql), params)]


# --- scoring ---------------------------------------------------------------------------------------


def scoring_stream(rng: random.Random, run: str) -> list[Event]:
    """People who come back, some first known by their CRM id and later by email (identity
    merges), then sales' activities naming the id intake answered with (aliases)."""
    titles = ["VP Sales", "Director of Marketing", "Student", "CEO", "Engineer", "Head of Growth"]
    engagements = list(EngagementType)
    events: list[Event] = []
    answered: list[uuid.UUID] = []
    for n in range(160):
        if answered and rng.random() < 0.25:
            events.append(
                ActivityRecordedV1(
                    event_id=rid(rng),
                    lead_id=rng.choice(answered),
                    occurred_at=T0 + timedelta(minutes=n),
                    source="crm",
                    webhook_id=f"{run}-a{n}",
                    activity=rng.choice(
                        [ActivityType.sal_accepted, ActivityType.sal_rejected, ActivityType.disqualified]
                    ),
                    reason="no-budget",
                )
            )
            continue
        person = rng.randrange(30)
        email = f"p{person}@{run}-corp{person % 7}.example" if rng.random() < 0.8 else None
        external = f"{run}-c{person}" if email is None or rng.random() < 0.5 else None
        lead_id = lead_id_for(email, "hubspot", external)
        answered.append(lead_id)
        events.append(
            LeadReceivedV1(
                event_id=rid(rng),
                lead_id=lead_id,
                occurred_at=T0 + timedelta(minutes=n),
                source="hubspot",
                webhook_id=f"{run}-r{n}",
                external_id=external,
                engagement=rng.choice(engagements),
                attributes=LeadAttributes(email=email, title=rng.choice(titles), country=rng.choice(["US", "DE"])),
            )
        )
    return events


async def test_scoring_batches_leave_what_single_events_leave(engines: Engines) -> None:
    rng = random.Random(7)
    run = rid(rng).hex[:8]
    events = scoring_stream(rng, run)
    agreement = parse_agreement(copy.deepcopy(EXAMPLE))

    async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
        like = f"%{run}%"
        leads = "SELECT lead_id FROM lead_identities WHERE key LIKE :like"
        return {
            "identities": await select(
                engine, "SELECT * FROM lead_identities WHERE key LIKE :like ORDER BY key", like=like
            ),
            "leads": await select(
                engine, f"SELECT * FROM leads WHERE lead_id IN ({leads}) ORDER BY lead_id", like=like
            ),
            "facts": await select(
                engine, f"SELECT * FROM lead_facts WHERE lead_id IN ({leads}) ORDER BY event_id", like=like
            ),
            "timers": await select(
                engine, f"SELECT * FROM scoring_timers WHERE lead_id IN ({leads}) ORDER BY lead_id", like=like
            ),
        }

    facts, rows = await apply_both_ways(engines, scoring.make_batch_handler(agreement), chunks(events, rng), snapshot)

    # The stream exercised what batching must get right: merges, qualification, several events of
    # one lead in one batch.
    merged = await select(
        engines[0],
        "SELECT 1 FROM lead_identities WHERE key LIKE 'id:%' AND lead_id IN "
        "(SELECT lead_id FROM lead_identities WHERE key LIKE :like)",
        like=f"%{run}%",
    )
    assert merged, "no identity merge"
    assert any(fact["to_stage"] == "mql" for each in facts for fact in each if "to_stage" in fact)
    assert rows["timers"], "no re-evaluation timer armed"


# --- router ----------------------------------------------------------------------------------------


def router_agreement(suffix: str) -> Agreement:
    reps = ["ava", "ben", "eli", "desk"]
    return parse_agreement(
        {
            "version": f"batch-{suffix}",
            "name": "Batch equivalence",
            "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
            "roster": [
                {"id": f"{rep}-{suffix}", "name": rep.title(), **({"capacity": 6} if rep == "ben" else {})}
                for rep in reps[:3]
            ]
            + [{"id": f"desk-{suffix}", "name": "Desk", "capacity": 4}],
            "routing": {
                "rules": [{"id": "na", "when": {"country": ["US", "CA"]}, "pool": f"na-{suffix}"}],
                "fallback_pool": f"overflow-{suffix}",
                "pools": [
                    {
                        "id": f"na-{suffix}",
                        "members": [
                            {"rep": f"ava-{suffix}", "weight": 2},
                            {"rep": f"ben-{suffix}"},
                            {"rep": f"eli-{suffix}"},
                        ],
                    },
                    {"id": f"overflow-{suffix}", "members": [{"rep": f"desk-{suffix}"}]},
                ],
                "ownership": {"same_domain": True},
            },
            "sla": {"policies": {t: {"first_touch": "30d"} for t in ("hot", "warm", "cold")}},
        }
    )


def router_stream(rng: random.Random, suffix: str) -> list[list[Event]]:
    """Qualified leads from a few company domains (one owned by an account), some qualified again,
    with sales releasing load and asking for reassignments in between."""
    domains = [f"{name}-{suffix}.example" for name in ("acme", "globex", "initech", "umbrella")]
    leads = [rid(rng) for _ in range(40)]
    decided: list[LeadQualifiedV1] = []
    batches: list[list[Event]] = []
    for _ in range(20):
        batch: list[Event] = []
        per_domain: dict[str, int] = {}
        for _ in range(rng.randint(1, 10)):
            roll = rng.random()
            if decided and roll < 0.12:
                earlier = rng.choice(decided)
                batch.append(
                    judged(
                        earlier.lead_id, LATER, rng.choice([ActivityType.sal_rejected, ActivityType.first_touch]), rng
                    )
                )
            elif decided and roll < 0.2:
                earlier = rng.choice(decided)
                batch.append(
                    LeadStageChangedV1(
                        event_id=rid(rng),
                        lead_id=earlier.lead_id,
                        occurred_at=LATER,
                        agreement_version="scoring-1",
                        caused_by=rid(rng),
                        from_stage=Stage.mql,
                        to_stage=rng.choice([Stage.sal, Stage.lead]),
                        reason="test",
                    )
                )
            elif decided and roll < 0.32:
                earlier = rng.choice(decided)
                batch.append(
                    ReassignmentRequestedV1(
                        event_id=rid(rng),
                        lead_id=earlier.lead_id,
                        occurred_at=T0,
                        assignment_id=uuid.uuid5(earlier.event_id, "assignment"),
                        tier=earlier.tier,
                        exclude_reps=(),
                        reason="test",
                        requested_by="operator",
                    )
                )
            else:
                # At most two leads of a domain per batch: with a third, which of two leads routed at
                # the same instant "holds" the domain is a tie the database may break either way.
                domain = rng.choice([d for d in domains if per_domain.get(d, 0) < 2] or [None])
                if domain is not None:
                    per_domain[domain] = per_domain.get(domain, 0) + 1
                event = LeadQualifiedV1(
                    event_id=rid(rng),
                    lead_id=rng.choice(leads),
                    occurred_at=T0,
                    agreement_version="scoring-1",
                    caused_by=rid(rng),
                    tier=rng.choice(list(Tier)),
                    score=75,
                    reason="test",
                    attributes=LeadAttributes(
                        email=f"someone@{domain}" if domain else None, country=rng.choice(["US", "US", "FR"])
                    ),
                    source="webform",
                )
                decided.append(event)
                batch.append(event)
        batches.append(batch)
    return batches


async def test_router_batches_leave_what_single_events_leave(engines: Engines) -> None:
    rng = random.Random(11)
    suffix = rid(rng).hex[:6]
    agreement = router_agreement(suffix)
    for engine in engines:
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO accounts (domain, owner_rep_id, updated_at) VALUES (:d, :r, :now)"),
                {"d": f"globex-{suffix}.example", "r": f"eli-{suffix}", "now": T0},
            )
    like = f"%-{suffix}"

    async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
        leads = "SELECT lead_id FROM lead_routing WHERE rep_id LIKE :like"
        return {
            "assignments": await select(
                engine, "SELECT * FROM assignments WHERE rep_id LIKE :like ORDER BY assignment_id", like=like
            ),
            "holders": await select(
                engine, f"SELECT * FROM lead_routing WHERE lead_id IN ({leads}) ORDER BY lead_id", like=like
            ),
            "counters": await select(
                engine, "SELECT * FROM rep_counters WHERE rep_id LIKE :like ORDER BY rep_id", like=like
            ),
            "rotations": await select(
                engine, "SELECT * FROM pool_rotation WHERE pool_id LIKE :like ORDER BY pool_id", like=like
            ),
            "parked": await select(
                engine, "SELECT * FROM unassigned_leads WHERE pool_id LIKE :like ORDER BY lead_id", like=like
            ),
        }

    facts, rows = await apply_both_ways(
        engines, router.make_batch_handler(agreement), router_stream(rng, suffix), snapshot
    )

    kinds = {fact.get("matched_by") for each in facts for fact in each if "assignment_id" in fact}
    assert {"account_owner", "open_domain_lead", "rule"} <= kinds, kinds
    assert any(fact.get("replaces_assignment_id") for each in facts for fact in each), "no reassignment routed"
    assert rows["assignments"] and rows["counters"] and rows["rotations"]
    assert any("waiting_for_rep" in fact for each in facts for fact in each), "nobody parked (capacity never reached)"
    released = await select(engines[0], "SELECT 1 FROM lead_routing WHERE rep_id LIKE :like AND NOT open", like=like)
    assert released, "no load was ever released"


# --- SLA monitor -----------------------------------------------------------------------------------


def sla_agreement() -> Agreement:
    document = copy.deepcopy(EXAMPLE)
    policy = {"first_touch": "10m", "sal_decision": "1h", "warnings": [0.5], "escalation": [{"step": "remind_rep"}]}
    document["sla"] = {"calendar": "24x7", "policies": {tier.value: policy for tier in Tier}}
    return parse_agreement(document)


def judged(
    lead_id: uuid.UUID, at: datetime, activity: ActivityType, rng: random.Random, rep_id: str | None = None
) -> ActivityAcceptedV1:
    """A CRM activity as scoring accepted it: what the router and the SLA monitor consume."""
    return ActivityAcceptedV1(
        event_id=rid(rng),
        lead_id=lead_id,
        occurred_at=at,
        agreement_version="scoring-1",
        caused_by=rid(rng),
        source="crm",
        activity=activity,
        rep_id=rep_id,
        from_stage=Stage.mql,
        to_stage=Stage.mql,
    )


def sla_stream(rng: random.Random, run: str) -> tuple[list[list[Event]], list[ActivityAcceptedV1]]:
    """Routings (some leads routed again), touches in time and late, SAL decisions, MQLs; and the
    touches intake stored that the monitor consumed before the routing they answer."""
    batches: list[list[Event]] = []
    early: list[ActivityAcceptedV1] = []
    routed: list[LeadRoutedV1] = []
    leads = [rid(rng) for _ in range(24)]
    for n in range(14):
        at = T0 + n * STEP
        batch: list[Event] = []
        for _ in range(rng.randint(1, 10)):
            roll = rng.random()
            if routed and roll < 0.35:
                target = rng.choice(routed)
                late = rng.random() < 0.3
                batch.append(
                    judged(
                        target.lead_id,
                        target.routed_at + timedelta(minutes=15 if late else 2),
                        rng.choice([ActivityType.first_touch, ActivityType.sal_accepted]),
                        rng,
                        # Mostly unattributed or the owner's; some by the other rep, which the
                        # default sla.credit ignores.
                        rng.choice([None, None, target.rep_id, "ava", "ben"]),
                    )
                )
            elif roll < 0.45:
                batch.append(
                    LeadQualifiedV1(
                        event_id=rid(rng),
                        lead_id=rng.choice(leads),
                        occurred_at=at,
                        agreement_version="scoring-1",
                        caused_by=rid(rng),
                        tier=Tier.hot,
                        score=90,
                        reason="test",
                        attributes=LeadAttributes(),
                        source="webform",
                    )
                )
            else:
                lead_id = rng.choice(leads)
                cause = rid(rng)
                routed_at = at + timedelta(seconds=rng.randint(0, 50))
                event = LeadRoutedV1(
                    event_id=uuid.uuid5(cause, "routed"),
                    lead_id=lead_id,
                    occurred_at=routed_at,
                    agreement_version="it-1",
                    caused_by=cause,
                    assignment_id=uuid.uuid5(cause, "assignment"),
                    rep_id=rng.choice(["ava", "ben"]),
                    pool_id="general",
                    rule_id="fallback",
                    reason="test",
                    tier=rng.choice(list(Tier)),
                    routed_at=routed_at,
                    follow_up_due_at=routed_at + timedelta(minutes=10),
                    candidates=(),
                )
                if rng.random() < 0.15:
                    # Its first touch overtook it: consumed (and stored by intake) before the routing.
                    touch = judged(lead_id, routed_at + timedelta(minutes=1), ActivityType.first_touch, rng)
                    early.append(touch)
                    batch.append(touch)
                routed.append(event)
                batch.append(event)
        batches.append(batch)
    return batches, early


async def test_sla_batches_leave_what_single_events_leave(engines: Engines) -> None:
    rng = random.Random(5)
    run = rid(rng).hex[:8]
    batches, early = sla_stream(rng, run)
    for engine in engines:
        async with engine.begin() as connection:
            for touch in early:
                # What intake and scoring hold for a touch consumed before its routing: the raw
                # activity and its judgement; the monitor's inbox gets it when it is applied.
                await connection.execute(
                    text(
                        "INSERT INTO intake_events (event_id, lead_id, source, webhook_id, kind, payload, received_at) "
                        "VALUES (:e, :l, 'crm', :w, 'activity', '{}', :at)"
                    ),
                    {
                        "e": touch.caused_by,
                        "l": touch.lead_id,
                        "w": f"{run}-{touch.caused_by.hex}",
                        "at": touch.occurred_at,
                    },
                )
                await scoring_repository.record_facts(connection, [touch], T0)
    leads = sorted({event.lead_id for batch in batches for event in batch})

    async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
        return {
            "deadlines": await select(
                engine, "SELECT * FROM deadlines WHERE lead_id = ANY(:l) ORDER BY deadline_id", l=leads
            ),
            "timers": await select(
                engine,
                "SELECT t.* FROM sla_timers t JOIN deadlines d USING (deadline_id) WHERE d.lead_id = ANY(:l) "
                "ORDER BY t.deadline_id, t.key",
                l=leads,
            ),
            "mqls": await select(
                engine, "SELECT * FROM marketing_mqls WHERE lead_id = ANY(:l) ORDER BY event_id", l=leads
            ),
        }

    facts, rows = await apply_both_ways(
        engines, sla_monitor.make_batch_handler(sla_agreement()), batches, snapshot, sla_monitor.CONSUMER
    )

    statuses = {
        row[0] for row in await select(engines[0], "SELECT status FROM deadlines WHERE lead_id = ANY(:l)", l=leads)
    }
    assert {"armed", "met", "breached", "cancelled"} <= statuses, statuses
    kinds = {key for each in facts for fact in each for key in fact if key in ("responded_at", "superseded_by")}
    assert kinds == {"responded_at", "superseded_by"}
    assert rows["mqls"]
