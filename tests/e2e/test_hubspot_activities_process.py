"""In the running stack: a rep logs a call in HubSpot, HubSpot's webhook reaches intake, and the
routed lead's SLA clock stops (sla.met.v1) for that rep. HubSpot's API is the local fake."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import pytest_asyncio

from coxswain.demo_crm import hubspot as fake_hubspot
from coxswain.demo_crm.hubspot import TOKEN, FakeHubSpot
from services.intake.adapters.hubspot import sign_v3
from tests.support.stack import Stack, TopicWatcher, for_lead, post_signed

pytestmark = pytest.mark.asyncio(loop_scope="session")

APP_SECRET = "hubspot-app-client-secret-e2e"
OWNERS = {"iris": "501", "ava": "502", "ben": "503"}  # as in tests/e2e/agreement.yaml
PATH = "/v1/webhooks/hubspot/hubspot/crm-events"


@pytest_asyncio.fixture(loop_scope="session")
async def hubspot_intake(stack: Stack) -> AsyncIterator[FakeHubSpot]:
    """The stack's intake restarted with a HubSpot app secret and the fake HubSpot's API; put back after."""
    intake = stack.services["intake"]
    async with fake_hubspot.serving(set(OWNERS.values())) as fake:
        intake.stop()
        intake.start(
            {
                "COXSWAIN_SENDER_SECRETS": orjson.dumps({"hubspot": APP_SECRET}).decode(),
                "COXSWAIN_HUBSPOT_API_URL": fake.url,
                "COXSWAIN_HUBSPOT_API_TOKEN": TOKEN,
            }
        )
        try:
            await asyncio.to_thread(stack.wait_ready, "intake")
            yield fake
        finally:
            intake.stop()
            intake.start()
            await asyncio.to_thread(stack.wait_ready, "intake")


async def test_a_call_logged_in_hubspot_stops_the_routed_leads_sla_clock(
    stack: Stack, client: httpx.AsyncClient, hubspot_intake: FakeHubSpot
) -> None:
    email = f"lead@{uuid.uuid4().hex[:12]}.example.com"
    lead = {"type": "demo_request", "contact": {"email": email, "title": "VP Marketing", "company_size": 300}}
    topics = ["leads.routed.v1", "crm.activities.v1", "leads.activity_accepted.v1", "sla.met.v1", "sla.breached.v1"]
    async with TopicWatcher(topics) as watcher:
        response = await post_signed(client, "/v1/webhooks/webform/events", lead)
        assert response.status_code == 202, response.text
        lead_id = response.json()["events"][0]["lead_id"]
        [routed] = await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
        rep = routed.value["rep_id"]

        # The rep calls the lead from HubSpot: the contact (found by the lead's email) gets a call
        # owned by the rep, and HubSpot posts the call's creation to its webhook subscription.
        contact_id = hubspot_intake.add_contact(email, contact_id="880001")
        call_id = hubspot_intake.log(
            "calls", {"hubspot_owner_id": OWNERS[rep], "hs_call_direction": "OUTBOUND"}, [contact_id]
        )
        now = datetime.now(UTC)
        event = {
            "eventId": 91_000_001,
            "subscriptionId": 3301,
            "portalId": 62515,
            "appId": 4411,
            "occurredAt": int(now.timestamp() * 1000),
            "subscriptionType": "object.creation",
            "objectTypeId": "0-48",
            "attemptNumber": 0,
            "objectId": int(call_id),
            "changeSource": "CRM_UI",
        }
        body = orjson.dumps([event])
        url = stack.url + PATH
        answer = await client.post(PATH, content=body, headers=sign_v3(APP_SECRET, "POST", url, body, now))
        assert answer.status_code == 202, answer.text
        assert [e["lead_id"] for e in answer.json()["events"]] == [lead_id]

        [activity] = await watcher.wait_for("crm.activities.v1", for_lead(lead_id))
        assert (activity.value["activity"], activity.value["rep_id"]) == ("first_touch", rep)
        [accepted] = await watcher.wait_for("leads.activity_accepted.v1", for_lead(lead_id))
        assert accepted.value["caused_by"] == activity.value["event_id"]
        [met] = await watcher.wait_for("sla.met.v1", for_lead(lead_id))
        assert (met.value["rep_id"], met.value["responded_by"]) == (rep, rep)
        assert met.value["response_activity_id"] == accepted.value["event_id"]
        assert watcher.matching("sla.breached.v1", for_lead(lead_id)) == []
