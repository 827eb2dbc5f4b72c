"""SLA monitor shell: arms deadlines from routed leads, stops them on responses, and fires the
ones that fall due.

Deadlines are rows, not in-process timers: any number of monitors claim due rows with
``FOR UPDATE SKIP LOCKED`` on the partial index of armed deadlines, and each row leaves
``armed`` exactly once, in the same transaction that stages its fact. A monitor that was down
finds everything that fell due meanwhile on its first pass, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.core.sla import FIRST_TOUCH, DeadlineStatus, counts_as_response, on_due, on_response
from coxswain.runtime import outbox
from coxswain.runtime.consumer import Handler, PermanentError, is_connection_error
from coxswain.settings import SlaConfig
from schemas.events import ActivityRecordedV1, Event, LeadRoutedV1, SlaArmedV1, SlaBreachedV1, SlaMetV1, Tier

log = logging.getLogger(__name__)

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadRoutedV1.topic: (LeadRoutedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
}


def deadline_id_for(assignment_id: uuid.UUID, milestone: str) -> uuid.UUID:
    return uuid.uuid5(assignment_id, milestone)


async def arm(connection: AsyncConnection, event: LeadRoutedV1, now: datetime) -> list[Event]:
    deadline_id = deadline_id_for(event.assignment_id, FIRST_TOUCH)
    inserted = await connection.scalar(
        text(
            "INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, armed_at, due_at, status) "
            "VALUES (:d, :a, :l, :r, :m, :t, :now, :due, 'armed') ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {
            "d": deadline_id,
            "a": event.assignment_id,
            "l": event.lead_id,
            "r": event.rep_id,
            "m": FIRST_TOUCH,
            "t": event.tier.value,
            "now": now,
            "due": event.follow_up_due_at,
        },
    )
    if inserted is None:
        return []
    return [
        SlaArmedV1(
            event_id=uuid.uuid5(deadline_id, "armed"),
            lead_id=event.lead_id,
            occurred_at=now,
            deadline_id=deadline_id,
            assignment_id=event.assignment_id,
            rep_id=event.rep_id,
            milestone=FIRST_TOUCH,
            tier=event.tier,
            due_at=event.follow_up_due_at,
        )
    ]


async def respond(
    connection: AsyncConnection, event: ActivityRecordedV1, agreement: Agreement, now: datetime
) -> list[Event]:
    rows = (
        await connection.execute(
            text(
                "SELECT deadline_id, assignment_id, rep_id, milestone, tier, due_at, status FROM deadlines "
                "WHERE lead_id = :l AND status = 'armed' ORDER BY due_at FOR UPDATE"
            ),
            {"l": event.lead_id},
        )
    ).all()
    # A touch the CRM dates in the future counts from when we heard of it.
    responded_at = min(event.occurred_at, now)
    facts: list[Event] = []
    for row in rows:
        tier = Tier(row.tier)
        if not counts_as_response(agreement, tier, event.activity):
            continue
        verdict = on_response(DeadlineStatus(row.status), row.due_at, responded_at)
        if verdict is None:
            continue
        await _decide(connection, row.deadline_id, verdict.status, now, event.event_id)
        if verdict.status is DeadlineStatus.met:
            facts.append(
                SlaMetV1(
                    event_id=uuid.uuid5(row.deadline_id, "met"),
                    lead_id=event.lead_id,
                    occurred_at=now,
                    deadline_id=row.deadline_id,
                    assignment_id=row.assignment_id,
                    rep_id=row.rep_id,
                    milestone=row.milestone,
                    tier=tier,
                    due_at=row.due_at,
                    responded_at=responded_at,
                    response_activity_id=event.event_id,
                )
            )
        else:
            facts.append(_breached(event.lead_id, row, tier, now))
    return facts


def _breached(lead_id: uuid.UUID, row: Row[Any], tier: Tier, now: datetime) -> SlaBreachedV1:
    deadline_id: uuid.UUID = row.deadline_id
    return SlaBreachedV1(
        event_id=uuid.uuid5(deadline_id, "breached"),
        lead_id=lead_id,
        occurred_at=now,
        deadline_id=deadline_id,
        assignment_id=row.assignment_id,
        rep_id=row.rep_id,
        milestone=row.milestone,
        tier=tier,
        due_at=row.due_at,
        fired_at=now,
    )


async def _decide(
    connection: AsyncConnection, deadline_id: uuid.UUID, status: DeadlineStatus, now: datetime, by: uuid.UUID | None
) -> None:
    await connection.execute(
        text(
            "UPDATE deadlines SET status = :s, decided_at = :now, decided_by = :by WHERE deadline_id = :d AND status = 'armed'"
        ),
        {"s": status.value, "now": now, "by": by, "d": deadline_id},
    )


def make_handler(agreement: Agreement) -> Handler:
    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        if isinstance(event, LeadRoutedV1):
            return await arm(connection, event, now)
        if isinstance(event, ActivityRecordedV1):
            return await respond(connection, event, agreement, now)
        raise PermanentError(f"sla monitor does not handle {type(event).__name__}")

    return handle


async def fire_due(engine: AsyncEngine, now: datetime, limit: int) -> int:
    """Breach up to ``limit`` due deadlines, oldest first; rows another monitor holds are skipped."""
    async with engine.begin() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT deadline_id, lead_id, assignment_id, rep_id, milestone, tier, due_at, status FROM deadlines "
                    "WHERE status = 'armed' AND due_at <= :now ORDER BY due_at LIMIT :n FOR UPDATE SKIP LOCKED"
                ),
                {"now": now, "n": limit},
            )
        ).all()
        facts: list[Event] = []
        for row in rows:
            if on_due(DeadlineStatus(row.status), row.due_at, now) is not None:
                facts.append(_breached(row.lead_id, row, Tier(row.tier), now))
        if facts:
            await connection.execute(
                text("UPDATE deadlines SET status = 'breached', decided_at = :now WHERE deadline_id = ANY(:ids)"),
                {"now": now, "ids": [fact.deadline_id for fact in facts if isinstance(fact, SlaBreachedV1)]},
            )
            await outbox.stage(connection, facts, now)
        return len(facts)


async def next_due(engine: AsyncEngine) -> datetime | None:
    async with engine.connect() as connection:
        value = await connection.scalar(text("SELECT min(due_at) FROM deadlines WHERE status = 'armed'"))
        return value if isinstance(value, datetime) else None


async def run_timer(engine: AsyncEngine, config: SlaConfig, clock: Callable[[], datetime], stop: asyncio.Event) -> None:
    max_sleep = timedelta(seconds=config.sla_max_sleep_seconds)
    while not stop.is_set():
        try:
            fired = await fire_due(engine, clock(), config.sla_claim_batch)
            if fired:
                log.info("deadlines breached: count=%s", fired)
            if fired == config.sla_claim_batch:
                continue
            upcoming = await next_due(engine)
        except Exception as exc:
            log.warning("timer pass failed, retrying: %s", type(exc).__name__, exc_info=not is_connection_error(exc))
            upcoming = None
        pause = max_sleep if upcoming is None else min(max(upcoming - clock(), timedelta(0)), max_sleep)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(pause.total_seconds(), 0.01))
