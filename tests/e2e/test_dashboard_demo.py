"""What `make run` shows: the demo traffic generator it runs (leads plus a scripted CRM) fills
every panel of the dashboard, and the scorecard pages render, in headless Chromium without a
console error; the issued scorecard is the one on its topic, once, across a restart of reporting."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.browser import headless_page
from tests.support.stack import SECRET, Stack, TopicWatcher

pytestmark = pytest.mark.asyncio(loop_scope="session")

CAMPAIGN = f"e2e-demo-{uuid.uuid4().hex[:8]}"
DEMO_LEADS = 30


@pytest.fixture(scope="module")
def reporting(stack: Stack) -> Iterator[str]:
    yield stack.start_reporting("reporting-demo")
    stack.services["reporting-demo"].stop()


@pytest.fixture(scope="module")
def demo(stack: Stack, reporting: str) -> subprocess.CompletedProcess[str]:
    """`coxswain demo traffic` exactly as `make run` starts it, with a COUNT so it ends, and a
    campaign of its own so the dashboard can be filtered to this run."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "coxswain_app",
            "demo",
            "traffic",
            "--url",
            stack.url,
            "--rate",
            "10",
            "--count",
            str(DEMO_LEADS),
            "--campaign",
            CAMPAIGN,
            "--touch-share",
            "0.5",
            "--late-share",
            "0.25",
            "--settle",
            "6",
        ],
        env={**stack.env(), "COXSWAIN_DEMO_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_the_demo_traffic_runs_to_its_count_without_a_terminal(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout == "", "demo traffic writes nothing to stdout"
    assert f"demo traffic done: sent={DEMO_LEADS}" in demo.stderr
    assert "\x1b[" not in demo.stderr, "no progress bar drawn into a pipe"
    assert "rejected" not in demo.stderr and "not delivered" not in demo.stderr, demo.stderr[-3000:]


async def summary(reporting: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=reporting, timeout=10) as client:
        response = await client.get("/v1/reports/summary", params={"campaign": CAMPAIGN})
        assert response.status_code == 200, response.text
        return dict(response.json())


async def test_the_demo_fills_every_panel_of_the_dashboard(
    demo: subprocess.CompletedProcess[str], reporting: str
) -> None:
    # Reporting is eventually consistent: wait until the run's clocks are decided there.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        s = await summary(reporting)
        if s["sla"]["overall"]["met"] and s["sla"]["overall"]["breached"]:
            break
        await asyncio.sleep(0.5)
    assert s["sla"]["overall"]["met"] >= 1 and s["sla"]["overall"]["breached"] >= 1, s["sla"]["overall"]

    async with headless_page() as browsing:
        page = browsing.page
        await page.goto(f"{reporting}/dashboard?campaign={CAMPAIGN}&hours=1&refresh=1")
        await page.wait_for_function("Number(document.body.dataset.loaded || 0) >= 2", timeout=30_000)

        mql = await page.text_content('#funnel [data-stage="mql"] .num')
        assert mql is not None and int(mql.split()[0]) >= 1
        assert await page.locator("#heatmap td.cell[title]").count() >= 1
        assert await page.locator("#breaches circle.breach").count() >= 1
        assert int(await page.text_content("#mql-count") or 0) >= 1
        assert await page.locator("#speed .kpi").count() >= 1
    assert browsing.problems == []


async def test_the_scorecard_is_issued_once_and_rendered(
    demo: subprocess.CompletedProcess[str], reporting: str, stack: Stack
) -> None:
    async with httpx.AsyncClient(base_url=reporting, timeout=10) as client:
        deadline = time.monotonic() + 60
        latest = await client.get("/v1/scorecards/latest")
        while latest.status_code == 404 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            latest = await client.get("/v1/scorecards/latest")
        assert latest.status_code == 200, latest.text
        card = latest.json()
        listing = (await client.get("/v1/scorecards")).json()
        current = (await client.get("/v1/scorecards/current")).json()
        assert (await client.get("/v1/scorecards/1999-W01")).status_code == 404
        assert (await client.get("/v1/scorecards/not-a-period")).status_code == 422
    assert listing["scorecards"][0]["period"] == card["period"]
    assert current["period"] != card["period"] and current["period_start"] >= card["period_end"]
    assert current["sales"]["by_rep"], "this week's clocks, the demo's among them"

    # A restart of reporting checks again and issues nothing new: the period is on its topic once.
    service = stack.services["reporting-demo"]
    service.stop()
    service.start()
    service.wait_for_log("scorecards checked")
    assert "issued=none" in service.log_text()
    async with TopicWatcher(["reports.scorecard_issued.v1"]) as watcher:
        await watcher.wait_for("reports.scorecard_issued.v1", lambda seen: seen.value.get("period") == card["period"])
        await asyncio.sleep(1)
        records = watcher.matching(
            "reports.scorecard_issued.v1", lambda seen: seen.value.get("period") == card["period"]
        )
    assert len(records) == 1
    assert records[0].value == card
    assert records[0].headers["ce_type"] == "io.coxswain.reports.scorecard_issued.v1"

    async with headless_page() as browsing:
        page = browsing.page
        await page.goto(f"{reporting}/scorecard")
        assert await page.text_content("#period") == card["period"]
        assert await page.get_attribute('[data-side="sales"]', "data-verdict") == card["sales"]["verdict"]
        assert await page.get_attribute('[data-side="marketing"]', "data-verdict") == card["marketing"]["verdict"]

        await page.goto(f"{reporting}/scorecard/current")
        assert await page.text_content("#period") == current["period"]
        assert await page.locator("#sales tr[data-rep]").count() == len(current["sales"]["by_rep"])
        assert await page.get_attribute('[data-side="sales"]', "data-verdict") in ("met", "missed")
        assert await page.locator("#marketing tr[data-source]").count() >= 1
        await page.screenshot(path=str(stack.log_dir / "scorecard.png"), full_page=True)

        response = await page.goto(f"{reporting}/scorecard/1999-W01")
        assert response is not None and response.status == 404
    # The 404 of the last page is the browser's only complaint.
    assert [p for p in browsing.problems if "404" not in p] == []
