"""Reporting over a demo run: the report figures equal counts computed directly from the
services' own tables, and the dashboard renders them in headless Chromium without errors.

The reporting process builds its figures from the facts it consumed from Kafka; the expected
figures come from PostgreSQL tables the other services write (intake_events, lead_facts,
assignments, deadlines). Agreement between the two is what the test asserts.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.db.database import create_engine
from coxswain.settings import DatabaseConfig
from tests.support.browser import headless_page
from tests.support.stack import Stack, post_signed

pytestmark = pytest.mark.asyncio(loop_scope="session")

CAMPAIGN = f"e2e-dashboard-{uuid.uuid4().hex[:8]}"
STAGES = ("lead", "mql", "sal", "sql", "opportunity", "customer", "recycled")


@pytest.fixture(scope="module")
def reporting(stack: Stack) -> Iterator[str]:
    """`coxswain run reporting` as its own process beside the other services."""
    yield stack.start_reporting("reporting")
    stack.services["reporting"].stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def database(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseConfig())
    yield engine
    await engine.dispose()


def lead(index: int, hot: bool) -> dict[str, Any]:
    return {
        "type": "demo_request" if hot else "page_view",
        "contact": {
            "email": f"dash-{index}-{uuid.uuid4().hex[:8]}@example.com",
            "title": "VP Marketing" if hot else "Student",
            "company_size": 300,
            "country": "IS" if index % 3 == 0 else "US",
            "campaign": CAMPAIGN,
        },
    }


# What the CRM reports for the hot leads, in order: some are touched in time and progress, some
# are rejected, some are never touched and breach.
PLAYS: list[list[dict[str, Any]]] = [
    [
        {"activity": "first_touch"},
        {"activity": "sal_accepted"},
        {"activity": "sql_qualified"},
        {"activity": "opportunity_created", "amount": 5000},
        {"activity": "won", "amount": 12000},
    ],
    [
        {"activity": "first_touch"},
        {"activity": "sal_accepted"},
        {"activity": "sql_qualified"},
        {"activity": "opportunity_created", "amount": 8000},
    ],
    [{"activity": "first_touch"}, {"activity": "sal_rejected", "reason": "no-budget"}],
    [{"activity": "sal_rejected", "reason": "wrong-persona"}],
    [{"activity": "first_touch"}],
    [],
    [],
]


async def wait_routed(database: AsyncEngine, lead_ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with database.connect() as connection:
            routed = await connection.scalar(
                text("SELECT count(DISTINCT lead_id) FROM assignments WHERE lead_id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": lead_ids},
            )
        if routed == len(lead_ids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {routed} of {len(lead_ids)} hot leads were routed")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def demo_run(stack: Stack, reporting: str, database: AsyncEngine) -> dict[str, Any]:
    """Demo traffic tagged with a campaign of its own, so the figures are this run's alone."""
    since = datetime.now(UTC) - timedelta(minutes=1)
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        hot: list[str] = []
        for index in range(len(PLAYS) + 4):
            is_hot = index < len(PLAYS)
            response = await post_signed(client, "/v1/webhooks/webform/events", lead(index, is_hot))
            assert response.status_code == 202, response.text
            if is_hot:
                hot.append(response.json()["events"][0]["lead_id"])
        await wait_routed(database, hot)
        async with database.connect() as connection:
            owners = {
                str(row.lead_id): row.rep_id
                for row in await connection.execute(
                    text("SELECT lead_id, rep_id FROM assignments WHERE lead_id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": hot},
                )
            }
        for lead_id, play in zip(hot, PLAYS, strict=True):
            # What the agreement refuses first (a rep outside the roster, a deal won by an MQL):
            # no report figure may count it.
            for refused in ({"activity": "first_touch", "rep_id": "crm"}, {"activity": "won", "amount": 99}):
                body = {"lead_id": lead_id, "rep_id": owners[lead_id], **refused}
                response = await post_signed(client, "/v1/webhooks/crm/activities", body)
                assert response.status_code == 202, response.text
            for step in play:
                body = {"lead_id": lead_id, "rep_id": owners[lead_id], **step}
                response = await post_signed(client, "/v1/webhooks/crm/activities", body)
                assert response.status_code == 202, response.text
    return {"since": since, "until": since + timedelta(hours=2), "hot": hot}


async def expected_from_database(database: AsyncEngine) -> dict[str, Any]:
    leads = "SELECT DISTINCT lead_id FROM intake_events WHERE kind = 'lead' AND payload->'attributes'->>'campaign' = :c"
    # Reports count activities as scoring judged them: the accepted ones.
    activities = f"SELECT payload FROM lead_facts WHERE kind = 'ActivityAcceptedV1' AND lead_id IN ({leads})"
    async with database.connect() as connection:
        stages = {
            row.stage: int(row.n)
            for row in await connection.execute(
                text(
                    "SELECT payload->>'to_stage' AS stage, count(DISTINCT lead_id) AS n FROM lead_facts "
                    f"WHERE kind = 'LeadStageChangedV1' AND lead_id IN ({leads}) GROUP BY 1"
                ),
                {"c": CAMPAIGN},
            )
        }
        stages["lead"] = int(await connection.scalar(text(f"SELECT count(*) FROM ({leads}) l"), {"c": CAMPAIGN}) or 0)
        speed = (
            await connection.execute(
                text(
                    "WITH routed AS (SELECT a.lead_id, min(a.routed_at) AS routed_at FROM assignments a "
                    f" WHERE a.lead_id IN ({leads}) GROUP BY a.lead_id), "
                    "received AS (SELECT lead_id, min(received_at) AS received_at FROM intake_events "
                    " WHERE kind = 'lead' GROUP BY lead_id), "
                    "touched AS (SELECT r.lead_id, (SELECT min(f.occurred_at) FROM lead_facts f "
                    "  WHERE f.kind = 'ActivityAcceptedV1' AND f.lead_id = r.lead_id "
                    "  AND f.payload->>'activity' <> 'automated_email' AND f.occurred_at >= r.routed_at) AS at "
                    " FROM routed r) "
                    "SELECT count(*) AS routed, "
                    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.routed_at - x.received_at)) AS s50, "
                    "percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM r.routed_at - x.received_at)) AS s90, "
                    "count(t.at) AS touched, "
                    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t.at - r.routed_at)) AS h50 "
                    "FROM routed r JOIN received x USING (lead_id) JOIN touched t USING (lead_id)"
                ),
                {"c": CAMPAIGN},
            )
        ).one()
        deadlines = (
            await connection.execute(
                text(
                    # A met clock is credited to the rep who responded, a breach to the owner.
                    "SELECT CASE WHEN status = 'met' THEN coalesce(responded_by, rep_id) ELSE rep_id END AS rep_id, "
                    "count(*) FILTER (WHERE status = 'met') AS met, "
                    "count(*) FILTER (WHERE status = 'breached') AS breached, "
                    "count(*) FILTER (WHERE status = 'armed') AS open FROM deadlines "
                    f"WHERE lead_id IN ({leads}) GROUP BY 1"
                ),
                {"c": CAMPAIGN},
            )
        ).all()
        crm = [row.payload for row in await connection.execute(text(activities), {"c": CAMPAIGN})]
        mqls = await connection.scalar(
            text(
                f"SELECT count(DISTINCT lead_id) FROM lead_facts WHERE kind = 'LeadQualifiedV1' AND lead_id IN ({leads})"
            ),
            {"c": CAMPAIGN},
        )
    rejected = sorted(a["reason"] for a in crm if a["activity"] == "sal_rejected")
    return {
        "stages": {stage: stages.get(stage, 0) for stage in STAGES},
        "routed": int(speed.routed),
        "system_p50": round(float(speed.s50), 3) if speed.s50 is not None else None,
        "system_p90": round(float(speed.s90), 3) if speed.s90 is not None else None,
        "touched": int(speed.touched),
        "human_p50": round(float(speed.h50), 3) if speed.h50 is not None else None,
        "sla": {row.rep_id: (int(row.met), int(row.breached)) for row in deadlines if row.met or row.breached},
        "open_deadlines": sum(int(row.open) for row in deadlines),
        "rejections": rejected,
        "opportunities": sum(1 for a in crm if a["activity"] == "opportunity_created"),
        "won_amount": float(sum(float(a["amount"]) for a in crm if a["activity"] == "won")),
        "mqls": int(mqls or 0),
    }


def reported(summary: dict[str, Any]) -> dict[str, Any]:
    entered = {s["stage"]: s["entered"] for s in summary["funnel"]["stages"] + summary["funnel"]["detours"]}
    speed = summary["speed_to_lead"]

    def rounded(value: float | None) -> float | None:
        return round(value, 3) if value is not None else None

    return {
        "stages": {stage: entered.get(stage, 0) for stage in STAGES},
        "routed": speed["system_seconds"]["count"],
        "system_p50": rounded(speed["system_seconds"]["p50"]),
        "system_p90": rounded(speed["system_seconds"]["p90"]),
        "touched": speed["human_seconds"]["count"],
        "human_p50": rounded(speed["human_seconds"]["p50"]),
        "sla": {rep: (c["met"], c["breached"]) for rep, c in summary["sla"]["by_rep"].items()},
        "rejections": sorted(r["reason"] for r in summary["sal_rejections"]["reasons"] for _ in range(r["count"])),
        "opportunities": summary["closed_loop"]["opportunities"],
        "won_amount": summary["closed_loop"]["won_amount"],
        "mqls": summary["pacing"]["mqls"],
    }


async def test_report_figures_equal_counts_computed_from_the_database(
    demo_run: dict[str, Any], reporting: str, database: AsyncEngine
) -> None:
    query = {"since": demo_run["since"].isoformat(), "until": demo_run["until"].isoformat(), "campaign": CAMPAIGN}
    expected: dict[str, Any] = {}
    actual: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=reporting, timeout=10) as client:
        # Reporting is eventually consistent with the services' tables; wait until every clock of
        # the run is decided and the two sides agree, then compare once more.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            expected = await expected_from_database(database)
            response = await client.get("/v1/reports/summary", params=query)
            assert response.status_code == 200, response.text
            actual = reported(response.json())
            if expected["open_deadlines"] == 0 and {**expected, "open_deadlines": 0} == {**actual, "open_deadlines": 0}:
                break
            await asyncio.sleep(0.5)
    expected.pop("open_deadlines")
    assert actual == expected
    assert expected["stages"]["lead"] == len(PLAYS) + 4
    assert expected["stages"]["mql"] == len(PLAYS) and expected["routed"] == len(PLAYS)
    assert expected["stages"]["customer"] == 1 and expected["won_amount"] == 12000
    assert expected["opportunities"] == 2 and expected["stages"]["recycled"] == 2
    assert expected["rejections"] == ["no-budget", "wrong-persona"]
    assert sum(met + breached for met, breached in expected["sla"].values()) == len(PLAYS)

    async with httpx.AsyncClient(base_url=reporting, timeout=10) as client:
        again = await client.get("/v1/reports/summary", params=query)
        assert reported(again.json()) == actual, "the same range gives the same figures"
        later = await client.get(
            "/v1/reports/funnel", params={**query, "until": (demo_run["since"] + timedelta(seconds=1)).isoformat()}
        )
        assert {s["stage"]: s["entered"] for s in later.json()["stages"]}["mql"] == 0
        wrong = await client.get("/v1/reports/funnel", params={**query, "until": query["since"]})
        assert wrong.status_code == 422


async def test_the_reporting_process_exports_its_metrics(demo_run: dict[str, Any], reporting: str) -> None:
    async with httpx.AsyncClient(base_url=reporting, timeout=10) as client:
        metrics = (await client.get("/metrics")).text
    assert 'coxswain_events_processed_total{consumer="reporting",topic="leads.routed.v1"}' in metrics
    assert "coxswain_consumer_lag_records{" in metrics
    assert "coxswain_outbox_backlog " in metrics


async def test_the_dashboard_renders_live_in_headless_chromium(demo_run: dict[str, Any], reporting: str) -> None:
    async with headless_page() as browsing:
        page = browsing.page
        await page.goto(f"{reporting}/dashboard?campaign={CAMPAIGN}&hours=2&refresh=1")
        await page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 2", timeout=30_000)

        mql = await page.text_content('#funnel [data-stage="mql"] .num')
        assert mql is not None and int(mql.split()[0]) == len(PLAYS)
        assert await page.locator("#heatmap tr[data-rep]").count() >= 1
        assert await page.locator("#heatmap td.cell[title]").count() >= 1
        assert int(await page.text_content("#mql-count") or 0) == len(PLAYS)
        assert await page.locator("#breaches circle.breach").count() >= 1
        assert "update failed" not in (await page.text_content("#updated") or "")
        shot = os.environ.get("COXSWAIN_DASHBOARD_SCREENSHOT")
        if shot:
            await page.screenshot(path=shot, full_page=True)
    assert browsing.problems == []
