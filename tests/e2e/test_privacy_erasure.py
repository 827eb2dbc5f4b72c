"""A person's data erased on request, with every service running: afterwards no text, JSON or byte
column of any table holds their email, name or title, the reports count exactly what they counted
before, leads.erased.v1 is published, and the pipeline goes on with the lead."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coxswain.settings import DatabaseConfig
from services.reporting.consumer import ACCEPTS
from tests.support.stack import ADMIN_TOKEN, Stack, TopicWatcher, coxswain_cli, for_lead, post_signed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

SEARCHED_TYPES = ("text", "character varying", "jsonb", "json", "bytea")


@pytest.fixture(scope="module")
def reporting(stack: Stack) -> Iterator[str]:
    yield stack.start_reporting("reporting-privacy")
    stack.services["reporting-privacy"].stop()


@pytest_asyncio.fixture(loop_scope="session")
async def database(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(DatabaseConfig().database_url)
    yield engine
    await engine.dispose()


def person() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "email": f"zebulonia.{tag}@{tag}-quartermaine.example.com",
        "first_name": f"Zebulonia{tag}",
        "last_name": f"Quartermaine{tag}",
        "title": f"Chief Zebra Officer {tag}",
    }


async def traces(database: AsyncEngine, values: dict[str, str]) -> dict[str, int]:
    """Rows of every table, column by column, that hold any of ``values`` (case-insensitive)."""
    async with database.connect() as connection:
        columns = (
            await connection.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND data_type = ANY(:types) ORDER BY 1, 2"
                ),
                {"types": list(SEARCHED_TYPES)},
            )
        ).all()
        assert {c.table_name for c in columns} >= {"leads", "intake_events", "lead_facts", "report_facts", "outbox"}
        found: dict[str, int] = {}
        patterns = [f"%{value}%" for value in values.values()]
        for column in columns:
            as_text = (
                f"convert_from({column.column_name}, 'UTF8')"
                if column.data_type == "bytea"
                else f"{column.column_name}::text"
            )
            count = await connection.scalar(
                text(f"SELECT count(*) FROM {column.table_name} WHERE {as_text} ILIKE ANY(:patterns)"),
                {"patterns": patterns},
            )
            if count:
                found[f"{column.table_name}.{column.column_name}"] = count
    return found


async def reporting_has_stored(database: AsyncEngine, watcher: TopicWatcher, lead_id: str) -> None:
    """Until reporting stored every fact about the lead the watcher has seen on its topics."""
    seen = {r.value["event_id"] for r in watcher.records if r.topic in ACCEPTS and r.value.get("lead_id") == lead_id}

    async def stored() -> bool:
        async with database.connect() as connection:
            rows = await connection.scalars(
                text("SELECT event_id::text FROM report_facts WHERE event_id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": sorted(seen)},
            )
            return set(rows) == seen

    await wait_until(stored, f"reporting to store the {len(seen)} facts about lead {lead_id}")


# One range for both readings: the reports' figures, not their ranges, are compared.
WINDOW = {
    "since": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
    "until": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
}


async def figures(reporting: str, window: dict[str, str] = WINDOW) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=reporting, timeout=10) as client:
        funnel = (await client.get("/v1/reports/funnel", params=window)).json()
        sla = (await client.get("/v1/reports/sla", params=window)).json()
    return {"funnel": funnel["stages"], "sla": sla}


async def test_an_erased_person_leaves_no_trace_and_the_reports_count_the_same(
    client: httpx.AsyncClient, reporting: str, database: AsyncEngine
) -> None:
    who = person()
    body = {"type": "demo_request", "contact": {**who, "company_size": 300, "country": "IS"}}
    async with TopicWatcher(list(ACCEPTS)) as watcher:
        response = await post_signed(client, "/v1/webhooks/webform/events", body)
        assert response.status_code == 202, response.text
        lead_id = response.json()["events"][0]["lead_id"]
        await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
        await watcher.wait_for("sla.breached.v1", for_lead(lead_id), within=30)
        await reporting_has_stored(database, watcher, lead_id)
        before = await traces(database, who)
        assert "leads.attributes" in before and "intake_events.payload" in before, before
        reported = await figures(reporting)

        erased = coxswain_cli("privacy", "erase", "--email", who["email"].upper())
        assert erased.returncode == 0, erased.stderr
        assert f"lead {lead_id} erased" in erased.stdout

        [fact] = await watcher.wait_for("leads.erased.v1", for_lead(lead_id))
        assert fact.value["rows_changed"] >= 4
        assert await traces(database, who) == {}
        await reporting_has_stored(database, watcher, lead_id)  # the erasure's fact, and any other
        assert await figures(reporting) == reported

    # The lead goes on: an activity after the erasure is applied (no consumer fails on the gaps).
    async with TopicWatcher(["leads.activity_accepted.v1", "leads.activity_refused.v1"]) as watcher:
        touch = {"lead_id": lead_id, "activity": "first_touch", "rep_id": "iris"}
        response = await post_signed(client, "/v1/webhooks/crm/activities", touch)
        assert response.status_code == 202, response.text
        await watcher.wait_for("leads.activity_accepted.v1", for_lead(lead_id), within=30)

    again = coxswain_cli("privacy", "erase", "--email", who["email"])
    assert (again.returncode, again.stderr.strip()) == (3, "nobody is stored under that email")
    exported = coxswain_cli("privacy", "export", "--lead-id", lead_id)
    assert exported.returncode == 0, exported.stderr
    document = orjson.loads(exported.stdout)
    assert document["lead_id"] == lead_id
    assert document["tables"]["leads"][0]["attributes"].get("email") is None
    assert [row["lead_id"] for row in document["tables"]["erasures"]] == [lead_id], "the tombstone, no values"
    assert who["email"] not in exported.stdout


async def test_the_admin_api_exports_and_erases_behind_scope_privacy_erase(
    client: httpx.AsyncClient, database: AsyncEngine
) -> None:
    who = person()
    body = {"type": "demo_request", "contact": {**who, "company_size": 300, "country": "IS"}}
    async with TopicWatcher(["leads.routed.v1"]) as watcher:
        response = await post_signed(client, "/v1/webhooks/webform/events", body)
        lead_id = response.json()["events"][0]["lead_id"]
        await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    exported = await client.post("/v1/admin/privacy/export", json={"email": who["email"]}, headers=admin)
    assert exported.status_code == 200, exported.text
    assert exported.json()["tables"]["leads"][0]["attributes"]["email"] == who["email"]
    both = await client.post("/v1/admin/privacy/erase", json={"email": who["email"], "lead_id": lead_id}, headers=admin)
    assert both.status_code == 422
    erased = await client.post("/v1/admin/privacy/erase", json={"lead_id": lead_id}, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["lead_id"] == lead_id
    assert await traces(database, who) == {}
    gone = await client.post("/v1/admin/privacy/export", json={"email": who["email"]}, headers=admin)
    assert (gone.status_code, gone.json()["detail"]) == (404, "nobody is stored under that email")

    trail = await client.get("/v1/admin/audit", params={"target": lead_id}, headers=admin)
    assert [(e["action"], e["token"]) for e in trail.json()] == [("lead.erase", "admin"), ("lead.export", "admin")]
