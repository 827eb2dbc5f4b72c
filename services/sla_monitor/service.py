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

from coxswain.core import sla_clocks
from coxswain.core.agreement import Agreement
from coxswain.core.sla import Clock, DeadlineStatus, Timer, TimerKind, deadline_id_for
from coxswain.core.sla_clocks import HeldClock, routed_plan
from coxswain.runtime.consumer import BatchHandler, Handler, PermanentError, claim_many, one_at_a_time
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityRefusedV1,
    EscalationAction,
    Event,
    LeadQualifiedV1,
    LeadRoutedV1,
    SlaBreachedV1,
    SlaMetV1,
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
class Batch:
    """What a batch reads up front, and what it writes at the end: the leads' clocks that can
    still change as loaded (``loaded``, by deadline id) and as the core left them (``clocks``)."""

    agreement: Agreement
    now: datetime
    metrics: SlaMetrics
    clocks: dict[uuid.UUID, tuple[HeldClock, ...]]  # per lead, in deadline id order
    loaded: dict[uuid.UUID, HeldClock]
    existing: set[uuid.UUID]  # planned deadline ids already stored
    activities: dict[uuid.UUID, list[tuple[datetime, ActivityAcceptedV1]]]  # per lead, by received_at
    mqls: list[LeadQualifiedV1] = field(default_factory=list)


async def load_batch(
    connection: AsyncConnection, events: Sequence[Event], agreement: Agreement, now: datetime, metrics: SlaMetrics
) -> Batch:
    """Four statements at most whatever the batch size: the leads' open clocks (locked, in one
    global order so two monitors cannot deadlock), the pending ladders a new assignment may carry
    on, which planned deadlines exist, and the accepted activities already applied for the routed
    leads."""
    leads = sorted({event.lead_id for event in events if not isinstance(event, LeadQualifiedV1)})
    clocks: dict[uuid.UUID, list[HeldClock]] = {}
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
            held = HeldClock(clock_of(row), row.started_at, row.responded_at, row.decided_at, row.decided_by)
            clocks.setdefault(row.lead_id, []).append(held)
    routed = [event for event in events if isinstance(event, LeadRoutedV1)]
    planned = [
        deadline_id_for(event.assignment_id, milestone.milestone)
        for event in routed
        for milestone in routed_plan(agreement, event)
    ]
    existing: set[uuid.UUID] = set()
    activities: dict[uuid.UUID, list[tuple[datetime, ActivityAcceptedV1]]] = {}
    if routed:
        escalating = {
            held.clock.deadline_id: (event.lead_id, index)
            for event in routed
            for index, held in enumerate(clocks.get(event.lead_id, []))
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
                lead_id, index = escalating[row.deadline_id]
                held = clocks[lead_id][index]
                clocks[lead_id][index] = replace(held, ladder=(*held.ladder, timer_of(row)))
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
    held_clocks = {lead_id: tuple(held) for lead_id, held in clocks.items()}
    loaded = {held.clock.deadline_id: held for each in held_clocks.values() for held in each}
    return Batch(agreement, now, metrics, held_clocks, loaded, existing, activities)


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


def arm(batch: Batch, event: LeadRoutedV1) -> list[Event]:
    """A new assignment, as the core decides it for the lead's clocks (``sla_clocks.arm``)."""
    before = batch.clocks.get(event.lead_id, ())
    after, facts = sla_clocks.arm(
        before, event, batch.agreement, batch.now, batch.existing, batch.activities.get(event.lead_id, ())
    )
    batch.existing |= {held.clock.deadline_id for held in after if held.plan is not None}
    return _kept(batch, event.lead_id, after, facts)


def respond(batch: Batch, event: ActivityAcceptedV1) -> list[Event]:
    """A response, as the core decides it for the lead's clocks (``sla_clocks.respond``). The row
    lock orders a response and the timer: whoever holds the deadline row first decides."""
    after, facts = sla_clocks.respond(batch.clocks.get(event.lead_id, ()), event, batch.agreement, batch.now)
    return _kept(batch, event.lead_id, after, facts)


def _kept(batch: Batch, lead_id: uuid.UUID, clocks: tuple[HeldClock, ...], facts: list[Event]) -> list[Event]:
    if clocks:
        batch.clocks[lead_id] = clocks
    teams = {held.clock.deadline_id: held.clock.team for held in clocks}
    for fact in facts:
        if isinstance(fact, (SlaMetV1, SlaBreachedV1)):
            counter = batch.metrics.met if isinstance(fact, SlaMetV1) else batch.metrics.breaches
            counter.labels(fact.tier.value, teams.get(fact.deadline_id) or "").inc()
    return facts


async def store(connection: AsyncConnection, batch: Batch) -> None:
    """The batch's end state: at most five statements."""
    now = batch.now
    held_clocks = [held for clocks in batch.clocks.values() for held in clocks]
    created = [held for held in held_clocks if held.plan is not None]
    if created:
        await connection.execute(
            text(
                "INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, armed_at, "
                "due_at, status, team, started_at, calendar, agreement_version, responded_at, decided_at, decided_by, "
                "responded_by, reassignments, paged) VALUES (:d, :a, :l, :r, :m, :t, :now, :due, :s, :team, :start, "
                ":cal, :v, :resp, :dec, :by, :resp_by, :reassignments, :paged) ON CONFLICT DO NOTHING"
            ),
            [
                {
                    "d": new.clock.deadline_id,
                    "a": new.clock.assignment_id,
                    "l": new.clock.lead_id,
                    "r": new.clock.rep_id,
                    "m": new.plan.milestone,
                    "t": new.clock.tier.value,
                    "now": now,
                    "due": new.plan.due_at,
                    "s": new.clock.status.value,
                    "team": new.clock.team,
                    "start": new.plan.started_at,
                    "cal": new.plan.calendar,
                    "v": batch.agreement.version,
                    "resp": new.responded_at,
                    "dec": new.decided_at,
                    "by": new.decided_by,
                    "resp_by": new.responded_by,
                    "reassignments": new.clock.reassignments,
                    "paged": new.clock.paged,
                }
                for new in created
                if new.plan is not None
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
                    "d": new.clock.deadline_id,
                    "k": timer.key,
                    "kind": timer.kind.value,
                    "due": timer.due_at,
                    # A clock stopped in the batch that armed it never had a pending timer.
                    "s": "cancelled" if new.stopped else "pending",
                    "f": timer.fraction,
                    "step": timer.step.value if timer.step else None,
                    "i": timer.step_index,
                    "target": timer.target,
                    "x": timer.exclude_last,
                    "dec": now if new.stopped else None,
                    "carried": timer.carried,
                }
                for new in created
                if new.plan is not None
                for timer in new.plan.timers
            ],
        )
    # A stored clock changed when the core replaced it.
    stored = [held for held in held_clocks if held.plan is None]
    changed = [held for held in stored if batch.loaded.get(held.clock.deadline_id) is not held]
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
