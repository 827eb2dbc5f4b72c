"""crm-sync for Salesforce against real PostgreSQL and Kafka and a local Salesforce
(coxswain/demo_crm/salesforce.py): one OwnerId update and one Task per assignment, also across a
redelivery and a crash before our commit; a reassignment moves the owner and leaves one open Task;
a 429's Retry-After and a 403 REQUEST_LIMIT_EXCEEDED are waited out; an outage delays the write
and loses nothing; Leads upserted on an external-id field; a token renewed by the
client-credentials flow.

Every test makes its own leads, emails and consumer name, so tests never see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.demo_crm import salesforce as fake_salesforce
from coxswain.demo_crm.salesforce import CLIENT_ID, CLIENT_SECRET, TOKEN, FakeSalesforce
from coxswain.runtime.consumer import Unavailable
from coxswain.settings import CrmSyncConfig
from schemas.events import ActivityRecordedV1, LeadStageChangedV1, Stage
from services.crm_sync import service as crm_sync
from services.crm_sync.poller import SalesforcePoller
from services.crm_sync.salesforce import SalesforceClient
from tests.integration.test_crm_sync import NOW, know_email, new_lead, routed, scalar
from tests.support import crm_connector

pytestmark = pytest.mark.asyncio(loop_scope="session")

USERS = {"ava": "005000000000001AAA", "ben": "005000000000002AAA"}
TASKS = "/sobjects/Task"


def agreement() -> Agreement:
    return parse_agreement(
        {
            "version": "crm-it",
            "name": "crm-sync salesforce integration tests",
            "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
            "roster": [
                {"id": rep, "name": rep.title(), "crm": {"salesforce_user_id": user}} for rep, user in USERS.items()
            ],
            "routing": {"fallback_pool": "all", "pools": [{"id": "all", "members": [{"rep": "ava"}, {"rep": "ben"}]}]},
            "sla": {"policies": {t: {"first_touch": "1h"} for t in ("hot", "warm", "cold")}},
        }
    )


class Connector(crm_connector.Connector):
    """crm-sync's handler with a Salesforce client, in a ConsumerService of its own."""

    def __init__(
        self,
        engine: AsyncEngine,
        salesforce: FakeSalesforce,
        token: str | None = TOKEN,
        connection: str | None = None,
        **settings: Any,
    ) -> None:
        defaults: dict[str, Any] = {
            "crm_kind": "salesforce",
            "crm_base_url": salesforce.url,
            "crm_backoff_seconds": 0.05,
            "crm_max_attempts": 4,
        }
        self.config = CrmSyncConfig(**(defaults | settings))
        self.salesforce = SalesforceClient(self.config, token)
        super().__init__(engine, self.salesforce, agreement(), NOW, connection)


def tasks_for(salesforce: FakeSalesforce, assignment_id: uuid.UUID) -> list[dict[str, Any]]:
    return [t for t in salesforce.records["Task"].values() if t["Coxswain_Assignment_Id__c"] == str(assignment_id)]


def task_creates(salesforce: FakeSalesforce, assignment_id: uuid.UUID) -> int:
    return sum(
        1
        for seen in salesforce.writes("POST", TASKS)
        if seen.body.get("Coxswain_Assignment_Id__c") == str(assignment_id)
    )


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"crm": "salesforce"})


@pytest_asyncio.fixture(loop_scope="session")
async def salesforce() -> AsyncIterator[FakeSalesforce]:
    async with fake_salesforce.serving(set(USERS.values())) as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="session")
async def connector(engine: AsyncEngine, salesforce: FakeSalesforce) -> AsyncIterator[Connector]:
    made = Connector(engine, salesforce)
    yield made
    await made.aclose()


async def test_through_kafka_a_routed_lead_gives_one_owner_update_and_one_task_and_a_redelivery_none_more(
    connector: Connector, salesforce: FakeSalesforce, engine: AsyncEngine
) -> None:
    lead_id, email = await new_lead(engine)
    # The Lead exists already (marketing automation made it): the owner is a PATCH.
    lead = salesforce.insert("Lead", {"Email": email, "LastName": "Doe", "Company": "Acme"})
    fact = routed(lead_id, "ava")
    marker_lead, _ = await new_lead(engine)
    marker = routed(marker_lead, "ben")

    await connector.through_kafka(fact, fact, marker, until=marker.assignment_id)  # the second copy: a redelivery

    owner_patches = salesforce.writes("PATCH", f"/sobjects/Lead/{lead['Id']}")
    assert [seen.body for seen in owner_patches] == [{"OwnerId": USERS["ava"]}]
    assert lead["OwnerId"] == USERS["ava"]
    [task] = tasks_for(salesforce, fact.assignment_id)
    assert salesforce.tasks_of(lead["Id"]) == [task]
    assert (task["OwnerId"], task["Status"], task["ActivityDate"]) == (USERS["ava"], "Not Started", "2026-11-25")
    assert task["ReminderDateTime"] == "2026-11-25T16:00:00Z"
    assert task["Subject"] == "Follow up: hot lead"
    assert "fallback pool all" in task["Description"]
    assert task_creates(salesforce, fact.assignment_id) == 1
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT connection, contact_id, task_id, owner_id FROM crm_writes WHERE assignment_id = :a"),
                {"a": fact.assignment_id},
            )
        ).one()
    assert (row.connection, row.contact_id, row.task_id, row.owner_id) == (
        "salesforce",
        lead["Id"],
        task["Id"],
        USERS["ava"],
    )
    # The daily API usage Salesforce reports on every answer is exposed.
    assert gauge("coxswain_crm_api_calls_used") == salesforce.api_used
    assert gauge("coxswain_crm_api_calls_limit") == salesforce.api_limit


async def test_a_crash_between_the_crm_write_and_our_commit_creates_no_second_task_or_lead(
    engine: AsyncEngine, salesforce: FakeSalesforce
) -> None:
    lead_id, email = await new_lead(engine)
    fact = routed(lead_id, "ben")
    first = Connector(engine, salesforce)

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with engine.begin() as connection:
            await first.handler(connection, fact, NOW)
            raise Crash  # the process dies: Salesforce has the Lead and the Task, our transaction is lost
    await first.aclose()
    assert len(tasks_for(salesforce, fact.assignment_id)) == 1

    restarted = Connector(engine, salesforce)  # a new process: nothing remembered in memory
    try:
        await restarted.deliver(fact)
    finally:
        await restarted.aclose()

    [task] = tasks_for(salesforce, fact.assignment_id)
    assert (
        await scalar(engine, "SELECT task_id FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id)
        == (task["Id"])
    )
    assert task_creates(salesforce, fact.assignment_id) == 1
    [lead] = [r for r in salesforce.records["Lead"].values() if r["Email"] == email]
    assert (lead["OwnerId"], lead["LastName"], lead["Company"]) == (USERS["ben"], "[not provided]", "Acme")
    assert task["WhoId"] == lead["Id"]


async def test_a_reassignment_moves_the_owner_and_leaves_exactly_one_open_task(
    connector: Connector, salesforce: FakeSalesforce, engine: AsyncEngine
) -> None:
    lead_id, email = await new_lead(engine)
    first = routed(lead_id, "ava")
    second = routed(lead_id, "ben", replaces=first.assignment_id)

    await connector.deliver(first)
    await connector.deliver(second)

    lead = salesforce.lead_by_email(email)
    assert lead is not None and lead["OwnerId"] == USERS["ben"]
    statuses = {
        t["Coxswain_Assignment_Id__c"]: (t["Status"], t["OwnerId"], t["IsClosed"])
        for t in salesforce.tasks_of(lead["Id"])
    }
    assert statuses == {
        str(first.assignment_id): ("Completed", USERS["ava"], True),
        str(second.assignment_id): ("Not Started", USERS["ben"], False),
    }

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
    assert {t["Status"] for t in salesforce.tasks_of(lead["Id"])} == {"Completed"}


@pytest.mark.parametrize(
    ("status", "code", "headers"),
    [(429, "", {"Retry-After": "1"}), (403, "REQUEST_LIMIT_EXCEEDED", {"Retry-After": "1"})],
)
async def test_a_rate_limit_is_honoured_until_its_retry_after_expires_and_nothing_is_lost(
    connector: Connector,
    salesforce: FakeSalesforce,
    engine: AsyncEngine,
    status: int,
    code: str,
    headers: dict[str, str],
) -> None:
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ava")
    salesforce.inject(status, headers, path=TASKS, code=code)
    seen_before = len(salesforce.seen)

    await connector.deliver(fact)

    during = salesforce.seen[seen_before:]
    [limited] = [i for i, seen in enumerate(during) if seen.status == status]
    throttled_at = during[limited].at
    assert during[limited + 1 :], "the request was never sent again"
    assert all(seen.at >= throttled_at + 1.0 for seen in during[limited + 1 :])
    assert len(tasks_for(salesforce, fact.assignment_id)) == 1
    assert await scalar(engine, "SELECT count(*) FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id) == 1


async def test_salesforce_down_for_a_while_delays_the_write_through_kafka_and_loses_nothing(
    engine: AsyncEngine, salesforce: FakeSalesforce
) -> None:
    # A shortened outage: longer than every attempt of a batch (3 tries from 0.05 s), so the batch
    # is given back and redelivered by the consumer, several times.
    connector = Connector(engine, salesforce, crm_max_attempts=3)
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ben")
    salesforce.down_for(4.0)
    seen_before = len(salesforce.seen)
    try:
        await connector.through_kafka(fact, until=fact.assignment_id)
    finally:
        await connector.aclose()

    during = salesforce.seen[seen_before:]
    refused = [seen for seen in during if seen.status == 503]
    assert len(refused) > 3, "the outage did not outlast one batch's attempts"
    assert len(tasks_for(salesforce, fact.assignment_id)) == 1
    assert task_creates(salesforce, fact.assignment_id) == 1
    assert await scalar(engine, "SELECT count(*) FROM crm_writes WHERE assignment_id = :a", a=fact.assignment_id) == 1
    assert not await scalar(engine, "SELECT count(*) FROM outbox WHERE key = :k", k=str(lead_id).encode())


async def test_with_an_external_id_field_the_lead_is_upserted_on_the_coxswain_lead_id(
    engine: AsyncEngine, salesforce: FakeSalesforce
) -> None:
    connector = Connector(engine, salesforce, crm_salesforce_lead_external_id_field="Coxswain_Lead_Id__c")
    lead_id, email = await new_lead(engine)
    first = routed(lead_id, "ava")
    second = routed(lead_id, "ben", replaces=first.assignment_id)
    try:
        await connector.deliver(first)
        await connector.deliver(second)
    finally:
        await connector.aclose()

    [lead] = [r for r in salesforce.records["Lead"].values() if r["Coxswain_Lead_Id__c"] == str(lead_id)]
    assert (lead["Email"], lead["OwnerId"]) == (email, USERS["ben"])
    upserts = salesforce.writes("PATCH", f"/sobjects/Lead/Coxswain_Lead_Id__c/{lead_id}")
    assert len(upserts) == 1  # the second assignment found it by external id and set the owner by id
    assert [s.body for s in salesforce.writes("PATCH", f"/sobjects/Lead/{lead['Id']}")] == [{"OwnerId": USERS["ben"]}]
    assert {t["Status"] for t in salesforce.tasks_of(lead["Id"])} == {"Completed", "Not Started"}


async def test_an_expired_token_is_renewed_by_the_client_credentials_flow_and_nothing_is_lost(
    engine: AsyncEngine, salesforce: FakeSalesforce
) -> None:
    connector = Connector(
        engine,
        salesforce,
        token=None,
        crm_salesforce_client_id=CLIENT_ID,
        crm_salesforce_client_secret=CLIENT_SECRET,
    )
    try:
        await connector.salesforce.renew()
        lead_id, _ = await new_lead(engine)
        fact = routed(lead_id, "ava")
        salesforce.token = "00Dxx!rotated-by-an-admin"  # the session ends: the next request is a 401
        seen_before = len(salesforce.seen)
        await connector.deliver(fact)
    finally:
        await connector.aclose()

    during = salesforce.seen[seen_before:]
    assert [s.status for s in during[:2]] == [401, 200]
    assert during[1].path == "/services/oauth2/token"
    assert len(tasks_for(salesforce, fact.assignment_id)) == 1


async def test_a_refused_token_without_client_credentials_dead_letters_nothing(
    engine: AsyncEngine, salesforce: FakeSalesforce
) -> None:
    connector = Connector(engine, salesforce, token="00Dxx!wrong")
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ava")
    try:
        with pytest.raises(Unavailable):
            await connector.deliver(fact)
    finally:
        await connector.aclose()

    assert not await scalar(engine, "SELECT count(*) FROM outbox WHERE key = :k", k=str(lead_id).encode())
    assert not tasks_for(salesforce, fact.assignment_id)


async def test_a_routed_lead_for_a_rep_without_a_user_id_is_dead_lettered_naming_the_rep(
    connector: Connector, salesforce: FakeSalesforce, engine: AsyncEngine
) -> None:
    document = agreement().model_dump(mode="json", by_alias=True, exclude_defaults=True)
    document["roster"][1].pop("crm")
    connector.handler = crm_sync.make_handler(parse_agreement(document), connector.sync)
    lead_id, _ = await new_lead(engine)
    fact = routed(lead_id, "ben")
    seen_before = len(salesforce.seen)
    try:
        await connector.deliver(fact)
    finally:
        connector.handler = crm_sync.make_handler(agreement(), connector.sync)

    assert salesforce.seen[seen_before:] == []
    async with engine.connect() as connection:
        [row] = await connection.execute(
            text("SELECT headers FROM outbox WHERE topic = 'leads.routed.v1.dlq' AND key = :k"),
            {"k": str(lead_id).encode()},
        )
    headers = dict(row.headers)
    assert headers["dlq_error_type"] == "UnmappedRep"
    assert headers["dlq_reason"] == "rep 'ben' has no salesforce user id (roster: crm.salesforce_user_id)"


# --------------------------------------------------------------------------- activities polled back


async def published_activities(engine: AsyncEngine, lead_id: uuid.UUID) -> list[ActivityRecordedV1]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT value FROM outbox WHERE topic = 'crm.activities.v1' AND key = :k ORDER BY id"),
            {"k": str(lead_id).encode()},
        )
        return [ActivityRecordedV1.model_validate_json(row.value) for row in rows]


def poller(connector: Connector, connection: str) -> SalesforcePoller:
    return SalesforcePoller(connector.salesforce, connector.engine, connector.config, connection, agreement)


async def test_a_salesforce_task_change_yields_one_activity_across_two_polls_and_a_restart(
    engine: AsyncEngine, salesforce: FakeSalesforce
) -> None:
    connection = f"sf-poll-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {
        "crm_salesforce_sal_rejected_statuses": {"Closed - Not Converted": "no-budget"},
        "connection": connection,
    }
    connector = Connector(engine, salesforce, **settings)
    lead_id, email = await new_lead(engine)
    fact = routed(lead_id, "ava")
    try:
        await connector.deliver(fact)
        lead = salesforce.lead_by_email(email)
        assert lead is not None
        # Ava logs a call on the Lead, an admin logs one too, a mass email goes out, and sales
        # rejects the lead; a call on a Lead Coxswain never wrote is not Coxswain's.
        call = salesforce.insert(
            "Task",
            {"WhoId": lead["Id"], "OwnerId": USERS["ava"], "TaskSubtype": "Call", "Status": "Completed"},
        )
        salesforce.insert(
            "Task", {"WhoId": lead["Id"], "OwnerId": "005000000000999AAA", "TaskSubtype": "Call", "Status": "Completed"}
        )
        salesforce.insert(
            "Task", {"WhoId": lead["Id"], "OwnerId": USERS["ava"], "TaskSubtype": "ListEmail", "Status": "Completed"}
        )
        stranger = salesforce.insert("Lead", {"Email": "x@y.example", "LastName": "X", "Company": "Y"})
        salesforce.insert(
            "Task", {"WhoId": stranger["Id"], "OwnerId": USERS["ava"], "TaskSubtype": "Call", "Status": "Completed"}
        )
        salesforce.change("Lead", lead["Id"], Status="Closed - Not Converted")

        first = poller(connector, connection)
        assert await first.poll() == 3
        assert await first.poll() == 0  # the overlap reads every change again: nothing new
        salesforce.change("Task", call["Id"], Description="left a voicemail too")  # edited again later
        restarted = poller(connector, connection)  # a new process: only the database remembers
        assert await restarted.poll() == 0
    finally:
        await connector.aclose()

    activities = await published_activities(engine, lead_id)
    assert sorted((a.activity.value, a.rep_id, a.reason) for a in activities) == [
        ("automated_email", "ava", None),
        ("first_touch", "ava", None),
        ("sal_rejected", "ava", "no-budget"),
    ]
    [touch] = [a for a in activities if a.activity.value == "first_touch"]
    assert (touch.lead_id, touch.source, touch.webhook_id) == (
        lead_id,
        "salesforce",
        f"{connection}/Task/{call['Id']}/first_touch",
    )
    assert not await published_activities(engine, uuid.UUID(int=0))
    cursor = await scalar(
        engine, "SELECT cursor FROM crm_cursors WHERE connection = :c AND sobject = 'Task'", c=connection
    )
    assert cursor is not None


async def test_an_opportunity_converted_from_the_lead_yields_created_then_won_with_its_amount(
    engine: AsyncEngine, salesforce: FakeSalesforce
) -> None:
    connection = f"sf-poll-{uuid.uuid4().hex[:8]}"
    connector = Connector(
        engine, salesforce, connection=connection, crm_salesforce_lead_external_id_field="Coxswain_Lead_Id__c"
    )
    lead_id, _ = await new_lead(engine)
    # A lead Coxswain knows only by the external-id field (written by another connection).
    lead = salesforce.insert("Lead", {"LastName": "Doe", "Company": "Acme", "Coxswain_Lead_Id__c": str(lead_id)})
    opportunity = salesforce.insert(
        "Opportunity", {"Name": "Acme", "StageName": "Prospecting", "CloseDate": "2026-12-31", "Amount": 12000.0}
    )
    salesforce.change("Lead", lead["Id"], IsConverted=True, ConvertedOpportunityId=opportunity["Id"])
    try:
        assert await poller(connector, connection).poll() == 1
        salesforce.change("Opportunity", opportunity["Id"], StageName="Closed Won", IsClosed=True, IsWon=True)
        assert await poller(connector, connection).poll() == 1
    finally:
        await connector.aclose()

    activities = await published_activities(engine, lead_id)
    assert [(a.activity.value, a.amount) for a in activities] == [
        ("opportunity_created", Decimal("12000.0")),
        ("won", Decimal("12000.0")),
    ]


async def test_the_lead_of_an_aliass_email_gets_the_canonical_leads_owner(
    connector: Connector, salesforce: FakeSalesforce, engine: AsyncEngine
) -> None:
    """A Lead made for the email of a provisional id that turned out to be this lead (an alias in
    lead_identities) gets the owner too; an alias without a Lead gets none made."""
    lead_id, email = await new_lead(engine)
    alias, nowhere = (f"{name}-{lead_id.hex[:8]}@gmail.example" for name in ("alias", "nowhere"))
    made = salesforce.insert("Lead", {"Email": alias, "LastName": "Doe", "Company": "Acme"})
    for known in (alias, nowhere):
        await know_email(engine, lead_id, known)

    await connector.deliver(routed(lead_id, "ben"))

    assert made["OwnerId"] == USERS["ben"]
    own = salesforce.lead_by_email(email)
    assert own is not None and own["OwnerId"] == USERS["ben"]
    assert salesforce.lead_by_email(nowhere) is None
    # The task goes to the lead's own Lead only.
    assert salesforce.tasks_of(made["Id"]) == []
    assert len(salesforce.tasks_of(own["Id"])) == 1
