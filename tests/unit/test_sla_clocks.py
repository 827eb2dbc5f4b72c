"""A lead's SLA clock set (coxswain/core/sla_clocks.py): arm, supersede, cancel, respond."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from coxswain.core.agreement import Agreement, load_agreement
from coxswain.core.sla import FIRST_TOUCH, DeadlineStatus, TimerKind, deadline_id_for, on_timer
from coxswain.core.sla_clocks import HeldClock, arm, fire, respond, respond_to
from schemas.events import (
    ActivityAcceptedV1,
    ActivityType,
    EscalationAction,
    LeadRoutedV1,
    SlaArmedV1,
    SlaBreachedV1,
    SlaCancelledV1,
    SlaEscalatedV1,
    SlaMetV1,
    Stage,
    Tier,
)
from tests.support.facts import routed_fact

# hot: first touch within 2h, no ladder; cold: 3s, reassign 2s after the breach, page 5s after it.
AGREEMENT: Agreement = load_agreement(Path(__file__).resolve().parents[1] / "e2e" / "agreement_simulation.yaml")
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
LEAD = uuid.UUID("00000000-0000-4000-8000-000000000001")


def routed(rep: str, at: datetime, *, tier: Tier = Tier.hot, replaces: uuid.UUID | None = None) -> LeadRoutedV1:
    policy = AGREEMENT.sla.policies[tier]
    fact = routed_fact(rep, at, lead_id=LEAD, pool_id="sim-general", replaces=replaces, due_in=policy.first_touch)
    return fact.model_copy(update={"tier": tier})


def accepted(activity: ActivityType, at: datetime, rep: str | None) -> ActivityAcceptedV1:
    return ActivityAcceptedV1(
        event_id=uuid.uuid4(),
        lead_id=LEAD,
        occurred_at=at,
        caused_by=uuid.uuid4(),
        agreement_version=AGREEMENT.version,
        source="crm",
        activity=activity,
        rep_id=rep,
        from_stage=Stage.mql,
        to_stage=Stage.mql,
    )


def armed(event: LeadRoutedV1) -> HeldClock:
    (held,), _ = arm((), event, AGREEMENT, event.routed_at)
    return held


def test_a_routed_lead_gets_an_armed_clock_due_as_the_router_promised() -> None:
    event = routed("sim-ann", T0)
    clocks, facts = arm((), event, AGREEMENT, T0)

    [held] = clocks
    deadline_id = deadline_id_for(event.assignment_id, FIRST_TOUCH)
    assert held.clock.deadline_id == deadline_id and held.clock.status is DeadlineStatus.armed
    assert held.clock.due_at == event.follow_up_due_at and held.clock.rep_id == "sim-ann"
    assert held.plan is not None and [t.kind for t in held.plan.timers] == [TimerKind.breach]
    assert [type(fact) for fact in facts] == [SlaArmedV1]
    assert isinstance(facts[0], SlaArmedV1) and facts[0].deadline_id == deadline_id


def test_arming_a_clock_already_stored_arms_nothing() -> None:
    event = routed("sim-ann", T0)
    clocks, facts = arm((), event, AGREEMENT, T0, existing={deadline_id_for(event.assignment_id, FIRST_TOUCH)})
    assert clocks == () and facts == []


def test_a_new_assignment_cancels_and_supersedes_the_armed_clock_of_the_previous_one() -> None:
    first = routed("sim-ann", T0)
    before = armed(first)
    second = routed("sim-bo", T0 + timedelta(minutes=5), replaces=first.assignment_id)
    clocks, facts = arm((before,), second, AGREEMENT, second.routed_at)

    old = next(held for held in clocks if held.clock.assignment_id == first.assignment_id)
    new = next(held for held in clocks if held.clock.assignment_id == second.assignment_id)
    assert old.clock.status is DeadlineStatus.cancelled and old.stopped
    assert old.superseded_by == second.assignment_id and not old.can_change
    assert old.decided_at == second.routed_at and old.decided_by == second.event_id
    assert new.clock.status is DeadlineStatus.armed and new.clock.reassignments == 1
    assert [type(fact) for fact in facts] == [SlaCancelledV1, SlaArmedV1]
    assert isinstance(facts[0], SlaCancelledV1) and facts[0].superseded_by == second.assignment_id


def test_the_clocks_stay_in_deadline_id_order_as_a_later_load_returns_them() -> None:
    first = routed("sim-ann", T0)
    before = armed(first)
    second = routed("sim-bo", T0 + timedelta(minutes=5), replaces=first.assignment_id)
    while deadline_id_for(second.assignment_id, FIRST_TOUCH) > before.clock.deadline_id:
        second = second.model_copy(update={"assignment_id": uuid.uuid4()})  # one that sorts first
    clocks, _ = arm((before,), second, AGREEMENT, second.routed_at)
    assert [held.clock.assignment_id for held in clocks] == [second.assignment_id, first.assignment_id]


def test_an_assignment_older_than_the_running_one_changes_nothing() -> None:
    newer = armed(routed("sim-bo", T0 + timedelta(minutes=5)))
    late = routed("sim-ann", T0)
    clocks, facts = arm((newer,), late, AGREEMENT, T0 + timedelta(minutes=6))
    assert clocks == (newer,) and facts == []


def test_an_escalating_clock_hands_its_pending_ladder_to_the_next_assignment() -> None:
    first = routed("sim-ann", T0, tier=Tier.cold)
    held = armed(first)
    assert held.plan is not None
    pending = tuple(timer for timer in held.plan.timers if timer.step is EscalationAction.page_oncall)
    breached_clock = replace(held.clock, status=DeadlineStatus.breached, paged=False, reassignments=0)
    escalating = replace(held, clock=breached_clock, ladder=pending, plan=None)
    second = routed("sim-bo", T0 + timedelta(seconds=5), tier=Tier.cold, replaces=first.assignment_id)
    clocks, facts = arm((escalating,), second, AGREEMENT, second.routed_at)

    old = next(c for c in clocks if c.clock.assignment_id == first.assignment_id)
    new = next(c for c in clocks if c.clock.assignment_id == second.assignment_id)
    # A breached clock is superseded without a cancellation: its breach stands.
    assert old.clock.status is DeadlineStatus.breached and old.superseded_by == second.assignment_id
    assert [type(fact) for fact in facts] == [SlaArmedV1]
    assert new.plan is not None
    ladder = [timer for timer in new.plan.timers if timer.kind is TimerKind.escalation]
    # The steps it had not fired, same keys and times, marked carried: no fresh ladder.
    assert [(t.key, t.due_at, t.carried) for t in ladder] == [(t.key, t.due_at, True) for t in pending]
    assert new.clock.reassignments == 1


def test_an_armed_clock_replaced_does_not_hand_on_its_ladder() -> None:
    first = routed("sim-ann", T0, tier=Tier.cold)
    second = routed("sim-bo", T0 + timedelta(seconds=1), tier=Tier.cold, replaces=first.assignment_id)
    clocks, _ = arm((armed(first),), second, AGREEMENT, second.routed_at)
    new = next(c for c in clocks if c.clock.assignment_id == second.assignment_id)
    assert new.plan is not None
    assert not any(timer.carried for timer in new.plan.timers)
    assert [t.step for t in new.plan.timers if t.kind is TimerKind.escalation] == [
        EscalationAction.reassign,
        EscalationAction.page_oncall,
    ]


def test_responses_applied_before_the_routing_arrived_answer_the_new_clock_only_if_received_after_it() -> None:
    event = routed("sim-ann", T0)
    touch = accepted(ActivityType.first_touch, T0 + timedelta(minutes=1), "sim-ann")
    early = accepted(ActivityType.first_touch, T0 - timedelta(minutes=1), "sim-ann")

    (met_clock,), facts = arm((), event, AGREEMENT, T0 + timedelta(minutes=2), applied=[(touch.occurred_at, touch)])
    assert met_clock.clock.status is DeadlineStatus.met and [type(f) for f in facts] == [SlaArmedV1, SlaMetV1]

    (still,), facts = arm((), event, AGREEMENT, T0 + timedelta(minutes=2), applied=[(early.occurred_at, early)])
    assert still.clock.status is DeadlineStatus.armed and [type(f) for f in facts] == [SlaArmedV1]


def test_a_response_received_after_a_newer_routing_does_not_answer_the_older_assignment() -> None:
    """A monitor that gets a routing and its reassignment together, after the former owner's touch
    was applied: the touch came while the lead was the new owner's, so the former owner's new
    clock stays armed; a touch received before the reassignment still answers it."""
    event = routed("sim-ann", T0)
    reassigned_at = T0 + timedelta(minutes=1)
    after_move = accepted(ActivityType.first_touch, T0 + timedelta(minutes=2), "sim-ann")
    before_move = accepted(ActivityType.first_touch, T0 + timedelta(seconds=30), "sim-ann")
    now = T0 + timedelta(minutes=3)

    (still,), facts = arm(
        (), event, AGREEMENT, now, applied=[(after_move.occurred_at, after_move)], until=reassigned_at
    )
    assert still.clock.status is DeadlineStatus.armed and [type(f) for f in facts] == [SlaArmedV1]

    (met_clock,), facts = arm(
        (), event, AGREEMENT, now, applied=[(before_move.occurred_at, before_move)], until=reassigned_at
    )
    assert met_clock.clock.status is DeadlineStatus.met and [type(f) for f in facts] == [SlaArmedV1, SlaMetV1]


def test_a_response_by_the_owner_in_time_meets_the_clock() -> None:
    held = armed(routed("sim-ann", T0))
    touch = accepted(ActivityType.first_touch, T0 + timedelta(minutes=30), "sim-ann")
    (after,), facts = respond((held,), touch, AGREEMENT, T0 + timedelta(minutes=31))

    assert after.clock.status is DeadlineStatus.met and after.clock.responded and after.stopped
    assert (after.responded_at, after.responded_by) == (touch.occurred_at, "sim-ann")
    assert (after.decided_at, after.decided_by) == (T0 + timedelta(minutes=31), touch.event_id)
    [fact] = facts
    assert isinstance(fact, SlaMetV1) and fact.responded_by == "sim-ann"


def test_a_response_after_the_deadline_before_the_timer_is_a_breach() -> None:
    held = armed(routed("sim-ann", T0))
    touch = accepted(ActivityType.first_touch, T0 + timedelta(hours=3), None)
    (after,), facts = respond((held,), touch, AGREEMENT, T0 + timedelta(hours=3))
    assert after.clock.status is DeadlineStatus.breached
    assert [type(f) for f in facts] == [SlaBreachedV1]


def test_a_touch_dated_in_the_future_counts_from_when_we_heard_of_it() -> None:
    held = armed(routed("sim-ann", T0))
    touch = accepted(ActivityType.first_touch, T0 + timedelta(days=1), "sim-ann")
    after, _ = respond_to(held, touch, AGREEMENT, T0 + timedelta(minutes=10))
    assert after.responded_at == T0 + timedelta(minutes=10) and after.clock.status is DeadlineStatus.met


def test_another_reps_touch_leaves_the_owners_clock_running() -> None:
    held = armed(routed("sim-ann", T0))
    touch = accepted(ActivityType.first_touch, T0 + timedelta(minutes=5), "sim-di")
    after, facts = respond_to(held, touch, AGREEMENT, T0 + timedelta(minutes=5))
    assert after is held and facts == []


def test_an_activity_that_is_no_response_leaves_the_clock_running() -> None:
    held = armed(routed("sim-ann", T0))
    after, facts = respond_to(held, accepted(ActivityType.won, T0, "sim-ann"), AGREEMENT, T0)
    assert after is held and facts == []


def test_a_response_to_a_clock_breached_earlier_only_stops_its_ladder() -> None:
    held = armed(routed("sim-ann", T0, tier=Tier.cold))
    breached_held = replace(held, clock=replace(held.clock, status=DeadlineStatus.breached))
    touch = accepted(ActivityType.first_touch, T0 + timedelta(seconds=4), "sim-ann")
    after, facts = respond_to(breached_held, touch, AGREEMENT, T0 + timedelta(seconds=4))
    assert facts == [] and after.clock.status is DeadlineStatus.breached
    assert after.stopped and after.responded_by == "sim-ann" and not after.escalating


def test_a_superseded_clock_does_not_answer() -> None:
    held = replace(armed(routed("sim-ann", T0)), superseded_by=uuid.uuid4())
    after, facts = respond_to(held, accepted(ActivityType.first_touch, T0, "sim-ann"), AGREEMENT, T0)
    assert after is held and facts == []


def test_a_fired_breach_breaches_the_clock_and_a_page_marks_the_follow_up_paged() -> None:
    held = armed(routed("sim-ann", T0, tier=Tier.cold))
    assert held.plan is not None
    breach = next(t for t in held.plan.timers if t.kind is TimerKind.breach)
    page = next(t for t in held.plan.timers if t.step is EscalationAction.page_oncall)

    verdict = on_timer(held.clock, breach, breach.due_at)
    assert verdict is not None and verdict.fire
    after, facts = fire(held.clock, breach, verdict, breach.due_at)
    assert after.status is DeadlineStatus.breached and not after.paged
    assert [type(f) for f in facts] == [SlaBreachedV1]

    verdict = on_timer(after, page, page.due_at)
    assert verdict is not None and verdict.fire
    paged, facts = fire(after, page, verdict, page.due_at)
    assert paged.paged and paged.status is DeadlineStatus.breached
    assert [type(f) for f in facts] == [SlaEscalatedV1]
    # Once paged, a later page step retires.
    again = on_timer(paged, page, page.due_at)
    assert again is not None and not again.fire


def test_a_timer_that_does_not_fire_is_refused() -> None:
    held = armed(routed("sim-ann", T0))
    breach = next(t for t in (held.plan.timers if held.plan else ()) if t.kind is TimerKind.breach)
    met_clock = replace(held.clock, status=DeadlineStatus.met)
    verdict = on_timer(met_clock, breach, breach.due_at)
    assert verdict is not None and not verdict.fire
    with pytest.raises(ValueError, match="does not fire"):
        fire(met_clock, breach, verdict, breach.due_at)
