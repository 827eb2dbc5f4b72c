"""A lead's set of SLA clocks and how routing facts and responses change it.

``coxswain.core.sla`` knows one clock: its plan, its timers, what a response or a timer means for
it. The transitions here are over the clocks of one lead, each of the form ``clocks, input ->
new clocks, facts``:

- ``arm``: a new assignment (``leads.routed.v1``). The previous assignment's clocks stop: an armed
  one is cancelled (``sla.cancelled.v1``), every one is superseded (``supersede``). A clock that
  was escalating hands the ladder steps it had not fired to the new clock of its milestone, so
  the ladder belongs to the lead's follow-up and goes on across reassignments. Responses already
  applied that were received at or after the routing, and before any newer routing the caller
  knows of, then answer the new clocks;
- ``respond``: an accepted activity stops every clock it answers (``respond_to``), as
  ``sla.credit`` credits it; a clock armed in time is met or, past its due time, breached; one
  breached earlier only stops its ladder;
- ``fire``: a due timer that ``sla.on_timer`` says fires: its facts, and the clock after it
  (breached by its breach timer, marked paged once a page went out).

The SLA monitor loads a lead's open clocks under their row locks, calls these, and stores what
changed; the simulator keeps the same clocks for its assignments and calls the same functions.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from coxswain.core.agreement import Agreement
from coxswain.core.sla import (
    Clock,
    DeadlineStatus,
    MilestonePlan,
    Timer,
    TimerKind,
    TimerVerdict,
    alert_id,
    breached,
    cancelled,
    carry_ladder,
    counts_as_response,
    credited_rep,
    deadline_id_for,
    met,
    on_response,
    plan,
    timer_facts,
)
from schemas.events import ActivityAcceptedV1, EscalationAction, Event, LeadRoutedV1, SlaArmedV1, SlaEscalatedV1


@dataclass(frozen=True)
class HeldClock:
    """A deadline that can still change, as its lead's clock set holds it."""

    clock: Clock
    started_at: datetime | None
    responded_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: uuid.UUID | None = None
    responded_by: str | None = None
    superseded_by: uuid.UUID | None = None
    ladder: tuple[Timer, ...] = ()  # escalation steps still pending, which a new clock may carry on
    plan: MilestonePlan | None = None  # a clock ``arm`` made: its plan, timers included, to store
    stopped: bool = False  # its pending timers are retired

    @property
    def can_change(self) -> bool:
        if self.superseded_by is not None:
            return False
        status = self.clock.status
        return status is DeadlineStatus.armed or (status is DeadlineStatus.breached and self.responded_at is None)

    @property
    def escalating(self) -> bool:
        return self.clock.status is DeadlineStatus.breached and self.responded_at is None


def routed_plan(agreement: Agreement, event: LeadRoutedV1) -> tuple[MilestonePlan, ...]:
    """The clocks a routed lead gets, due as the router promised for its first touch."""
    return plan(agreement, event.tier, event.rep_id, event.pool_id, event.routed_at, event.follow_up_due_at)


def supersede(held: HeldClock, event: LeadRoutedV1, now: datetime) -> tuple[HeldClock, list[Event]]:
    """A newer assignment replaces the clock's: an armed clock is cancelled, any clock stops."""
    facts: list[Event] = []
    if held.clock.status is DeadlineStatus.armed:
        facts.append(cancelled(held.clock, now, event.assignment_id))
        held = replace(
            held, clock=replace(held.clock, status=DeadlineStatus.cancelled), decided_at=now, decided_by=event.event_id
        )
    return replace(held, superseded_by=event.assignment_id, stopped=True), facts


def new_clock(
    agreement: Agreement, event: LeadRoutedV1, milestone: MilestonePlan, before: HeldClock | None, now: datetime
) -> tuple[HeldClock, SlaArmedV1]:
    """The clock of one milestone of a new assignment. ``before``: the superseded clock of the same
    milestone, whose follow-up this one continues (its reassignments and page, and its ladder
    when it was escalating)."""
    if before is not None and before.escalating:
        rep = agreement.rep(event.rep_id)
        manager = rep.manager if rep is not None else None
        own = tuple(timer for timer in milestone.timers if timer.kind is not TimerKind.escalation)
        milestone = replace(
            milestone, timers=(*own, *carry_ladder(before.ladder, event.rep_id, manager, event.pool_id))
        )
    deadline_id = deadline_id_for(event.assignment_id, milestone.milestone)
    clock = Clock(
        deadline_id=deadline_id,
        lead_id=event.lead_id,
        assignment_id=event.assignment_id,
        rep_id=event.rep_id,
        team=event.pool_id,
        milestone=milestone.milestone,
        tier=event.tier,
        due_at=milestone.due_at,
        status=DeadlineStatus.armed,
        reassignments=(before.clock.reassignments if before is not None else 0)
        + (event.replaces_assignment_id is not None),
        paged=before.clock.paged if before is not None else False,
    )
    armed = SlaArmedV1(
        event_id=alert_id(deadline_id, "armed"),
        lead_id=event.lead_id,
        occurred_at=now,
        deadline_id=deadline_id,
        assignment_id=event.assignment_id,
        rep_id=event.rep_id,
        milestone=milestone.milestone,
        tier=event.tier,
        due_at=milestone.due_at,
    )
    return HeldClock(clock, milestone.started_at, plan=milestone), armed


def arm(
    clocks: Sequence[HeldClock],
    event: LeadRoutedV1,
    agreement: Agreement,
    now: datetime,
    existing: Collection[uuid.UUID] = (),
    applied: Sequence[tuple[datetime, ActivityAcceptedV1]] = (),
    until: datetime | None = None,
) -> tuple[tuple[HeldClock, ...], list[Event]]:
    """A new assignment for the lead whose clocks are ``clocks`` (in deadline id order).
    ``existing``: deadline ids already stored (arming is idempotent); ``applied``: the accepted
    activities already applied for the lead with when each was received, since routing and
    responses are not ordered with each other; ``until``: when a newer assignment of the lead
    the caller already knows of was routed. An applied activity answers this assignment only if
    it was received while the assignment was the lead's, from its routing until the next one.
    Returns the clocks in deadline id order."""
    older = [held for held in clocks if held.can_change and held.clock.assignment_id != event.assignment_id]
    if any(held.started_at is not None and held.started_at > event.routed_at for held in older):
        return tuple(clocks), []  # a newer assignment already runs; this one was superseded before we saw it
    facts: list[Event] = []
    replaced: dict[uuid.UUID, HeldClock] = {}
    follow_up: dict[str, HeldClock] = {}
    for held in older:
        after, said = supersede(held, event, now)
        replaced[held.clock.deadline_id] = after
        facts += said
        # What the new clock continues: the superseded clock as it was, escalating or not.
        follow_up.setdefault(held.clock.milestone, held)
    result = [replaced.get(held.clock.deadline_id, held) for held in clocks]
    armed_any = False
    for milestone in routed_plan(agreement, event):
        if deadline_id_for(event.assignment_id, milestone.milestone) in existing:
            continue
        held, armed = new_clock(agreement, event, milestone, follow_up.get(milestone.milestone), now)
        result.append(held)
        facts.append(armed)
        armed_any = True
    ordered = tuple(sorted(result, key=lambda each: each.clock.deadline_id))
    if armed_any:
        # Only activities received at or after the routing count, so a touch for an earlier
        # assignment does not answer this one; and only those received before a newer routing,
        # which answer that assignment instead (a former owner's touch credits nobody).
        for received_at, early in applied:
            if received_at >= event.routed_at and (until is None or received_at < until):
                ordered, answered = respond(ordered, early, agreement, now)
                facts += answered
    return ordered, facts


def respond_to(
    held: HeldClock, event: ActivityAcceptedV1, agreement: Agreement, now: datetime
) -> tuple[HeldClock, list[Event]]:
    """One clock and an accepted activity: unchanged unless it can change, the activity counts
    as a response for its milestone, and ``sla.credit`` credits it to someone. A touch the CRM
    dates in the future counts from ``now``, when we heard of it."""
    clock = held.clock
    if not held.can_change or not counts_as_response(agreement, clock.tier, event.activity, clock.milestone):
        return held, []
    credited = credited_rep(agreement, clock.rep_id, clock.team, event.rep_id)
    if credited is None:
        return held, []  # another rep's touch: recorded as accepted, the owner's clock runs on
    responded_at = min(event.occurred_at, now)
    held = replace(held, stopped=True, responded_at=responded_at, responded_by=credited)
    if held.decided_at is None:
        held = replace(held, decided_at=now, decided_by=event.event_id)
    verdict = on_response(clock.status, clock.due_at, responded_at)
    if verdict is None:
        return held, []  # breached earlier: the response only stops the escalation ladder
    held = replace(held, clock=replace(clock, status=verdict.status, responded=True))
    if verdict.status is DeadlineStatus.met:
        return held, [met(held.clock, now, responded_at, event.event_id, credited)]
    return held, [breached(held.clock, now)]


def respond(
    clocks: Sequence[HeldClock], event: ActivityAcceptedV1, agreement: Agreement, now: datetime
) -> tuple[tuple[HeldClock, ...], list[Event]]:
    """An accepted activity for the lead whose clocks are ``clocks``: each clock it answers stops."""
    result: list[HeldClock] = []
    facts: list[Event] = []
    for held in clocks:
        after, said = respond_to(held, event, agreement, now)
        result.append(after)
        facts += said
    return tuple(result), facts


def fire(
    clock: Clock,
    timer: Timer,
    verdict: TimerVerdict,
    now: datetime,
    previous_owners: Sequence[str] = (),
    max_reassignments: int | None = None,
) -> tuple[Clock, list[Event]]:
    """A timer that ``on_timer`` said fires (``verdict.fire``): the clock after it, and its facts
    (``timer_facts``; ``previous_owners`` newest first, read only for a reassign step)."""
    if not verdict.fire:
        raise ValueError(f"timer {timer.key} of deadline {clock.deadline_id} does not fire: {verdict.reason}")
    facts = timer_facts(clock, timer, now, previous_owners, max_reassignments)
    if verdict.status is not clock.status:
        clock = replace(clock, status=verdict.status)
    if any(isinstance(fact, SlaEscalatedV1) and fact.step is EscalationAction.page_oncall for fact in facts):
        # On-call is paged once per follow-up: a later page step (here, or carried on to the clock
        # of a reassignment) retires instead of paging again.
        clock = replace(clock, paged=True)
    return clock, facts
