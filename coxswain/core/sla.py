"""The SLA clocks of an assignment, and marketing's side of the agreement.

Each milestone of an assignment (``first_touch``; ``sal_decision`` when the policy names one) is a
clock: armed -> met | breached (| cancelled when the lead is assigned again). Every transition out
of ``armed`` is final, so exactly one of met or breached is ever decided. Around each clock sit
timers, planned once when the clock is armed: warnings at shares of the allowed business time, the
breach at the due time, and the escalation ladder after it. The shell stores every timer as a row
and applies these functions under the deadline's row lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Literal

from coxswain.core.agreement import REP_CALENDAR, Agreement, MqlTarget, SlaPolicy
from coxswain.core.business_time import BusinessCalendar
from schemas.events import (
    ActivityType,
    EscalationAction,
    Event,
    MqlPacingAlertV1,
    ReassignmentRequestedV1,
    SlaBreachedV1,
    SlaCancelledV1,
    SlaEscalatedV1,
    SlaMetV1,
    SlaWarnedV1,
    Tier,
)

FIRST_TOUCH = "first_touch"
SAL_DECISION = "sal_decision"
# The milestone every assignment's plan has (``plan``): one clock of it per assignment.
EVERY_ASSIGNMENT = FIRST_TOUCH
SAL_RESPONSES = frozenset({ActivityType.sal_accepted, ActivityType.sal_rejected})
MARKETING_NAMESPACE = uuid.UUID("0f1d3c52-61b4-4d8e-9a57-2c4a3e5b7d90")


class DeadlineStatus(StrEnum):
    armed = "armed"
    met = "met"
    breached = "breached"
    cancelled = "cancelled"


@dataclass(frozen=True)
class Verdict:
    status: DeadlineStatus
    reason: str


def calendar_for(agreement: Agreement, tier: Tier, rep_id: str | None) -> BusinessCalendar:
    """The policy's calendar; ``rep`` means the rep's own calendar with their out-of-office removed."""
    name = agreement.sla.policies[tier].calendar or agreement.sla.calendar
    if name != REP_CALENDAR:
        return agreement.calendar(name)
    rep = agreement.rep(rep_id) if rep_id is not None else None
    if rep is None:
        return agreement.calendar(agreement.sla.calendar)
    calendar = agreement.calendar(rep.calendar or agreement.sla.calendar)
    return calendar.with_closed_periods((period.start, period.end) for period in rep.out_of_office)


def first_touch_due(agreement: Agreement, tier: Tier, routed_at: datetime, rep_id: str | None = None) -> datetime:
    policy = agreement.sla.policies[tier]
    return calendar_for(agreement, tier, rep_id).add(routed_at, policy.first_touch)


def counts_as_response(agreement: Agreement, tier: Tier, activity: ActivityType, milestone: str = FIRST_TOUCH) -> bool:
    if milestone == SAL_DECISION:
        return activity in SAL_RESPONSES
    return activity in agreement.sla.policies[tier].responses


def on_response(status: DeadlineStatus, due_at: datetime, responded_at: datetime) -> Verdict | None:
    """A response stops an armed clock. A deadline already decided stays as it is."""
    if status is not DeadlineStatus.armed:
        return None
    if responded_at > due_at:
        # The clock has passed but the timer has not fired yet: the breach is real.
        return Verdict(DeadlineStatus.breached, "response came after the deadline")
    return Verdict(DeadlineStatus.met, "responded before the deadline")


def on_due(status: DeadlineStatus, due_at: datetime, now: datetime) -> Verdict | None:
    if status is not DeadlineStatus.armed or now < due_at:
        return None
    return Verdict(DeadlineStatus.breached, "no response before the deadline")


# --- timers -------------------------------------------------------------------------------------


class TimerKind(StrEnum):
    warning = "warning"
    breach = "breach"
    escalation = "escalation"


@dataclass(frozen=True)
class Timer:
    """One scheduled instant of a clock. ``key`` is unique within the clock and names the alert."""

    kind: TimerKind
    key: str
    due_at: datetime
    fraction: float | None = None
    step: EscalationAction | None = None
    step_index: int | None = None
    target: str | None = None
    exclude_last: int | None = None
    # A ladder step carried over from the clock this one superseded: the follow-up is already
    # breached, so it fires at its time whether or not this clock has breached yet.
    carried: bool = False


@dataclass(frozen=True)
class MilestonePlan:
    milestone: str
    started_at: datetime
    due_at: datetime
    calendar: str
    timers: tuple[Timer, ...]


def deadline_id_for(assignment_id: uuid.UUID, milestone: str) -> uuid.UUID:
    return uuid.uuid5(assignment_id, milestone)


def alert_id(deadline_id: uuid.UUID, key: str) -> uuid.UUID:
    """Deterministic: the same (assignment of a lead, milestone, step) always yields the same event id."""
    return uuid.uuid5(deadline_id, key)


def plan_timers(
    calendar: BusinessCalendar,
    policy: SlaPolicy,
    started_at: datetime,
    due_at: datetime,
    rep_id: str,
    manager: str | None,
    team: str | None,
) -> tuple[Timer, ...]:
    allowed = calendar.diff(started_at, due_at)
    warnings = tuple(
        Timer(TimerKind.warning, f"warning:{fraction:g}", calendar.add(started_at, allowed * fraction), fraction)
        for fraction in policy.warnings
        if allowed > timedelta(0)
    )
    ladder = tuple(
        Timer(
            TimerKind.escalation,
            f"escalation:{index}:{step.step.value}",
            # A zero delay means at the breach itself, not at the next opening after it.
            due_at if not step.after else calendar.add(due_at, step.after),
            step=step.step,
            step_index=index,
            target=_target(step.step, rep_id, manager, team),
            exclude_last=step.exclude_last if step.step is EscalationAction.reassign else None,
        )
        for index, step in enumerate(policy.escalation)
    )
    return (*warnings, Timer(TimerKind.breach, "breach", due_at), *ladder)


def _target(step: EscalationAction, rep_id: str, manager: str | None, team: str | None) -> str:
    match step:
        case EscalationAction.remind_rep:
            return rep_id
        case EscalationAction.notify_manager:
            return manager or f"team:{team or 'unknown'}"
        case EscalationAction.reassign:
            return "router"
        case EscalationAction.page_oncall:
            return "oncall"


def plan(
    agreement: Agreement,
    tier: Tier,
    rep_id: str,
    team: str | None,
    started_at: datetime,
    first_touch_due_at: datetime | None = None,
) -> tuple[MilestonePlan, ...]:
    """The clocks to arm for a new assignment. ``first_touch_due_at`` is the router's published
    promise when there is one, so the CRM and the monitor agree on the deadline."""
    policy = agreement.sla.policies[tier]
    calendar = calendar_for(agreement, tier, rep_id)
    rep = agreement.rep(rep_id)
    manager = rep.manager if rep is not None else None
    dues = [(FIRST_TOUCH, first_touch_due_at or calendar.add(started_at, policy.first_touch))]
    if policy.sal_decision is not None:
        dues.append((SAL_DECISION, calendar.add(started_at, policy.sal_decision)))
    return tuple(
        MilestonePlan(
            milestone=milestone,
            started_at=started_at,
            due_at=due_at,
            calendar=calendar.name,
            timers=plan_timers(calendar, policy, started_at, due_at, rep_id, manager, team),
        )
        for milestone, due_at in dues
    )


@dataclass(frozen=True)
class Clock:
    """A deadline as the shell loaded it, under its row lock."""

    deadline_id: uuid.UUID
    lead_id: uuid.UUID
    assignment_id: uuid.UUID
    rep_id: str
    team: str | None
    milestone: str
    tier: Tier
    due_at: datetime
    status: DeadlineStatus
    responded: bool = False
    # The follow-up this clock belongs to: reassignments made so far, and whether on-call was paged.
    reassignments: int = 0
    paged: bool = False


@dataclass(frozen=True)
class TimerVerdict:
    fire: bool
    status: DeadlineStatus
    reason: str


def on_timer(clock: Clock, timer: Timer, now: datetime) -> TimerVerdict | None:
    """None while the timer is not due; otherwise fire it or retire it as obsolete."""
    if now < timer.due_at:
        return None
    match timer.kind:
        case TimerKind.warning:
            if clock.status is DeadlineStatus.armed:
                return TimerVerdict(True, clock.status, "warning while the clock runs")
            return TimerVerdict(False, clock.status, f"clock already {clock.status.value}")
        case TimerKind.breach:
            verdict = on_due(clock.status, clock.due_at, now)
            if verdict is None:
                return TimerVerdict(False, clock.status, f"clock already {clock.status.value}")
            return TimerVerdict(True, verdict.status, verdict.reason)
        case TimerKind.escalation:
            if clock.status is DeadlineStatus.armed and not timer.carried:
                return None  # the breach at the same instant has not been decided yet
            escalating = clock.status is DeadlineStatus.breached or (
                timer.carried and clock.status is DeadlineStatus.armed
            )
            if not escalating or clock.responded:
                return TimerVerdict(False, clock.status, "the ladder stopped")
            if clock.paged and timer.step in (EscalationAction.page_oncall, EscalationAction.reassign):
                return TimerVerdict(False, clock.status, "on-call was already paged for this follow-up")
            return TimerVerdict(True, clock.status, "breached and still no response")


def timer_facts(
    clock: Clock,
    timer: Timer,
    now: datetime,
    previous_owners: Sequence[str] = (),
    max_reassignments: int | None = None,
) -> list[Event]:
    """The facts a fired timer emits; ``previous_owners`` are the lead's earlier reps, newest first.
    A reassign step of a follow-up that has used up ``max_reassignments`` pages on-call instead, so
    a lead nobody answers reaches a person rather than bouncing between reps."""
    match timer.kind:
        case TimerKind.breach:
            return [breached(clock, now)]
        case TimerKind.warning:
            assert timer.fraction is not None
            return [
                SlaWarnedV1(
                    **clock_fact(clock, timer.key, now),
                    team=clock.team,
                    fraction=timer.fraction,
                    warn_at=timer.due_at,
                )
            ]
        case TimerKind.escalation:
            assert timer.step is not None and timer.step_index is not None
            step, target, reason = timer.step, timer.target or "", None
            capped = max_reassignments is not None and clock.reassignments >= max_reassignments
            if step is EscalationAction.reassign and capped:
                step, target = EscalationAction.page_oncall, "oncall"
                reason = f"reassignment cap reached ({clock.reassignments} of {max_reassignments}): paging on-call"
            facts: list[Event] = [
                SlaEscalatedV1(
                    **clock_fact(clock, timer.key, now),
                    team=clock.team,
                    step=step,
                    step_index=timer.step_index,
                    target=target,
                    escalate_at=timer.due_at,
                    reason=reason,
                )
            ]
            if step is EscalationAction.reassign:
                facts.append(reassignment(clock, timer, now, previous_owners))
            return facts


def reassignment(clock: Clock, timer: Timer, now: datetime, previous_owners: Sequence[str]) -> ReassignmentRequestedV1:
    owners = list(dict.fromkeys([clock.rep_id, *previous_owners]))
    return ReassignmentRequestedV1(
        event_id=alert_id(clock.deadline_id, f"reassignment:{timer.step_index}"),
        lead_id=clock.lead_id,
        occurred_at=now,
        assignment_id=clock.assignment_id,
        tier=clock.tier,
        exclude_reps=tuple(owners[: timer.exclude_last or 1]),
        reason=f"{clock.milestone} breached; escalation step {timer.step_index}",
        requested_by="sla_escalation",
    )


def clock_fact(clock: Clock, key: str, now: datetime) -> dict[str, Any]:
    """What every fact about a clock names; its id is fixed by the clock and the kind of fact."""
    return {
        "event_id": alert_id(clock.deadline_id, key),
        "lead_id": clock.lead_id,
        "occurred_at": now,
        "deadline_id": clock.deadline_id,
        "assignment_id": clock.assignment_id,
        "rep_id": clock.rep_id,
        "milestone": clock.milestone,
        "tier": clock.tier,
        "due_at": clock.due_at,
    }


def breached(clock: Clock, now: datetime) -> SlaBreachedV1:
    return SlaBreachedV1(
        **clock_fact(clock, "breached", now),
        fired_at=now,
    )


def met(
    clock: Clock, now: datetime, responded_at: datetime, response_id: uuid.UUID, responded_by: str | None = None
) -> SlaMetV1:
    return SlaMetV1(
        **clock_fact(clock, "met", now),
        responded_at=responded_at,
        response_activity_id=response_id,
        responded_by=responded_by or clock.rep_id,
    )


def credited_rep(agreement: Agreement, owner: str, team: str | None, actor: str | None) -> str | None:
    """The rep a response by ``actor`` is credited to on the clock of ``owner`` (routed from pool
    ``team``), or None when it does not stop that clock (``sla.credit``). A response that names
    nobody is the owner's: the CRM said a person followed up and did not say who."""
    if actor is None or actor == owner:
        return owner
    credit = agreement.sla.credit
    teammates = {member.rep for pool in agreement.routing.pools if pool.id == team for member in pool.members}
    if credit.who == "team" and actor in teammates:
        return actor
    return actor if credit.other_rep == "stop" else None


def carry_ladder(pending: Iterable[Timer], rep_id: str, manager: str | None, team: str | None) -> tuple[Timer, ...]:
    """The steps a superseded, still escalating clock had not fired, for the clock that replaces
    it: same keys and times, aimed at the new rep. The ladder goes on; it does not restart."""
    return tuple(
        replace(
            timer,
            carried=True,
            target=_target(timer.step, rep_id, manager, team) if timer.step is not None else timer.target,
        )
        for timer in pending
        if timer.kind is TimerKind.escalation
    )


def cancelled(clock: Clock, now: datetime, superseded_by: uuid.UUID) -> SlaCancelledV1:
    return SlaCancelledV1(
        **clock_fact(clock, "cancelled", now),
        superseded_by=superseded_by,
    )


# --- marketing: MQL pacing ------------------------------------------------------------------------

Period = Literal["week", "month"]


def period_bounds(period: Period, at: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """The calendar week (from Monday) or month containing ``at``, from local midnight to local midnight."""
    local = at.astimezone(zone).date()
    if period == "week":
        first = local - timedelta(days=local.weekday())
        after = first + timedelta(days=7)
    else:
        first = local.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    return _local_midnight(first, zone), _local_midnight(after, zone)


def _local_midnight(day: date, zone: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class Pacing:
    target_id: str
    period: Period
    period_start: datetime
    period_end: datetime
    target: int
    elapsed_share: float
    expected: float
    actual: int
    threshold: float
    alert_after: float
    realert_step: float = 0.1
    watched_from: datetime | None = None  # when the watched part of the period began

    @property
    def ratio(self) -> float | None:
        return self.actual / self.expected if self.expected > 0 else None

    @property
    def behind(self) -> bool:
        return self.elapsed_share >= self.alert_after and self.actual < self.threshold * self.expected

    @property
    def shortfall_level(self) -> int:
        """How far below the threshold pacing is, in whole ``realert_step``s: 0 just below it."""
        ratio = self.ratio or 0.0
        return max(int((self.threshold - ratio) / self.realert_step + 1e-9), 0)


def pacing(
    target: MqlTarget, calendar: BusinessCalendar, now: datetime, actual: int, watched_since: datetime | None = None
) -> Pacing:
    """Actual MQLs against the target pro-rated to the business time elapsed in the period.

    Only the part of the period Coxswain has watched counts (``watched_since``, when pacing was
    first checked): MQLs from before it were never seen, so expecting them would cry wolf at
    the first start of a deployment."""
    start, end = period_bounds(target.period, now, calendar.zone)
    since = start if watched_since is None else min(max(start, watched_since), now)
    total = calendar.diff(start, end)
    share = min(calendar.diff(since, now) / total, 1.0) if total > timedelta(0) else 0.0
    return Pacing(
        target_id=target.key,
        period=target.period,
        period_start=start,
        period_end=end,
        target=target.count,
        elapsed_share=share,
        expected=target.count * share,
        actual=actual,
        threshold=target.alert_below,
        alert_after=target.alert_after,
        realert_step=target.realert_step,
        watched_from=since,
    )


def pacing_key(target_id: str) -> uuid.UUID:
    return uuid.uuid5(MARKETING_NAMESPACE, f"mql-pacing:{target_id}")


def pacing_alert(result: Pacing, now: datetime, alerted_level: int | None = None) -> MqlPacingAlertV1 | None:
    """One alert per target and period while pacing is behind, and another only when the
    shortfall has grown by a further ``realert_step`` past the deepest one alerted
    (``alerted_level``). The id names the level, so monitors that race raise it once."""
    if not result.behind:
        return None
    level = result.shortfall_level
    if alerted_level is not None and level <= alerted_level:
        return None
    key = pacing_key(result.target_id)
    return MqlPacingAlertV1(
        event_id=uuid.uuid5(key, f"{result.period_start.isoformat()}/level-{level}"),
        lead_id=key,
        occurred_at=now,
        target_id=result.target_id,
        period=result.period,
        period_start=result.period_start,
        period_end=result.period_end,
        target=result.target,
        expected=round(result.expected, 3),
        actual=result.actual,
        pacing=round(result.ratio or 0.0, 4),
        threshold=result.threshold,
    )


# --- sales: attainment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DecidedClock:
    rep_id: str
    team: str | None
    tier: Tier
    milestone: str
    status: DeadlineStatus
    due_at: datetime


@dataclass(frozen=True)
class Attainment:
    met: int = 0
    breached: int = 0

    @property
    def share(self) -> float | None:
        decided = self.met + self.breached
        return self.met / decided if decided else None


def attainment(
    clocks: Iterable[DecidedClock], key: Callable[[DecidedClock], str | None]
) -> dict[str | None, Attainment]:
    """Share of clocks met within the SLA per key (rep, team, tier, period...). Open and cancelled
    clocks are neither kept nor missed, so they do not count."""
    result: dict[str | None, Attainment] = {}
    for clock in clocks:
        if clock.status not in (DeadlineStatus.met, DeadlineStatus.breached):
            continue
        current = result.get(key(clock), Attainment())
        met_now = clock.status is DeadlineStatus.met
        result[key(clock)] = Attainment(current.met + met_now, current.breached + (not met_now))
    return result
