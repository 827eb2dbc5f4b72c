"""The simulator's HTML report renders in headless Chromium (Debian's): four charts with bars for
both sides, the side-by-side table and the route changes, and no console error. No Kafka or
database: the simulator reads a generated stream."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from coxswain.simulation.generate import StreamSpec, write_stream
from coxswain.simulation.run import Request, execute
from tests.support.browser import headless_page

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml"


async def test_the_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=400, start=date(2026, 3, 2), days=14, seed=11), stream)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        EXAMPLE.read_text()
        .replace('version: "2026.11-1"', 'version: "2026.11-2"')
        .replace("mql: { enter: 60, exit: 45 }", "mql: { enter: 55, exit: 40 }")
        .replace("{ rep: ben, weight: 1 }", "{ rep: ben, weight: 2 }")
    )
    report = tmp_path / "report.html"
    outcome = execute(Request(candidate, EXAMPLE, stream, html=report, first=5))
    assert outcome.code == 0, outcome.text
    assert outcome.comparison is not None

    async with headless_page() as browsing:
        page = browsing.page
        await page.goto(report.as_uri())

        assert await page.title() == "Coxswain simulation: 2026.11-1 vs 2026.11-2"
        charts = page.locator(".chart svg")
        assert await charts.count() == 4
        for n in range(4):
            box = await charts.nth(n).bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 100
            assert await charts.nth(n).locator("rect").count() >= 2  # baseline and candidate bars
        assert await page.locator("table").first.locator("tr").count() > 5
        assert await page.locator("table").nth(1).locator("tr").count() == 1 + len(outcome.comparison.changes)
        assert await page.locator("p.good").text_content() == "All guards hold."
        screenshot = await page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    assert len(screenshot) > 20_000  # a page of charts and tables, not a blank one
    assert browsing.problems == []
