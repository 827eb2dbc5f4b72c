"""Personas, window caps, priority tiers, SQL criteria, decay demotion, fast-lane holds, recycle
cooldowns, rejection reasons, playbooks and the identity rule, against the example agreement."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from coxswain.core.agreement import Agreement, load_agreement, parse_agreement
from coxswain.core.identity import (
    alias_key,
    email_key,
    identity_keys,
    lead_id_for,
    merged,
    resolve,
    source_key,
)
from coxswain.core.lead import (
    LeadState,
    evaluation_time,
    fact_id,
    next_reevaluation,
    on_activity,
    on_received,
    on_timer,
    timer_id_for,
)
from coxswain.core.playbooks import playbook_for
from coxswain.core.scoring import Touch, falls_below_at, persona_for, priority_tier, score
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityRefusedV1,
    ActivityType,
    EngagementType,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadScoredV1,
    LeadStageChangedV1,
    Stage,
    Tier,
)
from tests.support import facts

EXAMPLE_PATH = Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml"
AGREEMENT = load_agreement(EXAMPLE_PATH)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
LEAD_ID = uuid.UUID("5a1e0000-0000-4000-8000-000000000003")

# practitioner 10 + mid-market 15 + software 10 + US 5 = 40, no persona.
FIT_40 = LeadAttributes(email="ops@acme.io", title="Sales Manager", company_size=100, industry="Software", country="US")
# decision-maker 25 + mid-market 15 + US 5 + persona revenue-leader 10 = 55.
REVENUE_LEADER = LeadAttributes(
    email="cro@acme.io", title="VP Sales", seniority="VP", department="Sales", company_size=300, country="US"
)
STUDENT = LeadAttributes(email="kid@gmail.com", title="Student", country="DE")  # 5 - 50 - 15 = -60


def variant(change: Any) -> Agreement:
    document = yaml.safe_load(EXAMPLE_PATH.read_text(encoding="utf-8"))
    change(document)
    return parse_agreement(copy.deepcopy(document))


def received(
    engagement: EngagementType, at: datetime = T0, attributes: LeadAttributes = FIT_40, n: int = 0
) -> LeadReceivedV1:
    return facts.received(engagement, at, attributes, lead_id=LEAD_ID, n=n)


def activity(kind: ActivityType, at: datetime = T0, reason: str | None = None, n: int = 0) -> ActivityRecordedV1:
    return facts.activity(kind, at, lead_id=LEAD_ID, n=n, reason=reason)


def run(
    events: list[LeadReceivedV1], state: LeadState | None = None, agreement: Agreement = AGREEMENT
) -> tuple[LeadState, list[Event]]:
    state = state or LeadState(lead_id=LEAD_ID)
    facts: list[Event] = []
    for event in events:
        outcome = on_received(state, event, agreement, event.occurred_at)
        state, facts = outcome.state, [*facts, *outcome.facts]
    return state, facts


def only(facts: tuple[Event, ...] | list[Event], kind: type[Event]) -> Any:
    (found,) = [fact for fact in facts if isinstance(fact, kind)]
    return found


# --------------------------------------------------------------------------- personas and playbooks


@pytest.mark.parametrize(
    ("attributes", "persona"),
    [
        (REVENUE_LEADER, "revenue-leader"),
        (LeadAttributes(seniority="director", department="MARKETING"), "revenue-leader"),
        (LeadAttributes(seniority="VP", department="revops"), "revenue-leader"),  # first match wins
        (LeadAttributes(department="RevOps"), "ops-champion"),
        (LeadAttributes(department="Data"), "technical-evaluator"),
        (LeadAttributes(seniority="VP"), None),  # every test of a persona must hold
        (LeadAttributes(), None),
    ],
)
def test_persona_is_the_first_whose_every_test_holds(attributes: LeadAttributes, persona: str | None) -> None:
    assert persona_for(attributes, AGREEMENT) == persona


def test_persona_is_an_attribute_fit_rules_score() -> None:
    result = score(REVENUE_LEADER, [], AGREEMENT, T0)

    assert result.persona == "revenue-leader"
    assert {c.rule_id: c.value for c in result.contributions} == {
        "title-decision-maker": 25,
        "size-mid-market": 15,
        "country-served": 5,
        "persona-revenue-leader": 10,
    }


def test_qualified_fact_carries_the_persona_and_its_playbook() -> None:
    state, facts = run([received(EngagementType.demo_request, attributes=REVENUE_LEADER)])

    qualified = only(facts, LeadQualifiedV1)
    assert (qualified.tier, qualified.persona) == (Tier.hot, "revenue-leader")
    # A persona playbook beats the hot-tier one.
    assert qualified.playbook.id == "mql-revenue-leader"
    assert qualified.playbook.content[1].url == "https://northwind.example/roi"
    assert only(facts, LeadStageChangedV1).playbook == qualified.playbook
    assert state.persona == "revenue-leader"


@pytest.mark.parametrize(
    ("persona", "stage", "tier", "expected"),
    [
        (None, Stage.mql, Tier.hot, "mql-hot"),
        (None, Stage.mql, Tier.warm, "mql-default"),
        ("technical-evaluator", Stage.mql, Tier.cold, "mql-default"),
        ("ops-champion", Stage.mql, Tier.hot, "mql-ops-champion"),
        ("revenue-leader", Stage.sal, Tier.hot, "sal-default"),
        (None, Stage.recycled, None, "recycled-default"),
        (None, Stage.lead, None, None),
    ],
)
def test_the_most_specific_playbook_wins(persona: str | None, stage: Stage, tier: Tier | None, expected: str) -> None:
    playbook = playbook_for(AGREEMENT, persona, stage, tier)

    assert (playbook.id if playbook else None) == expected


# --------------------------------------------------------------------------- engagement windows and tiers


def test_window_cap_limits_points_awarded_within_any_window() -> None:
    burst = [Touch(EngagementType.page_view, T0 + timedelta(minutes=i)) for i in range(12)]

    within = score(LeadAttributes(), burst, AGREEMENT, T0 + timedelta(minutes=11))
    (contribution,) = within.contributions
    assert contribution.points == 5  # 12 views, but at most 5 points per day
    assert 4.99 < contribution.value <= 5

    next_day = [*burst, *(Touch(EngagementType.page_view, T0 + DAY + timedelta(minutes=i)) for i in range(3))]
    later = score(LeadAttributes(), next_day, AGREEMENT, T0 + DAY + timedelta(minutes=2))
    (contribution,) = later.contributions
    assert contribution.points == 8  # the window moved on: three more views award again


def test_window_cap_award_is_independent_of_the_order_touches_are_stored_in() -> None:
    touches = [Touch(EngagementType.page_view, T0 + timedelta(hours=h)) for h in (5, 0, 30, 1, 2, 3, 4, 29)]

    assert score(LeadAttributes(), touches, AGREEMENT, T0 + 2 * DAY) == score(
        LeadAttributes(), sorted(touches, key=lambda t: t.at), AGREEMENT, T0 + 2 * DAY
    )


def test_priority_tier_is_the_more_urgent_of_score_and_intent() -> None:
    assert priority_tier(85, None, AGREEMENT) is Tier.hot
    assert priority_tier(10, Tier.hot, AGREEMENT) is Tier.hot
    assert priority_tier(85, Tier.warm, AGREEMENT) is Tier.hot
    assert priority_tier(65, Tier.cold, AGREEMENT) is Tier.warm
    assert priority_tier(10, Tier.warm, AGREEMENT) is Tier.warm


def test_a_warm_fast_lane_on_a_hot_score_qualifies_hot() -> None:
    warm_lane = variant(lambda d: d["scoring"]["fast_lanes"][0].update(tier="warm"))

    _, facts = run([received(EngagementType.demo_request, attributes=REVENUE_LEADER)], agreement=warm_lane)

    assert only(facts, LeadQualifiedV1).tier is Tier.hot  # 55 + 40 = 95 >= 80


# --------------------------------------------------------------------------- decay demotes at the computed time


def mql_by_score() -> tuple[LeadState, list[Event]]:
    """Fit 40 + two pricing views (30, the cap) = 70: a warm MQL held by nothing but its score."""
    return run([received(EngagementType.pricing_view, T0, n=1), received(EngagementType.pricing_view, T0, n=2)])


def test_decayed_mql_is_demoted_at_the_computed_time_with_an_explanation() -> None:
    state, _ = mql_by_score()
    assert (state.stage, state.tier, state.pinned, state.held_until) == (Stage.mql, Tier.warm, False, None)

    due = next_reevaluation(state, AGREEMENT, T0)

    # 40 + 30 * 2^(-t/7d) < 45  <=>  t > 7d * log2(6) = 18.09 days
    assert due is not None
    assert T0 + timedelta(days=18.09) < due < T0 + timedelta(days=18.1)
    assert due == falls_below_at(state.attributes, state.touches, AGREEMENT, T0, 45)

    timer_id = timer_id_for(state, due)
    early = on_timer(state, AGREEMENT, due - timedelta(seconds=1), timer_id)
    assert early.facts == () and early.state == state

    outcome = on_timer(state, AGREEMENT, due, timer_id)

    scored, changed = outcome.facts
    assert isinstance(scored, LeadScoredV1) and isinstance(changed, LeadStageChangedV1)
    assert (changed.from_stage, changed.to_stage) == (Stage.mql, Stage.lead)
    assert changed.reason == f"score {scored.total:g} fell below MQL exit 45 as engagement decayed"
    assert scored.total < 45 <= scored.fit + 5
    pricing = next(c for c in scored.contributions if c.rule_id == "engagement.pricing_view")
    assert (pricing.points, pricing.value < 5) == (30, True)
    assert {fact.caused_by for fact in outcome.facts} == {timer_id}  # type: ignore[attr-defined]
    assert [fact.event_id for fact in outcome.facts] == [
        fact_id(timer_id, "scored"),
        fact_id(timer_id, "stage_changed"),
    ]
    assert all(fact.occurred_at == due for fact in outcome.facts)
    assert (outcome.state.stage, outcome.state.tier) == (Stage.lead, None)
    assert next_reevaluation(outcome.state, AGREEMENT, due) is None


def test_new_engagement_postpones_the_demotion() -> None:
    state, _ = mql_by_score()
    first = next_reevaluation(state, AGREEMENT, T0)

    later, _ = run([received(EngagementType.webinar_attended, T0 + 10 * DAY, n=3)], state)

    second = next_reevaluation(later, AGREEMENT, T0 + 10 * DAY)
    assert first is not None and second is not None and second > first


def test_mql_whose_fit_alone_stays_above_exit_is_never_demoted() -> None:
    state, _ = run([received(EngagementType.demo_request, attributes=REVENUE_LEADER)])

    assert state.stage is Stage.mql
    assert next_reevaluation(state, AGREEMENT, T0) is None  # fit 55 >= exit 45


def test_fast_lane_hold_protects_a_low_score_mql_until_it_ends() -> None:
    state, facts = run([received(EngagementType.demo_request, attributes=STUDENT)])
    assert only(facts, LeadQualifiedV1).reason == "fast lane demo_request"
    assert state.held_until == T0 + 7 * DAY

    # Another event inside the hold does not demote, although the score is below the exit.
    held, facts = run([received(EngagementType.page_view, T0 + DAY, STUDENT, n=2)], state)
    assert held.stage is Stage.mql and [type(f) for f in facts] == [LeadScoredV1]

    due = next_reevaluation(held, AGREEMENT, T0 + DAY)
    assert due == T0 + 7 * DAY
    outcome = on_timer(held, AGREEMENT, due, timer_id_for(held, due))
    assert only(outcome.facts, LeadStageChangedV1).to_stage is Stage.lead


def test_fast_lane_without_hold_is_never_demoted_by_decay() -> None:
    no_hold = variant(lambda d: d["scoring"]["fast_lanes"][0].pop("hold"))

    state, _ = run([received(EngagementType.demo_request, attributes=STUDENT)], agreement=no_hold)

    assert (state.stage, state.pinned) == (Stage.mql, True)
    assert next_reevaluation(state, no_hold, T0) is None
    later, _ = run([received(EngagementType.page_view, T0 + 30 * DAY, STUDENT, n=2)], state, no_hold)
    assert later.stage is Stage.mql


def test_an_event_that_drops_the_score_below_exit_demotes_at_once() -> None:
    state, _ = mql_by_score()

    outcome = on_received(state, received(EngagementType.page_view, T0 + DAY, STUDENT, n=3), AGREEMENT, T0 + DAY)

    changed = only(outcome.facts, LeadStageChangedV1)
    assert (changed.from_stage, changed.to_stage) == (Stage.mql, Stage.lead)
    assert "fell below MQL exit 45" in changed.reason and "decayed" not in changed.reason


# --------------------------------------------------------------------------- SQL criteria


def sal_state() -> LeadState:
    state, _ = run([received(EngagementType.demo_request, attributes=REVENUE_LEADER)])  # 95, hot
    return on_activity(state, activity(ActivityType.sal_accepted), AGREEMENT, T0).state


def test_a_sal_reaching_the_sql_entry_becomes_sql_and_falls_back_below_exit() -> None:
    state = sal_state()
    assert (state.stage, state.pinned) == (Stage.sal, True)

    promoted, facts = run([received(EngagementType.form_submit, T0 + timedelta(hours=1), REVENUE_LEADER, n=2)], state)

    changed = only(facts, LeadStageChangedV1)
    assert (changed.from_stage, changed.to_stage) == (Stage.sal, Stage.sql)
    assert changed.reason.startswith("score 104.9") and changed.reason.endswith("reached SQL entry 100")
    assert promoted.pinned is False
    due = next_reevaluation(promoted, AGREEMENT, T0 + timedelta(hours=1))
    assert due is not None
    demoted = on_timer(promoted, AGREEMENT, due, timer_id_for(promoted, due))
    back = only(demoted.facts, LeadStageChangedV1)
    assert (back.from_stage, back.to_stage) == (Stage.sql, Stage.sal)
    assert back.reason.endswith("fell below SQL exit 85 as engagement decayed")


def test_an_sql_a_rep_qualified_is_not_demoted_by_decay() -> None:
    state = on_activity(sal_state(), activity(ActivityType.sql_qualified, n=2), AGREEMENT, T0).state

    assert (state.stage, state.pinned) == (Stage.sql, True)
    assert next_reevaluation(state, AGREEMENT, T0) is None


def test_an_activity_never_moves_a_lead_back() -> None:
    state = on_activity(sal_state(), activity(ActivityType.sql_qualified, n=2), AGREEMENT, T0).state

    outcome = on_activity(state, activity(ActivityType.sal_accepted, n=3), AGREEMENT, T0)

    assert outcome.state == state
    (accepted,) = outcome.facts
    assert isinstance(accepted, ActivityAcceptedV1) and accepted.from_stage == accepted.to_stage == Stage.sql


def test_news_of_a_stage_already_passed_is_accepted_and_moves_nothing() -> None:
    state = sal_state()
    for n, kind in enumerate([ActivityType.sql_qualified, ActivityType.opportunity_created], start=2):
        state = on_activity(state, activity(kind, n=n), AGREEMENT, T0).state

    outcome = on_activity(state, activity(ActivityType.sal_accepted, n=9), AGREEMENT, T0)

    assert outcome.state == state and [type(fact) for fact in outcome.facts] == [ActivityAcceptedV1]


# --------------------------------------------------------------------------- rejection and recycling


def mql_state() -> LeadState:
    return mql_by_score()[0]


def test_rejection_recycles_with_the_cooldown_and_blocks_requalifying() -> None:
    outcome = on_activity(mql_state(), activity(ActivityType.sal_rejected, reason="no-budget"), AGREEMENT, T0)
    state = outcome.state
    assert (state.stage, state.recycled_until, state.tier) == (Stage.recycled, T0 + 30 * DAY, None)
    changed = only(outcome.facts, LeadStageChangedV1)
    assert changed.reason == "sal_rejected (no-budget)"
    assert changed.playbook is not None and changed.playbook.id == "recycled-default"

    hot, facts = run([received(EngagementType.demo_request, T0 + DAY, REVENUE_LEADER, n=5)], state)

    assert hot.stage is Stage.recycled and [type(f) for f in facts] == [LeadScoredV1]
    due = next_reevaluation(hot, AGREEMENT, T0 + DAY)
    assert due == T0 + 30 * DAY  # still above the MQL entry then: fit 55 + the decayed demo request
    requalified = on_timer(hot, AGREEMENT, due, timer_id_for(hot, due))
    assert [type(f) for f in requalified.facts] == [LeadScoredV1, LeadStageChangedV1, LeadQualifiedV1]
    assert only(requalified.facts, LeadStageChangedV1).from_stage is Stage.recycled
    assert requalified.state.recycled_until is None


def test_a_recycled_lead_that_would_not_qualify_after_its_cooldown_arms_nothing() -> None:
    state = on_activity(mql_state(), activity(ActivityType.sal_rejected, reason="no-budget"), AGREEMENT, T0).state

    assert next_reevaluation(state, AGREEMENT, T0) is None  # 70 decays to ~45 by then, below the entry


@pytest.mark.parametrize(
    ("reason", "stage", "cooldown"),
    [
        ("bad-timing", Stage.recycled, 90 * DAY),
        ("wrong-person", Stage.recycled, 14 * DAY),
        ("no-response", Stage.recycled, 30 * DAY),
        ("spam", Stage.disqualified, None),
        ("competitor", Stage.disqualified, None),
    ],
)
def test_each_rejection_reason_has_its_outcome(reason: str, stage: Stage, cooldown: timedelta | None) -> None:
    state = on_activity(mql_state(), activity(ActivityType.sal_rejected, reason=reason), AGREEMENT, T0).state

    assert state.stage is stage
    assert state.recycled_until == (T0 + cooldown if cooldown else None)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("too-expensive", "sal_rejected carries reason code 'too-expensive', which the agreement does not define"),
        (None, "sal_rejected carries no reason code"),
    ],
)
def test_rejection_without_a_known_reason_code_is_refused(reason: str | None, message: str) -> None:
    state = mql_state()

    outcome = on_activity(state, activity(ActivityType.sal_rejected, reason=reason), AGREEMENT, T0)

    assert outcome.state is state
    (refused,) = outcome.facts
    assert isinstance(refused, ActivityRefusedV1)
    assert (refused.refusal, refused.reported_reason, refused.stage) == ("unknown_reason", reason, Stage.mql)
    assert refused.reason.startswith(message)
    assert refused.reason.endswith("allowed: no-budget, bad-timing, wrong-person, no-response, competitor, spam")


def test_an_unknown_reason_code_maps_to_the_declared_fallback_when_the_agreement_says_so() -> None:
    lenient = variant(
        lambda d: d["lifecycle"].update(activities={"unknown_reason": "fallback", "fallback_reason": "no-response"})
    )

    outcome = on_activity(mql_state(), activity(ActivityType.sal_rejected, reason="meh"), lenient, T0)

    accepted = only(outcome.facts, ActivityAcceptedV1)
    assert (accepted.reason, accepted.reported_reason) == ("no-response", "meh")
    assert outcome.state.stage is Stage.recycled
    assert outcome.state.recycled_until == T0 + 30 * DAY  # no-response's cooldown
    assert only(outcome.facts, LeadStageChangedV1).reason == "sal_rejected (no-response)"


def test_won_for_an_mql_is_refused_by_default_and_accepted_with_skipped_stages_when_allowed() -> None:
    won = activity(ActivityType.won, n=4)

    refused = on_activity(mql_state(), won, AGREEMENT, T0)
    assert only(refused.facts, ActivityRefusedV1).refusal == "illegal_transition"
    assert "it would skip sal, sql, opportunity" in only(refused.facts, ActivityRefusedV1).reason

    walking = variant(lambda d: d["lifecycle"].update(activities={"skipped_stages": "accept"}))
    outcome = on_activity(mql_state(), won, walking, T0)

    assert outcome.state.stage is Stage.customer
    accepted, *changes = outcome.facts
    assert isinstance(accepted, ActivityAcceptedV1)
    assert accepted.skipped_stages == (Stage.sal, Stage.sql, Stage.opportunity)
    assert (accepted.from_stage, accepted.to_stage) == (Stage.mql, Stage.customer)
    assert [(c.from_stage, c.to_stage) for c in changes if isinstance(c, LeadStageChangedV1)] == [
        (Stage.mql, Stage.sal),
        (Stage.sal, Stage.sql),
        (Stage.sql, Stage.opportunity),
        (Stage.opportunity, Stage.customer),
    ]
    assert len({fact.event_id for fact in outcome.facts}) == 5, "each fact has its own id"


def test_an_activity_by_a_rep_outside_the_roster_is_refused_unless_the_agreement_accepts_it() -> None:
    stranger = activity(ActivityType.sal_accepted).model_copy(update={"rep_id": "mallory"})

    refused = only(on_activity(mql_state(), stranger, AGREEMENT, T0).facts, ActivityRefusedV1)
    assert refused.refusal == "unknown_rep" and "'mallory' is not in the roster" in refused.reason

    trusting = variant(lambda d: d["lifecycle"].update(activities={"unknown_rep": "accept"}))
    assert on_activity(mql_state(), stranger, trusting, T0).state.stage is Stage.sal


def test_without_reason_codes_any_rejection_recycles() -> None:
    free = variant(lambda d: d["lifecycle"].pop("rejection_reasons"))

    state = on_activity(mql_state(), activity(ActivityType.sal_rejected), free, T0).state

    assert (state.stage, state.recycled_until) == (Stage.recycled, T0 + 30 * DAY)


def test_lost_deals_are_recycled_with_the_cooldown() -> None:
    state = sal_state()
    for n, kind in enumerate([ActivityType.sql_qualified, ActivityType.opportunity_created, ActivityType.lost]):
        state = on_activity(state, activity(kind, T0 + n * DAY, n=n), AGREEMENT, T0 + n * DAY).state

    assert (state.stage, state.recycled_until) == (Stage.recycled, T0 + 2 * DAY + 30 * DAY)


def test_an_illegal_activity_is_still_an_illegal_transition() -> None:
    outcome = on_activity(
        LeadState(lead_id=LEAD_ID), activity(ActivityType.sal_rejected, reason="no-budget"), AGREEMENT, T0
    )

    refused = only(outcome.facts, ActivityRefusedV1)
    assert refused.refusal == "illegal_transition" and "from lead it may go to: disqualified, mql" in refused.reason


# --------------------------------------------------------------------------- evaluation time and identity


def test_a_late_event_is_evaluated_at_the_latest_touch_already_seen() -> None:
    state, _ = mql_by_score()

    assert evaluation_time(state, T0 - DAY) == T0
    assert evaluation_time(state, T0 + DAY) == T0 + DAY
    assert evaluation_time(LeadState(lead_id=LEAD_ID), T0) == T0


def test_identity_keys_and_the_provisional_id() -> None:
    assert identity_keys(" Jane@Acme.IO ", "hubspot", " 42 ") == ("email:jane@acme.io", "source:hubspot:42")
    assert identity_keys(None, "hubspot", "  ") == ()
    assert lead_id_for("JANE@acme.io", "marketo", None) == lead_id_for("jane@acme.io", "hubspot", "7")
    assert lead_id_for(None, "hubspot", "42") != lead_id_for(None, "marketo", "42")


def test_a_known_source_id_pulls_a_new_email_into_its_lead() -> None:
    first = lead_id_for(None, "hubspot", "42")
    provisional = lead_id_for("jane@acme.io", "hubspot", "42")
    keys = identity_keys("jane@acme.io", "hubspot", "42")

    resolution = resolve(keys, {source_key("hubspot", "42"): first}, provisional)

    assert resolution.lead_id == first
    assert resolution.record == (email_key("jane@acme.io"), alias_key(provisional))
    assert resolution.rule == "source id already known"


def test_the_email_wins_and_keys_never_move() -> None:
    by_email, by_source, provisional = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    keys = identity_keys("jane@acme.io", "hubspot", "42")

    resolution = resolve(keys, {keys[0]: by_email, keys[1]: by_source}, provisional)

    assert resolution.lead_id == by_email
    assert resolution.record == (alias_key(provisional),)  # the source key stays with its own lead


def _received_by(email: str | None, external_id: str | None) -> LeadReceivedV1:
    return LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id_for(email, "hubspot", external_id),
        occurred_at=T0,
        source="hubspot",
        webhook_id="w-1",
        external_id=external_id,
        engagement=EngagementType.form_submit,
        attributes=LeadAttributes(email=email),
    )


def test_the_event_that_records_an_alias_announces_the_merge() -> None:
    first = lead_id_for(None, "hubspot", "42")
    event = _received_by("jane@acme.io", "42")
    keys = identity_keys("jane@acme.io", "hubspot", "42")

    announced = merged(event, resolve(keys, {source_key("hubspot", "42"): first}, event.lead_id))

    assert announced is not None
    assert (announced.lead_id, announced.alias_lead_id, announced.caused_by) == (first, event.lead_id, event.event_id)
    assert (announced.rule, announced.source, announced.external_id, announced.email) == (
        "source id already known",
        "hubspot",
        "42",
        "jane@acme.io",
    )
    assert announced.occurred_at == T0
    # Derived from the alias alone: announcing it again is the same fact.
    again = merged(_received_by("jane@acme.io", "42"), resolve(keys, {keys[1]: first}, event.lead_id))
    assert again is not None and again.event_id == announced.event_id


def test_no_merge_is_announced_for_a_new_lead_or_an_alias_already_known() -> None:
    event = _received_by("jane@acme.io", "42")
    keys = identity_keys("jane@acme.io", "hubspot", "42")
    first = uuid.uuid4()

    assert merged(event, resolve(keys, {}, event.lead_id)) is None
    known = {keys[1]: first, alias_key(event.lead_id): first}
    assert merged(event, resolve(keys, known, event.lead_id)) is None
    assert merged(event, resolve(keys, {keys[0]: event.lead_id}, event.lead_id)) is None


def test_an_unknown_person_starts_a_lead_with_the_provisional_id() -> None:
    provisional = lead_id_for("new@acme.io", "webform", None)

    resolution = resolve(identity_keys("new@acme.io", "webform", None), {}, provisional)

    assert (resolution.lead_id, resolution.record, resolution.rule) == (
        provisional,
        ("email:new@acme.io",),
        "new lead",
    )
