"""The simulator report's own judgements, without a replay: pacing over complete periods, why a
route changed, axis values, and leads named in the reader's terms."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest

from coxswain.core.agreement import MqlTarget
from coxswain.core.business_time import BusinessCalendar, WorkingWindow
from coxswain.simulation.engine import Assignment
from coxswain.simulation.report import (
    Comparison,
    Coverage,
    Lead,
    RouteChange,
    Side,
    change_kind,
    guards,
    html,
    pace,
    terminal,
    ticks,
)
from schemas.events import Tier

WEEK = MqlTarget(period="week", count=100)
MONTH = MqlTarget(period="month", count=400)
ALWAYS = BusinessCalendar.always_open()
WEEKDAYS = BusinessCalendar(
    name="weekdays", timezone="America/New_York", weekly={day: (WorkingWindow(time(9), time(17)),) for day in range(5)}
)


def at(day: int, hour: int = 12) -> datetime:
    """A day of March 2026 (Monday the 2nd, Monday the 9th, ...) at an hour, UTC."""
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def test_only_complete_weeks_are_paced_and_the_sparse_tail_is_left_out() -> None:
    # Leads from Wednesday the 4th to Monday the 23rd: the weeks of the 9th and the 16th are
    # whole; the first week is seen from its Wednesday, the last only on its Monday.
    coverage = Coverage(at(4, 8), at(23, 3))
    mqls = sorted([at(5)] * 30 + [at(10)] * 90 + [at(17)] * 70 + [at(23, 2)] * 2)
    found = pace(WEEK, ALWAYS, coverage, mqls)
    assert [(p.start, p.actual, p.expected) for p in found.complete] == [
        (at(9, 0), 90, 100),
        (at(16, 0), 70, 100),
    ]
    assert found.partial is None
    assert found.summary() == "80 of 100 (80%; 70)"
    assert found.label == "MQL pacing week: mean of 2 complete weeks (lowest)"


def test_without_a_complete_period_the_best_seen_one_is_labelled_partial() -> None:
    coverage = Coverage(at(4, 8), at(23, 3))
    mqls = sorted([at(10)] * 200)
    found = pace(MONTH, ALWAYS, coverage, mqls)
    assert found.complete == ()
    assert found.partial is not None
    assert found.partial.seen == pytest.approx(20 / 31)  # the 4th to the 23rd of March, inclusive
    assert found.partial.expected == pytest.approx(400 * 20 / 31)
    assert found.label == "MQL pacing month: partial month from 2026-03-01 (65% of it seen)"
    assert found.summary() == "200 of 258 pro-rated (78%)"


def test_a_period_is_complete_when_what_is_missing_is_closed_business_time() -> None:
    # First lead on Sunday the 1st (New York), last on Saturday the 14th: weekdays-only business
    # time, so the weeks of the 2nd and of the 9th are whole; the Sunday before is no week of ours.
    coverage = Coverage(at(1, 20), at(14, 20))
    found = pace(WEEK, WEEKDAYS, coverage, [at(3)] * 10)
    assert [p.start.astimezone(WEEKDAYS.zone).day for p in found.complete] == [2, 9]
    assert [p.actual for p in found.complete] == [10, 0]


def test_iso_weeks_are_marked_partial_in_utc_days() -> None:
    coverage = Coverage(at(4, 8), at(15, 23))
    assert not coverage.whole_iso_week("2026-W10")  # from Monday the 2nd: seen from the 4th
    assert coverage.whole_iso_week("2026-W11")  # the 9th to the 15th
    assert not coverage.whole_iso_week("2026-W12")


def assignment(rep: str, pool: str, rule: str, matched_by: str = "rule", hours: int = 0) -> Assignment:
    start = at(2) + timedelta(hours=hours)
    lead = uuid.UUID(int=1)
    return Assignment(lead, start, rep, pool, rule, matched_by, Tier.hot, "webform", start, lead)


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ([], [assignment("ava", "na", "r1")], "qualification"),
        ([assignment("ava", "na", "r1")], [], "qualification"),
        ([assignment("ava", "na", "r1")], [assignment("dan", "emea", "r2")], "rule"),
        ([assignment("ava", "na", "r1")], [assignment("ava", "emea", "r2")], "rule"),
        ([assignment("ava", "na", "r1")], [assignment("ben", "na", "r1")], "rotation"),
        ([assignment("ava", "account-owner", "r1", "open_domain_lead")], [assignment("ben", "na", "r1")], "owner"),
        (
            [assignment("ava", "account-owner", "r1", "account_owner")],
            [assignment("ben", "account-owner", "r1", "account_owner")],
            "owner",
        ),
        (
            [assignment("ava", "na", "r1"), assignment("ben", "na", "r1", hours=2)],
            [assignment("ava", "na", "r1"), assignment("eli", "na", "r1", hours=2)],
            "later",
        ),
    ],
)
def test_why_a_route_changed(old: list[Assignment], new: list[Assignment], kind: str) -> None:
    assert change_kind(old, new) == kind


@pytest.mark.parametrize(
    ("top", "percent", "expected"),
    [
        (297, False, [0, 100, 200, 300]),
        (764, False, [0, 200, 400, 600, 800]),
        (2, False, [0, 1, 2]),
        (1.0, True, [0, 0.25, 0.5, 0.75, 1.0]),
        (0.467, True, [0, 0.2, 0.4, 0.6]),
        (0, False, [0, 1]),
    ],
)
def test_axis_values_are_round_and_reach_past_the_longest_bar(top: float, percent: bool, expected: list[float]) -> None:
    assert ticks(top, percent) == pytest.approx(expected)


def side(version: str) -> Side:
    return Side(version, 10, 2, {}, {}, (), {}, 1.0, None, None, (), 12, 0, 0)


def comparison() -> Comparison:
    person = Lead("ann@acme.example", "Acme", "hubspot")
    changes = [
        RouteChange(uuid.UUID(int=1), "ava@na", "ben@na", "rotation", person, "na-default"),
        RouteChange(uuid.UUID(int=2), "(not routed)", "eli@queue", "qualification", Lead(), "fallback"),
    ]
    return Comparison(
        side("old"),
        side("new"),
        leads=40,
        inputs=90,
        route_changes=10,
        routed_leads=20,
        changes=changes,
        listed=changes,
        change_kinds={"qualification": 1, "rule": 3, "rotation": 6},
        coverage=Coverage(at(2), at(20)),
        leads_per_second=2500.0,
    )


def test_route_changes_name_the_person_the_rule_and_why() -> None:
    text = terminal(comparison(), [])
    assert "ann@acme.example (hubspot, rule na-default), another turn in the same rotation: ava@na  ->  ben@na" in text
    assert f"{uuid.UUID(int=2)} (unknown source, rule fallback), routed by one side only" in text
    assert "  another turn in the same rotation" in text and "6 (30.0%)" in text
    assert "Weighted rotation hands out turns in order" in text.replace("\n", " ")


def test_the_leads_per_second_figure_is_in_the_footer_not_the_opening() -> None:
    page = html(comparison(), [])
    opening = page[page.index("<h1>") : page.index("</p>")]
    assert "leads/s" not in opening and "40 leads" in opening and "2026-03-02 to 2026-03-20" in opening
    assert "2,500 leads/s" in page[page.index("<footer>") :]


def test_a_guard_on_rule_changes_ignores_rotation_turns() -> None:
    assert guards(comparison(), {"max_rule_change_pct": 20}) == []
    assert guards(comparison(), {"max_rule_change_pct": 10}) == [
        "15.0% of routed leads go by another rule or pool (max 10%)"
    ]
    assert guards(comparison(), {"max_route_change_pct": 40}) == ["50.0% of routed leads change route (max 40%)"]
