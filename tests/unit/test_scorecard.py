"""The scorecard core: periods in the company's time zone, which periods are due, marketing's
targets pro-rated to a period, and each side's verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import MqlTarget, load_agreement
from coxswain.core.business_time import BusinessCalendar, parse_weekly
from coxswain.core.scorecard import (
    MOST_SOURCES,
    Figures,
    Latency,
    expected_mqls,
    following,
    marketing_side,
    period_containing,
    periods_due,
    sales_side,
    scorecard,
    scorecard_id,
    scorecard_key,
)
from schemas.codec import decode, encode
from schemas.events import ScorecardIssuedV1

NEW_YORK = ZoneInfo("America/New_York")
ALWAYS = BusinessCalendar.always_open()
OFFICE = BusinessCalendar("office", "America/New_York", parse_weekly({"mon-fri": ["09:00-17:00"]}))
EXAMPLE = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
NO_GRACE = timedelta(0)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK).astimezone(UTC)


def test_a_week_runs_monday_to_monday_at_local_midnight_and_is_named_by_its_iso_week() -> None:
    # Sunday 23:30 in New York is already Monday in UTC: still the week before, locally.
    week = period_containing("week", local(2026, 11, 29, 23, 30), NEW_YORK)

    assert (week.start, week.end) == (local(2026, 11, 23), local(2026, 11, 30))
    assert week.label == "2026-W48"
    assert following(week, NEW_YORK).label == "2026-W49"
    # ISO weeks belong to the year of their Thursday.
    assert period_containing("week", local(2026, 12, 30), NEW_YORK).label == "2026-W53"
    assert period_containing("week", local(2027, 1, 4), NEW_YORK).label == "2027-W01"


def test_days_and_months_and_the_daylight_saving_change() -> None:
    day = period_containing("day", local(2026, 3, 8, 12), NEW_YORK)
    assert day.label == "2026-03-08" and day.end - day.start == timedelta(hours=23)  # spring forward
    month = period_containing("month", local(2026, 11, 30, 23, 59), NEW_YORK)
    assert (month.start, month.end, month.label) == (local(2026, 11, 1), local(2026, 12, 1), "2026-11")
    assert following(month, NEW_YORK).label == "2026-12"


def test_the_first_time_only_the_latest_closed_period_is_due_after_the_grace_time() -> None:
    monday_morning = local(2026, 11, 30, 0, 4)

    due = periods_due("week", NEW_YORK, None, monday_morning, timedelta(minutes=5), catch_up=12)
    assert [p.label for p in due] == ["2026-W47"], "W48 closed 4 minutes ago: still in its grace time"

    due = periods_due("week", NEW_YORK, None, monday_morning + timedelta(minutes=1), timedelta(minutes=5), 12)
    assert [p.label for p in due] == ["2026-W48"]


def test_nothing_is_due_twice_and_missed_periods_come_late_oldest_first() -> None:
    w48 = period_containing("week", local(2026, 11, 25), NEW_YORK)
    assert periods_due("week", NEW_YORK, w48.start, local(2026, 12, 6, 23), NO_GRACE, 12) == []

    # Down from W48 to the middle of W52: W49, W50 and W51 are due, in order.
    due = periods_due("week", NEW_YORK, w48.start, local(2026, 12, 23), NO_GRACE, 12)
    assert [p.label for p in due] == ["2026-W49", "2026-W50", "2026-W51"]
    # With a cap, only the latest ones.
    due = periods_due("week", NEW_YORK, w48.start, local(2026, 12, 23), NO_GRACE, 2)
    assert [p.label for p in due] == ["2026-W50", "2026-W51"]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["day", "week", "month"]),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)),
    st.integers(min_value=0, max_value=40),
)
def test_due_periods_are_consecutive_closed_and_after_the_last_one(cadence: str, naive: datetime, gap: int) -> None:
    now = naive.replace(tzinfo=UTC)
    last = period_containing(cadence, now, NEW_YORK)  # type: ignore[arg-type]
    for _ in range(gap + 1):
        last = period_containing(cadence, last.start - timedelta(microseconds=1), NEW_YORK)  # type: ignore[arg-type]

    due = periods_due(cadence, NEW_YORK, last.start, now, NO_GRACE, catch_up=1000)  # type: ignore[arg-type]

    assert len(due) == gap
    previous = last
    for period in due:
        assert period.start == previous.end and period.end <= now
        previous = period
    assert len({p.label for p in due}) == len(due)


def test_a_target_for_the_same_period_expects_its_whole_count() -> None:
    week = period_containing("week", local(2026, 11, 25), NEW_YORK)
    target = MqlTarget(period="week", count=40)

    assert expected_mqls(target, OFFICE, week.start, week.end) == pytest.approx(40)


def test_a_monthly_target_is_pro_rated_to_the_business_time_of_a_week() -> None:
    target = MqlTarget(period="month", count=210)
    # November 2026 has 21 weekdays; a full office week inside it holds 5 of them.
    week = period_containing("week", local(2026, 11, 11), NEW_YORK)
    assert expected_mqls(target, OFFICE, week.start, week.end) == pytest.approx(50)
    # A week across the month end takes its share of each month: Mon 30 Nov (1 of 21 weekdays of
    # 210) and Tue 1 to Fri 4 Dec (4 of December's 23 weekdays of 210).
    across = period_containing("week", local(2026, 12, 2), NEW_YORK)
    assert expected_mqls(target, OFFICE, across.start, across.end) == pytest.approx(210 / 21 + 4 * 210 / 23)
    # Nothing is expected of a closed day.
    saturday = period_containing("day", local(2026, 11, 28, 12), NEW_YORK)
    assert expected_mqls(target, OFFICE, saturday.start, saturday.end) == 0


def figures(**extra: object) -> Figures:
    base: dict[str, object] = {
        "sla_by_rep": {"ava": (9, 1), "ben": (18, 2)},
        "sla_by_team": {"north-america": (27, 3)},
        "sla_by_tier": {"hot": (20, 3), "warm": (7, 0)},
        "routed": 31,
        "untouched": 2,
        "system_seconds": Latency(count=31, p50=0.02, p90=0.05, p95=0.06, p99=0.08),
        "human_seconds": Latency(count=29, p50=60.0, p90=200.0, p95=250.0, p99=290.0),
        "sal_accepted": 12,
        "sal_rejections": {"no-budget": 2, "bad-timing": 3, "spam": 2},
        "leads_by_source": {"webform": 40, "hubspot": 60},
        "mqls_by_source": {"webform": 30, "hubspot": 10},
        "mqls": 40,
    }
    return Figures(**{**base, **extra})  # type: ignore[arg-type]


def test_sales_meet_the_sla_when_the_attainment_reaches_the_target() -> None:
    sales = sales_side(figures(), target=0.9)

    # 27 of 30 is exactly 0.9 (which is 27.000000000000004 in floating point).
    assert sales.verdict == "met"
    assert (sales.overall.met, sales.overall.breached, sales.overall.attainment) == (27, 3, 0.9)
    assert [(a.key, a.attainment) for a in sales.by_rep] == [("ava", 0.9), ("ben", 0.9)]
    assert sales.breaches == 3 and sales.routed == 31 and sales.untouched == 2
    assert [(r.reason, r.count) for r in sales.rejection_reasons] == [("bad-timing", 3), ("no-budget", 2), ("spam", 2)]
    assert sales.sal_rejected == 7 and sales.human_seconds.p50 == 60.0

    assert sales_side(figures(sla_by_rep={"ava": (26, 4)}), target=0.9).verdict == "missed"
    assert sales_side(figures(sla_by_rep={}), target=0.9).verdict == "no_data"


def test_marketing_meets_the_sla_when_every_target_is_reached() -> None:
    week = period_containing("week", local(2026, 11, 11), NEW_YORK)
    agreement = EXAMPLE.model_copy(
        update={
            "marketing": EXAMPLE.marketing.model_copy(update={"mql_targets": (MqlTarget(period="week", count=40),)})
        }
    )

    met = marketing_side(figures(), agreement, week)
    assert met.verdict == "met" and met.mqls == 40 and met.leads == 100
    assert [(t.target_id, t.expected, t.actual, t.attainment, t.met) for t in met.targets] == [
        ("week", 40.0, 40, 1.0, True)
    ]
    assert [(s.source, s.leads, s.mqls) for s in met.by_source] == [("webform", 40, 30), ("hubspot", 60, 10)]

    missed = marketing_side(figures(mqls=39), agreement, week)
    assert missed.verdict == "missed" and not missed.targets[0].met
    no_targets = EXAMPLE.model_copy(update={"marketing": EXAMPLE.marketing.model_copy(update={"mql_targets": ()})})
    assert marketing_side(figures(), no_targets, week).verdict == "no_data"


def test_many_sources_end_in_one_other_row() -> None:
    week = period_containing("week", local(2026, 11, 11), NEW_YORK)
    many = {f"s{i:03d}": i for i in range(MOST_SOURCES + 20)}

    rows = marketing_side(figures(leads_by_source=many, mqls_by_source={}), EXAMPLE, week).by_source

    assert len(rows) == MOST_SOURCES
    assert rows[0].source == f"s{MOST_SOURCES + 19:03d}" and rows[-1].source == "(other)"
    assert sum(r.leads for r in rows) == sum(many.values())


def test_the_scorecard_of_a_period_has_one_id_and_one_key_per_cadence() -> None:
    week = period_containing("week", local(2026, 11, 11), NEW_YORK)
    issued = local(2026, 11, 16, 0, 5)

    card = scorecard(figures(), EXAMPLE, week, "America/New_York", issued)
    again = scorecard(figures(mqls=1), EXAMPLE, week, "America/New_York", issued + timedelta(hours=1))

    assert card.event_id == again.event_id == scorecard_id(week)
    assert card.lead_id == scorecard_key("week") != scorecard_key("month")
    assert card.period == "2026-W46" and card.agreement_version == EXAMPLE.version
    assert (card.period_start, card.period_end) == (week.start, week.end)
    # The example agreement: 2000 MQLs a week and 8000 a month, on the 24x7 calendar.
    assert [t.target_id for t in card.marketing.targets] == ["week", "month"]
    assert card.marketing.targets[0].expected == 2000 and card.marketing.verdict == "missed"
    assert card.marketing.targets[1].expected == pytest.approx(8000 * 7 / 30, abs=0.001)
    record = encode(card)
    assert record.topic == "reports.scorecard_issued.v1"
    assert decode(record.topic, record.value, record.headers, (ScorecardIssuedV1,)) == card
