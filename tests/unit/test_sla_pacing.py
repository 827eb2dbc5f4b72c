"""Both sides of the SLA in numbers: marketing's MQL pacing and sales' attainment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import MqlTarget
from coxswain.core.business_time import BusinessCalendar, parse_weekly
from coxswain.core.sla import (
    Attainment,
    DeadlineStatus,
    DecidedClock,
    attainment,
    pacing,
    pacing_alert,
    pacing_key,
    period_bounds,
)
from schemas.events import Tier

BERLIN = ZoneInfo("Europe/Berlin")
ALWAYS = BusinessCalendar.always_open()
OFFICE = BusinessCalendar("office", "Europe/Berlin", parse_weekly({"mon-fri": ["09:00-17:00"]}))
MONTHLY = MqlTarget(period="month", count=300, alert_below=0.8, alert_after=0.1)
WEEKLY = MqlTarget(id="emea-weekly", period="week", count=40, alert_below=0.75, alert_after=0.0)


def test_periods_run_from_local_midnight_to_local_midnight() -> None:
    at = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)  # already 1 April in Berlin

    assert period_bounds("month", at, BERLIN) == (
        datetime(2026, 4, 1, tzinfo=BERLIN).astimezone(UTC),
        datetime(2026, 5, 1, tzinfo=BERLIN).astimezone(UTC),
    )
    start, end = period_bounds("week", datetime(2026, 3, 26, 12, tzinfo=UTC), BERLIN)
    assert start == datetime(2026, 3, 23, tzinfo=BERLIN).astimezone(UTC)
    assert end == datetime(2026, 3, 30, tzinfo=BERLIN).astimezone(UTC)
    assert end - start == timedelta(days=7) - timedelta(hours=1)  # the spring-forward week is shorter


def test_monthly_target_is_pro_rated_over_elapsed_time() -> None:
    # 15 of 30 days of November gone, 120 of the 150 expected.
    result = pacing(MONTHLY, ALWAYS, datetime(2026, 11, 16, tzinfo=UTC), actual=120)

    assert result.elapsed_share == pytest.approx(0.5)
    assert result.expected == pytest.approx(150)
    assert result.ratio == pytest.approx(0.8)
    assert not result.behind
    assert pacing(MONTHLY, ALWAYS, datetime(2026, 11, 16, tzinfo=UTC), actual=119).behind


def test_weekly_target_is_pro_rated_over_business_time() -> None:
    # Wednesday noon in Berlin: Monday and Tuesday (16h) and Wednesday 09-12 (3h) of 40 hours.
    result = pacing(WEEKLY, OFFICE, datetime(2026, 11, 25, 12, tzinfo=BERLIN), actual=10)

    assert result.elapsed_share == pytest.approx(19 / 40)
    assert result.expected == pytest.approx(19)
    assert result.behind
    alert = pacing_alert(result, datetime(2026, 11, 25, 12, tzinfo=BERLIN))
    assert alert is not None
    assert (alert.target_id, alert.actual, alert.target, alert.threshold) == ("emea-weekly", 10, 40, 0.75)
    assert alert.pacing == pytest.approx(10 / 19, abs=1e-4)
    assert alert.lead_id == pacing_key("emea-weekly")


def test_no_alert_early_in_the_period_or_when_on_track() -> None:
    early = pacing(MONTHLY, ALWAYS, datetime(2026, 11, 2, tzinfo=UTC), actual=0)
    assert early.elapsed_share < MONTHLY.alert_after and not early.behind
    assert pacing_alert(early, datetime(2026, 11, 2, tzinfo=UTC)) is None

    before_opening = pacing(WEEKLY, OFFICE, datetime(2026, 11, 23, 8, tzinfo=BERLIN), actual=0)
    assert before_opening.expected == 0 and before_opening.ratio is None and not before_opening.behind


def test_one_alert_per_target_and_period_unless_the_shortfall_grows_by_a_step() -> None:
    # 19 of 30 days gone: 190 expected; 140 is pacing 0.74, just below the 0.8 threshold (level 0).
    now = datetime(2026, 11, 20, tzinfo=UTC)
    first = pacing(MONTHLY, ALWAYS, now, 140)
    alert = pacing_alert(first, now)
    assert alert is not None and first.shortfall_level == 0

    # A week later, still behind but by no more than a further step: no new alert.
    week_on = now + timedelta(days=7)
    worse = pacing(MONTHLY, ALWAYS, week_on, 170)  # 170 of 270: 0.63, a further step below: level 1
    assert worse.shortfall_level == 1
    same = pacing(MONTHLY, ALWAYS, week_on, 200)  # 0.77: level 0 again
    assert pacing_alert(same, week_on, alerted_level=0) is None
    again = pacing_alert(worse, week_on, alerted_level=0)
    assert again is not None and again.event_id != alert.event_id
    assert pacing_alert(worse, week_on, alerted_level=1) is None
    # The id names the target, period and level: two monitors raising it raise one alert.
    assert pacing_alert(first, now + timedelta(hours=5)) == pacing_alert(first, now + timedelta(hours=5))
    assert alert.event_id == pacing_alert(pacing(MONTHLY, ALWAYS, now + timedelta(hours=5), 141), now).event_id  # type: ignore[union-attr]


def test_pacing_counts_only_from_when_the_target_was_first_watched() -> None:
    # Coxswain starts on 20 November with nothing qualified yet: no alarm at start.
    started = datetime(2026, 11, 20, tzinfo=UTC)
    at_start = pacing(MONTHLY, ALWAYS, started, 0, watched_since=started)
    assert (at_start.expected, at_start.behind) == (0, False)
    assert pacing_alert(at_start, started) is None

    # Two days in (2 of 30 days watched, 0.067 < alert_after 0.1): still quiet.
    assert not pacing(MONTHLY, ALWAYS, started + timedelta(days=2), 0, watched_since=started).behind
    # Four days in: 40 expected for the days watched, 10 qualified is behind.
    later = pacing(MONTHLY, ALWAYS, started + timedelta(days=4), 10, watched_since=started)
    assert later.expected == pytest.approx(40) and later.behind
    # Watched since before the period: the whole period counts.
    assert pacing(MONTHLY, ALWAYS, started, 0, watched_since=started - timedelta(days=60)).expected == pytest.approx(
        190
    )


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
    actual=st.integers(min_value=0, max_value=1000),
)
def test_expected_grows_with_time_and_never_exceeds_the_target(moment: datetime, actual: int) -> None:
    now = moment.astimezone(UTC)
    result = pacing(WEEKLY, OFFICE, now, actual)
    later = pacing(WEEKLY, OFFICE, min(now + timedelta(hours=7), result.period_end - timedelta(microseconds=1)), actual)

    assert result.period_start <= now < result.period_end
    assert 0 <= result.expected <= WEEKLY.count
    assert later.expected >= result.expected
    assert result.behind == (result.elapsed_share >= WEEKLY.alert_after and actual < 0.75 * result.expected)


def decided(rep: str, team: str, status: DeadlineStatus, tier: Tier = Tier.hot) -> DecidedClock:
    return DecidedClock(rep, team, tier, "first_touch", status, datetime(2026, 11, 20, tzinfo=UTC))


def test_attainment_is_the_share_touched_within_the_sla() -> None:
    clocks = [
        decided("ava", "emea", DeadlineStatus.met),
        decided("ava", "emea", DeadlineStatus.met),
        decided("ava", "emea", DeadlineStatus.breached),
        decided("ben", "emea", DeadlineStatus.breached),
        decided("ben", "emea", DeadlineStatus.cancelled),
        decided("eli", "us", DeadlineStatus.armed),
    ]

    by_rep = attainment(clocks, lambda clock: clock.rep_id)
    by_team = attainment(clocks, lambda clock: clock.team)

    assert by_rep == {"ava": Attainment(met=2, breached=1), "ben": Attainment(met=0, breached=1)}
    assert by_rep["ava"].share == pytest.approx(2 / 3)
    assert by_rep["ben"].share == 0
    assert by_team == {"emea": Attainment(met=2, breached=2)}
    assert Attainment().share is None
