"""The firing side of the SLA clocks: durable timers claimed from PostgreSQL.

Any number of monitors run this loop. Each pass claims due timer rows together with their
deadline rows (``FOR UPDATE OF t, d SKIP LOCKED``, oldest due first, on the partial index of
pending timers), asks the core what each timer means now, and in one transaction marks the
timers fired or retired, moves breached deadlines out of ``armed`` and stages the facts in the
outbox (and the alert webhook queue). A timer leaves ``pending`` exactly once: a second monitor
skips rows the first holds, and a monitor killed mid-pass leaves its rows pending, unchanged, for
the next pass. Event ids are derived from (assignment, milestone, step), so even a relay that
publishes twice publishes the same id. A monitor that was down finds every overdue timer on its
first pass and fires them in due order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core import sla_clocks
from coxswain.core.agreement import Agreement
from coxswain.core.sla import EVERY_ASSIGNMENT, Clock, Timer, TimerKind, on_timer
from coxswain.runtime import outages, outbox
from coxswain.runtime.outages import is_connection_error
from schemas.events import EscalationAction, Event
from services.sla_monitor import alerts
from services.sla_monitor.metrics import SlaMetrics
from services.sla_monitor.service import CLOCK_COLUMNS, CONSUMER, clock_of, timer_of

log = logging.getLogger(__name__)

_RANK = {TimerKind.warning: 0, TimerKind.breach: 1, TimerKind.escalation: 2}


@dataclass
class Pass:
    claimed: int = 0
    fired: list[tuple[Clock, Timer]] = field(default_factory=list)
    retired: int = 0
    facts: list[Event] = field(default_factory=list)


# A timer waits while an activity for its lead that intake acknowledged before the timer came due
# has not been applied here yet (broker down, monitor restarting, a backlog): a response that
# arrived in time must stop the clock, not race it. PostgreSQL is the source of truth for what
# intake acknowledged. An activity that never gets applied (dead-lettered) holds it at most
# RESPONSE_HOLD.
RESPONSE_HOLD = timedelta(minutes=10)
AWAITING_RESPONSE = (
    "EXISTS (SELECT 1 FROM intake_events e WHERE e.lead_id = d.lead_id AND e.kind = 'activity' "
    "AND e.received_at <= t.due_at AND e.received_at > CAST(:now AS timestamptz) - CAST(:hold AS interval) "
    f"AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.consumer = '{CONSUMER}' AND i.event_id = e.event_id))"
)


async def claim(connection: AsyncConnection, now: datetime, limit: int) -> list[Row[Any]]:
    # The deadline row is locked with its timer: a response holding it makes us skip, never wait.
    columns = ", ".join(f"d.{name}" for name in CLOCK_COLUMNS.split(", "))
    result = await connection.execute(
        text(
            f"SELECT {columns}, t.key, t.kind, t.due_at AS timer_due_at, t.fraction, t.step, t.step_index, "
            "t.target, t.exclude_last, t.carried FROM sla_timers t JOIN deadlines d ON d.deadline_id = t.deadline_id "
            f"WHERE t.status = 'pending' AND t.due_at <= :now AND NOT {AWAITING_RESPONSE} "
            "ORDER BY t.due_at LIMIT :n FOR UPDATE OF t, d SKIP LOCKED"
        ),
        {"now": now, "n": limit, "hold": RESPONSE_HOLD},
    )
    return list(result.all())


async def previous_owners(connection: AsyncConnection, lead_id: uuid.UUID) -> list[str]:
    """The lead's reps newest first: one per assignment, read from the clock every assignment has."""
    rows = await connection.execute(
        text(
            "SELECT rep_id FROM deadlines WHERE lead_id = :l AND milestone = :every "
            "ORDER BY started_at DESC NULLS LAST, armed_at DESC"
        ),
        {"l": lead_id, "every": EVERY_ASSIGNMENT},
    )
    return [row.rep_id for row in rows]


Failpoint = Callable[[Pass], Awaitable[None]]


async def fire_due(
    engine: AsyncEngine,
    now: datetime,
    limit: int,
    instance: str,
    alert_webhook: bool = False,
    before_commit: Failpoint | None = None,
    agreement: Agreement | None = None,
) -> Pass:
    """One pass: decide up to ``limit`` due timers, oldest first, in one transaction."""
    result = Pass()
    async with engine.begin() as connection:
        rows = await claim(connection, now, limit)
        result.claimed = len(rows)
        # Ties at one instant: a warning before the breach, the breach before its ladder.
        rows.sort(key=lambda row: (row.timer_due_at, _RANK[TimerKind(row.kind)], row.key))
        clocks: dict[uuid.UUID, Clock] = {}
        fired: list[tuple[uuid.UUID, str]] = []
        retired: list[tuple[uuid.UUID, str]] = []
        newly_breached: list[uuid.UUID] = []
        paged: list[uuid.UUID] = []
        for row in rows:
            clock = clocks.get(row.deadline_id) or clock_of(row)
            timer = timer_of(row)
            verdict = on_timer(clock, timer, now)
            if verdict is None:
                continue
            if not verdict.fire:
                retired.append((clock.deadline_id, timer.key))
                continue
            owners = await previous_owners(connection, clock.lead_id) if timer.step is EscalationAction.reassign else []
            cap = agreement.sla.policies[clock.tier].max_reassignments if agreement is not None else None
            after, facts = sla_clocks.fire(clock, timer, verdict, now, owners, cap)
            result.facts += facts
            result.fired.append((clock, timer))
            fired.append((clock.deadline_id, timer.key))
            if after.status is not clock.status:
                newly_breached.append(clock.deadline_id)
            if after.paged and not clock.paged:
                paged.append(clock.deadline_id)
            clocks[clock.deadline_id] = after
        await _mark(connection, fired, "fired", now, instance)
        await _mark(connection, retired, "cancelled", now, None)
        result.retired = len(retired)
        if newly_breached:
            await connection.execute(
                text(
                    "UPDATE deadlines SET status = 'breached', decided_at = :now "
                    "WHERE deadline_id = ANY(:ids) AND status = 'armed'"
                ),
                {"now": now, "ids": newly_breached},
            )
        if paged:
            await connection.execute(
                text("UPDATE deadlines SET paged = true WHERE deadline_id = ANY(:ids)"), {"ids": paged}
            )
        await outbox.stage(connection, result.facts, now)
        if alert_webhook:
            await alerts.enqueue(connection, result.facts, now)
        if before_commit is not None:
            await before_commit(result)
    return result


async def _mark(
    connection: AsyncConnection, keys: list[tuple[uuid.UUID, str]], status: str, now: datetime, instance: str | None
) -> None:
    if not keys:
        return
    await connection.execute(
        text(
            "UPDATE sla_timers t SET status = :s, decided_at = :now, fired_by = :by "
            "FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS text[])) AS u(deadline_id, key) "
            "WHERE t.deadline_id = u.deadline_id AND t.key = u.key AND t.status = 'pending'"
        ),
        {"s": status, "now": now, "by": instance, "ids": [d for d, _ in keys], "keys": [k for _, k in keys]},
    )


def record(metrics: SlaMetrics, done: Pass, now: datetime) -> None:
    """Counted after the commit, so a rolled-back pass counts nothing."""
    for clock, timer in done.fired:
        labels = (clock.tier.value, clock.team or "")
        metrics.timer_lag.observe(max((now - timer.due_at).total_seconds(), 0.0))
        match timer.kind:
            case TimerKind.warning:
                metrics.warnings.labels(*labels).inc()
            case TimerKind.breach:
                metrics.breaches.labels(*labels).inc()
            case TimerKind.escalation:
                metrics.escalations.labels(*labels, timer.step.value if timer.step else "").inc()


async def next_due(engine: AsyncEngine, now: datetime) -> datetime | None:
    async with engine.connect() as connection:
        # Held timers are left out, or a held overdue timer would turn the loop into a busy wait.
        # ORDER BY ... LIMIT 1, not min(): with the join PostgreSQL computes min() over every
        # pending timer (a second per pass with a million open deadlines), where this walks the
        # partial index of pending timers in due order and stops at the first one not held.
        value = await connection.scalar(
            text(
                "SELECT t.due_at FROM sla_timers t JOIN deadlines d ON d.deadline_id = t.deadline_id "
                f"WHERE t.status = 'pending' AND NOT {AWAITING_RESPONSE} ORDER BY t.due_at LIMIT 1"
            ),
            {"now": now, "hold": RESPONSE_HOLD},
        )
        return value if isinstance(value, datetime) else None


async def run_timer(
    engine: AsyncEngine,
    *,
    clock: Callable[[], datetime],
    stop: asyncio.Event,
    metrics: SlaMetrics,
    instance: str,
    batch: int,
    max_sleep: timedelta,
    alert_webhook: bool = False,
    failpoint_pass: int = 0,
    agreement: Callable[[], Agreement] | None = None,
) -> None:
    passes_with_facts = 0

    async def failpoint(done: Pass) -> None:
        nonlocal passes_with_facts
        passes_with_facts += 1 if done.facts else 0
        if done.facts and passes_with_facts == failpoint_pass:
            log.warning(
                "failpoint reached: timer pass %s holds %s timers; hanging until killed", failpoint_pass, done.claimed
            )
            await asyncio.Event().wait()

    while not stop.is_set():
        upcoming: datetime | None = None
        try:
            now = clock()
            done = await fire_due(
                engine,
                now,
                batch,
                instance,
                alert_webhook,
                failpoint if failpoint_pass else None,
                agreement() if agreement is not None else None,
            )
            record(metrics, done, now)
            if done.fired:
                log.info(
                    "timers fired: count=%s facts=%s retired=%s instance=%s",
                    len(done.fired),
                    len(done.facts),
                    done.retired,
                    instance,
                )
            if done.claimed == batch and (done.fired or done.retired):
                continue
            upcoming = await next_due(engine, now)
        except Exception as exc:
            log.warning(
                "timer pass failed, retrying: error=%s",
                type(exc).__name__,
                exc_info=not is_connection_error(exc),
                extra=outages.about(exc),
            )
        pause = max_sleep if upcoming is None else min(max(upcoming - clock(), timedelta(0)), max_sleep)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(pause.total_seconds(), 0.01))
