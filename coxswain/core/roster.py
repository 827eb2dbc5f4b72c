"""The roster in force: the agreement's reps and pools with runtime overrides layered on top.

The agreement is signed and versioned; who is on holiday this week is not. The roster API stores
overrides (a rep's settings, pause, out-of-office periods, pool membership and weights) and the
router layers them over the agreement for every lead. Overrides never touch rotation state:
credits are kept per rep id, so adding or removing a member leaves everybody else's credit as it
was. Everything here is pure; the shell loads the overrides and passes the time in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from coxswain.core.agreement import Agreement, CrmIds, Rep
from coxswain.core.business_time import BusinessCalendar, CalendarError


class AbsencePeriod(BaseModel):
    """When a rep is away and why: what the roster API is given to record an absence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: AwareDatetime
    end: AwareDatetime
    reason: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> AbsencePeriod:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} must be after start {self.start.isoformat()}")
        return self


class Absence(AbsencePeriod):
    """An out-of-office period entered at runtime (the agreement's own are ``Rep.out_of_office``)."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)


class RepOverride(BaseModel):
    """What the roster API stores for one rep; only the fields that were set apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    timezone: str | None = None
    calendar: str | None = None
    capacity: int | None = None
    daily_cap: int | None = None
    started_on: date | None = None
    ramp_weeks: int | None = None
    paused: bool | None = None
    pause_reason: str | None = None
    absences: tuple[Absence, ...] = ()
    crm: CrmIds | None = None  # replaces the agreement's ids as a whole; null clears them

    def settings(self) -> dict[str, object]:
        """The ``Rep`` fields this override sets (explicit nulls included: they clear a setting)."""
        settings = self.model_dump(exclude_unset=True, exclude={"pause_reason", "absences"})
        if "crm" in settings and settings["crm"] is None:
            settings["crm"] = {}
        return settings


@dataclass(frozen=True)
class RosterOverrides:
    reps: Mapping[str, RepOverride] = field(default_factory=dict)
    # (pool id, rep id) -> weight; None removes an agreement member from the pool.
    members: Mapping[tuple[str, str], int | None] = field(default_factory=dict)
    revision: int = 0


@dataclass(frozen=True)
class Member:
    rep: str
    weight: int


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    reason: str | None = None
    id: str | None = None  # runtime periods only: the roster API deletes them by id


@dataclass(frozen=True)
class RepProfile:
    id: str
    name: str
    timezone: str
    calendar_name: str | None
    calendar: BusinessCalendar | None
    capacity: int | None
    daily_cap: int | None
    started_on: date | None
    ramp_weeks: int
    paused: bool
    pause_reason: str | None
    out_of_office: tuple[Period, ...]
    problem: str | None = None
    crm: CrmIds = field(default_factory=CrmIds)  # who the rep is in each CRM (crm-sync writes it)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local_date(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()


@dataclass(frozen=True)
class Roster:
    reps: Mapping[str, RepProfile]
    pools: Mapping[str, tuple[Member, ...]]
    revision: int = 0


class OverrideRejected(ValueError):
    """An override that the agreement in force cannot take (unknown calendar, bad time zone, ...)."""


def build_roster(agreement: Agreement, overrides: RosterOverrides | None = None) -> Roster:
    changes = overrides or RosterOverrides()
    reps: dict[str, RepProfile] = {}
    for rep_id in [
        *(rep.id for rep in agreement.roster),
        *sorted(set(changes.reps) - {r.id for r in agreement.roster}),
    ]:
        reps[rep_id] = _profile_or_problem(agreement, rep_id, changes.reps.get(rep_id))
    pools: dict[str, tuple[Member, ...]] = {}
    for pool in agreement.routing.pools:
        listed = {member.rep for member in pool.members}
        kept = []
        for member in pool.members:
            weight = changes.members.get((pool.id, member.rep), member.weight)
            if weight is not None:
                kept.append(Member(member.rep, weight))
        added = [
            Member(rep_id, weight)
            for (pool_id, rep_id), weight in sorted(changes.members.items())
            if pool_id == pool.id and rep_id not in listed and weight is not None
        ]
        pools[pool.id] = (*kept, *added)
    return Roster(reps=reps, pools=pools, revision=changes.revision)


def apply_override(agreement: Agreement, rep_id: str, override: RepOverride | None) -> RepProfile:
    """The rep as the agreement defines them with the override on top; raises ``OverrideRejected``."""
    base = agreement.rep(rep_id)
    settings = override.settings() if override else {}
    if base is None and "name" not in settings:
        raise OverrideRejected(f"rep {rep_id!r} is not in agreement {agreement.version}'s roster and has no name")
    document = {**(base.model_dump() if base else {"id": rep_id}), **settings}
    try:
        rep = Rep.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'rep'}: {error['msg']}" for error in exc.errors()
        )
        raise OverrideRejected(problems) from None
    try:
        ZoneInfo(rep.timezone)
    except (ValueError, KeyError) as exc:
        raise OverrideRejected(f"timezone: unknown time zone {rep.timezone!r}") from exc
    calendar = None
    if rep.calendar is not None:
        try:
            calendar = agreement.calendar(rep.calendar)
        except KeyError:
            known = ", ".join(sorted(agreement.calendars)) or "none defined"
            raise OverrideRejected(
                f"calendar: {rep.calendar!r} is not a calendar of agreement {agreement.version} (allowed: {known})"
            ) from None
    absences = override.absences if override else ()
    return RepProfile(
        id=rep.id,
        name=rep.name,
        timezone=rep.timezone,
        calendar_name=rep.calendar,
        calendar=calendar,
        capacity=rep.capacity,
        daily_cap=rep.daily_cap,
        started_on=rep.started_on,
        ramp_weeks=agreement.routing.ramp_weeks if rep.ramp_weeks is None else rep.ramp_weeks,
        paused=rep.paused,
        pause_reason=override.pause_reason if override and rep.paused else None,
        out_of_office=(
            *(Period(period.start, period.end) for period in rep.out_of_office),
            *(Period(a.start, a.end, a.reason, str(a.id)) for a in absences),
        ),
        crm=rep.crm,
    )


def _profile_or_problem(agreement: Agreement, rep_id: str, override: RepOverride | None) -> RepProfile:
    try:
        return apply_override(agreement, rep_id, override)
    except (OverrideRejected, CalendarError) as exc:
        # An override the agreement in force cannot take must not route leads by guesswork: the rep
        # is unavailable, and every decision record says why.
        return RepProfile(
            id=rep_id,
            name=rep_id,
            timezone="UTC",
            calendar_name=None,
            calendar=None,
            capacity=None,
            daily_cap=None,
            started_on=None,
            ramp_weeks=0,
            paused=False,
            pause_reason=None,
            out_of_office=(),
            problem=f"roster override does not fit agreement {agreement.version}: {exc}",
        )


def unavailable_because(profile: RepProfile, now: datetime) -> str | None:
    """Why the rep cannot take a lead at ``now`` regardless of load; None when available."""
    if profile.problem is not None:
        return profile.problem
    if profile.paused:
        return "paused" + (f": {profile.pause_reason}" if profile.pause_reason else "")
    if profile.started_on is not None and profile.local_date(now) < profile.started_on:
        return f"starts on {profile.started_on.isoformat()}"
    for period in profile.out_of_office:
        if period.start <= now < period.end:
            until = period.end.astimezone(profile.zone).isoformat()
            return f"out of office until {until}" + (f" ({period.reason})" if period.reason else "")
    if profile.calendar is not None and not profile.calendar.is_open(now):
        try:
            opens = f", opens {profile.calendar.next_open(now).astimezone(profile.calendar.zone).isoformat()}"
        except CalendarError:
            opens = ""
        return f"outside working hours (calendar {profile.calendar_name}{opens})"
    return None


def ramp_factor(profile: RepProfile | None, now: datetime) -> float:
    """Share of the full weight a new rep has: day d of a ramp of w weeks gives d / (7 w), at most 1."""
    if profile is None or profile.started_on is None or profile.ramp_weeks == 0:
        return 1.0
    day = (profile.local_date(now) - profile.started_on) // timedelta(days=1) + 1
    return max(0.0, min(1.0, day / (7 * profile.ramp_weeks)))


def effective_weight(weight: int, profile: RepProfile | None, now: datetime) -> float:
    factor = ramp_factor(profile, now)
    return weight if factor == 1.0 else round(weight * factor, 4)
