"""Properties of the scoring core over random leads, touches, activities and timers (hypothesis):

- scoring is deterministic given events, agreement and time (whatever order touches are stored in);
- decayed engagement never rises between events, window caps included;
- hysteresis never flaps on a constant score;
- every stage change stays on the legal lifecycle graph, and a refused request changes nothing;
- a re-evaluation armed at ``next_reevaluation`` changes the stage exactly then, not earlier.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import load_agreement
from coxswain.core.lead import LeadState, Outcome, next_reevaluation, on_activity, on_received, on_timer, timer_id_for
from coxswain.core.lifecycle import LEGAL_TRANSITIONS, LifecycleRefused
from coxswain.core.scoring import Touch, awarded, decayed, score
from schemas.events import (
    ActivityRecordedV1,
    ActivityType,
    EngagementType,
    Event,
    LeadAttributes,
    LeadReceivedV1,
    LeadStageChangedV1,
    Stage,
)
from tests.support import facts

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
LEAD_ID = uuid.UUID("5a1e0000-0000-4000-8000-0000000000ff")

ATTRIBUTES = [
    LeadAttributes(),
    LeadAttributes(title="Sales Manager", company_size=100, industry="Software", country="US"),
    LeadAttributes(title="VP Sales", seniority="VP", department="Sales", company_size=300, country="US"),
    LeadAttributes(title="Head of RevOps", department="RevOps", company_size=20_000, country="GB"),
    LeadAttributes(email="kid@gmail.com", title="Student", country="DE"),
    LeadAttributes(email="spy@contoso-analytics.com", title="Director", company_size=60),
]
attributes = st.sampled_from(ATTRIBUTES)
seconds = st.integers(min_value=0, max_value=60 * 86_400)
touches = st.lists(st.tuples(st.sampled_from(list(EngagementType)), seconds), max_size=25).map(
    lambda pairs: [Touch(kind, T0 + timedelta(seconds=offset)) for kind, offset in pairs]
)


@settings(max_examples=150, deadline=None)
@given(attributes=attributes, touches=touches, at=seconds, order=st.randoms(use_true_random=False))
def test_scoring_is_deterministic_given_events_agreement_and_time(
    attributes: LeadAttributes, touches: list[Touch], at: int, order: object
) -> None:
    now = T0 + timedelta(seconds=at)
    shuffled = list(touches)
    order.shuffle(shuffled)  # type: ignore[attr-defined]

    first = score(attributes, touches, AGREEMENT, now)

    assert score(attributes, tuple(touches), AGREEMENT, now) == first
    assert score(attributes, shuffled, AGREEMENT, now) == first
    assert first.total == pytest.approx(sum(c.value for c in first.contributions), abs=1e-3)


@settings(max_examples=150, deadline=None)
@given(attributes=attributes, touches=touches, first=seconds, gap=seconds)
def test_decayed_engagement_never_rises_between_events(
    attributes: LeadAttributes, touches: list[Touch], first: int, gap: int
) -> None:
    t1 = max([T0 + timedelta(seconds=first), *(touch.at for touch in touches)])
    t2 = t1 + timedelta(seconds=gap)

    before, after = score(attributes, touches, AGREEMENT, t1), score(attributes, touches, AGREEMENT, t2)

    assert after.engagement <= before.engagement
    assert after.total <= before.total
    by_rule = {c.rule_id: c for c in before.contributions}
    for contribution in after.contributions:
        assert contribution.value <= by_rule[contribution.rule_id].value
        assert contribution.points == by_rule[contribution.rule_id].points  # what fired never changes


@settings(max_examples=100, deadline=None)
@given(touches=touches, at=seconds)
def test_engagement_is_the_sum_of_each_award_decayed(touches: list[Touch], at: int) -> None:
    now = T0 + timedelta(seconds=at)

    for contribution in score(LeadAttributes(), touches, AGREEMENT, now).contributions:
        rule = next(r for r in AGREEMENT.scoring.engagement if contribution.rule_id == f"engagement.{r.event.value}")
        times = sorted(t.at for t in touches if t.engagement == rule.event and t.at <= now)
        awards = awarded(rule, times)
        value = sum(decayed(points, now - moment, rule.half_life) for points, moment in zip(awards, times, strict=True))
        assert contribution.value == round(min(value, rule.cap) if rule.cap is not None else value, 4)
        assert contribution.points == round(sum(awards), 4)
        if rule.cap_per_window is not None:
            window = rule.cap_per_window.window
            for moment in times:
                inside = sum(p for p, t in zip(awards, times, strict=True) if moment - window < t <= moment)
                assert inside <= rule.cap_per_window.points + 1e-6


def received(kind: EngagementType, at: datetime, attributes: LeadAttributes, n: int) -> LeadReceivedV1:
    return facts.received(kind, at, attributes, lead_id=LEAD_ID, n=n)


def activity(kind: ActivityType, at: datetime, reason: str | None, n: int) -> ActivityRecordedV1:
    return facts.activity(kind, at, lead_id=LEAD_ID, n=n, reason=reason)


# Engagement types the example agreement gives no points: events that leave the score unchanged.
UNSCORED = [EngagementType.email_open, EngagementType.field_update]


@settings(max_examples=150, deadline=None)
@given(
    attributes=attributes,
    start=st.sampled_from([Stage.lead, Stage.mql, Stage.recycled]),
    steps=st.lists(st.integers(min_value=0, max_value=30 * 86_400), min_size=1, max_size=20),
)
def test_hysteresis_never_flaps_on_a_constant_score(attributes: LeadAttributes, start: Stage, steps: list[int]) -> None:
    """Only fit counts (no engagement rule fires), so the score is the same at every evaluation."""
    state = LeadState(lead_id=LEAD_ID, stage=start, attributes=attributes)
    changes: list[LeadStageChangedV1] = []
    totals = set()
    for n, offset in enumerate(sorted(steps)):
        now = T0 + timedelta(seconds=offset)
        outcome = on_received(state, received(UNSCORED[n % 2], now, attributes, n), AGREEMENT, now)
        due = next_reevaluation(outcome.state, AGREEMENT, now)
        if due is not None and due <= now + timedelta(days=1):
            outcome = Outcome(
                outcome.state, outcome.facts + on_timer(outcome.state, AGREEMENT, due, uuid.uuid4()).facts
            )
        state = outcome.state
        totals.add(state.score_total)
        changes += [fact for fact in outcome.facts if isinstance(fact, LeadStageChangedV1)]

    assert len(totals) == 1
    assert len(changes) <= 1, [(c.from_stage, c.to_stage, c.reason) for c in changes]
    total = totals.pop()
    mql = AGREEMENT.scoring.mql
    if mql.exit <= total < mql.enter:
        assert changes == []  # inside the band nothing ever moves


step = st.one_of(
    st.tuples(st.just("event"), st.sampled_from(list(EngagementType)), st.sampled_from(range(len(ATTRIBUTES)))),
    st.tuples(
        st.just("activity"),
        st.sampled_from(list(ActivityType)),
        st.sampled_from([None, "no-budget", "spam", "bad-timing", "made-up"]),
    ),
    st.tuples(st.just("timer"), st.none(), st.none()),
)


def play(steps: list[tuple[str, object, object]], gaps: list[int]) -> tuple[LeadState, list[Event], list[Stage]]:
    state = LeadState(lead_id=LEAD_ID)
    now = T0
    facts: list[Event] = []
    path = [state.stage]
    for n, ((kind, what, extra), gap) in enumerate(zip(steps, gaps, strict=False)):
        now += timedelta(seconds=gap)
        before = state
        try:
            if kind == "event":
                assert isinstance(what, EngagementType) and isinstance(extra, int)
                outcome = on_received(state, received(what, now, ATTRIBUTES[extra], n), AGREEMENT, now)
            elif kind == "activity":
                assert isinstance(what, ActivityType)
                reason = extra if isinstance(extra, str) else None
                outcome = on_activity(state, activity(what, now, reason, n), AGREEMENT, now)
            else:
                due = next_reevaluation(state, AGREEMENT, now)
                if due is None:
                    continue
                now = max(now, due)
                outcome = on_timer(state, AGREEMENT, due, timer_id_for(state, due))
        except LifecycleRefused:
            assert state == before
            continue
        for fact in outcome.facts:
            if isinstance(fact, LeadStageChangedV1):
                assert fact.from_stage is state.stage
                assert fact.to_stage in LEGAL_TRANSITIONS[fact.from_stage], (fact.from_stage, fact.to_stage)
        state = outcome.state
        facts += outcome.facts
        if path[-1] is not state.stage:
            path.append(state.stage)
    return state, facts, path


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step, max_size=25), gaps=st.lists(st.integers(min_value=0, max_value=20 * 86_400), max_size=25))
def test_transitions_never_leave_the_legal_graph(steps: list[tuple[str, object, object]], gaps: list[int]) -> None:
    _, facts, path = play(steps, gaps)

    for old, new in itertools.pairwise(path):
        assert new in LEGAL_TRANSITIONS[old], (old, new, path)
    changes = [fact for fact in facts if isinstance(fact, LeadStageChangedV1)]
    assert [(c.from_stage, c.to_stage) for c in changes] == list(itertools.pairwise(path))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(step, max_size=15), gaps=st.lists(st.integers(min_value=0, max_value=20 * 86_400), max_size=15))
def test_replaying_the_same_inputs_gives_the_same_state_and_facts(
    steps: list[tuple[str, object, object]], gaps: list[int]
) -> None:
    first_state, first_facts, _ = play(steps, gaps)
    second_state, second_facts, _ = play(steps, gaps)

    assert first_state == second_state
    assert [f.model_dump_json() for f in first_facts] == [f.model_dump_json() for f in second_facts]
    assert len({fact.event_id for fact in first_facts}) == len(first_facts)  # no fact emitted twice


@settings(max_examples=150, deadline=None)
@given(
    attributes=attributes,
    kinds=st.lists(st.sampled_from(list(EngagementType)), min_size=1, max_size=6),
    spread=st.integers(min_value=0, max_value=3 * 86_400),
    rejected=st.booleans(),
)
def test_the_armed_re_evaluation_changes_the_stage_then_and_not_before(
    attributes: LeadAttributes, kinds: list[EngagementType], spread: int, rejected: bool
) -> None:
    events = [
        received(kind, T0 + timedelta(seconds=spread * i // len(kinds)), attributes, i) for i, kind in enumerate(kinds)
    ]
    state = LeadState(lead_id=LEAD_ID)
    now = T0
    for event in events:
        now = event.occurred_at
        state = on_received(state, event, AGREEMENT, now).state
    if rejected and state.stage is Stage.mql:
        state = on_activity(state, activity(ActivityType.sal_rejected, now, "wrong-person", 99), AGREEMENT, now).state
        state = on_received(state, received(EngagementType.demo_request, now, attributes, 100), AGREEMENT, now).state

    due = next_reevaluation(state, AGREEMENT, now)
    if due is None:
        return
    timer = timer_id_for(state, due)

    fired = on_timer(state, AGREEMENT, due, timer)

    assert [type(f).__name__ for f in fired.facts][:2] == ["LeadScoredV1", "LeadStageChangedV1"]
    if due - timedelta(seconds=1) > now:
        assert on_timer(state, AGREEMENT, due - timedelta(seconds=1), timer).facts == ()
