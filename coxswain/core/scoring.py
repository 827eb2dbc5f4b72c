"""Lead score = fit (who they are) + engagement (what they did, decayed) + negative rules.

Engagement decays lazily: a touch that awarded p points at time t_i is worth p * 2^(-(t - t_i) / h)
at time t, for its event type's half-life h. Nothing is stored per tick; the score is computed
at the moment it is asked for, so it is a pure function of (attributes, touches, agreement, t).
Between touches every term only shrinks, which is what lets the scorer compute in advance when
a qualified lead will fall below its exit threshold.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from coxswain.core.agreement import Agreement, AttributeRule, EngagementRule, Match
from schemas.events import EngagementType, LeadAttributes, ScoreContribution, Tier

URGENCY = {Tier.hot: 0, Tier.warm: 1, Tier.cold: 2}


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
    persona: str | None = None


def attribute_value(attributes: LeadAttributes, field: str, persona: str | None = None) -> str | int | None:
    if field == "email_domain":
        return attributes.email.rsplit("@", 1)[1].lower() if attributes.email else None
    if field == "persona":
        return persona
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


def persona_for(attributes: LeadAttributes, agreement: Agreement) -> str | None:
    """The first persona, in document order, whose every test holds; None when none does."""
    for persona in agreement.personas:
        if all(matches(test, attribute_value(attributes, field)) for field, test in persona.match.items()):
            return persona.id
    return None


def _attribute_contributions(
    rules: Iterable[AttributeRule], attributes: LeadAttributes, persona: str | None, kind: Literal["fit", "negative"]
) -> list[ScoreContribution]:
    return [
        ScoreContribution(rule_id=rule.id, kind=kind, points=rule.points, value=rule.points)
        for rule in rules
        if matches(rule.match, attribute_value(attributes, rule.field, persona))
    ]


def decayed(points: float, age: timedelta, half_life: timedelta) -> float:
    if age <= timedelta(0):
        return points
    return float(points * 2.0 ** (-(age / half_life)))


def awarded(rule: EngagementRule, times: Sequence[datetime]) -> list[float]:
    """Points each touch (in time order) awarded; a window cap limits the sum within any window.

    A touch awards what is left of the cap after the touches of the preceding window, so the
    award of a touch depends only on earlier touches and never changes afterwards.
    """
    if rule.cap_per_window is None:
        return [rule.points] * len(times)
    cap, window = rule.cap_per_window.points, rule.cap_per_window.window
    awards: list[float] = []
    oldest, used = 0, 0.0
    for at in times:
        while at - times[oldest] >= window:
            used -= awards[oldest]
            oldest += 1
        awards.append(round(max(0.0, min(rule.points, cap - used)), 9))
        used += awards[-1]
    return awards


@dataclass(frozen=True)
class RuleTouches:
    """One engagement rule's touches in time order (as microseconds), with what each awarded."""

    rule: EngagementRule
    micros: tuple[int, ...]
    awards: tuple[float, ...]

    def at(self, now: datetime) -> tuple[float, float] | None:
        """(points awarded, decayed and capped value) of the touches up to ``now``; None if none.

        Integer microseconds divide exactly as ``timedelta / timedelta`` does in ``decayed``, so
        this is the same arithmetic, only without building a timedelta per touch.
        """
        now_us = _micros(now)
        count = bisect_right(self.micros, now_us)
        if count == 0:
            return None
        half_life = self.rule.half_life // _MICROSECOND
        value = sum(
            points if now_us - at <= 0 else float(points * 2.0 ** (-((now_us - at) / half_life)))
            for points, at in zip(self.awards[:count], self.micros[:count], strict=True)
        )
        if self.rule.cap is not None:
            value = min(value, self.rule.cap)
        return round(sum(self.awards[:count]), 4), round(value, 4)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def by_rule(touches: Sequence[Touch], agreement: Agreement) -> list[RuleTouches]:
    """Awards depend only on earlier touches, so they are computed once, for every later moment."""
    prepared = []
    for rule in agreement.scoring.engagement:
        times = sorted(touch.at for touch in touches if touch.engagement == rule.event)
        if times:
            prepared.append(RuleTouches(rule, tuple(map(_micros, times)), tuple(awarded(rule, times))))
    return prepared


def engagement_contributions(touches: Sequence[Touch], agreement: Agreement, now: datetime) -> list[ScoreContribution]:
    return _contributions(by_rule(touches, agreement), now)


def _contributions(prepared: Sequence[RuleTouches], now: datetime) -> list[ScoreContribution]:
    contributions = []
    for rule in prepared:
        found = rule.at(now)
        if found is not None:
            points, value = found
            contributions.append(
                ScoreContribution(
                    rule_id=f"engagement.{rule.rule.event.value}", kind="engagement", points=points, value=value
                )
            )
    return contributions


def fit_score(attributes: LeadAttributes, agreement: Agreement) -> tuple[str | None, list[ScoreContribution]]:
    persona = persona_for(attributes, agreement)
    return persona, [
        *_attribute_contributions(agreement.scoring.fit, attributes, persona, "fit"),
        *_attribute_contributions(agreement.scoring.negative, attributes, persona, "negative"),
    ]


def score(attributes: LeadAttributes, touches: Sequence[Touch], agreement: Agreement, now: datetime) -> Score:
    persona, fit = fit_score(attributes, agreement)
    engagement = engagement_contributions(touches, agreement, now)
    fit_total = sum(c.value for c in fit)
    engagement_total = sum(c.value for c in engagement)
    return Score(
        fit=round(fit_total, 4),
        engagement=round(engagement_total, 4),
        total=round(fit_total + engagement_total, 4),
        contributions=(*fit, *engagement),
        persona=persona,
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


def priority_tier(total: float, lane: Tier | None, agreement: Agreement) -> Tier:
    """The more urgent of what the score says and what the intent (a fast lane) says."""
    by_score = tier_for(total, agreement)
    return by_score if lane is None or URGENCY[by_score] <= URGENCY[lane] else lane


def falls_below_at(
    attributes: LeadAttributes,
    touches: Sequence[Touch],
    agreement: Agreement,
    now: datetime,
    threshold: float,
    horizon: timedelta = timedelta(days=365 * 100),
    precision: timedelta = timedelta(milliseconds=10),
) -> datetime | None:
    """When the score, decaying with no new touches, first drops below ``threshold``.

    ``now`` when it already is below; None when it never will (fit alone keeps it up, or not
    within ``horizon``). Between touches the score only falls, so doubling then bisecting over
    time finds the crossing; the scorer arms a durable re-evaluation there instead of running a
    nightly batch.
    """

    _, fit = fit_score(attributes, agreement)
    fit_total = sum(c.value for c in fit)
    prepared = by_rule(touches, agreement)

    def below(at: datetime) -> bool:
        # The same arithmetic, in the same order, as score(): the crossing found is exact for it.
        engagement_total = sum(found[1] for rule in prepared if (found := rule.at(at)) is not None)
        return round(fit_total + engagement_total, 4) < threshold

    if below(now):
        return now
    if round(fit_total, 4) >= threshold:
        return None
    step = timedelta(hours=1)
    while not below(now + step):
        if step >= horizon:
            return None
        step = min(step * 2, horizon)
    early, late = now, now + step
    while late - early > precision:
        middle = early + (late - early) / 2
        if below(middle):
            late = middle
        else:
            early = middle
    return late
