"""Lead score = fit (who they are) + engagement (what they did, decayed) + negative rules.

Engagement decays lazily: a touch worth p points at time t_i is worth p * 2^(-(t - t_i) / h)
at time t, for its event type's half-life h. Nothing is stored per tick; the score is computed
at the moment it is asked for, so it is a pure function of (attributes, touches, agreement, t).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from coxswain.core.agreement import Agreement, AttributeRule, Match
from schemas.events import EngagementType, LeadAttributes, ScoreContribution, Tier


@dataclass(frozen=True)
class Touch:
    engagement: EngagementType
    at: datetime


@dataclass(frozen=True)
class Score:
    fit: float
    engagement: float
    total: float
    contributions: tuple[ScoreContribution, ...]


def attribute_value(attributes: LeadAttributes, field: str) -> str | int | None:
    if field == "email_domain":
        return attributes.email.rsplit("@", 1)[1].lower() if attributes.email else None
    value: str | int | None = getattr(attributes, field)
    return value


def matches(match: Match, value: str | int | None) -> bool:
    if match.exists is not None:
        return (value is not None and value != "") == match.exists
    if value is None:
        return False
    if match.between is not None:
        return isinstance(value, int) and match.between[0] <= value <= match.between[1]
    text = str(value).casefold()
    if isinstance(match.equals, float):
        # `equals: 50` loads as 50.0; compare numbers as numbers, not "50" with "50.0".
        try:
            return float(text) == match.equals
        except ValueError:
            return False
    if match.equals is not None:
        return text == str(match.equals).casefold()
    if match.in_ is not None:
        return text in {option.casefold() for option in match.in_}
    if match.contains_any is not None:
        return any(option.casefold() in text for option in match.contains_any)
    return False


def _attribute_contributions(
    rules: Iterable[AttributeRule], attributes: LeadAttributes, kind: Literal["fit", "negative"]
) -> list[ScoreContribution]:
    return [
        ScoreContribution(rule_id=rule.id, kind=kind, points=rule.points, value=rule.points)
        for rule in rules
        if matches(rule.match, attribute_value(attributes, rule.field))
    ]


def decayed(points: float, age: timedelta, half_life: timedelta) -> float:
    if age <= timedelta(0):
        return points
    return float(points * 2.0 ** (-(age / half_life)))


def engagement_contributions(touches: Sequence[Touch], agreement: Agreement, now: datetime) -> list[ScoreContribution]:
    contributions = []
    for rule in agreement.scoring.engagement:
        own = [touch for touch in touches if touch.engagement == rule.event and touch.at <= now]
        if not own:
            continue
        value = sum(decayed(rule.points, now - touch.at, rule.half_life) for touch in own)
        if rule.cap is not None:
            value = min(value, rule.cap)
        contributions.append(
            ScoreContribution(
                rule_id=f"engagement.{rule.event.value}",
                kind="engagement",
                points=rule.points * len(own),
                value=round(value, 4),
            )
        )
    return contributions


def score(attributes: LeadAttributes, touches: Sequence[Touch], agreement: Agreement, now: datetime) -> Score:
    fit = _attribute_contributions(agreement.scoring.fit, attributes, "fit")
    negative = _attribute_contributions(agreement.scoring.negative, attributes, "negative")
    engagement = engagement_contributions(touches, agreement, now)
    fit_total = sum(c.value for c in (*fit, *negative))
    engagement_total = sum(c.value for c in engagement)
    return Score(
        fit=round(fit_total, 4),
        engagement=round(engagement_total, 4),
        total=round(fit_total + engagement_total, 4),
        contributions=(*fit, *negative, *engagement),
    )


def tier_for(total: float, agreement: Agreement) -> Tier:
    thresholds = agreement.scoring.tiers
    if total >= thresholds.hot:
        return Tier.hot
    if total >= thresholds.warm:
        return Tier.warm
    return Tier.cold


def fast_lane_tier(engagement: EngagementType, agreement: Agreement) -> Tier | None:
    for lane in agreement.scoring.fast_lanes:
        if lane.event == engagement:
            return lane.tier
    return None


def falls_below_at(
    attributes: LeadAttributes,
    touches: Sequence[Touch],
    agreement: Agreement,
    now: datetime,
    threshold: float,
    horizon: timedelta = timedelta(days=365),
) -> datetime | None:
    """When the score, decaying with no new touches, first drops below ``threshold``.

    Between touches the score only falls, so a bisection over time finds the crossing; the
    scorer arms a durable re-evaluation there instead of running a nightly batch.
    """
    if score(attributes, touches, agreement, now).total < threshold:
        return now
    late = now + horizon
    if score(attributes, touches, agreement, late).total >= threshold:
        return None
    early = now
    while late - early > timedelta(milliseconds=100):
        middle = early + (late - early) / 2
        if score(attributes, touches, agreement, middle).total < threshold:
            late = middle
        else:
            early = middle
    return late
