"""SLA monitor shell: arms clocks from routed leads, stops them on responses, counts MQLs.

Clocks are ``deadlines`` rows and their timers ``sla_timers`` rows, never in-process timers
(see ``timers.py`` for the firing side). Lock order everywhere: the deadline row first, then its
timers; the timer side never waits for a lock (SKIP LOCKED), so the two cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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
from coxswain.runtime.consumer import Handler, PermanentError
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


async def lock_open_clocks(connection: AsyncConnection, lead_id: uuid.UUID) -> list[Row[Any]]:
    """A lead's clocks that can still change: armed, or breached with the ladder still running."""
    result = await connection.execute(
        text(
            f"SELECT {CLOCK_COLUMNS}, started_at FROM deadlines WHERE lead_id = :l "
            "AND (status = 'armed' OR (status = 'breached' AND responded_at IS NULL)) "
            "ORDER BY deadline_id FOR UPDATE"
        ),
        {"l": lead_id},
    )
    return list(result.all())


async def retire_timers(connection: AsyncConnection, deadline_ids: Sequence[uuid.UUID], now: datetime) -> None:
    if deadline_ids:
        await connection.execute(
            text(
                "UPDATE sla_timers SET status = 'cancelled', decided_at = :now "
                "WHERE deadline_id = ANY(:ids) AND status = 'pending'"
            ),
            {"now": now, "ids": list(deadline_ids)},
        )


async def insert_clock(
    connection: AsyncConnection, event: LeadRoutedV1, milestone: MilestonePlan, version: str, now: datetime
) -> uuid.UUID | None:
    deadline_id = deadline_id_for(event.assignment_id, milestone.milestone)
    inserted = await connection.scalar(
        text(
            "INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, armed_at, due_at, "
            "status, team, started_at, calendar, agreement_version) "
            "VALUES (:d, :a, :l, :r, :m, :t, :now, :due, 'armed', :team, :start, :cal, :v) "
            "ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {
            "d": deadline_id,
            "a": event.assignment_id,
            "l": event.lead_id,
            "r": event.rep_id,
            "m": milestone.milestone,
            "t": event.tier.value,
            "now": now,
            "due": milestone.due_at,
            "team": event.pool_id,
            "start": milestone.started_at,
            "cal": milestone.calendar,
            "v": version,
        },
    )
    if inserted is None:
        return None
    await connection.execute(
        text(
            "INSERT INTO sla_timers (deadline_id, key, kind, due_at, status, fraction, step, step_index, target, "
            "exclude_last) VALUES (:d, :k, :kind, :due, 'pending', :f, :s, :i, :target, :x)"
        ),
        [
            {
                "d": deadline_id,
                "k": timer.key,
                "kind": timer.kind.value,
                "due": timer.due_at,
                "f": timer.fraction,
                "s": timer.step.value if timer.step else None,
                "i": timer.step_index,
                "target": timer.target,
                "x": timer.exclude_last,
            }
            for timer in milestone.timers
        ],
    )
    return deadline_id


async def arm(connection: AsyncConnection, event: LeadRoutedV1, agreement: Agreement, now: datetime) -> list[Event]:
    """A new assignment: the clocks of the previous one stop (a new clock replaces them)."""
    open_clocks = await lock_open_clocks(connection, event.lead_id)
    older = [row for row in open_clocks if row.assignment_id != event.assignment_id]
    if any(row.started_at is not None and row.started_at > event.routed_at for row in older):
        return []  # a newer assignment already runs; this one was superseded before we saw it
    facts: list[Event] = []
    for row in older:
        clock = clock_of(row)
        if clock.status is DeadlineStatus.armed:
            await _decide(connection, clock.deadline_id, DeadlineStatus.cancelled, now, event.event_id)
            facts.append(cancelled(clock, now, event.assignment_id))
    await retire_timers(connection, [row.deadline_id for row in older], now)
    plans = plan(agreement, event.tier, event.rep_id, event.pool_id, event.routed_at, event.follow_up_due_at)
    for milestone in plans:
        deadline_id = await insert_clock(connection, event, milestone, agreement.version, now)
        if deadline_id is None:
            continue
        facts.append(
            SlaArmedV1(
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
        )
    return facts


async def responses_seen_before(connection: AsyncConnection, event: LeadRoutedV1) -> list[ActivityRecordedV1]:
    """Activities for the lead that this monitor applied before it saw the routing.

    leads.routed.v1 and crm.activities.v1 are not ordered with each other: a monitor catching up
    after a restart or a broker outage may consume the first touch before the routing it answers,
    when there was no clock yet to stop. Intake's ledger (PostgreSQL) still has the activity; only
    those received at or after the routing count, so a touch for an earlier assignment does not.
    """
    result = await connection.execute(
        text(
            "SELECT e.payload FROM intake_events e "
            "JOIN inbox i ON i.consumer = :consumer AND i.event_id = e.event_id "
            "WHERE e.lead_id = :l AND e.kind = 'activity' AND e.received_at >= :routed ORDER BY e.received_at"
        ),
        {"consumer": CONSUMER, "l": event.lead_id, "routed": event.routed_at},
    )
    return [ActivityRecordedV1.model_validate(row.payload) for row in result]


async def respond(
    connection: AsyncConnection, event: ActivityRecordedV1, agreement: Agreement, now: datetime, metrics: SlaMetrics
) -> list[Event]:
    """The row lock orders a response and the timer: whoever holds the deadline row first decides."""
    # A touch the CRM dates in the future counts from when we heard of it.
    responded_at = min(event.occurred_at, now)
    facts: list[Event] = []
    stopped: list[uuid.UUID] = []
    for row in await lock_open_clocks(connection, event.lead_id):
        clock = clock_of(row)
        if not counts_as_response(agreement, clock.tier, event.activity, clock.milestone):
            continue
        stopped.append(clock.deadline_id)
        verdict = on_response(clock.status, clock.due_at, responded_at)
        status = verdict.status if verdict else clock.status
        await connection.execute(
            text(
                "UPDATE deadlines SET status = :s, responded_at = :r, decided_at = coalesce(decided_at, :now), "
                "decided_by = coalesce(decided_by, :by) WHERE deadline_id = :d"
            ),
            {"s": status.value, "r": responded_at, "now": now, "by": event.event_id, "d": clock.deadline_id},
        )
        labels = (clock.tier.value, clock.team or "")
        if verdict is None:
            continue  # breached earlier: the response only stops the escalation ladder
        if verdict.status is DeadlineStatus.met:
            facts.append(met(clock, now, responded_at, event.event_id))
            metrics.met.labels(*labels).inc()
        else:
            facts.append(breached(clock, now))
            metrics.breaches.labels(*labels).inc()
    await retire_timers(connection, stopped, now)
    return facts


async def count_mql(connection: AsyncConnection, event: LeadQualifiedV1) -> list[Event]:
    await connection.execute(
        text(
            "INSERT INTO marketing_mqls (event_id, lead_id, qualified_at) VALUES (:e, :l, :at) ON CONFLICT DO NOTHING"
        ),
        {"e": event.event_id, "l": event.lead_id, "at": event.occurred_at},
    )
    return []


async def _decide(
    connection: AsyncConnection, deadline_id: uuid.UUID, status: DeadlineStatus, now: datetime, by: uuid.UUID | None
) -> None:
    await connection.execute(
        text(
            "UPDATE deadlines SET status = :s, decided_at = :now, decided_by = :by WHERE deadline_id = :d AND status = 'armed'"
        ),
        {"s": status.value, "now": now, "by": by, "d": deadline_id},
    )


def make_handler(agreement: Agreement, metrics: SlaMetrics | None = None, alert_webhook: bool = False) -> Handler:
    counters = metrics or SlaMetrics(CollectorRegistry())

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        if isinstance(event, LeadRoutedV1):
            facts = await arm(connection, event, agreement, now)
            if any(isinstance(fact, SlaArmedV1) for fact in facts):
                for early in await responses_seen_before(connection, event):
                    facts += await respond(connection, early, agreement, now, counters)
        elif isinstance(event, ActivityRecordedV1):
            facts = await respond(connection, event, agreement, now, counters)
        elif isinstance(event, LeadQualifiedV1):
            facts = await count_mql(connection, event)
        else:
            raise PermanentError(f"sla monitor does not handle {type(event).__name__}")
        if alert_webhook:
            await alerts.enqueue(connection, facts, now)
        return facts

    return handle
