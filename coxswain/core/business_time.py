"""Business calendars: working windows, holidays and out-of-office periods.

Pure functions of their arguments: no I/O and no clock reads; "now" is always
passed in. All public results are timezone-aware UTC datetimes.

Semantics
---------
* Windows are half-open ``[start, end)`` in the calendar's local wall time.
  ``end == END_OF_DAY`` (``time(0)``) means 24:00, i.e. the next local midnight.
* DST: a window boundary is the *earliest instant at which the local wall clock
  reads at least that time* on that date. For an ambiguous time (clocks fall
  back) this is the first occurrence (zoneinfo ``fold=0``); for a nonexistent
  time (clocks spring forward) it is the instant of the jump. Windows therefore
  cover real elapsed time: a 00:00-06:00 window is 5h on a spring-forward day
  and 7h on a fall-back day, while 09:00-17:00 stays 8h in zones that switch at
  night.
* Holidays and ``extra_closed_dates`` close the whole local date.
* ``closed_periods`` are subtracted from the open time, wherever they fall.
* ``add(start, timedelta(0))`` is ``next_open(start)``: ``start`` (in UTC) if the
  calendar is open then, otherwise the start of the next open interval. For a
  positive duration the result is the instant where the duration is used up,
  which may be exactly a window end (e.g. 17:00), never later closed time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

Interval = tuple[datetime, datetime]

END_OF_DAY: Final = time(0)
"""As a window end, ``time(0)`` means 24:00 (the following local midnight)."""

MAX_CLOSED_DAYS: Final = 366 * 2
"""``add``/``next_open`` give up after this many consecutive days without open time."""

DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_ONE_DAY: Final = timedelta(days=1)
_FULL_DAY: Final = timedelta(hours=24)
_CLOCK_PATTERN: Final = re.compile(r"(\d{1,2}):(\d{2})")


class CalendarError(ValueError):
    """A business calendar is misconfigured or can never be open."""


@dataclass(frozen=True)
class WorkingWindow:
    """One working window in a day, local wall time, half-open ``[start, end)``."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise CalendarError(f"window {self}: times must be naive local wall times")
        if self.end != END_OF_DAY and self.end <= self.start:
            raise CalendarError(f"window {self}: end must be after start (use time(0) as end for 24:00)")

    @property
    def start_offset(self) -> timedelta:
        return _since_midnight(self.start)

    @property
    def end_offset(self) -> timedelta:
        return _FULL_DAY if self.end == END_OF_DAY else _since_midnight(self.end)

    def __str__(self) -> str:
        end_text = "24:00" if self.end == END_OF_DAY else _clock_text(self.end)
        return f"{_clock_text(self.start)}-{end_text}"


@dataclass(frozen=True)
class BusinessCalendar:
    """When business time runs. Validated on construction; see module docstring."""

    name: str
    timezone: str
    weekly: Mapping[int, tuple[WorkingWindow, ...]] = field(hash=False)
    holiday_country: str | None = None
    holiday_subdivision: str | None = None
    extra_closed_dates: frozenset[date] = frozenset()
    closed_periods: tuple[Interval, ...] = ()
    # A date's open intervals depend only on the calendar, which cannot change, and every deadline
    # asks for the same few dates again: each is worked out once per calendar.
    _days: dict[date, tuple[Interval, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        _zone(self.timezone)
        _check_holiday_source(self.holiday_country, self.holiday_subdivision)
        object.__setattr__(self, "weekly", _normalized_weekly(self.name, self.weekly))
        object.__setattr__(self, "extra_closed_dates", frozenset(self.extra_closed_dates))
        object.__setattr__(self, "closed_periods", _normalized_periods(self.closed_periods))

    @classmethod
    def always_open(cls, name: str = "24x7") -> BusinessCalendar:
        full_day = (WorkingWindow(time(0), END_OF_DAY),)
        return cls(name=name, timezone="UTC", weekly={day: full_day for day in range(7)})

    def with_closed_periods(self, periods: Iterable[Interval]) -> BusinessCalendar:
        return replace(self, closed_periods=self.closed_periods + tuple(periods))

    def is_open(self, at: datetime) -> bool:
        instant = _to_utc(at, "at")
        return any(
            opens <= instant < closes
            for day in self._dates_around(instant)
            for opens, closes in self._day_intervals(day)
        )

    def add(self, start: datetime, duration: timedelta) -> datetime:
        begin = _to_utc(start, "start")
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        if not duration:
            return self.next_open(begin)
        remaining = duration
        for opens, closes in self._open_intervals_after(begin):
            if closes - opens >= remaining:
                return opens + remaining
            remaining -= closes - opens
        raise AssertionError("unreachable: open intervals are unbounded or raise")

    def diff(self, a: datetime, b: datetime) -> timedelta:
        first, second = _to_utc(a, "a"), _to_utc(b, "b")
        if second < first:
            return -self.diff(second, first)
        spans = self._intervals_within(first, second)
        return sum((closes - opens for opens, closes in spans), timedelta(0))

    def next_open(self, at: datetime) -> datetime:
        opens, _ = next(self._open_intervals_after(_to_utc(at, "at")))
        return opens

    def open_intervals(self, start: datetime, end: datetime) -> Iterator[Interval]:
        """Maximal UTC intervals of business time within ``[start, end)``."""
        first, last = _to_utc(start, "start"), _to_utc(end, "end")
        return _merge_touching(self._intervals_within(first, last))

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    def _local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def _dates_around(self, instant: datetime) -> tuple[date, ...]:
        # Neighbouring dates too: a window ending at 24:00, or a DST jump near
        # midnight, lets a date's open time reach past its own local midnight.
        local = self._local_date(instant)
        return (local - _ONE_DAY, local, local + _ONE_DAY)

    def _is_closed_date(self, day: date) -> bool:
        if day in self.extra_closed_dates:
            return True
        if self.holiday_country is None:
            return False
        return day in _public_holidays(self.holiday_country, self.holiday_subdivision, day.year)

    def _day_intervals(self, day: date) -> tuple[Interval, ...]:
        known = self._days.get(day)
        if known is None:
            known = self._days[day] = self._work_out_day(day)
        return known

    def _work_out_day(self, day: date) -> tuple[Interval, ...]:
        if self._is_closed_date(day):
            return ()
        spans = (_window_span(day, window, self.zone) for window in self.weekly.get(day.weekday(), ()))
        return tuple(
            piece
            for opens, closes in spans
            if opens < closes
            for piece in _without_periods(opens, closes, self.closed_periods)
        )

    def _open_intervals_after(self, start: datetime) -> Iterator[Interval]:
        day = self._local_date(start) - _ONE_DAY
        closed_streak = 0
        while closed_streak <= MAX_CLOSED_DAYS:
            clipped = [(max(opens, start), closes) for opens, closes in self._day_intervals(day) if closes > start]
            closed_streak = 0 if clipped else closed_streak + 1
            yield from clipped
            day += _ONE_DAY
        raise CalendarError(
            f"calendar {self.name!r} has no open time within {MAX_CLOSED_DAYS} days after {start.isoformat()}"
        )

    def _intervals_within(self, start: datetime, end: datetime) -> Iterator[Interval]:
        if end <= start:
            return
        first_day = self._dates_around(start)[0]
        last_day = self._dates_around(end)[-1]
        for offset in range((last_day - first_day).days + 1):
            for opens, closes in self._day_intervals(first_day + offset * _ONE_DAY):
                if opens < end and closes > start:
                    yield max(opens, start), min(closes, end)


def parse_weekly(
    spec: Mapping[str, Sequence[str]],
) -> dict[int, tuple[WorkingWindow, ...]]:
    """Parse a weekly spec into validated, sorted windows per weekday (0=Mon).

    Example: ``{"mon-fri": ["09:00-12:00", "13:00-17:00"], "sat": ["10:00-14:00"]}``.

    Keys are day names (mon..sun) or ranges ("mon-fri"; "sun-thu" wraps round the
    week). A day named by several keys gets the windows of all of them. Windows
    are "HH:MM-HH:MM"; "24:00" is allowed as an end and means end of day.
    """
    by_day: dict[int, list[WorkingWindow]] = {}
    for key, texts in spec.items():
        days = _parse_day_key(key)
        windows = _parse_window_list(key, texts)
        for day in days:
            by_day.setdefault(day, []).extend(windows)
    return {day: _sorted_without_overlap(day, windows) for day, windows in sorted(by_day.items())}


def _parse_day_key(key: object) -> tuple[int, ...]:
    if not isinstance(key, str):
        raise CalendarError(f"day key {key!r} must be a string such as 'mon' or 'mon-fri'")
    parts = [part.strip().lower() for part in key.split("-")]
    if len(parts) > 2:
        raise CalendarError(f"invalid day key {key!r}: expected a day like 'mon' or a range like 'mon-fri'")
    first, last = _day_index(key, parts[0]), _day_index(key, parts[-1])
    return tuple((first + step) % 7 for step in range((last - first) % 7 + 1))


def _day_index(key: str, name: str) -> int:
    if name not in DAY_NAMES:
        allowed = ", ".join(DAY_NAMES)
        raise CalendarError(f"invalid day {name!r} in key {key!r}: expected one of {allowed} or a range like 'mon-fri'")
    return DAY_NAMES.index(name)


def _parse_window_list(key: str, texts: object) -> list[WorkingWindow]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise CalendarError(f"windows for key {key!r} must be a list of 'HH:MM-HH:MM' strings, got {texts!r}")
    return [_parse_window(key, text) for text in texts]


def _parse_window(key: str, text: object) -> WorkingWindow:
    parts = text.split("-") if isinstance(text, str) else []
    if len(parts) != 2:
        raise CalendarError(f"invalid window {text!r} for key {key!r}: expected 'HH:MM-HH:MM', e.g. '09:00-17:00'")
    start = _parse_clock(key, str(text), parts[0], is_end=False)
    end = _parse_clock(key, str(text), parts[1], is_end=True)
    if end != END_OF_DAY and end <= start:
        raise CalendarError(
            f"invalid window {text!r} for key {key!r}: end must be after start (use 24:00 for end of day)"
        )
    return WorkingWindow(start, end)


def _parse_clock(key: str, window: str, text: str, *, is_end: bool) -> time:
    match = _CLOCK_PATTERN.fullmatch(text.strip())
    hour, minute = (int(match[1]), int(match[2])) if match else (-1, -1)
    if is_end and (hour, minute) == (24, 0):
        return END_OF_DAY
    if is_end and (hour, minute) == (0, 0):
        raise CalendarError(f"invalid end time '00:00' in window {window!r} for key {key!r}: use 24:00 for end of day")
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        also = " (or 24:00 as an end time)" if is_end else ""
        raise CalendarError(
            f"invalid time {text.strip()!r} in window {window!r} for key {key!r}: "
            f"expected HH:MM between 00:00 and 23:59{also}"
        )
    return time(hour, minute)


def _sorted_without_overlap(day: int, windows: Iterable[WorkingWindow]) -> tuple[WorkingWindow, ...]:
    ordered = tuple(sorted(windows, key=lambda window: window.start_offset))
    for earlier, later in pairwise(ordered):
        if later.start_offset < earlier.end_offset:
            raise CalendarError(f"overlapping windows on {DAY_NAMES[day]}: {earlier} and {later}")
    return ordered


def _normalized_weekly(
    name: str, weekly: Mapping[int, Iterable[WorkingWindow]]
) -> Mapping[int, tuple[WorkingWindow, ...]]:
    checked: dict[int, tuple[WorkingWindow, ...]] = {}
    for day, windows in weekly.items():
        if isinstance(day, bool) or not isinstance(day, int) or day not in range(7):
            raise CalendarError(f"weekly key {day!r} must be a weekday number 0 (Mon) .. 6 (Sun)")
        checked[day] = _sorted_without_overlap(day, windows)
    if not any(checked.values()):
        raise CalendarError(f"calendar {name!r} has no working windows on any weekday")
    return MappingProxyType(checked)


def _normalized_periods(periods: Iterable[Interval]) -> tuple[Interval, ...]:
    normalized = []
    for start, end in periods:
        begin, finish = _aware_period_end(start), _aware_period_end(end)
        if finish <= begin:
            raise CalendarError(f"closed period {start.isoformat()} .. {end.isoformat()}: end must be after start")
        normalized.append((begin, finish))
    return tuple(sorted(normalized))


def _aware_period_end(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise CalendarError(f"closed period bound {value.isoformat()} must be timezone-aware")
    return value.astimezone(UTC)


def _check_holiday_source(country: str | None, subdivision: str | None) -> None:
    if country is None:
        if subdivision is not None:
            raise CalendarError(f"holiday_subdivision {subdivision!r} requires holiday_country")
        return
    supported = _supported_holiday_countries()
    if country not in supported:
        raise CalendarError(
            f"unknown holiday country {country!r}: expected an ISO 3166 code supported "
            "by the holidays package, e.g. 'US' or 'DE'"
        )
    if subdivision is not None and subdivision not in supported[country]:
        raise CalendarError(
            f"unknown holiday subdivision {subdivision!r} for country {country!r}: "
            f"expected one of {', '.join(supported[country]) or '(none)'}"
        )


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise CalendarError(f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'") from error


@lru_cache(maxsize=1)
def _supported_holiday_countries() -> Mapping[str, Sequence[str]]:
    return MappingProxyType(holidays.list_supported_countries())


@lru_cache(maxsize=512)
def _public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year).keys())


def _to_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _window_span(day: date, window: WorkingWindow, zone: ZoneInfo) -> Interval:
    end_day = day + _ONE_DAY if window.end == END_OF_DAY else day
    opens = _earliest_instant_reading(datetime.combine(day, window.start), zone)
    closes = _earliest_instant_reading(datetime.combine(end_day, window.end), zone)
    return opens, closes


def _earliest_instant_reading(wall: datetime, zone: ZoneInfo) -> datetime:
    """First UTC instant at which the clock in ``zone`` reads ``wall`` or later."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # ``wall`` was skipped by a forward jump. fold=1 reads it with the later
    # offset, which lands before the jump; fold=0 lands after it.
    before_jump = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return _offset_change_between(before_jump, first, zone)


def _offset_change_between(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    # tzdata transitions fall on whole seconds, so bisecting POSIX seconds is exact.
    low, high = int(before.timestamp()), -int(-after.timestamp() // 1)
    new_offset = after.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == new_offset:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _without_periods(opens: datetime, closes: datetime, periods: Iterable[Interval]) -> list[Interval]:
    pieces = [(opens, closes)]
    for period_start, period_end in periods:
        pieces = [piece for start, end in pieces for piece in _cut(start, end, period_start, period_end)]
    return pieces


def _cut(start: datetime, end: datetime, hole_start: datetime, hole_end: datetime) -> list[Interval]:
    if hole_end <= start or hole_start >= end:
        return [(start, end)]
    before = [(start, hole_start)] if start < hole_start else []
    after = [(hole_end, end)] if hole_end < end else []
    return before + after


def _merge_touching(intervals: Iterable[Interval]) -> Iterator[Interval]:
    pending: Interval | None = None
    for start, end in intervals:
        if pending is not None and start <= pending[1]:
            pending = (pending[0], max(pending[1], end))
            continue
        if pending is not None:
            yield pending
        pending = (start, end)
    if pending is not None:
        yield pending


def _since_midnight(moment: time) -> timedelta:
    return timedelta(
        hours=moment.hour,
        minutes=moment.minute,
        seconds=moment.second,
        microseconds=moment.microsecond,
    )


def _clock_text(moment: time) -> str:
    return moment.isoformat(timespec="minutes" if not (moment.second or moment.microsecond) else "auto")
