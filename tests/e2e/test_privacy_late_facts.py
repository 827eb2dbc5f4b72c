"""An erasure holds against facts that arrive after it: reporting is not running while a lead
goes through scoring, the router and the SLA monitor and is erased; started only then, it applies
the facts published before the erasure (received, qualified, routed...) and none of its rows holds
the person's values, while the reports still count the lead. A webhook from the same person after
the erasure (a returning person) is stored as it came. And scoring, down while a lead arrives and
is erased, scores and routes it without the person once it is back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coxswain.settings import DatabaseConfig
from services.reporting.consumer import ACCEPTS
from tests.e2e.test_privacy_erasure import WINDOW, person, traces
from tests.support.stack import Stack, TopicWatcher, coxswain_cli, for_lead, post_signed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def database(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(DatabaseConfig().database_url)
    yield engine
    await engine.dispose()


async def stored_by_reporting(database: AsyncEngine, event_ids: set[str]) -> set[str]:
    async with database.connect() as connection:
        rows = await connection.scalars(
            text("SELECT event_id::text FROM report_facts WHERE event_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": sorted(event_ids)},
        )
        return set(rows)


async def test_facts_applied_after_the_erasure_do_not_bring_the_person_back(
    stack: Stack, client: httpx.AsyncClient, database: AsyncEngine
) -> None:
    who = person()
    campaign = f"late-facts-{uuid.uuid4().hex[:8]}"
    body = {"type": "demo_request", "contact": {**who, "company_size": 300, "country": "IS", "campaign": campaign}}
    async with TopicWatcher([*ACCEPTS, "leads.erased.v1"]) as watcher:
        response = await post_signed(client, "/v1/webhooks/webform/events", body)
        assert response.status_code == 202, response.text
        lead_id = response.json()["events"][0]["lead_id"]
        await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
        await watcher.wait_for("sla.armed.v1", for_lead(lead_id))

        erased = coxswain_cli("privacy", "erase", "--email", who["email"])
        assert erased.returncode == 0, erased.stderr
        await watcher.wait_for("leads.erased.v1", for_lead(lead_id))
        published_before = {
            seen.value["event_id"]
            for seen in watcher.records
            if seen.topic in ACCEPTS and seen.value.get("lead_id") == lead_id
        }
        assert {"leads.received.v1", "leads.qualified.v1"} <= {
            seen.topic for seen in watcher.records if seen.value.get("event_id") in published_before
        }
        assert await stored_by_reporting(database, published_before) == set(), "reporting has not run yet"

        reporting = stack.start_reporting("reporting-late")
        try:

            async def all_stored() -> bool:
                return await stored_by_reporting(database, published_before) == published_before

            await wait_until(all_stored, "reporting to store the facts published before the erasure")
            assert await traces(database, who) == {}
            async with httpx.AsyncClient(base_url=reporting, timeout=10) as http:
                funnel = (await http.get("/v1/reports/funnel", params={**WINDOW, "campaign": campaign})).json()
            entered = {stage["stage"]: stage["entered"] for stage in funnel["stages"]}
            assert (entered["lead"], entered["mql"]) == (1, 1), funnel

            # The person comes back: a fact that occurred after the erasure is applied as it is.
            again = await post_signed(client, "/v1/webhooks/webform/events", body)
            assert again.status_code == 202, again.text
            [returned] = again.json()["events"]
            assert returned["lead_id"] == lead_id

            async def returned_stored() -> bool:
                return await stored_by_reporting(database, {returned["event_id"]}) == {returned["event_id"]}

            await wait_until(returned_stored, "reporting to store the returning person's webhook")
            async with database.connect() as connection:
                payload = await connection.scalar(
                    text("SELECT payload FROM report_facts WHERE event_id = :event_id"),
                    {"event_id": returned["event_id"]},
                )
            assert payload["attributes"]["email"] == who["email"]
        finally:
            stack.services["reporting-late"].stop()


async def test_scoring_behind_the_erasure_scores_and_routes_the_lead_without_the_person(
    stack: Stack, client: httpx.AsyncClient, database: AsyncEngine
) -> None:
    """Scoring is down when the webhook arrives and the person is erased (by the id the 202
    returned); restarted, it applies the webhook without the person's values, and the lead is
    still scored, qualified and routed, with no value of the person anywhere."""
    who = person()
    body = {"type": "demo_request", "contact": {**who, "company_size": 300, "country": "IS"}}
    scoring = stack.services["scoring"]
    scoring.stop()
    try:
        async with TopicWatcher(["leads.routed.v1", "leads.erased.v1"]) as watcher:
            response = await post_signed(client, "/v1/webhooks/webform/events", body)
            assert response.status_code == 202, response.text
            lead_id = response.json()["events"][0]["lead_id"]
            erased = coxswain_cli("privacy", "erase", "--lead-id", lead_id)
            assert erased.returncode == 0, erased.stderr
            await watcher.wait_for("leads.erased.v1", for_lead(lead_id))

            scoring.start()
            stack.wait_ready("scoring")
            [routed] = await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
    finally:
        if scoring.process is None or scoring.process.poll() is not None:
            scoring.start()
            stack.wait_ready("scoring")
    assert routed.value["tier"] == "hot"
    assert await traces(database, who) == {}
