"""The simulator's HTML report as a reader sees it, in headless Chromium (Debian's): four charts
whose labels are whole, inside their chart and clear of each other (measured on the rendered
page), axes with values, the engineering figure in the footer, and route changes named by person
that can be filtered and sorted. No Kafka or database: the simulator reads a generated stream."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

from playwright.async_api import Page

from coxswain.simulation.generate import StreamSpec, write_stream
from coxswain.simulation.run import Request, execute
from tests.support.browser import headless_page

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml"

# Every <text> of every chart: its box against the chart's and against every other text's. Boxes
# are the rendered ones (getBoundingClientRect), so a label cut by the SVG's edge or drawn over
# another label is found whatever the code meant to do.
MEASURE = """
() => {
  const problems = [];
  const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
  const overlap = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5 && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5;
  const charts = [...document.querySelectorAll('.chart svg')];
  charts.forEach((svg, n) => {
    const box = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll('text')].map(t => [t.textContent, t.getBoundingClientRect()]);
    for (const [text, rect] of texts) {
      if (!inside(rect, box)) problems.push(`chart ${n}: "${text}" is clipped by the chart's edge`);
    }
    for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
      if (overlap(texts[i][1], texts[j][1])) problems.push(`chart ${n}: "${texts[i][0]}" overlaps "${texts[j][0]}"`);
    }
    charts.slice(n + 1).forEach((other, m) => {
      if (overlap(box, other.getBoundingClientRect())) problems.push(`chart ${n} overlaps chart ${n + 1 + m}`);
    });
  });
  return problems;
}
"""


async def chart_label_problems(page: Page) -> list[str]:
    found: Any = await page.evaluate(MEASURE)
    return [str(problem) for problem in found]


def natural(text: str) -> list[tuple[int, str]]:
    """How a person sorts: person2 before person10 (the page compares with numeric collation)."""
    return [(int(part), "") if part.isdigit() else (-1, part.lower()) for part in re.split(r"(\d+)", text) if part]


async def visible_rows(page: Page) -> list[list[str]]:
    found: Any = await page.evaluate(
        "() => [...document.querySelectorAll('#changes tbody tr')].filter(r => !r.hidden)"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    return [[str(cell) for cell in row] for row in found]


async def test_the_html_report_reads_right_in_headless_chromium(tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=600, start=date(2026, 3, 2), days=21, seed=11), stream)
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
    comparison = outcome.comparison
    assert comparison is not None and comparison.route_changes > 20

    async with headless_page() as browsing:
        page = browsing.page
        await page.goto(report.as_uri())

        assert await page.title() == "Coxswain simulation: 2026.11-1 vs 2026.11-2"
        charts = page.locator(".chart svg")
        assert await charts.count() == 4
        assert await chart_label_problems(page) == []
        for n in range(4):
            ticks = await charts.nth(n).locator("text.tick").all_text_contents()
            assert len(ticks) >= 3 and ticks[0] in ("0", "0%"), f"chart {n} has an axis with values: {ticks}"
            assert await charts.nth(n).locator("rect").count() >= 4  # a legend and bars for both sides
        labels = await charts.nth(2).locator("text.label").all_text_contents()
        assert "account-owner/chloe" in labels and "north-america/ava" in labels, "labels are whole"

        opening = await page.locator("h1 + p").text_content()
        assert opening is not None and "leads/s" not in opening and "600 leads" in opening
        footer = await page.locator("footer").text_content()
        assert footer is not None and "leads/s" in footer

        side_by_side = await page.locator("table").first.text_content()
        assert side_by_side is not None and "complete weeks" in side_by_side

        # Route changes: people, not ids; filter by text and by kind; sort by a column.
        rows = await visible_rows(page)
        assert len(rows) == len(comparison.listed) == comparison.route_changes
        assert all("@" in row[1] for row in rows), "a lead is its email"
        await page.fill("#change-filter", "marketo")
        filtered = await visible_rows(page)
        assert 0 < len(filtered) < len(rows) and all(row[3] == "marketo" for row in filtered)
        assert await page.locator("#change-count").text_content() == f"{len(filtered)} of {len(rows)} shown"
        await page.fill("#change-filter", "")
        await page.select_option("#change-kind", "rotation")
        rotation = await visible_rows(page)
        assert 0 < len(rotation) < len(rows)
        assert all(row[5] == "another turn in the same rotation" for row in rotation)
        await page.select_option("#change-kind", "")
        await page.click("#changes th:nth-child(2)")
        emails = [row[1] for row in await visible_rows(page)]
        assert emails == sorted(emails, key=natural) and emails != [row[1] for row in rows]
        await page.click("#changes th:nth-child(2)")
        assert [row[1] for row in await visible_rows(page)] == emails[::-1]

        screenshot = await page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    assert len(screenshot) > 20_000  # a page of charts and tables, not a blank one
    assert browsing.problems == []
