"""Lead score = fit (who they are) + engagement (what they did, decayed) + negative rules.

Engagement decays lazily: a touch that awarded p points at time t_i is worth p * 2^(-(t - t_i) / h)
at time t, for its event type's half-life h. Nothing is stored per tick; the score is computed
at the moment it is asked for, so it is a pure function of (attributes, touches, agreement, t).
Between touches every term only shrinks, which is what lets the scorer compute in advance when
a qualified lead will fall below its exit threshold.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NamedTuple

from coxswain.core.agreement import Agreement, EngagementRule, Match
from coxswain.core.memo import derived
from schemas.events import EngagementType, LeadAttributes, ScoreContribution, Tier

URGENCY = {Tier.hot: 0, Tier.warm: 1, Tier.cold: 2}


@dataclass(frozen=True)
class Touch:
    engagement: EngagementType
    at: datetime
    # ``at`` as microseconds since the epoch, for the decay arithmetic: computed once per touch.
    micros: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "micros", _micros(self.at))


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


class RuleTouches(NamedTuple):
    """One engagement rule's touches in time order (as microseconds), with what each awarded."""

    rule: EngagementRule
    micros: tuple[int, ...]
    awards: tuple[float, ...]
    half_life: int  # the rule's, in microseconds

    def at(self, now: datetime) -> tuple[float, float] | None:
        """(points awarded, decayed and capped value) of the touches up to ``now``; None if none.

        Integer microseconds divide exactly as ``timedelta / timedelta`` does in ``decayed``, so
        this is the same arithmetic, only without building a timedelta per touch.
        """
        return self.at_micros(_micros(now))

    def at_micros(self, now_us: int) -> tuple[float, float] | None:
        value = self.value_at(now_us)
        if value is None:
            return None
        count = bisect_right(self.micros, now_us)
        return round(sum(self.awards[:count] if count < len(self.awards) else self.awards), 4), value

    def value_at(self, now_us: int) -> float | None:
        """The decayed and capped value alone (what the total adds up), rounded as ``at`` rounds it."""
        value = self.unrounded_at(now_us)
        return None if value is None else round(value, 4)

    def unrounded_at(self, now_us: int, capped: bool = True) -> float | None:
        micros, awards = self.micros, self.awards
        if micros[-1] > now_us:
            count = bisect_right(micros, now_us)
            if count == 0:
                return None
            micros, awards = micros[:count], awards[:count]
        half_life = self.half_life
        value = sum(
            [
                points if now_us - at <= 0 else float(points * 2.0 ** (-((now_us - at) / half_life)))
                for points, at in zip(awards, micros, strict=True)
            ]
        )
        cap = self.rule.cap
        if capped and cap is not None:
            value = min(value, cap)
        return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def by_rule(touches: Sequence[Touch], agreement: Agreement) -> list[RuleTouches]:
    """Awards depend only on earlier touches, so they are computed once, for every later moment."""
    of_kind: dict[EngagementType, list[Touch]] = {}
    for touch in touches:
        found = of_kind.get(touch.engagement)
        if found is None:
            of_kind[touch.engagement] = [touch]
        else:
            found.append(touch)
    prepared = []
    for rule, half_life in derived(agreement, _engagement_rules):
        kind = of_kind.get(rule.event)
        if kind:
            if len(kind) > 1:
                kind.sort(key=_moment)
            micros = tuple([touch.micros for touch in kind])
            if rule.cap_per_window is None:
                awards = (rule.points,) * len(kind)  # what ``awarded`` gives without a window cap
            else:
                awards = tuple(awarded(rule, [touch.at for touch in kind]))
            prepared.append(RuleTouches(rule, micros, awards, half_life))
    return prepared


def _engagement_rules(agreement: Agreement) -> tuple[tuple[EngagementRule, int], ...]:
    return tuple((rule, rule.half_life // _MICROSECOND) for rule in agreement.scoring.engagement)


def _moment(touch: Touch) -> datetime:
    return touch.at


def engagement_contributions(touches: Sequence[Touch], agreement: Agreement, now: datetime) -> list[ScoreContribution]:
    return _contributions(_by_rule(touches, agreement, derived(agreement, _prepare)), now)


def _contributions(prepared: Sequence[RuleTouches], now: datetime) -> list[ScoreContribution]:
    contributions = []
    now_us = _micros(now)
    for rule in prepared:
        found = rule.at_micros(now_us)
        if found is not None:
            points, value = found
            contributions.append(
                ScoreContribution(
                    rule_id=f"engagement.{rule.rule.event.value}", kind="engagement", points=points, value=value
                )
            )
    return contributions


def fit_score(attributes: LeadAttributes, agreement: Agreement) -> tuple[str | None, list[ScoreContribution]]:
    fit = _fit(attributes, derived(agreement, _prepare))
    return fit.persona, list(fit.contributions)


def score(attributes: LeadAttributes, touches: Sequence[Touch], agreement: Agreement, now: datetime) -> Score:
    prepared = derived(agreement, _prepare)
    fit = _fit(attributes, prepared)
    engagement = _contributions(_by_rule(touches, agreement, prepared), now)
    fit_total = fit.total
    engagement_total = sum(c.value for c in engagement)
    return Score(
        fit=round(fit_total, 4),
        engagement=round(engagement_total, 4),
        total=round(fit_total + engagement_total, 4),
        contributions=(*fit.contributions, *engagement),
        persona=fit.persona,
    )


def score_total(
    attributes: LeadAttributes, touches: Sequence[Touch], agreement: Agreement, now: datetime
) -> tuple[float, str | None]:
    """``score(...).total`` and ``.persona`` without building the contributions: the same sums."""
    prepared = derived(agreement, _prepare)
    fit = _fit(attributes, prepared)
    return _total_now(prepared, fit.total, _by_rule(touches, agreement, prepared), _micros(now)), fit.persona


def _total_now(prepared: _Prepared, fit_total: float, rules: Sequence[RuleTouches], now_us: int) -> float:
    """``_total``, remembered for the last arguments: a shell that scores an input and then arms
    its timer asks for the same total twice (``score_total``, then ``falls_below_bound``)."""
    last = prepared.total
    if last is not None and last[0] is rules and last[1] == now_us and last[2] == fit_total:
        return last[3]
    total = _total(fit_total, rules, now_us)
    prepared.total = (rules, now_us, fit_total, total)
    return total


def _total(fit_total: float, rules: Sequence[RuleTouches], now_us: int) -> float:
    # score() sums the contributions' values, which are the rounded values in rule order.
    values = []
    for rule in rules:
        value = rule.unrounded_at(now_us)
        if value is not None:
            values.append(round(value, 4))
    return round(fit_total + sum(values), 4)


# --------------------------------------------------------------------------- the agreement, prepared once
#
# A lead's fit depends only on its attributes and the agreement, and attributes change only when
# an event brings new ones, while the score is asked for on every event and every re-evaluation.
# So each agreement's tests are prepared once (options case-folded, contributions built) and the
# fit of recently seen attributes is remembered (``coxswain.core.memo``).

_FITS_KEPT = 8192


@dataclass(frozen=True)
class _Fit:
    persona: str | None
    contributions: tuple[ScoreContribution, ...]
    total: float


_Check = Callable[[str | int | None], bool]
_ANSWERS_KEPT = 4096


@dataclass
class _Prepared:
    personas: tuple[tuple[str, tuple[tuple[str, _Check], ...]], ...]
    rules: tuple[tuple[str, _Check, ScoreContribution], ...]
    fields: tuple[str, ...]
    # The fit of recently seen attributes, by the attributes object (a lead keeps its attributes
    # object until an event changes them, and hashing a model costs more than the lookup);
    # each entry holds its object, which keeps its id from reuse while the entry lives.
    fits: dict[int, tuple[LeadAttributes, _Fit]] = field(default_factory=dict)
    # The last attributes and touches asked about, and what they gave: the scorer asks about one
    # lead several times in a row. Both are immutable; holding them keeps their ids from reuse.
    attributes: tuple[LeadAttributes, _Fit] | None = None
    touches: tuple[tuple[Touch, ...], tuple[RuleTouches, ...]] | None = None
    total: tuple[Sequence[RuleTouches], int, float, float] | None = None


def _check(match: Match) -> _Check:
    """``matches(match, ·)``, its answer for each recent value remembered."""
    test = _test(match)
    answers: dict[str | int | None, bool] = {}

    def check(value: str | int | None) -> bool:
        answer = answers.get(value)
        if answer is None:
            if len(answers) >= _ANSWERS_KEPT:
                answers.clear()
            answer = answers[value] = test(value)
        return answer

    return check


def _test(match: Match) -> _Check:
    """``matches(match, ·)`` with the options case-folded once; the same answers for every value."""
    if (match.exists, match.between, match.equals) != (None, None, None):
        return partial(matches, match)
    if match.in_ is not None and match.contains_any is None:
        options = frozenset(option.casefold() for option in match.in_)
        return lambda value: value is not None and str(value).casefold() in options
    if match.contains_any is not None and match.in_ is None:
        needles = tuple(option.casefold() for option in match.contains_any)

        def contains_any(value: str | int | None) -> bool:
            if value is None:
                return False
            text = str(value).casefold()
            return any(needle in text for needle in needles)

        return contains_any
    return partial(matches, match)


def _prepare(agreement: Agreement) -> _Prepared:
    scoring = agreement.scoring
    rules = [
        (
            rule.field,
            _check(rule.match),
            ScoreContribution(rule_id=rule.id, kind=kind, points=rule.points, value=rule.points),
        )
        for kind, group in (("fit", scoring.fit), ("negative", scoring.negative))
        for rule in group
    ]
    personas = tuple(
        (persona.id, tuple((name, _check(test)) for name, test in persona.match.items()))
        for persona in agreement.personas
    )
    fields = {name for _, tests in personas for name, _ in tests} | {name for name, _, _ in rules}
    return _Prepared(personas, tuple(rules), tuple(sorted(fields)))


def _by_rule(touches: Sequence[Touch], agreement: Agreement, prepared: _Prepared) -> Sequence[RuleTouches]:
    """``by_rule``, remembered for the last tuple of touches (a list could change after the call)."""
    if type(touches) is not tuple:
        return by_rule(touches, agreement)
    last = prepared.touches
    if last is not None and last[0] is touches:
        return last[1]
    rules = tuple(by_rule(touches, agreement))
    prepared.touches = (touches, rules)
    return rules


def _fit(attributes: LeadAttributes, prepared: _Prepared) -> _Fit:
    last = prepared.attributes
    if last is not None and last[0] is attributes:
        return last[1]
    fits = prepared.fits
    entry = fits.get(id(attributes))
    if entry is not None and entry[0] is attributes:
        found = entry[1]
    else:
        found = _fit_of(attributes, prepared)
        if len(fits) >= _FITS_KEPT:
            del fits[next(iter(fits))]
        fits[id(attributes)] = (attributes, found)
    prepared.attributes = (attributes, found)
    return found


def _fit_of(attributes: LeadAttributes, prepared: _Prepared) -> _Fit:
    """``persona_for``, then every fit and negative rule whose test holds (with the persona found),
    over the prepared tests, each field read once."""
    values = {name: attribute_value(attributes, name) for name in prepared.fields}
    persona = None
    for persona_id, tests in prepared.personas:
        if all([test(values[name]) for name, test in tests]):
            persona = persona_id
            break
    values["persona"] = persona
    contributions = tuple([contribution for name, test, contribution in prepared.rules if test(values[name])])
    return _Fit(persona, contributions, sum([c.value for c in contributions]))


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

    prepared = derived(agreement, _prepare)
    fit_total = _fit(attributes, prepared).total
    rules = _by_rule(touches, agreement, prepared)
    now_us = _micros(now)
    decays = _decays(rules, now_us)
    slack = _slack(rules)

    def below(at: datetime) -> bool:
        at_us = _micros(at)
        if decays is not None:
            # Far from the threshold, the closed form decides as the sum below would.
            elapsed = at_us - now_us
            approximate = fit_total + sum([decay(elapsed) for decay in decays])
            if approximate >= threshold + slack:
                return False
            if approximate < threshold - slack:
                return True
        # The same arithmetic, in the same order, as score(): the crossing found is exact for it.
        return _total(fit_total, rules, at_us) < threshold

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


def _slack(rules: Sequence[RuleTouches]) -> float:
    """More than the total can differ from the exact sum of the rules' values: half a unit of the
    4th decimal per rule and once more for the total (rounding), and a margin for floating point."""
    return (len(rules) + 2) * 0.00005 + 1e-6


def _decays(rules: Sequence[RuleTouches], now_us: int) -> list[Callable[[int], float]] | None:
    """Each rule's value ``elapsed`` microseconds after ``now``, in closed form: a sum of decaying
    touches is its sum now decaying at the same half-life. None when a touch comes after now."""
    decays: list[Callable[[int], float]] = []
    for rule in rules:
        uncapped = rule.unrounded_at(now_us, capped=False)
        if uncapped is None or rule.micros[-1] > now_us:
            return None
        decays.append(partial(_decay, uncapped, rule.half_life, rule.rule.cap))
    return decays


def _decay(uncapped: float, half_life: int, cap: float | None, elapsed: int) -> float:
    value = float(uncapped * 2.0 ** (-(elapsed / half_life)))
    return value if cap is None else min(value, cap)


def falls_below_bound(
    attributes: LeadAttributes, touches: Sequence[Touch], agreement: Agreement, now: datetime, threshold: float
) -> datetime | None:
    """A moment no later than ``falls_below_at`` with the same arguments, from one evaluation instead
    of a search; None only when ``falls_below_at`` is None too (fit alone keeps the score up).

    A caller that re-arms on every event can wait until this moment to search for the crossing,
    which most leads never reach: a new event moves it first. From ``now`` on, each rule's decayed
    sum shrinks by 2^(-d/h) of its own half-life h, so its capped value stays at least its value
    now shrunk the same way, and by convexity the sum of those stays at least the total now shrunk
    at the value-weighted mean rate. Rounding (half a unit of the 4th decimal per rule and once
    more for the total) and floating point are allowed for with a margin.
    """
    prepared = derived(agreement, _prepare)
    fit_total = _fit(attributes, prepared).total
    rules = _by_rule(touches, agreement, prepared)
    now_us = _micros(now)
    if _total_now(prepared, fit_total, rules, now_us) < threshold:
        return now
    if round(fit_total, 4) >= threshold:
        return None
    if any(rule.micros[-1] > now_us for rule in rules):
        return now  # a touch after now raises the score again: no bound without the search
    values = [(value, rule.half_life) for rule in rules if (value := rule.unrounded_at(now_us))]
    engagement = sum(value for value, _ in values)
    needed = threshold - fit_total + _slack(rules)
    if engagement <= needed:
        return now
    rate = sum(value / half_life for value, half_life in values) / engagement  # per microsecond
    span = int(math.log2(engagement / needed) / rate * (1 - 1e-9)) - 1000
    return now + timedelta(microseconds=span) if span > 0 else now
