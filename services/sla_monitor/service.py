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
    alert_id,
    breached,
    cancelled,
    counts_as_response,
    deadline_id_for,
    met,
    on_response,
    plan,
)
from coxswain.runtime.consumer import BatchHandler, Handler, PermanentError, one_at_a_time
from schemas.events import ActivityRecordedV1, Event, LeadQualifiedV1, LeadRoutedV1, SlaArmedV1, Tier
from services.sla_monitor import alerts
from services.sla_monitor.metrics import SlaMetrics

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadRoutedV1.topic: (LeadRoutedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
    LeadQualifiedV1.topic: (LeadQualifiedV1,),
}

CONSUMER = "sla_monitor"  # its consumer group and inbox name (coxswain.wiring.CONSUMERS)
CLOCK_COLUMNS = "deadline_id, lead_id, assignment_id, rep_id, team, milestone, tier, due_at, status, responded_at"


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
    )


@dataclass
class OpenClock:
    """A deadline that can still change, as this batch sees it (loaded under its row lock or armed here)."""

    clock: Clock
    started_at: datetime | None
    responded_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: uuid.UUID | None = None
    changed: bool = False  # a stored row to update at the end of the batch
    stopped: bool = False  # its pending timers are retired at the end of the batch

    def decide(self, status: DeadlineStatus, now: datetime, by: uuid.UUID) -> None:
        self.clock = replace(self.clock, status=status)
        self.decided_at, self.decided_by, self.changed = now, by, True

    @property
    def can_change(self) -> bool:
        status = self.clock.status
        return status is DeadlineStatus.armed or (status is DeadlineStatus.breached and self.responded_at is None)


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
    activities: dict[uuid.UUID, list[tuple[datetime, ActivityRecordedV1]]]  # per lead, by received_at
    created: list[NewClock] = field(default_factory=list)
    mqls: list[LeadQualifiedV1] = field(default_factory=list)


async def load_batch(
    connection: AsyncConnection, events: Sequence[Event], agreement: Agreement, now: datetime, metrics: SlaMetrics
) -> Batch:
    """Three statements whatever the batch size: the leads' open clocks (locked, in one global
    order so two monitors cannot deadlock), which planned deadlines exist, and the activities
    intake stored for the routed leads."""
    leads = sorted({event.lead_id for event in events if not isinstance(event, LeadQualifiedV1)})
    clocks: dict[uuid.UUID, list[OpenClock]] = {}
    if leads:
        rows = await connection.execute(
            text(
                f"SELECT {CLOCK_COLUMNS}, started_at, decided_at, decided_by FROM deadlines WHERE lead_id = ANY(:leads) "
                "AND (status = 'armed' OR (status = 'breached' AND responded_at IS NULL)) "
                "ORDER BY deadline_id FOR UPDATE"
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
    activities: dict[uuid.UUID, list[tuple[datetime, ActivityRecordedV1]]] = {}
    if routed:
        existing = set(
            (
                await connection.scalars(
                    text("SELECT deadline_id FROM deadlines WHERE deadline_id = ANY(:ids)"), {"ids": planned}
                )
            ).all()
        )
        # leads.routed.v1 and crm.activities.v1 are not ordered with each other: a monitor catching
        # up after a restart or a broker outage may consume the first touch before the routing it
        # answers, when there was no clock yet to stop. Intake's ledger still has the activity.
        result = await connection.execute(
            text(
                "SELECT e.lead_id, e.received_at, e.payload FROM intake_events e "
                "JOIN inbox i ON i.consumer = :consumer AND i.event_id = e.event_id "
                "WHERE e.lead_id = ANY(:leads) AND e.kind = 'activity' AND e.received_at >= :since "
                "ORDER BY e.received_at"
            ),
            {
                "consumer": CONSUMER,
                "leads": sorted({event.lead_id for event in routed}),
                "since": min(event.routed_at for event in routed),
            },
        )
        for row in result:
            activity = ActivityRecordedV1.model_validate(row.payload)
            activities.setdefault(row.lead_id, []).append((row.received_at, activity))
    return Batch(agreement, now, metrics, clocks, existing, activities)


def _plan(agreement: Agreement, event: LeadRoutedV1) -> tuple[MilestonePlan, ...]:
    return plan(agreement, event.tier, event.rep_id, event.pool_id, event.routed_at, event.follow_up_due_at)


def arm(batch: Batch, event: LeadRoutedV1) -> list[Event]:
    """A new assignment: the clocks of the previous one stop (a new clock replaces them)."""
    open_clocks = [held for held in batch.clocks.get(event.lead_id, []) if held.can_change]
    older = [held for held in open_clocks if held.clock.assignment_id != event.assignment_id]
    if any(held.started_at is not None and held.started_at > event.routed_at for held in older):
        return []  # a newer assignment already runs; this one was superseded before we saw it
    facts: list[Event] = []
    for held in older:
        if held.clock.status is DeadlineStatus.armed:
            held.decide(DeadlineStatus.cancelled, batch.now, event.event_id)
            facts.append(cancelled(held.clock, batch.now, event.assignment_id))
        held.stopped = True
    for milestone in _plan(batch.agreement, event):
        deadline_id = deadline_id_for(event.assignment_id, milestone.milestone)
        if deadline_id in batch.existing:
            continue
        batch.existing.add(deadline_id)
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


def respond(batch: Batch, event: ActivityRecordedV1) -> list[Event]:
    """The row lock orders a response and the timer: whoever holds the deadline row first decides."""
    # A touch the CRM dates in the future counts from when we heard of it.
    responded_at = min(event.occurred_at, batch.now)
    facts: list[Event] = []
    for held in batch.clocks.get(event.lead_id, []):
        clock = held.clock
        if not held.can_change or not counts_as_response(batch.agreement, clock.tier, event.activity, clock.milestone):
            continue
        held.stopped = held.changed = True
        held.responded_at = responded_at
        if held.decided_at is None:
            held.decided_at, held.decided_by = batch.now, event.event_id
        verdict = on_response(clock.status, clock.due_at, responded_at)
        if verdict is None:
            continue  # breached earlier: the response only stops the escalation ladder
        held.clock = replace(clock, status=verdict.status, responded=True)
        labels = (clock.tier.value, clock.team or "")
        if verdict.status is DeadlineStatus.met:
            facts.append(met(held.clock, batch.now, responded_at, event.event_id))
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
                "due_at, status, team, started_at, calendar, agreement_version, responded_at, decided_at, decided_by) "
                "VALUES (:d, :a, :l, :r, :m, :t, :now, :due, :s, :team, :start, :cal, :v, :resp, :dec, :by) "
                "ON CONFLICT DO NOTHING"
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
                }
                for new in batch.created
            ],
        )
        await connection.execute(
            text(
                "INSERT INTO sla_timers (deadline_id, key, kind, due_at, status, fraction, step, step_index, target, "
                "exclude_last, decided_at) VALUES (:d, :k, :kind, :due, :s, :f, :step, :i, :target, :x, :dec)"
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
                "UPDATE deadlines SET status = :s, responded_at = :r, decided_at = :dec, decided_by = :by "
                "WHERE deadline_id = :d"
            ),
            [
                {
                    "s": held.clock.status.value,
                    "r": held.responded_at,
                    "dec": held.decided_at,
                    "by": held.decided_by,
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
            if not isinstance(event, (LeadRoutedV1, ActivityRecordedV1, LeadQualifiedV1)):
                raise PermanentError(f"sla monitor does not handle {type(event).__name__}")
        batch = await load_batch(connection, events, agreement, now, counters)
        facts: list[list[Event]] = []
        for event in events:
            if isinstance(event, LeadRoutedV1):
                facts.append(arm(batch, event))
            elif isinstance(event, ActivityRecordedV1):
                facts.append(respond(batch, event))
            else:
                assert isinstance(event, LeadQualifiedV1)
                batch.mqls.append(event)
                facts.append([])
        await store(connection, batch)
        if alert_webhook:
            await alerts.enqueue(connection, [fact for each in facts for fact in each], now)
        return facts

    return handle


def make_handler(agreement: Agreement, metrics: SlaMetrics | None = None, alert_webhook: bool = False) -> Handler:
    return one_at_a_time(make_batch_handler(agreement, metrics, alert_webhook))
