"""SLA monitor shell: arms clocks from routed leads, stops them on responses, counts MQLs.

Clocks are ``deadlines`` rows and their timers ``sla_timers`` rows, never in-process timers
(see ``timers.py`` for the firing side). Lock order everywhere: the deadline row first, then its
timers; the timer side never waits for a lock (SKIP LOCKED), so the two cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.sla import (
    Clock,
    DeadlineStatus,
    MilestonePlan,
    Timer,
    TimerKind,
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
)
from coxswain.runtime.consumer import BatchHandler, Handler, PermanentError, claim_many, one_at_a_time
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityRefusedV1,
    EscalationAction,
    Event,
    LeadQualifiedV1,
    LeadRoutedV1,
    SlaArmedV1,
    Tier,
)
from services.sla_monitor import alerts
from services.sla_monitor.metrics import SlaMetrics

# Clocks stop on activities as scoring judged them, never on the raw crm.activities.v1 record: a
# refused activity stops nothing. Refusals are consumed too, only so that a timer waiting for that
# activity to be applied (timers.AWAITING_RESPONSE) stops waiting.
ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadRoutedV1.topic: (LeadRoutedV1,),
    ActivityAcceptedV1.topic: (ActivityAcceptedV1,),
    ActivityRefusedV1.topic: (ActivityRefusedV1,),
    LeadQualifiedV1.topic: (LeadQualifiedV1,),
}

CONSUMER = "sla_monitor"  # its consumer group and inbox name (coxswain.wiring.CONSUMERS)
CLOCK_COLUMNS = (
    "deadline_id, lead_id, assignment_id, rep_id, team, milestone, tier, due_at, status, responded_at, "
    "reassignments, paged"
)


def clock_of(row: Row[Any]) -> Clock:
    return Clock(
        deadline_id=row.deadline_id,
        lead_id=row.lead_id,
        assignment_id=row.assignment_id,
        rep_id=row.rep_id,
        team=row.team,
        milestone=row.milestone,
        tier=Tier(row.tier),
        due_at=row.due_at,
        status=DeadlineStatus(row.status),
        responded=row.responded_at is not None,
        reassignments=row.reassignments,
        paged=row.paged,
    )


@dataclass
class OpenClock:
    """A deadline that can still change, as this batch sees it (loaded under its row lock or armed here)."""

    clock: Clock
    started_at: datetime | None
    responded_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: uuid.UUID | None = None
    responded_by: str | None = None
    superseded_by: uuid.UUID | None = None
    ladder: tuple[Timer, ...] = ()  # escalation steps still pending, loaded when a new assignment may carry them
    changed: bool = False  # a stored row to update at the end of the batch
    stopped: bool = False  # its pending timers are retired at the end of the batch

    def decide(self, status: DeadlineStatus, now: datetime, by: uuid.UUID) -> None:
        self.clock = replace(self.clock, status=status)
        self.decided_at, self.decided_by, self.changed = now, by, True

    @property
    def can_change(self) -> bool:
        if self.superseded_by is not None:
            return False
        status = self.clock.status
        return status is DeadlineStatus.armed or (status is DeadlineStatus.breached and self.responded_at is None)

    @property
    def escalating(self) -> bool:
        return self.clock.status is DeadlineStatus.breached and self.responded_at is None


@dataclass
class NewClock:
    open: OpenClock
    event: LeadRoutedV1
    milestone: MilestonePlan


@dataclass
class Batch:
    """What a batch reads up front, and what it writes at the end."""

    agreement: Agreement
    now: datetime
    metrics: SlaMetrics
    clocks: dict[uuid.UUID, list[OpenClock]]  # per lead, in deadline id order
    existing: set[uuid.UUID]  # planned deadline ids already stored
    activities: dict[uuid.UUID, list[tuple[datetime, ActivityAcceptedV1]]]  # per lead, by received_at
    created: list[NewClock] = field(default_factory=list)
    mqls: list[LeadQualifiedV1] = field(default_factory=list)


async def load_batch(
    connection: AsyncConnection, events: Sequence[Event], agreement: Agreement, now: datetime, metrics: SlaMetrics
) -> Batch:
    """Four statements at most whatever the batch size: the leads' open clocks (locked, in one
    global order so two monitors cannot deadlock), the pending ladders a new assignment may carry
    on, which planned deadlines exist, and the accepted activities already applied for the routed
    leads."""
    leads = sorted({event.lead_id for event in events if not isinstance(event, LeadQualifiedV1)})
    clocks: dict[uuid.UUID, list[OpenClock]] = {}
    if leads:
        rows = await connection.execute(
            text(
                f"SELECT {CLOCK_COLUMNS}, started_at, decided_at, decided_by FROM deadlines WHERE lead_id = ANY(:leads) "
                "AND (status = 'armed' OR (status = 'breached' AND responded_at IS NULL)) "
                "AND superseded_by IS NULL ORDER BY deadline_id FOR UPDATE"
            ),
            {"leads": leads},
        )
        for row in rows:
            held = OpenClock(clock_of(row), row.started_at, row.responded_at, row.decided_at, row.decided_by)
            clocks.setdefault(row.lead_id, []).append(held)
    routed = [event for event in events if isinstance(event, LeadRoutedV1)]
    planned = [
        deadline_id_for(event.assignment_id, milestone.milestone)
        for event in routed
        for milestone in _plan(agreement, event)
    ]
    existing: set[uuid.UUID] = set()
    activities: dict[uuid.UUID, list[tuple[datetime, ActivityAcceptedV1]]] = {}
    if routed:
        escalating = {
            held.clock.deadline_id: held
            for event in routed
            for held in clocks.get(event.lead_id, [])
            if held.escalating
        }
        if escalating:
            ladders = await connection.execute(
                text(
                    "SELECT deadline_id, key, kind, due_at AS timer_due_at, fraction, step, step_index, target, "
                    "exclude_last, carried FROM sla_timers WHERE deadline_id = ANY(:ids) AND status = 'pending' "
                    "AND kind = 'escalation' ORDER BY due_at, key"
                ),
                {"ids": sorted(escalating)},
            )
            for row in ladders:
                held = escalating[row.deadline_id]
                held.ladder = (*held.ladder, timer_of(row))
        existing = set(
            (
                await connection.scalars(
                    text("SELECT deadline_id FROM deadlines WHERE deadline_id = ANY(:ids)"), {"ids": planned}
                )
            ).all()
        )
        # leads.routed.v1 and the accepted activities are not ordered with each other: a monitor
        # catching up after a restart or a broker outage may apply the first touch before the
        # routing it answers, when there was no clock yet to stop. Scoring's record of the
        # judgement still has it, and intake's ledger says when the touch was received.
        result = await connection.execute(
            text(
                "SELECT f.lead_id, e.received_at, f.payload FROM lead_facts f "
                "JOIN inbox i ON i.consumer = :consumer AND i.event_id = f.event_id "
                "JOIN intake_events e ON e.event_id = f.caused_by "
                "WHERE f.lead_id = ANY(:leads) AND f.kind = 'ActivityAcceptedV1' AND e.received_at >= :since "
                "ORDER BY e.received_at"
            ),
            {
                "consumer": CONSUMER,
                "leads": sorted({event.lead_id for event in routed}),
                "since": min(event.routed_at for event in routed),
            },
        )
        for row in result:
            activity = ActivityAcceptedV1.model_validate(row.payload)
            activities.setdefault(row.lead_id, []).append((row.received_at, activity))
    return Batch(agreement, now, metrics, clocks, existing, activities)


def timer_of(row: Row[Any]) -> Timer:
    return Timer(
        kind=TimerKind(row.kind),
        key=row.key,
        due_at=row.timer_due_at,
        fraction=row.fraction,
        step=EscalationAction(row.step) if row.step else None,
        step_index=row.step_index,
        target=row.target,
        exclude_last=row.exclude_last,
        carried=row.carried,
    )


def _plan(agreement: Agreement, event: LeadRoutedV1) -> tuple[MilestonePlan, ...]:
    return plan(agreement, event.tier, event.rep_id, event.pool_id, event.routed_at, event.follow_up_due_at)


def arm(batch: Batch, event: LeadRoutedV1) -> list[Event]:
    """A new assignment: the clocks of the previous one stop (a new clock replaces them). A clock
    that was escalating hands the steps it had not fired to the new clock of its milestone, so
    the ladder belongs to the lead's follow-up: it goes on across reassignments, never restarts."""
    open_clocks = [held for held in batch.clocks.get(event.lead_id, []) if held.can_change]
    older = [held for held in open_clocks if held.clock.assignment_id != event.assignment_id]
    if any(held.started_at is not None and held.started_at > event.routed_at for held in older):
        return []  # a newer assignment already runs; this one was superseded before we saw it
    facts: list[Event] = []
    follow_up: dict[str, OpenClock] = {}
    for held in older:
        if held.clock.status is DeadlineStatus.armed:
            held.decide(DeadlineStatus.cancelled, batch.now, event.event_id)
            facts.append(cancelled(held.clock, batch.now, event.assignment_id))
        held.superseded_by, held.changed, held.stopped = event.assignment_id, True, True
        follow_up.setdefault(held.clock.milestone, held)
    reassigned = event.replaces_assignment_id is not None
    rep = batch.agreement.rep(event.rep_id)
    manager = rep.manager if rep is not None else None
    for milestone in _plan(batch.agreement, event):
        deadline_id = deadline_id_for(event.assignment_id, milestone.milestone)
        if deadline_id in batch.existing:
            continue
        batch.existing.add(deadline_id)
        before = follow_up.get(milestone.milestone)
        if before is not None and before.escalating:
            own = tuple(timer for timer in milestone.timers if timer.kind is not TimerKind.escalation)
            milestone = replace(
                milestone, timers=(*own, *carry_ladder(before.ladder, event.rep_id, manager, event.pool_id))
            )
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
            reassignments=(before.clock.reassignments if before is not None else 0) + reassigned,
            paged=before.clock.paged if before is not None else False,
        )
        held = OpenClock(clock, milestone.started_at)
        batch.created.append(NewClock(held, event, milestone))
        # In deadline id order, as a later event's load would return them.
        clocks = batch.clocks.setdefault(event.lead_id, [])
        clocks.append(held)
        clocks.sort(key=lambda each: each.clock.deadline_id)
        facts.append(
            SlaArmedV1(
                event_id=alert_id(deadline_id, "armed"),
                lead_id=event.lead_id,
                occurred_at=batch.now,
                deadline_id=deadline_id,
                assignment_id=event.assignment_id,
                rep_id=event.rep_id,
                milestone=milestone.milestone,
                tier=event.tier,
                due_at=milestone.due_at,
            )
        )
    if any(isinstance(fact, SlaArmedV1) for fact in facts):
        # Only activities received at or after the routing count, so a touch for an earlier
        # assignment does not answer this one.
        for received_at, early in batch.activities.get(event.lead_id, []):
            if received_at >= event.routed_at:
                facts += respond(batch, early)
    return facts


def respond(batch: Batch, event: ActivityAcceptedV1) -> list[Event]:
    """The row lock orders a response and the timer: whoever holds the deadline row first decides.
    Only a response ``sla.credit`` credits to someone stops a clock, and that rep gets the credit."""
    # A touch the CRM dates in the future counts from when we heard of it.
    responded_at = min(event.occurred_at, batch.now)
    facts: list[Event] = []
    for held in batch.clocks.get(event.lead_id, []):
        clock = held.clock
        if not held.can_change or not counts_as_response(batch.agreement, clock.tier, event.activity, clock.milestone):
            continue
        credited = credited_rep(batch.agreement, clock.rep_id, clock.team, event.rep_id)
        if credited is None:
            continue  # another rep's touch: recorded as accepted, the owner's clock runs on
        held.stopped = held.changed = True
        held.responded_at, held.responded_by = responded_at, credited
        if held.decided_at is None:
            held.decided_at, held.decided_by = batch.now, event.event_id
        verdict = on_response(clock.status, clock.due_at, responded_at)
        if verdict is None:
            continue  # breached earlier: the response only stops the escalation ladder
        held.clock = replace(clock, status=verdict.status, responded=True)
        labels = (clock.tier.value, clock.team or "")
        if verdict.status is DeadlineStatus.met:
            facts.append(met(held.clock, batch.now, responded_at, event.event_id, credited))
            batch.metrics.met.labels(*labels).inc()
        else:
            facts.append(breached(held.clock, batch.now))
            batch.metrics.breaches.labels(*labels).inc()
    return facts


async def store(connection: AsyncConnection, batch: Batch) -> None:
    """The batch's end state: at most five statements."""
    now = batch.now
    created = {new.open.clock.deadline_id for new in batch.created}
    if batch.created:
        await connection.execute(
            text(
                "INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, armed_at, "
                "due_at, status, team, started_at, calendar, agreement_version, responded_at, decided_at, decided_by, "
                "responded_by, reassignments, paged) VALUES (:d, :a, :l, :r, :m, :t, :now, :due, :s, :team, :start, "
                ":cal, :v, :resp, :dec, :by, :resp_by, :reassignments, :paged) ON CONFLICT DO NOTHING"
            ),
            [
                {
                    "d": new.open.clock.deadline_id,
                    "a": new.event.assignment_id,
                    "l": new.event.lead_id,
                    "r": new.event.rep_id,
                    "m": new.milestone.milestone,
                    "t": new.event.tier.value,
                    "now": now,
                    "due": new.milestone.due_at,
                    "s": new.open.clock.status.value,
                    "team": new.event.pool_id,
                    "start": new.milestone.started_at,
                    "cal": new.milestone.calendar,
                    "v": batch.agreement.version,
                    "resp": new.open.responded_at,
                    "dec": new.open.decided_at,
                    "by": new.open.decided_by,
                    "resp_by": new.open.responded_by,
                    "reassignments": new.open.clock.reassignments,
                    "paged": new.open.clock.paged,
                }
                for new in batch.created
            ],
        )
        await connection.execute(
            text(
                "INSERT INTO sla_timers (deadline_id, key, kind, due_at, status, fraction, step, step_index, target, "
                "exclude_last, decided_at, carried) VALUES (:d, :k, :kind, :due, :s, :f, :step, :i, :target, :x, :dec, "
                ":carried)"
            ),
            [
                {
                    "d": new.open.clock.deadline_id,
                    "k": timer.key,
                    "kind": timer.kind.value,
                    "due": timer.due_at,
                    # A clock stopped in the batch that armed it never had a pending timer.
                    "s": "cancelled" if new.open.stopped else "pending",
                    "f": timer.fraction,
                    "step": timer.step.value if timer.step else None,
                    "i": timer.step_index,
                    "target": timer.target,
                    "x": timer.exclude_last,
                    "dec": now if new.open.stopped else None,
                    "carried": timer.carried,
                }
                for new in batch.created
                for timer in new.milestone.timers
            ],
        )
    stored = [held for clocks in batch.clocks.values() for held in clocks if held.clock.deadline_id not in created]
    changed = [held for held in stored if held.changed]
    if changed:
        await connection.execute(
            text(
                "UPDATE deadlines SET status = :s, responded_at = :r, decided_at = :dec, decided_by = :by, "
                "responded_by = :rb, superseded_by = :sup WHERE deadline_id = :d"
            ),
            [
                {
                    "s": held.clock.status.value,
                    "r": held.responded_at,
                    "dec": held.decided_at,
                    "by": held.decided_by,
                    "rb": held.responded_by,
                    "sup": held.superseded_by,
                    "d": held.clock.deadline_id,
                }
                for held in changed
            ],
        )
    stopped = [held.clock.deadline_id for held in stored if held.stopped]
    if stopped:
        await connection.execute(
            text(
                "UPDATE sla_timers SET status = 'cancelled', decided_at = :now "
                "WHERE deadline_id = ANY(:ids) AND status = 'pending'"
            ),
            {"now": now, "ids": stopped},
        )
    if batch.mqls:
        await connection.execute(
            text(
                "INSERT INTO marketing_mqls (event_id, lead_id, qualified_at) VALUES (:e, :l, :at) "
                "ON CONFLICT DO NOTHING"
            ),
            [{"e": event.event_id, "l": event.lead_id, "at": event.occurred_at} for event in batch.mqls],
        )


def make_batch_handler(
    agreement: Agreement, metrics: SlaMetrics | None = None, alert_webhook: bool = False
) -> BatchHandler:
    counters = metrics or SlaMetrics(CollectorRegistry())

    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> list[list[Event]]:
        for event in events:
            if not isinstance(event, (LeadRoutedV1, ActivityAcceptedV1, ActivityRefusedV1, LeadQualifiedV1)):
                raise PermanentError(f"sla monitor does not handle {type(event).__name__}")
        batch = await load_batch(connection, events, agreement, now, counters)
        facts: list[list[Event]] = []
        for event in events:
            if isinstance(event, LeadRoutedV1):
                facts.append(arm(batch, event))
            elif isinstance(event, ActivityAcceptedV1):
                facts.append(respond(batch, event))
            elif isinstance(event, ActivityRefusedV1):
                facts.append([])
            else:
                assert isinstance(event, LeadQualifiedV1)
                batch.mqls.append(event)
                facts.append([])
        await store(connection, batch)
        # The raw activities these judgements answer are applied here now: a timer held for
        # them (timers.AWAITING_RESPONSE, keyed by intake's event id) may fire or retire.
        judged = [event for event in events if isinstance(event, (ActivityAcceptedV1, ActivityRefusedV1))]
        await claim_many(connection, CONSUMER, [(event.caused_by, ActivityRecordedV1.topic) for event in judged], now)
        if alert_webhook:
            await alerts.enqueue(connection, [fact for each in facts for fact in each], now)
        return facts

    return handle


def make_handler(agreement: Agreement, metrics: SlaMetrics | None = None, alert_webhook: bool = False) -> Handler:
    return one_at_a_time(make_batch_handler(agreement, metrics, alert_webhook))
