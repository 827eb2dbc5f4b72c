"""The sales-marketing agreement as a validated, versioned document.

Loading never raises a traceback at a user: every problem becomes an ``AgreementProblem`` with
the path inside the document, what is wrong and, where it helps, what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from coxswain.core.business_time import BusinessCalendar, CalendarError, parse_weekly
from coxswain.core.documents import holds_nul, one_of
from schemas.events import ActivityType, EngagementType, EscalationAction, LeadAttributes, Stage, Tier

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

FIT_FIELDS = tuple(sorted({*LeadAttributes.model_fields, "email_domain", "persona"} - {"email"}))
# Derived from the lead's attributes, so a new lead field is one line in schemas/events.py.
_FIT_FIELD_CHECK, _FIT_FIELD_SCHEMA = one_of(FIT_FIELDS)
FitField = Annotated[str, _FIT_FIELD_CHECK, _FIT_FIELD_SCHEMA]
PersonaField = Literal["title", "seniority", "department"]


def parse_duration(value: object) -> object:
    """Accept '90s', '5m', '2h', '1d', '1w' (what people write) besides pydantic's own forms."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            try:
                return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
            except OverflowError:
                raise ValueError(f"duration {value.strip()!r} is too long") from None
        text = value.strip()
        if any(c.isalpha() for c in text) and text[:1] not in ("P", "p"):
            raise ValueError(
                f"duration {text!r} is not a valid timedelta; write a number and a unit "
                "(90s, 5m, 2h, 14d, 1w) or ISO 8601 (PT5M)"
            )
    return value


def spoken_duration(value: timedelta) -> str:
    """A duration as a person says it, sign included: '-3 seconds', '2 hours', '1.5 days'.

    ``str(timedelta(seconds=-3))`` is '-1 day, 23:59:57', which nobody wrote."""
    seconds = value.total_seconds()
    sign, size = ("-" if seconds < 0 else ""), abs(seconds)
    for unit, length in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if size >= length and size % length == 0:
            count = int(size // length)
            return f"{sign}{count} {unit}{'' if count == 1 else 's'}"
    text = f"{size:.6f}".rstrip("0").rstrip(".")  # microseconds at most, never 1.2e+06
    return f"{sign}{text} second{'' if size == 1 else 's'}"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhdw]\s*$", "examples": ["90s", "5m", "2h", "14d"]},
                {"type": "string", "format": "duration", "description": "ISO 8601, e.g. PT5M"},
                {"type": "number", "description": "seconds"},
            ]
        }
    ),
]
Identifier = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class Strict(BaseModel):
    # NaN or infinity would slip through every comparison below (a NaN MQL entry never qualifies).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Match(Strict):
    """Exactly one test on a lead attribute. Text tests ignore case."""

    equals: str | float | None = None
    in_: tuple[str, ...] | None = Field(default=None, alias="in")
    contains_any: tuple[str, ...] | None = None
    between: tuple[float, float] | None = None
    exists: bool | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> Match:
        given = [
            name for name in ("equals", "in_", "contains_any", "between", "exists") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"a match needs exactly one test, got {len(given)} ({', '.join(given) or 'none'}); "
                "allowed: equals, in, contains_any, between, exists"
            )
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError(f"between: lower bound {self.between[0]} is above upper bound {self.between[1]}")
        return self


class AttributeRule(Strict):
    id: Identifier
    field: FitField
    match: Match
    points: float


class FitRule(AttributeRule):
    points: float = Field(gt=0, le=1000)


class NegativeRule(AttributeRule):
    points: float = Field(lt=0, ge=-1000)


class WindowCap(Strict):
    points: float = Field(gt=0, le=100000, description="Most points awarded within one window.")
    window: Duration = Field(description="Length of the rolling window, e.g. 7d.")

    @model_validator(mode="after")
    def _positive_window(self) -> WindowCap:
        if self.window <= timedelta(0):
            raise ValueError(f"window must be positive, got {spoken_duration(self.window)}")
        return self


class EngagementRule(Strict):
    event: EngagementType
    points: float = Field(gt=0, le=1000)
    half_life: Duration = Field(description="Time after which a touch is worth half its points.")
    cap: float | None = Field(default=None, gt=0, description="Most this event type can add, decayed.")
    cap_per_window: WindowCap | None = Field(
        default=None, description="Most points this event type can award within any window of this length."
    )

    @model_validator(mode="after")
    def _positive_half_life(self) -> EngagementRule:
        if self.half_life <= timedelta(0):
            raise ValueError(f"half_life must be positive, got {spoken_duration(self.half_life)}")
        return self


class Hysteresis(Strict):
    enter: float = Field(description="Score at or above which a lead becomes qualified.")
    exit: float = Field(description="Score below which a qualified lead falls back.")

    @model_validator(mode="after")
    def _exit_not_above_enter(self) -> Hysteresis:
        if self.exit > self.enter:
            raise ValueError(f"exit ({self.exit}) must not be above enter ({self.enter}), or leads would flap")
        return self


class FastLane(Strict):
    id: Identifier
    event: EngagementType
    tier: Tier = Tier.hot
    hold: Duration | None = Field(
        default=None,
        description="How long decay may not demote an MQL this lane made; absent: until sales acts on it.",
    )

    @model_validator(mode="after")
    def _positive_hold(self) -> FastLane:
        if self.hold is not None and self.hold <= timedelta(0):
            raise ValueError(f"hold must be positive, got {spoken_duration(self.hold)}")
        return self


class TierThresholds(Strict):
    hot: float
    warm: float

    @model_validator(mode="after")
    def _ordered(self) -> TierThresholds:
        if self.warm > self.hot:
            raise ValueError(f"warm ({self.warm}) must not be above hot ({self.hot})")
        return self


class Scoring(Strict):
    fit: tuple[FitRule, ...] = ()
    negative: tuple[NegativeRule, ...] = ()
    engagement: tuple[EngagementRule, ...] = ()
    mql: Hysteresis
    sql: Hysteresis | None = Field(
        default=None,
        description="Optional: a SAL reaching enter becomes SQL; a score-made SQL below exit returns to SAL.",
    )
    fast_lanes: tuple[FastLane, ...] = ()
    tiers: TierThresholds


class OutOfOffice(Strict):
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> OutOfOffice:
        if self.end <= self.start:
            raise ValueError(f"out-of-office end {self.end.isoformat()} must be after start {self.start.isoformat()}")
        return self


class CrmIds(Strict):
    """Who the rep is in each CRM the connectors write to (``coxswain run crm-sync``,
    docs/integrators.md). Checked when a connector starts: it refuses to start while a rep it may
    have to write as an owner has no id for its CRM."""

    hubspot_owner_id: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,20}$",
        description="The rep's HubSpot owner id (Settings > Users, or GET /crm/v3/owners): the value "
        "written to hubspot_owner_id on the contact and the task.",
    )
    salesforce_user_id: str | None = Field(
        default=None,
        pattern=r"^005[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?$",
        description="The rep's Salesforce user id (15 or 18 characters, starting 005; Setup > Users, or "
        "SELECT Id FROM User): the OwnerId written on the Lead and the Task.",
    )


class Rep(Strict):
    id: Identifier
    name: str = Field(min_length=1, max_length=128)
    timezone: str = "UTC"
    calendar: Identifier | None = Field(default=None, description="Working hours of SLA clocks on `calendar: rep`.")
    out_of_office: tuple[OutOfOffice, ...] = Field(default=(), description="Periods when the rep's SLA clocks stop.")
    manager: Identifier | None = Field(default=None, description="Who the `notify_manager` escalation step reaches.")
    # Routing (docs/routing.md): limits and availability; the roster API may override each at runtime.
    capacity: int | None = Field(default=None, ge=1, le=100_000, description="Most open load (routing.load per tier).")
    daily_cap: int | None = Field(default=None, ge=1, le=100_000, description="Most leads per day in the rep's zone.")
    started_on: date | None = Field(default=None, description="First working day; the ramp counts from here.")
    ramp_weeks: int | None = Field(default=None, ge=0, le=52, description="Overrides routing.ramp_weeks.")
    paused: bool = Field(default=False, description="Takes no new leads until unpaused.")
    crm: CrmIds = Field(
        default_factory=CrmIds, description="The rep's user / owner ids in the CRMs Coxswain writes to."
    )


class PoolMember(Strict):
    rep: Identifier
    weight: int = Field(default=1, ge=1, le=100)


class Pool(Strict):
    id: Identifier
    members: tuple[PoolMember, ...] = Field(min_length=1)


class RoutingRule(Strict):
    id: Identifier
    when: Mapping[str, tuple[str, ...]] = Field(
        default_factory=dict, description="attribute -> accepted values (any of); empty matches all"
    )
    pool: Identifier

    @model_validator(mode="after")
    def _known_attributes(self) -> RoutingRule:
        allowed = (*FIT_FIELDS, "tier", "source", "segment", "region")
        unknown = sorted(set(self.when) - set(allowed))
        if unknown:
            raise ValueError(f"unknown attribute(s) {', '.join(unknown)} in when; allowed: {', '.join(allowed)}")
        return self


OWNER_POOL = "account-owner"
FREE_MAIL_DOMAINS = (
    "aol.com", "gmail.com", "gmx.de", "gmx.net", "googlemail.com", "hotmail.com", "icloud.com", "live.com",
    "mail.ru", "me.com", "msn.com", "outlook.com", "proton.me", "protonmail.com", "qq.com", "web.de",
    "yahoo.com", "yandex.ru",
)  # fmt: skip


class Segment(Strict):
    """A company-size band; a lead is in the segment whose band holds its company_size."""

    id: Identifier
    min_size: int = Field(default=0, ge=0)
    max_size: int | None = Field(default=None, ge=0, description="Inclusive; absent: no upper bound.")

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        return self


class Region(Strict):
    """Countries and/or states; a lead is in every region that lists its country or country-state."""

    id: Identifier
    countries: tuple[Annotated[str, Field(pattern=r"^[A-Z]{2}$")], ...] = ()
    states: tuple[Annotated[str, Field(pattern=r"^[A-Z]{2}-[A-Za-z0-9 .]{1,64}$")], ...] = Field(
        default=(), description="Country and state, e.g. US-CA or DE-BY."
    )


class Ownership(Strict):
    owner_unavailable: Literal["rotate", "queue"] = Field(
        default="rotate", description="rotate: route by the rules instead; queue: wait until the owner is available."
    )
    same_domain: bool = Field(default=True, description="A lead from a domain with an open lead goes to its owner.")
    free_mail_domains: tuple[str, ...] = Field(default=FREE_MAIL_DOMAINS, description="Never treated as a company.")


class Routing(Strict):
    rules: tuple[RoutingRule, ...] = ()
    fallback_pool: Identifier
    pools: tuple[Pool, ...] = Field(min_length=1)
    segments: tuple[Segment, ...] = ()
    regions: tuple[Region, ...] = ()
    ownership: Ownership = Field(default_factory=Ownership)
    load: Mapping[Tier, int] = Field(
        default_factory=lambda: {Tier.hot: 3, Tier.warm: 2, Tier.cold: 1},
        description="Open load a lead of each tier counts for against a rep's capacity.",
    )
    ramp_weeks: int = Field(default=0, ge=0, le=52, description="A new rep's weight grows linearly over this.")
    reassign_exclude_last: int = Field(default=1, ge=0, le=10, description="Reassignment skips the last k owners.")


ALWAYS_OPEN = "24x7"
REP_CALENDAR = "rep"


class HolidaySource(Strict):
    country: str = Field(description="ISO 3166 code known to the `holidays` package, e.g. US or DE.")
    subdivision: str | None = Field(default=None, description="State or province, e.g. NY or BY.")


class CalendarSpec(Strict):
    """A named business calendar: weekly hours in an IANA zone, minus holidays and closed dates."""

    timezone: str = "UTC"
    hours: Mapping[str, tuple[str, ...]] = Field(
        description='day or range -> windows, e.g. {"mon-fri": ["09:00-12:00", "13:00-17:00"]}; 24:00 ends a day'
    )
    holidays: HolidaySource | None = None
    closed_dates: tuple[date, ...] = ()

    @model_validator(mode="after")
    def _valid(self) -> CalendarSpec:
        try:
            self.build("(calendar)")
        except CalendarError as exc:
            raise ValueError(str(exc)) from None
        return self

    def build(self, name: str) -> BusinessCalendar:
        return BusinessCalendar(
            name=name,
            timezone=self.timezone,
            weekly=parse_weekly(self.hours),
            holiday_country=self.holidays.country if self.holidays else None,
            holiday_subdivision=self.holidays.subdivision if self.holidays else None,
            extra_closed_dates=frozenset(self.closed_dates),
        )


class EscalationStep(Strict):
    step: EscalationAction
    after: Duration = Field(default=timedelta(0), description="Business time after the breach.")
    exclude_last: int = Field(default=1, ge=1, le=10, description="reassign: how many recent owners to skip.")

    @model_validator(mode="after")
    def _not_negative(self) -> EscalationStep:
        if self.after < timedelta(0):
            raise ValueError(f"after must not be negative, got {spoken_duration(self.after)}")
        return self


class SlaPolicy(Strict):
    first_touch: Duration
    responses: tuple[ActivityType, ...] = (
        ActivityType.first_touch,
        ActivityType.sal_accepted,
        ActivityType.sal_rejected,
    )
    sal_decision: Duration | None = Field(default=None, description="Optional: accept or reject within this time.")
    calendar: Identifier | None = Field(
        default=None, description="A calendar name, `rep` (the rep's own, with out-of-office), default sla.calendar."
    )
    warnings: tuple[float, ...] = Field(default=(), description="Fractions of the allowed time, e.g. [0.5, 0.8].")
    escalation: tuple[EscalationStep, ...] = Field(default=(), description="The ladder after a breach, in order.")
    max_reassignments: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Reassignments one follow-up may make; a reassign step past the cap pages on-call instead.",
    )

    @model_validator(mode="after")
    def _positive(self) -> SlaPolicy:
        if self.first_touch <= timedelta(0):
            raise ValueError(f"first_touch must be positive, got {spoken_duration(self.first_touch)}")
        if self.sal_decision is not None and self.sal_decision <= timedelta(0):
            raise ValueError(f"sal_decision must be positive, got {spoken_duration(self.sal_decision)}")
        if ActivityType.automated_email in self.responses:
            raise ValueError("automated_email cannot count as a response: a person must follow up")
        if any(not 0 < fraction < 1 for fraction in self.warnings) or list(self.warnings) != sorted(set(self.warnings)):
            raise ValueError(
                f"warnings must be distinct ascending fractions between 0 and 1, got {list(self.warnings)}"
            )
        delays = [step.after for step in self.escalation]
        if delays != sorted(delays):
            raise ValueError("escalation steps must be listed in the order they fire (non-decreasing `after`)")
        return self


class MqlTarget(Strict):
    """Marketing's side of the SLA: MQLs per period, pro-rated over the period's business time."""

    id: Identifier | None = Field(default=None, description="Defaults to the period name.")
    period: Literal["week", "month"]
    count: int = Field(gt=0, le=10_000_000)
    alert_below: float = Field(default=0.8, gt=0, le=1, description="Alert when actual / pro-rated target drops below.")
    alert_after: float = Field(default=0.1, ge=0, lt=1, description="Share of the period to pass before alerting.")
    realert_step: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Alert again in the same period only when pacing has fallen this much further (0.1: ten points).",
    )
    calendar: Identifier | None = Field(default=None, description="Pro-rate over this calendar; default sla.calendar.")

    @property
    def key(self) -> str:
        return self.id or self.period


class ResponseCredit(Strict):
    """Whose activity meets a rep's SLA clock, and what another rep's touch does to it."""

    who: Literal["owner", "team"] = Field(
        default="owner", description="owner: only the rep who holds the lead; team: any rep of the pool it came from."
    )
    other_rep: Literal["ignore", "stop"] = Field(
        default="ignore",
        description="A touch by anyone else: ignore it (the owner's clock runs on) or stop the clock, crediting "
        "the rep who acted, not the owner.",
    )


class Marketing(Strict):
    mql_targets: tuple[MqlTarget, ...] = ()


class Sla(Strict):
    calendar: Identifier = Field(default=ALWAYS_OPEN, description="Default calendar of every policy: 24x7 or a name.")
    policies: Mapping[Tier, SlaPolicy]
    attainment_target: float = Field(
        default=0.9, gt=0, le=1, description="Sales' side is met when this share of the clocks decided is met in time."
    )
    credit: ResponseCredit = Field(default_factory=ResponseCredit)

    @model_validator(mode="after")
    def _every_tier(self) -> Sla:
        missing = [tier.value for tier in Tier if tier not in self.policies]
        if missing:
            raise ValueError(f"no SLA policy for tier(s) {', '.join(missing)}; every tier needs one")
        return self


class Persona(Strict):
    """A buyer persona: the first persona (in document order) whose every test holds is the lead's."""

    id: Identifier
    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=2000)
    match: Mapping[PersonaField, Match] = Field(min_length=1, description="field -> test; all must hold")


class RejectionReason(Strict):
    code: Identifier
    label: str = Field(default="", max_length=200)
    outcome: Literal["recycle", "disqualify"] = "recycle"
    cooldown: Duration | None = Field(default=None, description="Overrides lifecycle.recycle_cooldown.")

    @model_validator(mode="after")
    def _cooldown_not_negative(self) -> RejectionReason:
        if self.cooldown is not None and self.cooldown < timedelta(0):
            raise ValueError(f"cooldown must not be negative, got {spoken_duration(self.cooldown)}")
        if self.cooldown is not None and self.outcome == "disqualify":
            raise ValueError("cooldown only applies to outcome recycle; a disqualified lead never re-qualifies")
        return self


class StageDefinition(Strict):
    definition: str = Field(min_length=1, max_length=2000)
    owner: Literal["marketing", "sales"]


class ActivityPolicy(Strict):
    """How scoring judges what real CRMs report, which does not always walk the waterfall."""

    skipped_stages: Literal["refuse", "accept"] = Field(
        default="refuse",
        description="An activity that jumps forward over stages (won for an MQL): refuse it, or accept it and "
        "record every stage it skipped.",
    )
    unknown_reason: Literal["refuse", "fallback"] = Field(
        default="refuse",
        description="A SAL rejection whose reason code the agreement does not list: refuse it, or count it "
        "under fallback_reason.",
    )
    fallback_reason: Identifier | None = Field(
        default=None, description="With unknown_reason fallback: one of lifecycle.rejection_reasons."
    )
    unknown_rep: Literal["refuse", "accept"] = Field(
        default="refuse", description="An activity naming a rep who is not in the roster: refuse it, or accept it."
    )


class Lifecycle(Strict):
    stages: Mapping[Stage, StageDefinition] = Field(default_factory=dict, description="What each stage means.")
    recycle_cooldown: Duration = Field(default=timedelta(0), description="How long a recycled lead may not re-qualify.")
    rejection_reasons: tuple[RejectionReason, ...] = Field(
        default=(), description="When given, a SAL rejection must carry one of these codes."
    )
    activities: ActivityPolicy = Field(default_factory=ActivityPolicy)

    @model_validator(mode="after")
    def _cooldown_not_negative(self) -> Lifecycle:
        if self.recycle_cooldown < timedelta(0):
            raise ValueError(f"recycle_cooldown must not be negative, got {spoken_duration(self.recycle_cooldown)}")
        return self

    def rejection_reason(self, code: str | None) -> RejectionReason | None:
        return next((reason for reason in self.rejection_reasons if reason.code == code), None)


class ContentItem(Strict):
    title: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^https?://\S+$", max_length=2000)


class PlaybookEntry(Strict):
    """What to send and say to a persona at a stage (and tier); the most specific entry wins."""

    id: Identifier
    stage: Stage
    persona: Identifier | None = Field(default=None, description="Absent: any persona, or none.")
    tier: Tier | None = Field(default=None, description="Absent: any tier.")
    content: tuple[ContentItem, ...] = ()
    talk_track: str = Field(min_length=1, max_length=4000)


class Agreement(Strict):
    version: str = Field(min_length=1, max_length=64, description="Named in every decision made under it.")
    name: str = Field(min_length=1, max_length=200)
    scoring: Scoring
    roster: tuple[Rep, ...] = Field(min_length=1)
    routing: Routing
    sla: Sla
    calendars: Mapping[Identifier, CalendarSpec] = Field(default_factory=dict)
    marketing: Marketing = Field(default_factory=Marketing)
    _calendars: dict[str, BusinessCalendar] = PrivateAttr(default_factory=dict)
    personas: tuple[Persona, ...] = ()
    lifecycle: Lifecycle = Lifecycle()
    playbooks: tuple[PlaybookEntry, ...] = ()

    @model_validator(mode="after")
    def _sections_resolve(self) -> Agreement:
        problems = _section_problems(self)
        if problems:
            raise _LocatedProblems(problems)
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> Agreement:
        problems: list[AgreementProblem] = []
        rep_ids = [rep.id for rep in self.roster]
        problems += _duplicates("roster", [(f"roster.{i}.id", rep.id) for i, rep in enumerate(self.roster)])
        pools = self.routing.pools
        pool_ids = [pool.id for pool in pools]
        problems += _duplicates("routing.pools", [(f"routing.pools.{i}.id", pool.id) for i, pool in enumerate(pools)])
        problems += _duplicates(
            "scoring rule ids",
            [
                (f"scoring.{kind}.{i}.id", r.id)
                for kind in ("fit", "negative")
                for i, r in enumerate(getattr(self.scoring, kind))
            ],
        )
        problems += _duplicates(
            "routing.rules", [(f"routing.rules.{i}.id", rule.id) for i, rule in enumerate(self.routing.rules)]
        )
        for p, pool in enumerate(pools):
            problems += _duplicates(
                f"pool {pool.id!r} members",
                [(f"routing.pools.{p}.members.{m}.rep", x.rep) for m, x in enumerate(pool.members)],
            )
            for m, member in enumerate(pool.members):
                if member.rep not in rep_ids:
                    problems.append(
                        AgreementProblem(
                            f"routing.pools.{p}.members.{m}.rep",
                            f"pool {pool.id!r} names rep {member.rep!r}, who is not in the roster",
                        )
                    )
        for i, rule in enumerate(self.routing.rules):
            if rule.pool not in pool_ids:
                problems.append(
                    AgreementProblem(
                        f"routing.rules.{i}.pool", f"routing rule {rule.id!r} sends leads to unknown pool {rule.pool!r}"
                    )
                )
        if self.routing.fallback_pool not in pool_ids:
            problems.append(
                AgreementProblem(
                    "routing.fallback_pool", f"fallback_pool {self.routing.fallback_pool!r} is not a defined pool"
                )
            )
        if problems:
            raise _LocatedProblems(problems)
        return self

    def pool(self, pool_id: str) -> Pool:
        return next(pool for pool in self.routing.pools if pool.id == pool_id)

    @model_validator(mode="after")
    def _calendars_resolve(self) -> Agreement:
        problems = [
            AgreementProblem(f"calendars.{name}", f"{name!r} is a reserved calendar name")
            for name in self.calendars
            if name in (ALWAYS_OPEN, REP_CALENDAR)
        ]
        known = {*self.calendars, ALWAYS_OPEN}
        references = [
            ("sla.calendar", self.sla.calendar, False),
            *((f"sla.policies.{tier.value}.calendar", p.calendar, True) for tier, p in self.sla.policies.items()),
            *((f"roster.{i}.calendar", rep.calendar, False) for i, rep in enumerate(self.roster)),
            *(
                (f"marketing.mql_targets.{i}.calendar", t.calendar, False)
                for i, t in enumerate(self.marketing.mql_targets)
            ),
        ]
        for path, name, rep_allowed in references:
            if name is not None and name not in known and not (rep_allowed and name == REP_CALENDAR):
                allowed = ", ".join(sorted(known | ({REP_CALENDAR} if rep_allowed else set())))
                problems.append(AgreementProblem(path, f"unknown calendar {name!r}; allowed: {allowed}"))
        targets = self.marketing.mql_targets
        problems += _duplicates(
            "marketing.mql_targets", [(f"marketing.mql_targets.{i}.id", t.key) for i, t in enumerate(targets)]
        )
        if problems:
            raise _LocatedProblems(problems)
        self._calendars.update({name: spec.build(name) for name, spec in self.calendars.items()})
        self._calendars[ALWAYS_OPEN] = BusinessCalendar.always_open(ALWAYS_OPEN)
        return self

    def calendar(self, name: str) -> BusinessCalendar:
        """A named business calendar (``24x7`` is built in); names were checked on load."""
        return self._calendars[name]

    def rep(self, rep_id: str) -> Rep | None:
        return next((rep for rep in self.roster if rep.id == rep_id), None)

    @model_validator(mode="after")
    def _routing_resolves(self) -> Agreement:
        problems = _routing_problems(self)
        if problems:
            raise _LocatedProblems(problems)
        return self


def _routing_problems(agreement: Agreement) -> list[AgreementProblem]:
    """Segments, regions, load and time zones: what routing rules and availability refer to exists."""
    routing = agreement.routing
    segments, regions = routing.segments, routing.regions
    problems = _duplicates("routing.segments", [(f"routing.segments.{i}.id", s.id) for i, s in enumerate(segments)])
    problems += _duplicates("routing.regions", [(f"routing.regions.{i}.id", r.id) for i, r in enumerate(regions)])
    bands = sorted(enumerate(segments), key=lambda item: item[1].min_size)
    for (_, lower), (j, upper) in pairwise(bands):
        if lower.max_size is None or lower.max_size >= upper.min_size:
            problems.append(
                AgreementProblem(
                    f"routing.segments.{j}",
                    f"segment {upper.id!r} overlaps segment {lower.id!r}; a size may be in one only",
                )
            )
    known = {
        "segment": [s.id for s in routing.segments],
        "region": [r.id for r in routing.regions],
        "tier": [t.value for t in Tier],
    }
    for i, rule in enumerate(routing.rules):
        for attribute, allowed in known.items():
            for value in rule.when.get(attribute, ()):
                if value.casefold() not in {a.casefold() for a in allowed}:
                    problems.append(
                        AgreementProblem(
                            f"routing.rules.{i}.when.{attribute}",
                            f"rule {rule.id!r} names {attribute} {value!r}, which is not defined; "
                            f"allowed: {', '.join(allowed) or f'none (add routing.{attribute}s)'}",
                        )
                    )
    for p, pool in enumerate(routing.pools):
        if pool.id == OWNER_POOL:
            problems.append(
                AgreementProblem(f"routing.pools.{p}.id", f"{OWNER_POOL!r} is reserved for leads routed to an owner")
            )
    missing = [tier.value for tier in Tier if tier not in routing.load]
    if missing:
        problems.append(
            AgreementProblem("routing.load", f"no load for tier(s) {', '.join(missing)}; every tier needs one")
        )
    problems += [
        AgreementProblem(f"routing.load.{tier.value}", f"load must be at least 1, got {value}")
        for tier, value in routing.load.items()
        if value < 1
    ]
    for i, rep in enumerate(agreement.roster):
        try:
            ZoneInfo(rep.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(
                AgreementProblem(
                    f"roster.{i}.timezone",
                    f"unknown time zone {rep.timezone!r}; expected an IANA name such as Europe/Berlin",
                )
            )
    return problems


def _section_problems(agreement: Agreement) -> list[AgreementProblem]:
    """Personas, engagement, lifecycle and playbooks: ids are unique and every reference resolves."""
    problems: list[AgreementProblem] = []
    persona_ids = [persona.id for persona in agreement.personas]
    known = ", ".join(persona_ids) or "none defined (add a personas section)"
    problems += _duplicates("personas", [(f"personas.{i}.id", p.id) for i, p in enumerate(agreement.personas)])
    problems += _duplicates(
        "scoring.engagement events",
        [(f"scoring.engagement.{i}.event", r.event.value) for i, r in enumerate(agreement.scoring.engagement)],
    )
    problems += _duplicates(
        "scoring.fast_lanes",
        [(f"scoring.fast_lanes.{i}.id", lane.id) for i, lane in enumerate(agreement.scoring.fast_lanes)],
    )
    problems += _duplicates(
        "scoring.fast_lanes events",
        [(f"scoring.fast_lanes.{i}.event", lane.event.value) for i, lane in enumerate(agreement.scoring.fast_lanes)],
    )
    for kind in ("fit", "negative"):
        for i, rule in enumerate(getattr(agreement.scoring, kind)):
            if rule.field != "persona":
                continue
            named = [rule.match.equals] if rule.match.equals is not None else list(rule.match.in_ or ())
            for value in named:
                if str(value) not in persona_ids:
                    problems.append(
                        AgreementProblem(
                            f"scoring.{kind}.{i}.match",
                            f"rule {rule.id!r} names persona {value!r}, which is not defined; allowed: {known}",
                        )
                    )
    reasons = agreement.lifecycle.rejection_reasons
    problems += _duplicates(
        "lifecycle.rejection_reasons",
        [(f"lifecycle.rejection_reasons.{i}.code", r.code) for i, r in enumerate(reasons)],
    )
    policy = agreement.lifecycle.activities
    codes = ", ".join(reason.code for reason in reasons) or "none defined (add lifecycle.rejection_reasons)"
    if policy.unknown_reason == "fallback" and policy.fallback_reason is None:
        problems.append(
            AgreementProblem(
                "lifecycle.activities.fallback_reason",
                f"unknown_reason fallback needs a fallback_reason, one of: {codes}",
            )
        )
    if policy.fallback_reason is not None and agreement.lifecycle.rejection_reason(policy.fallback_reason) is None:
        problems.append(
            AgreementProblem(
                "lifecycle.activities.fallback_reason",
                f"fallback_reason {policy.fallback_reason!r} is not a rejection reason; allowed: {codes}",
            )
        )
    problems += _duplicates("playbooks", [(f"playbooks.{i}.id", p.id) for i, p in enumerate(agreement.playbooks)])
    seen: dict[tuple[Stage, str | None, Tier | None], str] = {}
    for i, playbook in enumerate(agreement.playbooks):
        if playbook.persona is not None and playbook.persona not in persona_ids:
            problems.append(
                AgreementProblem(
                    f"playbooks.{i}.persona",
                    f"playbook {playbook.id!r} names persona {playbook.persona!r}, which is not defined; allowed: {known}",
                )
            )
        slot = (playbook.stage, playbook.persona, playbook.tier)
        if slot in seen:
            problems.append(
                AgreementProblem(
                    f"playbooks.{i}",
                    f"playbook {playbook.id!r} covers the same stage {playbook.stage.value}, persona "
                    f"{playbook.persona or 'any'} and tier {playbook.tier.value if playbook.tier else 'any'} as "
                    f"playbook {seen[slot]!r}; only one may",
                )
            )
        seen.setdefault(slot, playbook.id)
    return problems


def _duplicates(where: str, located_ids: Sequence[tuple[str, str]]) -> list[AgreementProblem]:
    """One problem per repeated occurrence, at the path of that occurrence."""
    seen: set[str] = set()
    problems = []
    for path, i in located_ids:
        if i in seen:
            problems.append(AgreementProblem(path, f"{where}: id {i!r} is used more than once"))
        seen.add(i)
    return problems


@dataclass(frozen=True)
class AgreementProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class _LocatedProblems(ValueError):
    """Raised by a validator that knows the exact document path of each problem it found."""

    def __init__(self, problems: Sequence[AgreementProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = tuple(problems)


class AgreementError(ValueError):
    def __init__(self, source: str, problems: Sequence[AgreementProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


def parse_agreement(document: Any, source: str = "<agreement>") -> Agreement:
    try:
        return Agreement.model_validate(document)
    except ValidationError as exc:
        problems: list[AgreementProblem] = []
        for error in exc.errors():
            located = error.get("ctx", {}).get("error")
            problems += located.problems if isinstance(located, _LocatedProblems) else [_problem(error)]
        raise AgreementError(source, problems) from None


def load_agreement_text(text: str, source: str = "<agreement>") -> Agreement:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        raise AgreementError(
            source, [AgreementProblem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from None
    if not isinstance(document, dict):
        raise AgreementError(
            source, [AgreementProblem("(root)", "expected a mapping of sections (version, name, scoring, ...)")]
        )
    if holds_nul(document):
        raise AgreementError(
            source, [AgreementProblem("(document)", "holds a NUL character (\\0), which no setting may contain")]
        )
    return parse_agreement(document, source)


# The largest agreement a file or a request body may hold. Real ones are a few kilobytes; the
# limit keeps a wrong file (a log, a database dump, /dev/zero) from being read whole.
MAX_AGREEMENT_BYTES = 1_048_576


def byte_position(data: bytes, offset: int) -> str:
    """Where byte ``offset`` of ``data`` is, as an editor shows it (columns count bytes)."""
    line, line_start = data.count(b"\n", 0, offset) + 1, data.rfind(b"\n", 0, offset) + 1
    return f"line {line}, column {offset - line_start + 1} (byte {offset})"


def agreement_text(data: bytes, source: str = "<agreement>") -> str:
    """The text of an agreement file or body: UTF-8 (a leading BOM is dropped), no NUL byte, at
    most ``MAX_AGREEMENT_BYTES``; anything else is an ``AgreementError`` saying where."""

    def refuse(where: str, message: str) -> AgreementError:
        return AgreementError(source, [AgreementProblem(where, message)])

    if len(data) > MAX_AGREEMENT_BYTES:
        raise refuse("(document)", f"larger than {MAX_AGREEMENT_BYTES:,} bytes, the most an agreement may hold")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise refuse("(document)", "is UTF-16 text; save the agreement as UTF-8")
    nul = data.find(b"\0")
    if nul >= 0:
        raise refuse(byte_position(data, nul), "a NUL byte: this is a binary file, not agreement YAML")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise refuse(
            byte_position(data, exc.start),
            f"byte 0x{data[exc.start]:02x} is not UTF-8 text; save the agreement as UTF-8",
        ) from None


def load_agreement(path: Path) -> Agreement:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_AGREEMENT_BYTES + 1)  # never more: the file may be huge or endless
    except OSError as exc:
        raise AgreementError(str(path), [AgreementProblem("(file)", f"cannot read: {exc.strerror}")]) from None
    return load_agreement_text(agreement_text(data, str(path)), str(path))


def _problem(error: Mapping[str, Any]) -> AgreementProblem:
    path = ".".join(str(part) for part in error["loc"]) or "(root)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key; check the spelling against the agreement schema"
    elif error["type"] == "literal_error" or error["type"] == "enum":
        expected = error.get("ctx", {}).get("expected")
        message = f"{message}" if expected is None else f"got {error.get('input')!r}; allowed: {expected}"
    return AgreementProblem(path, message)
