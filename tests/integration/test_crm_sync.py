"""crm-sync against real PostgreSQL and Kafka and a local HubSpot (coxswain/demo_crm/hubspot.py):
one owner update and one task per assignment, also across a redelivery and a crash before our
commit; a reassignment moves the owner and leaves one open task; a 429's Retry-After is waited
out; a HubSpot that keeps failing sends the record to the dead-letter topic with the reason; a
refused token dead-letters nothing.

Every test makes its own leads, emails and consumer name, so tests never see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.demo_crm import hubspot as fake_hubspot
from coxswain.demo_crm.hubspot import TOKEN, FakeHubSpot
from coxswain.runtime.consumer import Unavailable
from coxswain.settings import CrmSyncConfig
from schemas.events import LeadMergedV1, LeadRoutedV1, LeadStageChangedV1, Stage
from services.crm_sync import service as crm_sync
from services.crm_sync.hubspot import HubSpotClient
from tests.support import crm_connector
from tests.support.facts import routed_fact

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
OWNERS = {"ava": "201", "ben": "202"}


def agreement() -> Agreement:
    return parse_agreement(
        {
            "version": "crm-it",
            "name": "crm-sync integration tests",
            "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
            "roster": [
                {"id": rep, "name": rep.title(), "crm": {"hubspot_owner_id": owner}} for rep, owner in OWNERS.items()
            ],
            "routing": {"fallback_pool": "all", "pools": [{"id": "all", "members": [{"rep": "ava"}, {"rep": "ben"}]}]},
            "sla": {"policies": {t: {"first_touch": "1h"} for t in ("hot", "warm", "cold")}},
        }
    )


class Connector(crm_connector.Connector):
    """crm-sync's handler in a ConsumerService of its own, pointed at the fake HubSpot."""

    def __init__(self, engine: AsyncEngine, hubspot: FakeHubSpot, token: str = TOKEN, **settings: Any) -> None:
        defaults: dict[str, Any] = {"crm_base_url": hubspot.url, "crm_backoff_seconds": 0.05, "crm_max_attempts": 4}
        super().__init__(engine, HubSpotClient(CrmSyncConfig(**(defaults | settings)), token), agreement(), NOW)
        self.hubspot = hubspot


async def new_lead(engine: AsyncEngine) -> tuple[uuid.UUID, str]:
    lead_id = uuid.uuid4()
    email = f"lead-{lead_id.hex[:10]}@acme.example"
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO leads (lead_id, stage, source, attributes, touches, score_total, tier, agreement_version, "
                "updated_at) VALUES (:l, 'mql', 'webform', CAST(:a AS jsonb), '[]', 80, 'hot', 'crm-it', :now)"
            ),
            {"l": lead_id, "a": orjson.dumps({"email": email, "company": "Acme"}).decode(), "now": NOW},
        )
    return lead_id, email


def routed(lead_id: uuid.UUID, rep_id: str, replaces: uuid.UUID | None = None) -> LeadRoutedV1:
    return routed_fact(
        rep_id, NOW, lead_id=lead_id, replaces=replaces, agreement_version="crm-it", reason="fallback pool all"
    )


def task_posts(hubspot: FakeHubSpot) -> list[Any]:
    return [seen for seen in hubspot.writes("POST", "/crm/v3/objects/tasks") if not seen.path.endswith("/search")]


def tasks_for(hubspot: FakeHubSpot, assignment_id: uuid.UUID) -> list[dict[str, Any]]:
    return [t for t in hubspot.tasks.values() if t["properties"].get("coxswain_assignment_id") == str(assignment_id)]


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"crm": "hubspot", **labels}) or 0.0


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return await connection.scalar(text(sql), params)


@pytest_asyncio.fixture(loop_scope="session")
async def hubspot() -> AsyncIterator[FakeHubSpot]:
    async with fake_hubspot.serving(set(OWNERS.values())) as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="session")
async def connector(engine: AsyncEngine, hubspot: FakeHubSpot) -> AsyncIterator[Connector]:
    made = Connector(engine, hubspot)
    yield made
    await made.aclose()


async def test_through_kafka_a_routed_lead_gives_one_owner_update_and_one_task_and_a_redelivery_none_more(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    lead_id, email = await new_lead(engine)
    # The contact exists already (marketing automation made it): the owner is a PATCH.
    contact = hubspot.contacts[hubspot.add_contact(email, contact_id="900001")]
    fact = routed(lead_id, "ava")
    marker_lead, _ = await new_lead(engine)
    marker = routed(marker_lead, "ben")

    await connector.through_kafka(fact, fact, marker, until=marker.assignment_id)  # the second copy: a redelivery

    owner_patches = hubspot.writes("PATCH", f"/crm/v3/objects/contacts/{contact['id']}")
    assert [seen.body for seen in owner_patches] == [{"properties": {"hubspot_owner_id": "201"}}]
    assert hubspot.contacts["900001"]["properties"]["hubspot_owner_id"] == "201"
    [task] = tasks_for(hubspot, fact.assignment_id)
    assert hubspot.tasks_of("900001") == [task]
    assert task["properties"]["hubspot_owner_id"] == "201"
    assert task["properties"]["hs_task_status"] == "NOT_STARTED"
    assert task["properties"]["hs_timestamp"] == "2026-11-25T16:00:00Z"
    assert "fallback pool all" in task["properties"]["hs_task_body"]
    assert [seen.body["properties"]["coxswain_assignment_id"] for seen in task_posts(hubspot)].count(
        str(fact.assignment_id)
    ) == 1
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT contact_id, task_id, owner_id FROM crm_writes WHERE assignment_id = :a"),
                {"a": fact.assignment_id},
            )
        ).one()
    assert (row.contact_id, row.task_id, row.owner_id) == ("900001", task["id"], "201")


async def test_the_daily_api_usage_hubspot_reports_is_a_gauge(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    lead_id, _ = await new_lead(engine)

    await connector.deliver(routed(lead_id, "ava"))

    assert counted("coxswain_crm_api_calls_limit") == fake_hubspot.DAILY_LIMIT
    assert counted("coxswain_crm_api_calls_used") == len(hubspot.seen)


async def test_a_crash_between_the_crm_write_and_our_commit_creates_no_second_task(
    engine: AsyncEngine, hubspot: FakeHubSpot
) -> None:
    lead_id, email = await new_lead(engine)
    fact = routed(lead_id, "ben")
    first = Connector(engine, hubspot)

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with engine.begin() as connection:
            await first.handler(connection, fact, NOW)
            raise Crash  # the process dies: HubSpot has the task, our transaction never commits
    await first.aclose()
    assert len(tasks_for(hubspot, fact.assignment_id)) == 1
    assert not await scalar(engine, "SELECT count(*) FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id)

    restarted = Connector(engine, hubspot)  # a new process: nothing remembered in memory
    try:
        await restarted.deliver(fact)
    finally:
        await restarted.aclose()

    [task] = tasks_for(hubspot, fact.assignment_id)
    assert (
        await scalar(engine, "SELECT task_id FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id)
        == (task["id"])
    )
    contact = hubspot.contact_by_email(email)
    assert contact is not None and contact["properties"]["hubspot_owner_id"] == "202"
    created = [
        s.body["properties"]["email"]
        for s in hubspot.writes("POST", "/crm/v3/objects/contacts")
        if s.path.endswith("contacts")
    ]
    assert created.count(email) == 1


async def test_a_reassignment_moves_the_owner_and_leaves_exactly_one_open_task(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    lead_id, email = await new_lead(engine)
    first = routed(lead_id, "ava")
    second = routed(lead_id, "ben", replaces=first.assignment_id)

    await connector.deliver(first)
    await connector.deliver(second)

    contact = hubspot.contact_by_email(email)
    assert contact is not None
    assert contact["properties"]["hubspot_owner_id"] == "202"
    statuses = {
        t["properties"]["coxswain_assignment_id"]: (
            t["properties"]["hs_task_status"],
            t["properties"]["hubspot_owner_id"],
        )
        for t in hubspot.tasks_of(contact["id"])
    }
    assert statuses == {
        str(first.assignment_id): ("COMPLETED", "201"),
        str(second.assignment_id): ("NOT_STARTED", "202"),
    }
    closed = await scalar(
        engine, "SELECT closed_reason FROM crm_writes WHERE assignment_id = :a", a=first.assignment_id
    )
    assert closed == "reassigned to ben: fallback pool all"

    # Recycling the lead releases it: its one open task is closed too.
    recycled = LeadStageChangedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=NOW,
        agreement_version="crm-it",
        caused_by=uuid.uuid4(),
        from_stage=Stage.mql,
        to_stage=Stage.recycled,
        reason="no budget",
    )
    await connector.deliver(recycled)
    assert {t["properties"]["hs_task_status"] for t in hubspot.tasks_of(contact["id"])} == {"COMPLETED"}


async def test_a_429_is_honoured_until_its_retry_after_expires_and_nothing_is_lost(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ava")
    hubspot.inject(429, {"Retry-After": "1"}, path="/crm/v3/objects/tasks")
    seen_before = len(hubspot.seen)
    retries = counted("coxswain_crm_retries_total", reason="429")
    created = counted("coxswain_crm_writes_total", write="task_created")

    await connector.deliver(fact)

    assert counted("coxswain_crm_retries_total", reason="429") == retries + 1
    assert counted("coxswain_crm_writes_total", write="task_created") == created + 1

    during = hubspot.seen[seen_before:]
    [limited] = [i for i, seen in enumerate(during) if seen.status == 429]
    throttled_at = during[limited].at
    assert during[limited + 1 :], "the request was never sent again"
    assert all(seen.at >= throttled_at + 1.0 for seen in during[limited + 1 :])
    assert len(tasks_for(hubspot, fact.assignment_id)) == 1
    assert await scalar(engine, "SELECT count(*) FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id) == 1


async def test_a_request_hubspot_fails_on_every_attempt_sends_the_record_to_the_dead_letter_topic_with_the_reason(
    engine: AsyncEngine, hubspot: FakeHubSpot
) -> None:
    connector = Connector(engine, hubspot, crm_max_attempts=3)
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ava")
    hubspot.inject(500, path="/crm/v3/objects/tasks", times=100)
    seen_before = len(hubspot.seen)
    errors = counted("coxswain_crm_errors_total", status="500")
    try:
        await connector.deliver(fact)
    finally:
        hubspot.faults.clear()
        await connector.aclose()

    failed = [s for s in hubspot.seen[seen_before:] if s.path.startswith("/crm/v3/objects/tasks")]
    # Three tries while the batch was applied whole; dead-lettered at once when applied record by record.
    assert [s.status for s in failed] == [500, 500, 500]
    assert counted("coxswain_crm_errors_total", status="500") == errors + 3
    async with engine.connect() as connection:
        [row] = await connection.execute(
            text("SELECT topic, headers FROM outbox WHERE topic = 'leads.routed.v1.dlq' AND key = :k"),
            {"k": str(lead_id).encode()},
        )
    headers = dict(row.headers)
    assert headers["dlq_consumer"] == connector.name
    assert headers["dlq_error_type"] == "CrmGaveUp"
    assert "failed 3 times; last: 500" in headers["dlq_reason"]
    assert not await scalar(engine, "SELECT count(*) FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id)


async def test_hubspot_down_longer_than_the_retries_delays_the_write_and_loses_nothing(
    engine: AsyncEngine, hubspot: FakeHubSpot
) -> None:
    connector = Connector(engine, hubspot, crm_max_attempts=3)
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ava")
    hubspot.inject(503, path="/crm/v3/objects/tasks", times=100)
    try:
        # The batch is given back: the consumer redelivers it with backoff, as for a database outage.
        with pytest.raises(Unavailable):
            await connector.deliver(fact)
        assert not await scalar(engine, "SELECT count(*) FROM outbox WHERE key = :k", k=str(lead_id).encode())
        assert not await scalar(engine, "SELECT count(*) FROM inbox WHERE event_id = :e", e=fact.event_id)
        hubspot.faults.clear()  # HubSpot is back
        await connector.deliver(fact)
    finally:
        hubspot.faults.clear()
        await connector.aclose()

    assert len(tasks_for(hubspot, fact.assignment_id)) == 1
    assert await scalar(engine, "SELECT count(*) FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id) == 1


async def test_a_refused_token_dead_letters_nothing_and_the_batch_comes_back(
    engine: AsyncEngine, hubspot: FakeHubSpot
) -> None:
    connector = Connector(engine, hubspot, token="pat-wrong")
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ava")
    try:
        with pytest.raises(Unavailable):
            await connector.deliver(fact)
    finally:
        await connector.aclose()

    assert not await scalar(engine, "SELECT count(*) FROM outbox WHERE key = :k", k=str(lead_id).encode())
    assert not await scalar(engine, "SELECT count(*) FROM inbox WHERE event_id = :e", e=fact.event_id)
    assert not tasks_for(hubspot, fact.assignment_id)


async def test_a_batch_applied_again_record_by_record_creates_no_second_task_while_search_lags(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    lead_id, _ = await new_lead(engine)
    good = routed(lead_id, "ava")
    no_email = routed(uuid.uuid4(), "ben")  # no lead row: no email, a permanent error
    hubspot.index_lag = True
    try:
        # Whole batch: the good record's task is created, then the bad record fails and the batch is
        # rolled back; record by record: the good record again, while search does not see its task.
        await connector.deliver(good, no_email)
    finally:
        hubspot.index_lag = False
        hubspot.index()

    assert len(tasks_for(hubspot, good.assignment_id)) == 1
    assert await scalar(engine, "SELECT count(*) FROM crm_writes WHERE assignment_id = :a", a=good.assignment_id) == 1
    async with engine.connect() as connection:
        [row] = await connection.execute(
            text("SELECT headers FROM outbox WHERE topic = 'leads.routed.v1.dlq' AND key = :k"),
            {"k": str(no_email.lead_id).encode()},
        )
    assert dict(row.headers)["dlq_error_type"] == "NoEmail"


async def test_an_assignment_already_written_is_not_sent_to_hubspot_again_under_another_event_id(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ben")
    await connector.deliver(fact)
    seen_before = len(hubspot.seen)

    await connector.deliver(fact.model_copy(update={"event_id": uuid.uuid4()}))

    assert hubspot.seen[seen_before:] == []
    assert len(tasks_for(hubspot, fact.assignment_id)) == 1


async def test_a_routed_lead_for_a_rep_without_an_owner_id_is_dead_lettered_naming_the_rep(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    # An agreement activated after the connector started, whose roster lost ben's owner id.
    document = agreement().model_dump(mode="json", by_alias=True, exclude_defaults=True)
    document["roster"][1].pop("crm")
    connector.handler = crm_sync.make_handler(parse_agreement(document), connector.sync)
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ben")
    seen_before = len(hubspot.seen)

    await connector.deliver(fact)

    assert hubspot.seen[seen_before:] == []
    async with engine.connect() as connection:
        [row] = await connection.execute(
            text("SELECT headers FROM outbox WHERE topic = 'leads.routed.v1.dlq' AND key = :k"),
            {"k": str(lead_id).encode()},
        )
    headers = dict(row.headers)
    assert headers["dlq_error_type"] == "UnmappedRep"
    assert headers["dlq_reason"] == "rep 'ben' has no hubspot owner id (roster: crm.hubspot_owner_id)"


async def know_email(engine: AsyncEngine, lead_id: uuid.UUID, email: str) -> None:
    """Identity resolution records another email for the lead (an alias folded into it)."""
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO lead_identities (key, lead_id, created_at) VALUES (:key, :lead_id, :now)"),
            {"key": f"email:{email}", "lead_id": lead_id, "now": NOW},
        )


def merged(lead_id: uuid.UUID, email: str) -> LeadMergedV1:
    return LeadMergedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=NOW,
        caused_by=uuid.uuid4(),
        alias_lead_id=uuid.uuid4(),
        rule="source id already known",
        source="webform",
        external_id=f"c-{uuid.uuid4().hex[:6]}",
        email=email,
    )


def owner_of(hubspot: FakeHubSpot, email: str) -> str | None:
    contact = hubspot.contact_by_email(email)
    assert contact is not None, email
    owner = contact["properties"].get("hubspot_owner_id")
    return str(owner) if owner is not None else None


async def test_a_lead_first_known_by_its_provisional_id_ends_with_the_canonical_leads_owner(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    """Marketing automation made a contact for the email a webhook came with; Coxswain folded
    that provisional lead into a known one. Merged before the routing, the routed fact gives the
    alias's contact the owner; merged after it, the merge fact does; an alias the CRM has no
    contact for gets none made."""
    lead_id, email = await new_lead(engine)
    before, after, nowhere = (f"{name}-{lead_id.hex[:8]}@gmail.example" for name in ("before", "after", "nowhere"))
    hubspot.add_contact(before)
    hubspot.add_contact(after)
    await know_email(engine, lead_id, before)
    await know_email(engine, lead_id, nowhere)
    fact = routed(lead_id, "ava")

    await connector.deliver(fact)

    assert (owner_of(hubspot, email), owner_of(hubspot, before)) == ("201", "201")
    assert owner_of(hubspot, after) is None
    assert hubspot.contact_by_email(nowhere) is None

    await know_email(engine, lead_id, after)
    await connector.deliver(merged(lead_id, after))

    assert owner_of(hubspot, after) == "201"
    assert len(tasks_for(hubspot, fact.assignment_id)) == 1

    # Reassigned: the lead's contact and both aliases' move to the new owner.
    await connector.deliver(routed(lead_id, "ben", replaces=fact.assignment_id))
    assert {owner_of(hubspot, e) for e in (email, before, after)} == {"202"}
    assert hubspot.contact_by_email(nowhere) is None


async def test_a_merge_into_a_lead_not_written_yet_changes_nothing_until_it_is_routed(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    lead_id, email = await new_lead(engine)
    alias = f"early-{lead_id.hex[:8]}@gmail.example"
    hubspot.add_contact(alias)
    await know_email(engine, lead_id, alias)

    await connector.deliver(merged(lead_id, alias))
    assert owner_of(hubspot, alias) is None

    await connector.deliver(routed(lead_id, "ben"))
    assert (owner_of(hubspot, email), owner_of(hubspot, alias)) == ("202", "202")


async def test_a_rep_given_an_owner_id_through_the_roster_api_gets_leads_written_with_it(
    connector: Connector, hubspot: FakeHubSpot, engine: AsyncEngine
) -> None:
    """A new hire added at runtime (not in the agreement) with a HubSpot owner id, and ben's id
    changed there: the connector writes each with the id in force now."""
    hubspot.owners |= {"301", "302"}
    rep_id = f"nia-{uuid.uuid4().hex[:6]}"
    async with engine.begin() as connection:
        for rep, body in (
            (rep_id, {"name": "Nia", "crm": {"hubspot_owner_id": "301"}}),
            ("ben", {"crm": {"hubspot_owner_id": "302"}}),
        ):
            await connection.execute(
                text("INSERT INTO rep_overrides (rep_id, body, updated_at) VALUES (:rep, CAST(:body AS jsonb), :now)"),
                {"rep": rep, "body": orjson.dumps(body).decode(), "now": NOW},
            )
        await connection.execute(text("UPDATE roster_revision SET revision = revision + 1 WHERE id = 1"))
    try:
        new_hire, ben = await new_lead(engine), await new_lead(engine)
        await connector.deliver(routed(new_hire[0], rep_id), routed(ben[0], "ben"))

        assert (owner_of(hubspot, new_hire[1]), owner_of(hubspot, ben[1])) == ("301", "302")
    finally:
        async with engine.begin() as connection:
            await connection.execute(
                text("DELETE FROM rep_overrides WHERE rep_id = ANY(:reps)"), {"reps": [rep_id, "ben"]}
            )
            await connection.execute(text("UPDATE roster_revision SET revision = revision + 1 WHERE id = 1"))
