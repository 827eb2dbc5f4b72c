"""HubSpot webhook subscriptions through intake to crm.activities.v1, on real PostgreSQL and Kafka,
with HubSpot's API served by the local fake (coxswain/demo_crm/hubspot.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.topics import read_all
from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.core.identity import email_key, source_key
from coxswain.demo_crm import hubspot as fake_hubspot
from coxswain.demo_crm.hubspot import TOKEN, FakeHubSpot
from coxswain.runtime.kafka import Publisher
from coxswain.runtime.outbox import OutboxRelay
from coxswain.settings import HubSpotActivitiesConfig, IntakeConfig, KafkaConfig, SendersConfig
from schemas.events import ActivityRecordedV1, ActivityType
from services.intake import hubspot_activities
from services.intake.adapters.hubspot import sign_v3
from services.intake.app import create_app
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
APP_SECRET = "hubspot-app-client-secret-for-tests"
URL = "http://intake/v1/webhooks/hubspot/hubspot/crm-events"
OWNERS = {"ava": "201", "ben": "202"}


def agreement() -> Agreement:
    return parse_agreement(
        {
            "version": "hubspot-activities-it",
            "name": "HubSpot activities integration tests",
            "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
            "roster": [
                {"id": rep, "name": rep.title(), "crm": {"hubspot_owner_id": owner}} for rep, owner in OWNERS.items()
            ],
            "routing": {"fallback_pool": "all", "pools": [{"id": "all", "members": [{"rep": "ava"}, {"rep": "ben"}]}]},
            "sla": {"policies": {t: {"first_touch": "1h"} for t in ("hot", "warm", "cold")}},
        }
    )


@dataclass
class Intake:
    http: httpx.AsyncClient
    hubspot: FakeHubSpot
    engine: AsyncEngine

    async def post(self, events: list[dict[str, Any]], secret: str = APP_SECRET) -> httpx.Response:
        body = orjson.dumps(events)
        return await self.http.post(URL, content=body, headers=sign_v3(secret, "POST", URL, body, NOW))


@pytest_asyncio.fixture(loop_scope="session")
async def intake(engine: AsyncEngine) -> AsyncIterator[Intake]:
    async with fake_hubspot.serving(set(OWNERS.values())) as fake:
        config = IntakeConfig()
        app = create_app(config, engine, lambda: NOW)
        hubspot_activities.register(
            app,
            config,
            SendersConfig(sender_secrets={"hubspot": [APP_SECRET]}),
            HubSpotActivitiesConfig(hubspot_api_url=fake.url, hubspot_api_token=TOKEN),
            engine,
            lambda: NOW,
            agreement,
        )
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as http:
            yield Intake(http, fake, engine)


_event_ids = iter(range(7_000_000, 8_000_000))


def hubspot_event(subscription: str, object_id: str, **fields: Any) -> dict[str, Any]:
    """One event as HubSpot's webhooks API posts it."""
    return {
        "eventId": next(_event_ids),
        "subscriptionId": 3301,
        "portalId": 62515,
        "appId": 4411,
        "occurredAt": int((NOW - timedelta(seconds=5)).timestamp() * 1000),
        "subscriptionType": subscription,
        "attemptNumber": 0,
        "objectId": int(object_id),
        "changeSource": "CRM_UI",
        **fields,
    }


def contact(fake: FakeHubSpot, email: str | None = None) -> str:
    """A contact in HubSpot (as crm-sync or a person made it)."""
    contact_id = str(1_000_000 + len(fake.contacts) + len(fake.logged["calls"]) * 1000 + uuid.uuid4().int % 100_000)
    return fake.add_contact(email, contact_id=contact_id)


async def written_by_crm_sync(engine: AsyncEngine, contact_id: str) -> uuid.UUID:
    """The row crm-sync commits once it has written a lead's owner and task to this contact."""
    lead_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO crm_writes (connection, assignment_id, lead_id, rep_id, owner_id, contact_id, task_id, "
                "written_at) VALUES ('hubspot', :a, :l, 'ava', '201', :c, 't-1', :now)"
            ),
            {"a": uuid.uuid4(), "l": lead_id, "c": contact_id, "now": NOW},
        )
    return lead_id


async def known_by_key(engine: AsyncEngine, key: str) -> uuid.UUID:
    lead_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO lead_identities (key, lead_id, created_at) VALUES (:k, :l, :now)"),
            {"k": key, "l": lead_id, "now": NOW},
        )
    return lead_id


async def staged(engine: AsyncEngine, lead_id: uuid.UUID) -> list[ActivityRecordedV1]:
    """The crm.activities.v1 records intake stored for ``lead_id`` (its events, in the outbox's order)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT payload FROM intake_events WHERE lead_id = :l AND kind = 'activity' ORDER BY received_at"),
            {"l": lead_id},
        )
        return [ActivityRecordedV1.model_validate(row.payload) for row in rows]


async def test_a_call_logged_by_the_owner_is_published_as_that_reps_first_touch(intake: Intake) -> None:
    contact_id = contact(intake.hubspot)
    lead_id = await written_by_crm_sync(intake.engine, contact_id)
    call_id = intake.hubspot.log(
        "calls",
        {"hubspot_owner_id": "201", "hs_call_direction": "OUTBOUND", "hs_call_status": "COMPLETED"},
        [contact_id],
    )
    sent = hubspot_event("object.creation", call_id, objectTypeId="0-48")

    response = await intake.post([sent])

    assert response.status_code == 202, response.text
    [accepted] = response.json()["events"]
    assert accepted["lead_id"] == str(lead_id)
    assert accepted["lead_id_provisional"] is False
    reads = [s.path for s in intake.hubspot.seen if s.method == "GET"]
    assert f"/crm/v3/objects/calls/{call_id}" in reads

    # Published on crm.activities.v1 by the outbox relay, as scoring and the SLA monitor read it.
    publisher = Publisher(KafkaConfig())
    await publisher.start()
    stop = asyncio.Event()
    relay = asyncio.create_task(OutboxRelay(intake.engine, publisher).run(stop))
    try:

        async def published() -> bool:
            async with intake.engine.connect() as connection:
                left = await connection.scalar(
                    text("SELECT count(*) FROM outbox WHERE event_id = :e"), {"e": uuid.UUID(accepted["event_id"])}
                )
            return bool(left == 0)

        await wait_until(published, "the activity left the outbox")
    finally:
        stop.set()
        await relay
        await publisher.stop()
    records = [
        r
        for r in await read_all(KafkaConfig().kafka_bootstrap_servers, [ActivityRecordedV1.topic])
        if r.value.get("event_id") == accepted["event_id"]
    ]
    assert len(records) == 1
    record = ActivityRecordedV1.model_validate(records[0].value)
    assert (record.lead_id, record.activity, record.rep_id, record.source) == (lead_id, "first_touch", "ava", "hubspot")
    assert record.webhook_id == f"hubspot-event-{sent['eventId']}"
    assert record.occurred_at == NOW - timedelta(seconds=5)
    assert records[0].headers["ce_type"] == ActivityRecordedV1.ce_type


async def test_a_replayed_event_id_is_stored_once_even_in_another_batch(intake: Intake) -> None:
    contact_id = contact(intake.hubspot)
    lead_id = await written_by_crm_sync(intake.engine, contact_id)
    meeting = intake.hubspot.log("meetings", {"hubspot_owner_id": "202"}, [contact_id])
    status = hubspot_event(
        "contact.propertyChange", contact_id, propertyName="hs_lead_status", propertyValue="IN_PROGRESS"
    )
    booked = hubspot_event("object.creation", meeting, objectTypeId="0-47")

    first = await intake.post([booked])
    again = await intake.post([status, booked])  # HubSpot retried it, grouped with a new event

    assert first.status_code == again.status_code == 202
    assert first.json()["duplicates"] == []
    assert again.json()["duplicates"] == [booked["eventId"]]
    stored = await staged(intake.engine, lead_id)
    assert sorted((a.activity, a.rep_id or "-") for a in stored) == [("first_touch", "ben"), ("sal_accepted", "-")]


async def test_a_lead_status_rejection_carries_the_mapped_reason(intake: Intake) -> None:
    contact_id = contact(intake.hubspot)
    lead_id = await known_by_key(intake.engine, source_key("hubspot", contact_id))  # sent by the HubSpot lead sender

    response = await intake.post(
        [hubspot_event("contact.propertyChange", contact_id, propertyName="hs_lead_status", propertyValue="BAD_TIMING")]
    )

    assert response.status_code == 202
    [stored] = await staged(intake.engine, lead_id)
    assert (stored.activity, stored.reason) == ("sal_rejected", "bad-timing")


async def test_a_contact_known_only_by_its_email_is_found_by_reading_the_email(intake: Intake) -> None:
    email = f"{uuid.uuid4().hex[:8]}@northwind-test.io"
    contact_id = contact(intake.hubspot, email)
    lead_id = await known_by_key(intake.engine, email_key(email))
    deal = intake.hubspot.log(
        "deals", {"hubspot_owner_id": "201", "amount": "12000", "dealstage": "closedwon"}, [contact_id]
    )

    response = await intake.post(
        [hubspot_event("deal.propertyChange", deal, propertyName="dealstage", propertyValue="closedwon")]
    )

    assert response.status_code == 202, response.text
    [stored] = await staged(intake.engine, lead_id)
    assert (stored.activity, stored.rep_id, stored.amount) == (ActivityType.won, "ava", Decimal(12000))


async def test_unknown_contacts_and_unmapped_events_are_accepted_with_the_reason_and_store_nothing(
    intake: Intake,
) -> None:
    stranger = contact(intake.hubspot, f"{uuid.uuid4().hex[:8]}@nobody-test.io")
    call = intake.hubspot.log("calls", {"hubspot_owner_id": "201"}, [stranger])
    events = [
        hubspot_event("object.creation", call, objectTypeId="0-48"),
        hubspot_event("contact.propertyChange", stranger, propertyName="hubspot_owner_id", propertyValue="201"),
        hubspot_event("contact.creation", stranger),
    ]

    response = await intake.post(events)

    assert response.status_code == 202
    answer = response.json()
    assert answer["events"] == []
    reasons = {item["event_id"]: item["reason"] for item in answer["ignored"]}
    assert set(reasons) == {event["eventId"] for event in events}
    assert "no contact of this event is a lead Coxswain knows" in reasons[events[0]["eventId"]]
    assert "owner change" in reasons[events[1]["eventId"]]
    async with intake.engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT count(*) FROM webhook_inbox WHERE webhook_id = ANY(:ids)"),
            {"ids": [f"hubspot-event-{event['eventId']}" for event in events]},
        )
    assert stored == 0


async def test_a_wrong_signature_is_401_and_a_body_that_is_not_hubspots_is_422(intake: Intake) -> None:
    contact_id = contact(intake.hubspot)
    event = hubspot_event(
        "contact.propertyChange", contact_id, propertyName="hs_lead_status", propertyValue="BAD_TIMING"
    )

    forged = await intake.post([event], secret="not-the-app-secret")
    unsigned = await intake.http.post(URL, content=orjson.dumps([event]))
    not_a_list = await intake.post([{"objectId": "x"}])
    not_json = await intake.http.post(URL, content=b"{", headers=sign_v3(APP_SECRET, "POST", URL, b"{", NOW))

    assert forged.status_code == 401
    assert unsigned.status_code == 400
    assert not_a_list.status_code == 422 and "event [0]" in not_a_list.json()["detail"]
    assert not_json.status_code == 422


async def test_hubspot_unreachable_is_503_and_nothing_is_stored_until_it_answers(intake: Intake) -> None:
    contact_id = contact(intake.hubspot)
    lead_id = await written_by_crm_sync(intake.engine, contact_id)
    call = intake.hubspot.log("calls", {"hubspot_owner_id": "201"}, [contact_id])
    event = hubspot_event("object.creation", call, objectTypeId="0-48")
    intake.hubspot.inject(429, {"Retry-After": "10"}, path="/crm/v3/objects/calls")

    refused = await intake.post([event])
    retried = await intake.post([event])

    assert refused.status_code == 503 and "429" in refused.json()["detail"]
    assert retried.status_code == 202
    assert [a.activity for a in await staged(intake.engine, lead_id)] == ["first_touch"]
