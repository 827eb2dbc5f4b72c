"""The scoring core's fast paths decide exactly as the straightforward definitions (hypothesis).

The simulator replays hundreds of thousands of inputs through the same core as the live
scorer, so the core prepares each agreement once, remembers recent fits, sums without building
contributions when it only needs the total, and lets a caller arm a re-evaluation at a cheap
bound instead of searching for the crossing at once. The reference functions below are the
definitions those paths replaced, kept verbatim: every result must be identical, not close.
"""

from __future__ import annotations

import gc
import uuid
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import Agreement, Match, load_agreement, load_agreement_text
from coxswain.core.lead import (
    LeadState,
    _playbook,
    merge_attributes,
    next_reevaluation,
    on_received,
    on_timer,
    reevaluation_bound,
    rescored,
    timer_id_for,
)
from coxswain.core.playbooks import playbook_for
from coxswain.core.scoring import (
    Score,
    Touch,
    _check,
    _micros,
    attribute_value,
    awarded,
    falls_below_at,
    falls_below_bound,
    fit_score,
    matches,
    score,
    score_total,
)
from schemas.events import (
    EngagementType,
    LeadAttributes,
    LeadReceivedV1,
    LeadScoredV1,
    ScoreContribution,
    Stage,
    Tier,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = load_agreement(ROOT / "examples" / "agreement.yaml")
# The same agreement with engagement that decays within hours and minutes, so crossings are near.
FAST = load_agreement_text(
    (ROOT / "examples" / "agreement.yaml")
    .read_text()
    .replace("half_life: 14d", "half_life: 6h")
    .replace("half_life: 7d", "half_life: 90m")
    .replace("half_life: 10d", "half_life: 2h")
    .replace("half_life: 3d", "half_life: 17m")
    .replace("hold: 7d", "hold: 1h")
)
DECAY = load_agreement(ROOT / "tests" / "e2e" / "agreement_decay.yaml")
AGREEMENTS = [EXAMPLE, FAST, DECAY]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --------------------------------------------------------------------------- the definitions


def reference_fit(attributes: LeadAttributes, agreement: Agreement) -> tuple[str | None, list[ScoreContribution]]:
    persona = next(
        (
            p.id
            for p in agreement.personas
            if all(matches(test, attribute_value(attributes, name)) for name, test in p.match.items())
        ),
        None,
    )
    return persona, [
        ScoreContribution(rule_id=rule.id, kind=kind, points=rule.points, value=rule.points)
        for kind, rules in (("fit", agreement.scoring.fit), ("negative", agreement.scoring.negative))
        for rule in rules
        if matches(rule.match, attribute_value(attributes, rule.field, persona))
    ]


def reference_engagement(
    touches: Sequence[Touch], agreement: Agreement, now: datetime
) -> list[tuple[str, float, float]]:
    """(rule id, points, value) per engagement rule with touches up to ``now``."""
    found = []
    now_us = _micros(now)
    for rule in agreement.scoring.engagement:
        times = sorted(touch.at for touch in touches if touch.engagement == rule.event)
        if not times:
            continue
        micros, awards = [_micros(t) for t in times], awarded(rule, times)
        count = bisect_right(micros, now_us)
        if count == 0:
            continue
        half_life = rule.half_life // _MICROSECOND
        value = sum(
            points if now_us - at <= 0 else float(points * 2.0 ** (-((now_us - at) / half_life)))
            for points, at in zip(awards[:count], micros[:count], strict=True)
        )
        if rule.cap is not None:
            value = min(value, rule.cap)
        found.append((f"engagement.{rule.event.value}", round(sum(awards[:count]), 4), round(value, 4)))
    return found


def reference_score(attributes: LeadAttributes, touches: Sequence[Touch], agreement: Agreement, now: datetime) -> Score:
    persona, fit = reference_fit(attributes, agreement)
    engagement = [
        ScoreContribution(rule_id=rule_id, kind="engagement", points=points, value=value)
        for rule_id, points, value in reference_engagement(touches, agreement, now)
    ]
    fit_total = sum(c.value for c in fit)
    engagement_total = sum(c.value for c in engagement)
    return Score(
        fit=round(fit_total, 4),
        engagement=round(engagement_total, 4),
        total=round(fit_total + engagement_total, 4),
        contributions=(*fit, *engagement),
        persona=persona,
    )


def reference_falls_below_at(
    attributes: LeadAttributes, touches: Sequence[Touch], agreement: Agreement, now: datetime, threshold: float
) -> datetime | None:
    fit_total = sum(c.value for c in reference_fit(attributes, agreement)[1])

    def below(at: datetime) -> bool:
        engagement_total = sum(value for _, _, value in reference_engagement(touches, agreement, at))
        return round(fit_total + engagement_total, 4) < threshold

    if below(now):
        return now
    if round(fit_total, 4) >= threshold:
        return None
    step, horizon = timedelta(hours=1), timedelta(days=365 * 100)
    while not below(now + step):
        if step >= horizon:
            return None
        step = min(step * 2, horizon)
    early, late = now, now + step
    while late - early > timedelta(milliseconds=10):
        middle = early + (late - early) / 2
        if below(middle):
            late = middle
        else:
            early = middle
    return late


def reference_merge(old: LeadAttributes, new: LeadAttributes) -> LeadAttributes:
    return old.model_copy(update=new.model_dump(exclude_none=True))


# --------------------------------------------------------------------------- strategies

TEXTS = ["VP Sales", "Head of RevOps", "Marketing Intern", "student", "CTO", "Straße", "STRASSE", "İ", "", " vp "]
attributes_strategy = st.builds(
    LeadAttributes,
    email=st.one_of(
        st.none(),
        st.sampled_from(["acme.io", "gmail.com", "Contoso-Analytics.com", "example.org"]).map(lambda d: f"p@{d}"),
    ),
    title=st.one_of(st.none(), st.sampled_from(TEXTS)),
    seniority=st.sampled_from([None, "vp", "VP", "c-level", "Director", "intern"]),
    department=st.sampled_from([None, "Sales", "revops", "Engineering", "marketing operations"]),
    company_size=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000_000)),
    industry=st.sampled_from([None, "software", "Fintech", "retail"]),
    country=st.sampled_from([None, "US", "DE", "GB", "JP"]),
)
agreements = st.sampled_from(AGREEMENTS)
offsets = st.integers(min_value=-20 * 86_400_000_000, max_value=86_400_000_000)  # microseconds around T0
touches_strategy = st.lists(
    st.builds(
        lambda kind, us: Touch(kind, T0 + timedelta(microseconds=us)), st.sampled_from(list(EngagementType)), offsets
    ),
    max_size=14,
)
all_before = touches_strategy.map(lambda touches: [t for t in touches if t.at <= T0])


# --------------------------------------------------------------------------- score


@settings(max_examples=300, deadline=None)
@given(agreement=agreements, attributes=attributes_strategy, touches=touches_strategy, at=offsets)
def test_score_and_its_total_are_the_definitions(
    agreement: Agreement, attributes: LeadAttributes, touches: list[Touch], at: int
) -> None:
    now = T0 + timedelta(microseconds=at)
    expected = reference_score(attributes, touches, agreement, now)

    assert score(attributes, touches, agreement, now) == expected
    assert score(attributes, tuple(touches), agreement, now) == expected  # the remembered fit, a second time
    assert score_total(attributes, touches, agreement, now) == (expected.total, expected.persona)
    assert fit_score(attributes, agreement) == reference_fit(attributes, agreement)


def test_each_agreement_gets_its_own_fit_for_the_same_attributes() -> None:
    attributes = LeadAttributes(title="VP Sales", company_size=300, country="US")
    richer = load_agreement_text(
        (ROOT / "examples" / "agreement.yaml").read_text().replace("points: 25", "points: 35", 1)
    )

    assert score(attributes, [], EXAMPLE, T0).fit + 10 == score(attributes, [], richer, T0).fit
    del richer
    gc.collect()
    assert score(attributes, [], EXAMPLE, T0) == reference_score(attributes, [], EXAMPLE, T0)


options = st.lists(st.sampled_from([*TEXTS, "sales", "Sales", "50", "ss"]), min_size=1, max_size=4).map(tuple)
any_match = st.one_of(
    options.map(lambda found: Match.model_validate({"in": found})),
    options.map(lambda found: Match(contains_any=found)),
    st.sampled_from([*TEXTS, "50"]).map(lambda text: Match(equals=text)),
    st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda number: Match(equals=number)),
    st.tuples(st.integers(0, 100), st.integers(100, 1000)).map(lambda pair: Match(between=pair)),
    st.booleans().map(lambda flag: Match(exists=flag)),
)
values = st.one_of(st.none(), st.sampled_from([*TEXTS, "50", "50.0", "Sales Ops"]), st.integers(-5, 2000))


@settings(max_examples=400, deadline=None)
@given(match=any_match, value=values)
def test_a_prepared_test_answers_as_matches(match: Match, value: str | int | None) -> None:
    check = _check(match)

    assert check(value) == matches(match, value)
    assert check(value) == matches(match, value)  # remembered


# --------------------------------------------------------------------------- crossings


@settings(max_examples=250, deadline=None)
@given(
    agreement=agreements,
    attributes=attributes_strategy,
    touches=touches_strategy,
    fraction=st.floats(min_value=-0.2, max_value=1.2),
)
def test_falls_below_at_is_the_definition_and_the_bound_never_passes_it(
    agreement: Agreement, attributes: LeadAttributes, touches: list[Touch], fraction: float
) -> None:
    now = reference_score(attributes, touches, agreement, T0)
    threshold = round(now.fit + fraction * now.engagement + 0.0001, 4)
    exact = reference_falls_below_at(attributes, touches, agreement, T0, threshold)

    assert falls_below_at(attributes, touches, agreement, T0, threshold) == exact
    assert_bounds(falls_below_bound(attributes, touches, agreement, T0, threshold), exact, T0)


def assert_bounds(bound: datetime | None, exact: datetime | None, now: datetime) -> None:
    """None only when there is no crossing; otherwise never after it."""
    if bound is None:
        assert exact is None
    if exact is not None:
        assert bound is not None and now <= bound <= exact


@settings(max_examples=250, deadline=None)
@given(
    agreement=agreements,
    attributes=attributes_strategy,
    touches=all_before,
    below=st.floats(min_value=0.0, max_value=0.002),
)
def test_the_bound_is_close_below_a_crossing_it_can_see(
    agreement: Agreement, attributes: LeadAttributes, touches: list[Touch], below: float
) -> None:
    """Thresholds a hair under the score now: where rounding decides, the bound still never passes."""
    now = reference_score(attributes, touches, agreement, T0)
    threshold = now.total - below
    exact = reference_falls_below_at(attributes, touches, agreement, T0, threshold)

    assert_bounds(falls_below_bound(attributes, touches, agreement, T0, threshold), exact, T0)


# --------------------------------------------------------------------------- the lead


@settings(max_examples=200, deadline=None)
@given(old=attributes_strategy, new=attributes_strategy, same=st.booleans(), empty=st.booleans())
def test_merge_attributes_is_the_copy_with_the_same_set_fields(
    old: LeadAttributes, new: LeadAttributes, same: bool, empty: bool
) -> None:
    if empty:
        old = LeadAttributes()
    if same:
        new = LeadAttributes.model_validate(old.model_dump(exclude_unset=True))
    merged, expected = merge_attributes(old, new), reference_merge(old, new)

    assert merged == expected
    assert merged.model_fields_set == expected.model_fields_set
    assert merge_attributes(old, old) == reference_merge(old, old)


LEAD = uuid.UUID("5a1e0000-0000-4000-8000-0000000000aa")


def received(kind: EngagementType, at: datetime, attributes: LeadAttributes, n: int) -> LeadReceivedV1:
    return LeadReceivedV1(
        event_id=uuid.uuid5(LEAD, f"received-{n}"),
        lead_id=LEAD,
        occurred_at=at,
        source="hubspot",
        webhook_id=f"wh-{n}",
        engagement=kind,
        attributes=attributes,
    )


@settings(max_examples=150, deadline=None)
@given(
    agreement=agreements,
    attributes=attributes_strategy,
    kinds=st.lists(st.sampled_from(list(EngagementType)), min_size=1, max_size=8),
    gaps=st.lists(st.integers(min_value=0, max_value=3 * 86_400), min_size=8, max_size=8),
    wait=st.integers(min_value=0, max_value=30 * 86_400),
)
def test_without_the_score_fact_the_lead_decides_the_same(
    agreement: Agreement, attributes: LeadAttributes, kinds: list[EngagementType], gaps: list[int], wait: int
) -> None:
    full = light = LeadState(lead_id=LEAD)
    now = T0
    for n, (kind, gap) in enumerate(zip(kinds, gaps, strict=False)):
        now += timedelta(seconds=gap)
        event = received(kind, now, attributes, n)
        with_fact, without = (
            on_received(full, event, agreement, now),
            on_received(light, event, agreement, now, score_fact=False),
        )
        assert with_fact.state == without.state
        assert isinstance(with_fact.facts[0], LeadScoredV1)
        assert with_fact.facts[1:] == without.facts
        full, light = with_fact.state, without.state

    exact = next_reevaluation(full, agreement, now)
    assert_bounds(reevaluation_bound(full, agreement, now), exact, now)
    if exact is None:
        return
    later = max(exact, now + timedelta(seconds=wait))
    fired, quiet = (
        on_timer(full, agreement, later, timer_id_for(full, exact)),
        on_timer(full, agreement, later, timer_id_for(full, exact), score_fact=False),
    )
    assert fired.state == quiet.state
    assert [f for f in fired.facts if not isinstance(f, LeadScoredV1)] == list(quiet.facts)


@settings(max_examples=100, deadline=None)
@given(
    attributes=attributes_strategy,
    stage=st.sampled_from(list(Stage)),
    total=st.floats(min_value=-100, max_value=300),
    persona=st.sampled_from([None, "revenue-leader"]),
    source=st.sampled_from([None, "hubspot"]),
    touches=st.one_of(st.none(), touches_strategy.map(tuple)),
    pinned=st.booleans(),
)
def test_rescored_is_replace(
    attributes: LeadAttributes,
    stage: Stage,
    total: float,
    persona: str | None,
    source: str | None,
    touches: tuple[Touch, ...] | None,
    pinned: bool,
) -> None:
    state = LeadState(lead_id=LEAD, stage=stage, tier=Tier.warm, pinned=pinned, held_until=T0)
    expected = replace(state, attributes=attributes, score_total=total, persona=persona)
    if source is not None:
        expected = replace(expected, source=source)
    if touches is not None:
        expected = replace(expected, touches=touches)

    updated = rescored(state, total, persona, source=source, attributes=attributes, touches=touches)

    assert updated == expected
    assert updated.__dict__.keys() == {field.name for field in fields(LeadState)}
    assert not hasattr(LeadState, "__post_init__"), "rescored copies fields: it would skip __post_init__"


def test_the_remembered_playbook_is_playbook_for() -> None:
    for agreement in AGREEMENTS:
        for persona in [None, *(p.id for p in agreement.personas)]:
            for stage in Stage:
                for tier in [None, *Tier]:
                    assert _playbook(agreement, persona, stage, tier) == playbook_for(agreement, persona, stage, tier)
