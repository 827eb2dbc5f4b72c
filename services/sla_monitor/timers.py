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

from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core import sla_clocks
from coxswain.core.agreement import Agreement
from coxswain.core.sla import EVERY_ASSIGNMENT, Clock, Timer, TimerKind, on_timer
from coxswain.runtime import outages, outbox
from coxswain.runtime.outages import is_connection_error
from schemas.events import EscalationAction, Event
from services.sla_monitor import alerts, repository
from services.sla_monitor.metrics import SlaMetrics
from services.sla_monitor.service import CONSUMER

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
        due = await repository.claim_due_timers(connection, now, limit, CONSUMER, RESPONSE_HOLD)
        result.claimed = len(due)
        # Ties at one instant: a warning before the breach, the breach before its ladder.
        due.sort(key=lambda each: (each.timer.due_at, _RANK[each.timer.kind], each.timer.key))
        clocks: dict[uuid.UUID, Clock] = {}
        fired: list[tuple[uuid.UUID, str]] = []
        retired: list[tuple[uuid.UUID, str]] = []
        newly_breached: list[uuid.UUID] = []
        paged: list[uuid.UUID] = []
        for claimed, timer in due:
            clock = clocks.get(claimed.deadline_id) or claimed
            verdict = on_timer(clock, timer, now)
            if verdict is None:
                continue
            if not verdict.fire:
                retired.append((clock.deadline_id, timer.key))
                continue
            owners = (
                await repository.reps_by_assignment(connection, clock.lead_id, EVERY_ASSIGNMENT)
                if timer.step is EscalationAction.reassign
                else []
            )
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
        if fired:
            await repository.decide_timers(connection, fired, "fired", now, instance)
        if retired:
            await repository.decide_timers(connection, retired, "cancelled", now, None)
        result.retired = len(retired)
        if newly_breached:
            await repository.mark_breached(connection, newly_breached, now)
        if paged:
            await repository.mark_paged(connection, paged)
        await outbox.stage(connection, result.facts, now)
        if alert_webhook:
            await alerts.enqueue(connection, result.facts, now)
        if before_commit is not None:
            await before_commit(result)
    return result


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
        return await repository.next_due(connection, now, CONSUMER, RESPONSE_HOLD)


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
