from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.business_time import (
    END_OF_DAY,
    BusinessCalendar,
    CalendarError,
    WorkingWindow,
    parse_weekly,
)

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
MICROSECOND = timedelta(microseconds=1)


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK, fold=fold)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def calendar(zone: str, spec: dict[str, list[str]], **options: Any) -> BusinessCalendar:
    return BusinessCalendar(
        name="test",
        timezone=zone,
        weekly=parse_weekly(spec),
        **options,
    )


NY_OFFICE = calendar("America/New_York", {"mon-fri": ["09:00-17:00"]})
NY_US_HOLIDAYS = calendar("America/New_York", {"mon-fri": ["09:00-17:00"]}, holiday_country="US")
NY_LUNCH = calendar(
    "America/New_York",
    {"mon-fri": ["09:00-12:00", "13:00-17:00"]},
    holiday_country="US",
    holiday_subdivision="NY",
)
NY_24X7 = calendar("America/New_York", {"mon-sun": ["00:00-24:00"]})
NY_NIGHTS = calendar("America/New_York", {"mon-sun": ["00:00-06:00"]})
# Boundaries that fall inside the spring-forward gap and the fall-back overlap.
NY_DST_EDGES = calendar("America/New_York", {"mon-sun": ["00:30-01:45", "02:15-03:30", "20:00-24:00"]})
BERLIN_WEEKDAYS = calendar("Europe/Berlin", {"mon-fri": ["09:00-17:00"]})
BERLIN_DAILY = calendar("Europe/Berlin", {"mon-sun": ["09:00-17:00"]})
BAVARIA = calendar(
    "Europe/Berlin",
    {"mon-fri": ["08:00-16:00"]},
    holiday_country="DE",
    holiday_subdivision="BY",
    extra_closed_dates=frozenset({date(2026, 12, 24), date(2026, 12, 31)}),
)
BERLIN_STATE = calendar(
    "Europe/Berlin",
    {"mon-fri": ["08:00-16:00"]},
    holiday_country="DE",
    holiday_subdivision="BE",
)
BAVARIA_WITH_OOO = BAVARIA.with_closed_periods(
    [
        (berlin(2026, 2, 10, 11), berlin(2026, 2, 20, 14)),
        (berlin(2026, 7, 1, 0), berlin(2026, 7, 15, 0)),
        (berlin(2026, 9, 3, 9, 30), berlin(2026, 9, 3, 10, 15)),
    ]
)

# --- known cases -----------------------------------------------------------


def test_friday_afternoon_sla_falls_due_monday_morning() -> None:
    due = NY_OFFICE.add(ny(2026, 1, 9, 16, 30), timedelta(hours=2))
    assert due == ny(2026, 1, 12, 10, 30)
    assert due.tzinfo is UTC


def test_deadline_ending_exactly_at_window_end_stays_on_that_day() -> None:
    assert NY_OFFICE.add(ny(2026, 1, 9, 16), timedelta(hours=1)) == ny(2026, 1, 9, 17)


def test_zero_duration_returns_start_in_utc_when_open() -> None:
    start = ny(2026, 1, 9, 10, 15)
    result = NY_OFFICE.add(start, timedelta(0))
    assert result == start
    assert result.tzinfo is UTC


def test_zero_duration_from_closed_time_returns_next_open() -> None:
    assert NY_OFFICE.add(ny(2026, 1, 9, 17), timedelta(0)) == ny(2026, 1, 12, 9)
    assert NY_OFFICE.next_open(ny(2026, 1, 9, 17)) == ny(2026, 1, 12, 9)


def test_is_open_treats_windows_as_half_open() -> None:
    assert NY_OFFICE.is_open(ny(2026, 1, 9, 9))
    assert NY_OFFICE.is_open(ny(2026, 1, 9, 17) - MICROSECOND)
    assert not NY_OFFICE.is_open(ny(2026, 1, 9, 17))
    assert not NY_OFFICE.is_open(ny(2026, 1, 10, 12))


def test_diff_is_negative_when_reversed() -> None:
    start, end = ny(2026, 1, 9, 16, 30), ny(2026, 1, 12, 10, 30)
    assert NY_OFFICE.diff(start, end) == timedelta(hours=2)
    assert NY_OFFICE.diff(end, start) == -timedelta(hours=2)


def test_long_duration_spans_weeks() -> None:
    due = NY_OFFICE.add(ny(2026, 1, 5, 9), timedelta(hours=8 * 10))
    assert due == ny(2026, 1, 16, 17)


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2026, 1, 9, 10)
    aware = ny(2026, 1, 9, 10)
    with pytest.raises(ValueError, match="start must be a timezone-aware"):
        NY_OFFICE.add(naive, timedelta(hours=1))
    with pytest.raises(ValueError, match="b must be a timezone-aware"):
        NY_OFFICE.diff(aware, naive)
    with pytest.raises(ValueError, match="at must be a timezone-aware"):
        NY_OFFICE.is_open(naive)
    with pytest.raises(ValueError, match="at must be a timezone-aware"):
        NY_OFFICE.next_open(naive)
    with pytest.raises(ValueError, match="end must be a timezone-aware"):
        NY_OFFICE.open_intervals(aware, naive)


def test_negative_duration_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        NY_OFFICE.add(ny(2026, 1, 9, 10), timedelta(seconds=-1))


# --- DST --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cal", "start", "due"),
    [
        # America/New_York springs forward Sun 2026-03-08, falls back Sun 2026-11-01.
        (NY_OFFICE, ny(2026, 3, 6, 16), utc(2026, 3, 9, 14)),
        (NY_OFFICE, ny(2026, 10, 30, 16), utc(2026, 11, 2, 15)),
        # Europe/Berlin springs forward Sun 2026-03-29, falls back Sun 2026-10-25.
        (BERLIN_WEEKDAYS, berlin(2026, 3, 27, 16), utc(2026, 3, 30, 8)),
        (BERLIN_WEEKDAYS, berlin(2026, 10, 23, 16), utc(2026, 10, 26, 9)),
        (BERLIN_DAILY, berlin(2026, 3, 29, 16), utc(2026, 3, 30, 8)),
        (BERLIN_DAILY, berlin(2026, 10, 25, 16), utc(2026, 10, 26, 9)),
    ],
)
def test_deadlines_across_dst_changes(cal: BusinessCalendar, start: datetime, due: datetime) -> None:
    assert cal.add(start, timedelta(hours=2)) == due
    assert cal.diff(start, due) == timedelta(hours=2)


@pytest.mark.parametrize("day", [date(2026, 3, 29), date(2026, 10, 25), date(2026, 6, 14)])
def test_working_day_is_eight_hours_even_on_dst_change(day: date) -> None:
    opens = datetime.combine(day, time(0), tzinfo=BERLIN)
    assert BERLIN_DAILY.diff(opens, opens + timedelta(days=2)) == timedelta(hours=16)


def test_nine_to_five_on_dst_day_opens_and_closes_on_local_wall_time() -> None:
    intervals = list(BERLIN_DAILY.open_intervals(berlin(2026, 3, 29), berlin(2026, 3, 30)))
    assert intervals == [(utc(2026, 3, 29, 7), utc(2026, 3, 29, 15))]


@pytest.mark.parametrize(
    ("day", "hours"),
    [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25), (date(2026, 7, 1), 24)],
)
def test_always_open_in_dst_zone_counts_real_elapsed_time(day: date, hours: int) -> None:
    midnight = datetime.combine(day, time(0), tzinfo=NEW_YORK)
    next_midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=NEW_YORK)
    assert NY_24X7.diff(midnight, next_midnight) == timedelta(hours=hours)


def test_always_open_in_dst_zone_adds_real_elapsed_time() -> None:
    start = ny(2026, 3, 7, 22)
    due = NY_24X7.add(start, timedelta(hours=6))
    assert due == start.astimezone(UTC) + timedelta(hours=6)
    assert due.astimezone(NEW_YORK).hour == 5


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 8), 5), (date(2026, 11, 1), 7)])
def test_window_spanning_the_transition_covers_real_time(day: date, hours: int) -> None:
    midnight = datetime.combine(day, time(0), tzinfo=NEW_YORK)
    assert NY_NIGHTS.diff(midnight, midnight + timedelta(hours=12)) == timedelta(hours=hours)


def test_nonexistent_window_start_opens_at_the_jump() -> None:
    cal = calendar("America/New_York", {"mon-sun": ["02:30-04:00"]})
    intervals = list(cal.open_intervals(ny(2026, 3, 8), ny(2026, 3, 9)))
    # 02:30 never happens on 2026-03-08: clocks jump 02:00 EST -> 03:00 EDT (07:00Z).
    assert intervals == [(utc(2026, 3, 8, 7), utc(2026, 3, 8, 8))]


def test_window_entirely_inside_the_gap_is_closed_that_day() -> None:
    cal = calendar("America/New_York", {"mon-sun": ["02:05-02:55"]})
    assert list(cal.open_intervals(ny(2026, 3, 8), ny(2026, 3, 9))) == []
    assert cal.next_open(ny(2026, 3, 8)) == ny(2026, 3, 9, 2, 5)


def test_ambiguous_window_start_uses_first_occurrence() -> None:
    cal = calendar("America/New_York", {"mon-sun": ["01:30-03:00"]})
    intervals = list(cal.open_intervals(ny(2026, 11, 1), ny(2026, 11, 2)))
    # 01:30 happens twice; the window opens at the first (EDT) one, 05:30Z.
    assert intervals == [(utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 8))]


def test_ambiguous_window_end_uses_first_occurrence() -> None:
    cal = calendar("America/New_York", {"mon-sun": ["00:00-01:30"]})
    intervals = list(cal.open_intervals(ny(2026, 11, 1), ny(2026, 11, 2)))
    assert intervals == [(utc(2026, 11, 1, 4), utc(2026, 11, 1, 5, 30))]
    assert not cal.is_open(ny(2026, 11, 1, 1, 40, fold=1))


# --- holidays ---------------------------------------------------------------


def test_us_independence_day_observed_is_closed() -> None:
    # July 4th 2026 is a Saturday, observed on Friday July 3rd.
    assert not NY_US_HOLIDAYS.is_open(ny(2026, 7, 3, 10))
    assert NY_OFFICE.is_open(ny(2026, 7, 3, 10))
    due = NY_US_HOLIDAYS.add(ny(2026, 7, 2, 16), timedelta(hours=2))
    assert due == ny(2026, 7, 6, 10)


def test_thanksgiving_is_skipped() -> None:
    due = NY_LUNCH.add(ny(2026, 11, 25, 16), timedelta(hours=2))
    assert due == ny(2026, 11, 27, 10)


def test_german_holiday_depends_on_subdivision() -> None:
    # Corpus Christi (Thu 2026-06-04) is a public holiday in Bavaria, not in Berlin.
    start = berlin(2026, 6, 3, 15)
    assert BAVARIA.add(start, timedelta(hours=2)) == berlin(2026, 6, 5, 9)
    assert BERLIN_STATE.add(start, timedelta(hours=2)) == berlin(2026, 6, 4, 9)


def test_extra_closed_dates_close_the_whole_day() -> None:
    assert not BAVARIA.is_open(berlin(2026, 12, 24, 10))
    assert BAVARIA.next_open(berlin(2026, 12, 23, 16)) == berlin(2026, 12, 28, 8)


# --- lunch breaks -------------------------------------------------------------


def test_lunch_break_pauses_the_clock() -> None:
    monday = (2026, 1, 12)
    assert NY_LUNCH.add(ny(*monday, 11, 30), timedelta(hours=1)) == ny(*monday, 13, 30)
    assert NY_LUNCH.add(ny(*monday, 11), timedelta(hours=1)) == ny(*monday, 12)
    assert not NY_LUNCH.is_open(ny(*monday, 12, 30))
    assert NY_LUNCH.next_open(ny(*monday, 12, 30)) == ny(*monday, 13)
    assert NY_LUNCH.diff(ny(*monday, 9), ny(*monday, 17)) == timedelta(hours=7)
    assert list(NY_LUNCH.open_intervals(ny(*monday, 8), ny(*monday, 14))) == [
        (ny(*monday, 9), ny(*monday, 12)),
        (ny(*monday, 13), ny(*monday, 14)),
    ]


# --- closed periods (out of office) -------------------------------------------


def test_out_of_office_pauses_the_clock() -> None:
    ooo = NY_OFFICE.with_closed_periods([(ny(2026, 1, 13, 10), ny(2026, 1, 14, 12))])
    start = ny(2026, 1, 13, 9)
    assert ooo.add(start, timedelta(hours=2)) == ny(2026, 1, 14, 13)
    assert NY_OFFICE.add(start, timedelta(hours=2)) == ny(2026, 1, 13, 11)
    assert not ooo.is_open(ny(2026, 1, 13, 15))
    assert ooo.diff(start, ny(2026, 1, 14, 17)) == timedelta(hours=6)


def test_a_calendar_derived_after_use_does_not_answer_from_the_days_its_parent_worked_out() -> None:
    start = ny(2026, 1, 13, 9)
    assert NY_OFFICE.add(start, timedelta(hours=2)) == ny(2026, 1, 13, 11)  # the 13th and 14th, remembered

    ooo = NY_OFFICE.with_closed_periods([(ny(2026, 1, 13, 10), ny(2026, 1, 14, 12))])

    assert ooo.add(start, timedelta(hours=2)) == ny(2026, 1, 14, 13)
    assert NY_OFFICE.add(start, timedelta(hours=2)) == ny(2026, 1, 13, 11)
    assert ooo == NY_OFFICE.with_closed_periods([(ny(2026, 1, 13, 10), ny(2026, 1, 14, 12))])
    assert hash(ooo) == hash(NY_OFFICE.with_closed_periods(ooo.closed_periods))


def test_closed_periods_are_layered_and_normalised_to_utc() -> None:
    first = (ny(2026, 1, 13, 10), ny(2026, 1, 13, 11))
    second = (berlin(2026, 1, 12, 15), berlin(2026, 1, 12, 16))
    layered = NY_OFFICE.with_closed_periods([first]).with_closed_periods([second])
    assert layered.closed_periods == (
        (utc(2026, 1, 12, 14), utc(2026, 1, 12, 15)),
        (utc(2026, 1, 13, 15), utc(2026, 1, 13, 16)),
    )
    assert NY_OFFICE.closed_periods == ()


def test_endless_out_of_office_raises_instead_of_looping() -> None:
    forever = NY_OFFICE.with_closed_periods([(ny(2026, 1, 1), ny(2030, 1, 1))])
    with pytest.raises(CalendarError, match="no open time within 732 days"):
        forever.add(ny(2026, 1, 5, 9), timedelta(hours=1))
    with pytest.raises(CalendarError, match="no open time"):
        forever.next_open(ny(2026, 1, 5, 9))


# --- construction -------------------------------------------------------------


def test_always_open_is_utc_and_counts_wall_time() -> None:
    cal = BusinessCalendar.always_open()
    # Arithmetic on UTC: adding to a zoneinfo datetime would be wall-clock arithmetic.
    start = ny(2026, 3, 7, 22).astimezone(UTC)
    assert cal.timezone == "UTC"
    assert cal.add(start, timedelta(days=3, seconds=5)) == start + timedelta(days=3, seconds=5)
    intervals = list(cal.open_intervals(start, start + timedelta(days=3)))
    assert intervals == [(start, start + timedelta(days=3))]


def test_calendar_is_hashable_and_compares_by_value() -> None:
    twin = calendar("America/New_York", {"mon-fri": ["09:00-17:00"]})
    assert twin == NY_OFFICE
    assert hash(twin) == hash(NY_OFFICE)


def test_weekly_mapping_is_copied_and_read_only() -> None:
    weekly = {0: (WorkingWindow(time(9), time(17)),)}
    cal = BusinessCalendar("copy", "UTC", weekly)
    weekly[1] = (WorkingWindow(time(9), time(17)),)
    assert 1 not in cal.weekly
    with pytest.raises(TypeError):
        cal.weekly[2] = ()  # type: ignore[index]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: BusinessCalendar("x", "Mars/Olympus", parse_weekly({"mon": ["09:00-17:00"]})),
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            lambda: calendar("UTC", {"mon": ["09:00-17:00"]}, holiday_country="XX"),
            "unknown holiday country 'XX'",
        ),
        (
            lambda: calendar(
                "UTC",
                {"mon": ["09:00-17:00"]},
                holiday_country="DE",
                holiday_subdivision="ZZ",
            ),
            "unknown holiday subdivision 'ZZ' for country 'DE'",
        ),
        (
            lambda: calendar("UTC", {"mon": ["09:00-17:00"]}, holiday_subdivision="NY"),
            "requires holiday_country",
        ),
        (
            lambda: BusinessCalendar("empty", "UTC", {}),
            "calendar 'empty' has no working windows",
        ),
        (
            lambda: calendar("UTC", {"mon-sun": []}),
            "calendar 'test' has no working windows",
        ),
        (
            lambda: BusinessCalendar("x", "UTC", {7: (WorkingWindow(time(9), time(17)),)}),
            "weekly key 7 must be a weekday number",
        ),
        (
            lambda: BusinessCalendar(
                "x",
                "UTC",
                {
                    0: (
                        WorkingWindow(time(9), time(12)),
                        WorkingWindow(time(11), time(13)),
                    )
                },
            ),
            "overlapping windows on mon: 09:00-12:00 and 11:00-13:00",
        ),
        (
            lambda: WorkingWindow(time(17), time(9)),
            "end must be after start",
        ),
        (
            lambda: calendar(
                "UTC",
                {"mon": ["09:00-17:00"]},
                closed_periods=((datetime(2026, 1, 1), datetime(2026, 1, 2)),),
            ),
            "must be timezone-aware",
        ),
        (
            lambda: calendar(
                "UTC",
                {"mon": ["09:00-17:00"]},
                closed_periods=((utc(2026, 1, 2), utc(2026, 1, 1)),),
            ),
            "end must be after start",
        ),
    ],
)
def test_invalid_calendars_are_rejected(build: Callable[[], object], message: str) -> None:
    with pytest.raises(CalendarError, match=message):
        build()


# --- parse_weekly ---------------------------------------------------------------


def test_parse_weekly_expands_ranges_and_sorts_windows() -> None:
    weekly = parse_weekly({"mon-fri": ["13:00-17:00", "09:00-12:00"], "sat": ["10:00-24:00"]})
    assert sorted(weekly) == [0, 1, 2, 3, 4, 5]
    assert weekly[0] == (
        WorkingWindow(time(9), time(12)),
        WorkingWindow(time(13), time(17)),
    )
    assert weekly[5] == (WorkingWindow(time(10), END_OF_DAY),)


def test_parse_weekly_wraps_ranges_round_the_week_and_merges_keys() -> None:
    weekly = parse_weekly({"Sun-Thu": ["08:00-12:00"], "mon": ["13:00-15:00"]})
    assert sorted(weekly) == [0, 1, 2, 3, 6]
    assert len(weekly[0]) == 2


def test_full_day_window_is_open_until_midnight() -> None:
    cal = calendar("UTC", {"mon": ["00:00-24:00"]})
    assert cal.is_open(utc(2026, 1, 12, 23, 59, 59))
    assert not cal.is_open(utc(2026, 1, 13))
    assert cal.add(utc(2026, 1, 12, 20), timedelta(hours=4)) == utc(2026, 1, 13)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"funday": ["09:00-17:00"]},
            "invalid day 'funday' in key 'funday': expected one of mon, tue",
        ),
        ({"mon-fry": ["09:00-17:00"]}, "invalid day 'fry' in key 'mon-fry'"),
        ({"mon-wed-fri": ["09:00-17:00"]}, "invalid day key 'mon-wed-fri'"),
        (
            {"mon": ["09:00-25:00"]},
            "invalid time '25:00' in window '09:00-25:00' for key 'mon'",
        ),
        ({"mon": ["9am-5pm"]}, "invalid time '9am' in window '9am-5pm' for key 'mon'"),
        ({"mon": ["09:60-17:00"]}, "invalid time '09:60'"),
        ({"mon": ["24:00-24:00"]}, "invalid time '24:00' in window '24:00-24:00'"),
        (
            {"mon": ["09:00"]},
            "invalid window '09:00' for key 'mon': expected 'HH:MM-HH:MM'",
        ),
        (
            {"tue": ["17:00-09:00"]},
            "invalid window '17:00-09:00' for key 'tue': end must be after start",
        ),
        (
            {"tue": ["09:00-09:00"]},
            "invalid window '09:00-09:00' for key 'tue': end must be after start",
        ),
        (
            {"tue": ["18:00-00:00"]},
            "invalid end time '00:00' .* use 24:00 for end of day",
        ),
        (
            {"wed": ["09:00-12:00", "11:30-13:00"]},
            "overlapping windows on wed: 09:00-12:00 and 11:30-13:00",
        ),
        (
            {"mon-fri": ["09:00-17:00"], "fri": ["16:00-18:00"]},
            "overlapping windows on fri: 09:00-17:00 and 16:00-18:00",
        ),
        (
            {"mon": "09:00-17:00"},
            "windows for key 'mon' must be a list of 'HH:MM-HH:MM' strings",
        ),
        ({"mon": [900]}, "invalid window 900 for key 'mon'"),
    ],
)
def test_parse_weekly_rejects_bad_specs(spec: dict[str, object], message: str) -> None:
    with pytest.raises(CalendarError, match=message):
        parse_weekly(spec)  # type: ignore[arg-type]


# --- properties -----------------------------------------------------------------

CALENDARS = [
    NY_LUNCH,
    NY_DST_EDGES,
    NY_24X7,
    BAVARIA_WITH_OOO,
    BERLIN_DAILY,
    BusinessCalendar.always_open(),
]

calendars = st.sampled_from(CALENDARS)
instants = st.datetimes(
    min_value=datetime(2025, 10, 1),
    max_value=datetime(2027, 4, 1),
    timezones=st.sampled_from([UTC, NEW_YORK, BERLIN]),
)
durations = st.one_of(
    st.just(timedelta(0)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=12)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=12)),
)
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None)


@PROPERTY_SETTINGS
@given(calendars, instants, durations)
def test_add_then_diff_round_trips(cal: BusinessCalendar, start: datetime, duration: timedelta) -> None:
    assert cal.diff(start, cal.add(start, duration)) == duration


@PROPERTY_SETTINGS
@given(calendars, instants, durations)
def test_add_never_lands_in_closed_time(cal: BusinessCalendar, start: datetime, duration: timedelta) -> None:
    due = cal.add(start, duration)
    assert due >= start
    assert due.utcoffset() == timedelta(0)
    if duration:
        # Only a window's (or open stretch's) end may be closed itself.
        assert cal.is_open(due) or cal.is_open(due - MICROSECOND)
    else:
        assert cal.is_open(due)


@PROPERTY_SETTINGS
@given(calendars, instants, durations, durations)
def test_add_is_monotonic_in_duration(
    cal: BusinessCalendar, start: datetime, first: timedelta, second: timedelta
) -> None:
    shorter, longer = sorted([first, second])
    assert cal.add(start, shorter) <= cal.add(start, longer)


@PROPERTY_SETTINGS
@given(
    calendars,
    instants,
    st.timedeltas(min_value=-timedelta(days=20), max_value=timedelta(days=20)),
    st.timedeltas(min_value=-timedelta(days=20), max_value=timedelta(days=20)),
)
def test_diff_is_additive(cal: BusinessCalendar, a: datetime, to_b: timedelta, to_c: timedelta) -> None:
    b, c = a.astimezone(UTC) + to_b, a.astimezone(UTC) + to_c
    assert cal.diff(a, b) + cal.diff(b, c) == cal.diff(a, c)


@PROPERTY_SETTINGS
@given(
    calendars,
    instants,
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10)),
)
def test_open_intervals_are_disjoint_open_and_sum_to_diff(
    cal: BusinessCalendar, start: datetime, span: timedelta
) -> None:
    end = start.astimezone(UTC) + span
    intervals = list(cal.open_intervals(start, end))
    for opens, closes in intervals:
        assert start <= opens < closes <= end
        assert cal.is_open(opens) and cal.is_open(closes - MICROSECOND)
    for (_, earlier_end), (later_start, _) in pairwise(intervals):
        assert earlier_end < later_start
    total = sum((closes - opens for opens, closes in intervals), timedelta(0))
    assert total == cal.diff(start, end)


@PROPERTY_SETTINGS
@given(calendars, instants)
def test_next_open_skips_only_closed_time(cal: BusinessCalendar, at: datetime) -> None:
    opens = cal.next_open(at)
    assert opens >= at
    assert cal.is_open(opens)
    assert cal.diff(at, opens) == timedelta(0)
    # Compare in UTC: Python never treats an ambiguous local time as equal across zones.
    assert (opens == at.astimezone(UTC)) == cal.is_open(at)
