"""The sales-marketing agreement as a validated, versioned document.

Loading never raises a traceback at a user: every problem becomes an ``AgreementProblem`` with
the path inside the document, what is wrong and, where it helps, what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from schemas.events import ActivityType, EngagementType, LeadAttributes, Tier

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

FIT_FIELDS = tuple(sorted({*LeadAttributes.model_fields, "email_domain"} - {"email"}))
FitField = Literal[
    "campaign", "company", "company_domain", "company_size", "country", "department",
    "email_domain", "first_name", "industry", "last_name", "product_interest", "seniority",
    "state", "title",
]  # fmt: skip


def parse_duration(value: object) -> object:
    """Accept '90s', '5m', '2h', '1d', '1w' (what people write) besides pydantic's own forms."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            try:
                return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
            except OverflowError:
                raise ValueError(f"duration {value.strip()!r} is too long") from None
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
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


class EngagementRule(Strict):
    event: EngagementType
    points: float = Field(gt=0, le=1000)
    half_life: Duration = Field(description="Time after which a touch is worth half its points.")
    cap: float | None = Field(default=None, gt=0, description="Most this event type can add, decayed.")

    @model_validator(mode="after")
    def _positive_half_life(self) -> EngagementRule:
        if self.half_life <= timedelta(0):
            raise ValueError(f"half_life must be positive, got {self.half_life}")
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
    fast_lanes: tuple[FastLane, ...] = ()
    tiers: TierThresholds


class Rep(Strict):
    id: Identifier
    name: str = Field(min_length=1, max_length=128)
    timezone: str = "UTC"


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
        allowed = (*FIT_FIELDS, "tier", "source")
        unknown = sorted(set(self.when) - set(allowed))
        if unknown:
            raise ValueError(f"unknown attribute(s) {', '.join(unknown)} in when; allowed: {', '.join(allowed)}")
        return self


class Routing(Strict):
    rules: tuple[RoutingRule, ...] = ()
    fallback_pool: Identifier
    pools: tuple[Pool, ...] = Field(min_length=1)


class SlaPolicy(Strict):
    first_touch: Duration
    responses: tuple[ActivityType, ...] = (
        ActivityType.first_touch,
        ActivityType.sal_accepted,
        ActivityType.sal_rejected,
    )

    @model_validator(mode="after")
    def _positive(self) -> SlaPolicy:
        if self.first_touch <= timedelta(0):
            raise ValueError(f"first_touch must be positive, got {self.first_touch}")
        if ActivityType.automated_email in self.responses:
            raise ValueError("automated_email cannot count as a response: a person must follow up")
        return self


class Sla(Strict):
    calendar: Literal["24x7"] = "24x7"
    policies: Mapping[Tier, SlaPolicy]

    @model_validator(mode="after")
    def _every_tier(self) -> Sla:
        missing = [tier.value for tier in Tier if tier not in self.policies]
        if missing:
            raise ValueError(f"no SLA policy for tier(s) {', '.join(missing)}; every tier needs one")
        return self


class Agreement(Strict):
    version: str = Field(min_length=1, max_length=64, description="Named in every decision made under it.")
    name: str = Field(min_length=1, max_length=200)
    scoring: Scoring
    roster: tuple[Rep, ...] = Field(min_length=1)
    routing: Routing
    sla: Sla

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
    return parse_agreement(document, source)


def load_agreement(path: Path) -> Agreement:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AgreementError(str(path), [AgreementProblem("(file)", f"cannot read: {exc.strerror}")]) from None
    return load_agreement_text(text, str(path))


def _problem(error: Mapping[str, Any]) -> AgreementProblem:
    path = ".".join(str(part) for part in error["loc"]) or "(root)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key; check the spelling against the agreement schema"
    elif error["type"] == "literal_error" or error["type"] == "enum":
        expected = error.get("ctx", {}).get("expected")
        message = f"{message}" if expected is None else f"got {error.get('input')!r}; allowed: {expected}"
    return AgreementProblem(path, message)
