"""SLA monitor shell: arms clocks from routed leads, stops them on responses, counts MQLs.

Clocks are ``deadlines`` rows and their timers ``sla_timers`` rows, never in-process timers
(see ``timers.py`` for the firing side); their SQL is in ``repository.py``. Lock order everywhere:
the deadline row first, then its timers; the timer side never waits for a lock (SKIP LOCKED), so
the two cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core import sla_clocks
from coxswain.core.agreement import Agreement
from coxswain.core.sla import deadline_id_for
from coxswain.core.sla_clocks import HeldClock, routed_plan
from coxswain.runtime.consumer import BatchHandler, Handler, PermanentError, claim_many, one_at_a_time
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityRefusedV1,
    Event,
    LeadQualifiedV1,
    LeadRoutedV1,
    SlaBreachedV1,
    SlaMetV1,
)
from services.sla_monitor import alerts, repository
from services.sla_monitor.metrics import SlaMetrics

# Clocks stop on activities as scoring judged them, never on the raw crm.activities.v1 record: a
# refused activity stops nothing. Refusals are consumed too, only so that a timer waiting for that
# activity to be applied (timers.RESPONSE_HOLD) stops waiting.
ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadRoutedV1.topic: (LeadRoutedV1,),
    ActivityAcceptedV1.topic: (ActivityAcceptedV1,),
    ActivityRefusedV1.topic: (ActivityRefusedV1,),
    LeadQualifiedV1.topic: (LeadQualifiedV1,),
}

CONSUMER = "sla_monitor"  # its consumer group and inbox name (coxswain_app.wiring.CONSUMERS)


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
    # This batch's accepted activities, by event id, until the batch reaches them: the consumer
    # claimed the whole batch in the inbox before applying it, so they read as applied already.
    later: dict[uuid.UUID, tuple[datetime, ActivityAcceptedV1]] = field(default_factory=dict)
    # Per lead, the routings known when the batch began: the batch's, and for a lead with touches
    # applied before its routing, the router's later assignments.
    routed_at: dict[uuid.UUID, list[datetime]] = field(default_factory=dict)
    mqls: list[LeadQualifiedV1] = field(default_factory=list)


async def load_batch(
    connection: AsyncConnection, events: Sequence[Event], agreement: Agreement, now: datetime, metrics: SlaMetrics
) -> Batch:
    """Five statements at most whatever the batch size: the leads' open clocks (locked, in one
    global order so two monitors cannot deadlock), the pending ladders a new assignment may carry
    on, which planned deadlines exist, the accepted activities already applied for the routed
    leads and, if there are any, the router's assignments of those leads since."""
    leads = sorted({event.lead_id for event in events if not isinstance(event, LeadQualifiedV1)})
    clocks: dict[uuid.UUID, list[HeldClock]] = {}
    if leads:
        for held in await repository.lock_open_clocks(connection, leads):
            clocks.setdefault(held.clock.lead_id, []).append(held)
    routed = [event for event in events if isinstance(event, LeadRoutedV1)]
    planned = [
        deadline_id_for(event.assignment_id, milestone.milestone)
        for event in routed
        for milestone in routed_plan(agreement, event)
    ]
    existing: set[uuid.UUID] = set()
    activities: dict[uuid.UUID, list[tuple[datetime, ActivityAcceptedV1]]] = {}
    later: dict[uuid.UUID, tuple[datetime, ActivityAcceptedV1]] = {}
    routed_at: dict[uuid.UUID, list[datetime]] = {}
    for event in routed:
        routed_at.setdefault(event.lead_id, []).append(event.routed_at)
    if routed:
        escalating = {
            held.clock.deadline_id: (event.lead_id, index)
            for event in routed
            for index, held in enumerate(clocks.get(event.lead_id, []))
            if held.escalating
        }
        if escalating:
            for step in await repository.pending_ladders(connection, sorted(escalating)):
                lead_id, index = escalating[step.deadline_id]
                held = clocks[lead_id][index]
                clocks[lead_id][index] = replace(held, ladder=(*held.ladder, step.timer))
        existing = await repository.stored_deadline_ids(connection, planned)
        # leads.routed.v1 and the accepted activities are not ordered with each other: a monitor
        # catching up after a restart or a broker outage may apply the first touch before the
        # routing it answers, when there was no clock yet to stop. Scoring's record of the
        # judgement still has it, and intake's ledger says when the touch was received.
        applied = await repository.applied_activities(
            connection,
            CONSUMER,
            sorted({event.lead_id for event in routed}),
            min(event.routed_at for event in routed),
        )
        # The inbox already holds this whole batch (the consumer claims it before applying it):
        # a touch later in the batch is applied when the batch reaches it, in order, and must not
        # answer a routing before it as if applied earlier (a former owner's touch would credit
        # the former owner's clock when the reassignment is in the batch too).
        in_batch = {event.event_id for event in events if isinstance(event, ActivityAcceptedV1)}
        for lead_id, received_at, activity in applied:
            if activity.event_id in in_batch:
                later[activity.event_id] = (received_at, activity)
            else:
                activities.setdefault(lead_id, []).append((received_at, activity))
        if activities:
            # A touch applied before its routing answers that routing only while the assignment
            # was the lead's; a reassignment still on its way to the monitor ended it all the
            # same. The router stored it before publishing it, so its table says (the rows of this
            # batch's own routings are there too, and change nothing).
            since = min(event.routed_at for event in routed if event.lead_id in activities)
            for lead_id, at in await repository.later_routings(connection, sorted(activities), since):
                routed_at.setdefault(lead_id, []).append(at)
    held_clocks = {lead_id: tuple(held) for lead_id, held in clocks.items()}
    loaded = {held.clock.deadline_id: held for each in held_clocks.values() for held in each}
    return Batch(agreement, now, metrics, held_clocks, loaded, existing, activities, later, routed_at)


def arm(batch: Batch, event: LeadRoutedV1) -> list[Event]:
    """A new assignment, as the core decides it for the lead's clocks (``sla_clocks.arm``). A newer
    routing of the lead in the same batch bounds the applied activities that answer this one."""
    before = batch.clocks.get(event.lead_id, ())
    newer = [at for at in batch.routed_at.get(event.lead_id, ()) if at > event.routed_at]
    after, facts = sla_clocks.arm(
        before,
        event,
        batch.agreement,
        batch.now,
        batch.existing,
        batch.activities.get(event.lead_id, ()),
        until=min(newer, default=None),
    )
    batch.existing |= {held.clock.deadline_id for held in after if held.plan is not None}
    return _kept(batch, event.lead_id, after, facts)


def respond(batch: Batch, event: ActivityAcceptedV1) -> list[Event]:
    """A response, as the core decides it for the lead's clocks (``sla_clocks.respond``). The row
    lock orders a response and the timer: whoever holds the deadline row first decides."""
    after, facts = sla_clocks.respond(batch.clocks.get(event.lead_id, ()), event, batch.agreement, batch.now)
    reached = batch.later.pop(event.event_id, None)
    if reached is not None:
        # Applied now: a routing later in the batch that it came before may be answered by it.
        applied = batch.activities.setdefault(event.lead_id, [])
        applied.append(reached)
        applied.sort(key=lambda each: each[0])
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
    """The batch's end state: at most two statements of its own (stored clocks changed, their
    timers cancelled); new clocks, their timers and the MQLs ride in the batch's last statement
    when the consumer defers (``coxswain.db.deferred``)."""
    now = batch.now
    held_clocks = [held for clocks in batch.clocks.values() for held in clocks]
    created = [held for held in held_clocks if held.plan is not None]
    if created:
        await repository.insert_clocks(connection, created, batch.agreement.version, now)
    # A stored clock changed when the core replaced it.
    stored = [held for held in held_clocks if held.plan is None]
    changed = [held for held in stored if batch.loaded.get(held.clock.deadline_id) is not held]
    if changed:
        await repository.update_clocks(connection, changed)
    stopped = [held.clock.deadline_id for held in stored if held.stopped]
    if stopped:
        await repository.cancel_pending_timers(connection, stopped, now)
    if batch.mqls:
        await repository.insert_mqls(connection, batch.mqls)


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
        # them (timers.RESPONSE_HOLD, keyed by intake's event id) may fire or retire.
        judged = [event for event in events if isinstance(event, (ActivityAcceptedV1, ActivityRefusedV1))]
        await claim_many(connection, CONSUMER, [(event.caused_by, ActivityRecordedV1.topic) for event in judged], now)
        if alert_webhook:
            await alerts.enqueue(connection, [fact for each in facts for fact in each], now)
        return facts

    return handle


def make_handler(agreement: Agreement, metrics: SlaMetrics | None = None, alert_webhook: bool = False) -> Handler:
    return one_at_a_time(make_batch_handler(agreement, metrics, alert_webhook))
