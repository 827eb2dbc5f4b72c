"""The router shell against the real PostgreSQL (and, once, the real consumer on Kafka): rotation,
counters and assignment in one transaction; capacity released by sales' actions; ownership;
reassignment; the unassigned queue and its retry.

Every test makes its own reps and pools (a random suffix), so tests never see each other's state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import TokenTable
from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.runtime.consumer import ConsumerService, PermanentError
from coxswain.runtime.kafka import connection_options
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import (
    ActivityAcceptedV1,
    ActivityType,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadRoutedV1,
    LeadStageChangedV1,
    LeadUnassignedV1,
    ReassignmentRequestedV1,
    Stage,
    Tier,
)
from services.roster.app import create_roster_app
from services.router import service as router
from tests.support.infra import start_group_at_end

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "roster-test-token"
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


class World:
    """An agreement of our own (unique rep and pool ids), its router handler and roster API."""

    def __init__(self, engine: AsyncEngine, **routing: Any) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.engine = engine
        self.ids = {name: f"it-{name}-{suffix}" for name in ("ava", "ben", "eli", "desk", "na", "overflow")}
        i = self.ids
        self.agreement: Agreement = parse_agreement(
            {
                "version": f"it-{suffix}",
                "name": "Router integration tests",
                "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
                "roster": [
                    {"id": i["ava"], "name": "Ava", "timezone": "America/New_York"},
                    {"id": i["ben"], "name": "Ben", "timezone": "Europe/Berlin"},
                    {"id": i["eli"], "name": "Eli"},
                    {"id": i["desk"], "name": "Overflow desk"},
                ],
                "routing": {
                    "rules": [{"id": "north-america", "when": {"country": ["US", "CA"]}, "pool": i["na"]}],
                    "fallback_pool": i["overflow"],
                    "pools": [
                        {
                            "id": i["na"],
                            "members": [{"rep": i["ava"], "weight": 2}, {"rep": i["ben"]}, {"rep": i["eli"]}],
                        },
                        {"id": i["overflow"], "members": [{"rep": i["desk"]}]},
                    ],
                    **routing,
                },
                "sla": {"policies": {t: {"first_touch": "30d"} for t in ("hot", "warm", "cold")}},
            }
        )
        self.handler = router.make_handler(self.agreement)
        app = create_roster_app(engine, TokenTable.of(TOKEN), lambda: self.agreement, lambda: self.now)
        self.api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://roster",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        self.now = NOW

    def __getitem__(self, name: str) -> str:
        return self.ids[name]

    async def handle(self, event: Event) -> list[Event]:
        async with self.engine.begin() as connection:
            return list(await self.handler(connection, event, self.now))

    async def qualify(
        self, tier: Tier = Tier.warm, lead_id: uuid.UUID | None = None, **attributes: Any
    ) -> tuple[LeadQualifiedV1, list[Event]]:
        event = qualified(lead_id or uuid.uuid4(), tier, **({"country": "US"} | attributes))
        return event, await self.handle(event)

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as connection:
            return await connection.scalar(text(sql), params)

    async def rows(self, sql: str, **params: Any) -> Sequence[Any]:
        async with self.engine.connect() as connection:
            return list(await connection.execute(text(sql), params))

    async def cleanup(self) -> None:
        await self.api.aclose()
        reps = [self[name] for name in ("ava", "ben", "eli", "desk")]
        async with self.engine.begin() as connection:
            await connection.execute(text("DELETE FROM rep_overrides WHERE rep_id = ANY(:r)"), {"r": reps})
            await connection.execute(text("DELETE FROM pool_member_overrides WHERE rep_id = ANY(:r)"), {"r": reps})
            await connection.execute(text("DELETE FROM accounts WHERE owner_rep_id = ANY(:r)"), {"r": reps})


def qualified(lead_id: uuid.UUID, tier: Tier = Tier.warm, **attributes: Any) -> LeadQualifiedV1:
    return LeadQualifiedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=NOW,
        agreement_version="scoring-1",
        caused_by=uuid.uuid4(),
        tier=tier,
        score=75,
        reason="test",
        attributes=LeadAttributes(**attributes),
        source="webform",
    )


def routed(facts: Sequence[Event]) -> LeadRoutedV1:
    [fact] = facts
    assert isinstance(fact, LeadRoutedV1), fact
    return fact


@pytest_asyncio.fixture(loop_scope="session")
async def world(engine: AsyncEngine) -> AsyncIterator[World]:
    made = World(engine)
    yield made
    await made.cleanup()


async def test_assignment_rotation_and_counters_change_in_one_transaction(world: World) -> None:
    picks = [routed((await world.qualify())[1]).rep_id for _ in range(8)]

    assert picks == [world[r] for r in ("ava", "ben", "eli", "ava")] * 2
    [rotation] = await world.rows("SELECT current, assigned, away FROM pool_rotation WHERE pool_id = :p", p=world["na"])
    assert rotation.assigned == {world["ava"]: 4, world["ben"]: 2, world["eli"]: 2}
    assert set(rotation.current.values()) == {0}
    counted = await world.rows(
        "SELECT rep_id, count(*) AS n FROM assignments WHERE pool_id = :p GROUP BY rep_id", p=world["na"]
    )
    assert {row.rep_id: row.n for row in counted} == rotation.assigned
    loads = await world.rows(
        "SELECT rep_id, open_load, open_leads, assigned_on_day FROM rep_counters WHERE rep_id = ANY(:r)",
        r=[world["ava"], world["ben"]],
    )
    assert {(row.rep_id, row.open_load, row.open_leads, row.assigned_on_day) for row in loads} == {
        (world["ava"], 8, 4, 4),
        (world["ben"], 4, 2, 2),
    }


async def test_the_decision_record_is_stored_and_travels_in_the_routed_fact(world: World) -> None:
    event, facts = await world.qualify(tier=Tier.hot, email="jane@gmail.com")
    fact = routed(facts)

    [row] = await world.rows(
        "SELECT decision, agreement_version FROM assignments WHERE decision_key = :k", k=event.event_id
    )
    record = row.decision
    assert row.agreement_version == world.agreement.version
    assert record["rule_id"] == "north-america"
    assert record["matched_by"] == "rule"
    assert record["input"]["attributes"]["email"] == "jane@gmail.com"
    assert record["domain"] is None  # free mail: no company
    assert record["before"]["rotations"][world["na"]]["current"] == {}
    assert record["after"]["rotations"][world["na"]]["assigned"] == {world["ava"]: 1}
    # Every field of the rep's load, before and after, the day as an ISO date.
    assert record["before"]["counters"][world["ava"]] == {
        "open_load": 0,
        "open_leads": 0,
        "day": None,
        "assigned_on_day": 0,
    }
    assert record["after"]["counters"][world["ava"]] == {
        "open_load": 3,
        "open_leads": 1,
        "day": NOW.date().isoformat(),
        "assigned_on_day": 1,
    }
    assert record["roster_revision"] >= 0
    assert [c["rep_id"] for c in record["candidates"]] == [c.rep_id for c in fact.candidates]
    assert fact.matched_by == "rule"
    assert fact.follow_up_due_at == NOW + timedelta(days=30)


async def test_a_rep_at_capacity_is_skipped_until_sales_acts_on_a_lead(world: World) -> None:
    await (await world.api.patch(f"/v1/reps/{world['ava']}", json={"capacity": 3})).aread()
    for rep in ("ben", "eli"):
        assert (await world.api.post(f"/v1/reps/{world[rep]}/pause")).status_code == 200
    first_event, facts = await world.qualify(tier=Tier.hot)
    assert routed(facts).rep_id == world["ava"]

    _, facts = await world.qualify(tier=Tier.cold)
    skipped = routed(facts)
    assert skipped.rep_id == world["desk"]
    assert skipped.matched_by == "fallback"
    ava = next(c for c in skipped.candidates if c.rep_id == world["ava"])
    assert ava.excluded_because == "at capacity (open load 3 + 1 would exceed 3)"

    accepted = ActivityAcceptedV1(
        event_id=uuid.uuid4(),
        lead_id=first_event.lead_id,
        occurred_at=NOW,
        agreement_version="scoring-1",
        caused_by=uuid.uuid4(),
        source="crm",
        activity=ActivityType.sal_accepted,
        rep_id=world["ava"],
        from_stage=Stage.mql,
        to_stage=Stage.sal,
    )
    assert await world.handle(accepted) == []
    assert await world.scalar("SELECT open_load FROM rep_counters WHERE rep_id = :r", r=world["ava"]) == 0
    _, facts = await world.qualify(tier=Tier.cold)
    assert routed(facts).rep_id == world["ava"]


async def test_an_older_stage_change_does_not_release_a_newer_assignment(world: World) -> None:
    event, facts = await world.qualify()
    routed(facts)
    stale = LeadStageChangedV1(
        event_id=uuid.uuid4(),
        lead_id=event.lead_id,
        occurred_at=NOW - timedelta(minutes=5),
        agreement_version="scoring-1",
        caused_by=uuid.uuid4(),
        from_stage=Stage.mql,
        to_stage=Stage.recycled,
        reason="recycled before it qualified again",
    )
    fresh = stale.model_copy(update={"event_id": uuid.uuid4(), "occurred_at": NOW + timedelta(minutes=1)})

    await world.handle(stale)
    assert await world.scalar("SELECT open FROM lead_routing WHERE lead_id = :l", l=event.lead_id) is True
    await world.handle(fresh)
    assert await world.scalar("SELECT open FROM lead_routing WHERE lead_id = :l", l=event.lead_id) is False


async def test_account_owners_and_open_leads_of_the_same_domain_take_new_leads(world: World) -> None:
    response = await world.api.put(
        "/v1/accounts",
        json={
            "accounts": [{"domain": "https://www.Acme-Corp.com", "owner_rep_id": world["eli"], "external_id": "001"}]
        },
    )
    assert response.status_code == 200, response.text

    by_account = routed((await world.qualify(email="cto@eu.acme-corp.com"))[1])
    first = routed((await world.qualify(email="buyer@initech-labs.io"))[1])
    same_domain = routed((await world.qualify(email="cfo@initech-labs.io", country="DE"))[1])

    assert (by_account.rep_id, by_account.matched_by, by_account.pool_id) == (
        world["eli"],
        "account_owner",
        "account-owner",
    )
    assert by_account.reason == f"account owner {world['eli']} (acme-corp.com) takes the lead"
    assert same_domain.rep_id == first.rep_id
    assert same_domain.matched_by == "open_domain_lead"
    # Plain words for why several people of one company reach one rep: the open lead and its holder.
    assert same_domain.reason == f"same domain (initech-labs.io) as open lead {first.lead_id} held by {first.rep_id}"
    # Owner routing moves no rotation: the pool's counters still match its assignments.
    [rotation] = await world.rows("SELECT assigned FROM pool_rotation WHERE pool_id = :p", p=world["na"])
    assert sum(rotation.assigned.values()) == 1


async def test_reassignment_excludes_recent_owners_and_replaces_the_assignment_once(world: World) -> None:
    event, facts = await world.qualify(tier=Tier.hot)
    original = routed(facts)
    request = ReassignmentRequestedV1(
        event_id=uuid.uuid4(),
        lead_id=event.lead_id,
        occurred_at=NOW,
        assignment_id=original.assignment_id,
        tier=Tier.hot,
        exclude_reps=(world["ben"],),
        reason="no first touch within 5 minutes",
        requested_by="sla_escalation",
    )

    replacement = routed(await world.handle(request))
    again = await world.handle(request)  # redelivered past the inbox: the decision key holds
    stale = await world.handle(request.model_copy(update={"event_id": uuid.uuid4()}))

    assert original.rep_id == world["ava"]
    assert replacement.rep_id == world["eli"]  # ava (last owner) and ben (asked) are excluded
    assert replacement.replaces_assignment_id == original.assignment_id
    assert replacement.caused_by == request.event_id
    assert again == [] and stale == []
    holders = await world.rows("SELECT rep_id, owners, load FROM lead_routing WHERE lead_id = :l", l=event.lead_id)
    assert [(h.rep_id, h.owners) for h in holders] == [(world["eli"], [world["ava"], world["eli"]])]
    loads = await world.rows(
        "SELECT rep_id, open_load FROM rep_counters WHERE rep_id = ANY(:r)", r=[world["ava"], world["eli"]]
    )
    assert {row.rep_id: row.open_load for row in loads} == {world["ava"]: 0, world["eli"]: 3}
    assert await world.scalar("SELECT count(*) FROM assignments WHERE lead_id = :l", l=event.lead_id) == 2


async def test_a_reassignment_of_an_unknown_assignment_is_refused_with_the_reason(world: World) -> None:
    request = ReassignmentRequestedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=NOW,
        assignment_id=uuid.uuid4(),
        tier=Tier.hot,
        exclude_reps=(),
        reason="operator",
        requested_by="operator",
    )
    with pytest.raises(PermanentError, match="no such assignment"):
        await world.handle(request)


async def test_nobody_eligible_parks_the_lead_and_the_retry_routes_it_when_someone_returns(world: World) -> None:
    for rep in ("ava", "ben", "eli", "desk"):
        assert (await world.api.post(f"/v1/reps/{world[rep]}/pause", json={"reason": "offsite"})).status_code == 200

    event, facts = await world.qualify()
    [parked] = facts
    assert isinstance(parked, LeadUnassignedV1)
    assert parked.reason.endswith("nobody eligible")
    assert {c.excluded_because for c in parked.candidates} == {"paused: offsite"}
    cache = router.RosterCache()
    assert await router.retry_parked(world.engine, world.agreement, cache, lambda: world.now, 100) == (1, 0)

    assert (await world.api.post(f"/v1/reps/{world['ben']}/unpause")).status_code == 200
    tried, assigned = await router.retry_parked(world.engine, world.agreement, cache, lambda: world.now, 100)

    assert (tried, assigned) == (1, 1)
    [row] = await world.rows("SELECT rep_id, decision FROM assignments WHERE lead_id = :l", l=event.lead_id)
    assert row.rep_id == world["ben"]
    assert await world.scalar("SELECT count(*) FROM unassigned_leads WHERE lead_id = :l", l=event.lead_id) == 0
    facts_out = await world.rows(
        "SELECT topic FROM outbox WHERE value LIKE :l ORDER BY id", l=f"%{event.lead_id}%".encode()
    )
    assert [f.topic for f in facts_out] == ["leads.routed.v1"]  # a failed retry publishes nothing again


# --------------------------------------------------------------------------- through the real consumer


async def test_through_the_real_consumer_nobody_eligible_goes_to_the_fallback_with_the_reason(world: World) -> None:
    group = f"router-it-{uuid.uuid4().hex[:8]}"
    await start_group_at_end(group, list(router.ACCEPTS))
    for rep in ("ava", "ben"):
        assert (await world.api.post(f"/v1/reps/{world[rep]}/pause")).status_code == 200
    response = await world.api.post(
        f"/v1/reps/{world['eli']}/out-of-office",
        json={"start": (NOW - timedelta(hours=1)).isoformat(), "end": (NOW + timedelta(days=1)).isoformat()},
    )
    assert response.status_code == 201, response.text
    service = ConsumerService(
        name=group,
        accepts=router.ACCEPTS,
        handler=world.handler,
        engine=world.engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(),
        clock=lambda: world.now,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    lead_id = uuid.uuid4()
    record = encode(qualified(lead_id, Tier.hot, country="CA"))
    producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(record.topic, record.value, key=record.key, headers=list(record.headers))
        for _ in range(600):
            if await world.scalar("SELECT count(*) FROM assignments WHERE lead_id = :l", l=lead_id):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await producer.stop()
        await running

    [row] = await world.rows(
        "SELECT rep_id, pool_id, rule_id, reason, decision FROM assignments WHERE lead_id = :l", l=lead_id
    )
    assert (row.rep_id, row.pool_id, row.rule_id) == (world["desk"], world["overflow"], "north-america")
    assert row.reason == f"rule north-america -> pool {world['na']}: nobody eligible; fallback pool {world['overflow']}"
    reasons = {c["rep_id"]: c["excluded_because"] for c in row.decision["candidates"]}
    assert reasons[world["ava"]] == "paused"
    assert reasons[world["ben"]] == "paused"
    assert reasons[world["eli"]] == "out of office until 2026-11-26T15:00:00+00:00"
    assert reasons[world["desk"]] is None
    [staged] = await world.rows(
        "SELECT value FROM outbox WHERE topic = 'leads.routed.v1' AND key = :k", k=str(lead_id).encode()
    )
    assert orjson.loads(staged.value)["matched_by"] == "fallback"
