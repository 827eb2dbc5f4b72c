"""Re-evaluation timers: a decayed MQL is demoted, a recycled lead re-qualifies, at the moment the
core computed, not in a nightly batch.

Timers are rows (``scoring_timers``, one per lead), so any number of scoring processes share
them. A pass takes due rows oldest first and, per lead, the lead's row lock with SKIP LOCKED: a
lead that a consumer (or another timer loop) is working on is left for the next pass, and the
consumer re-arms the timer from the state it saves anyway. Locks are taken lead first, then
timer, the same order the consumer uses, so the two never deadlock. The facts are named after
the timer and dated at its due time, so firing is deterministic and a re-run is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.core.lead import on_timer
from coxswain.db.leads import load
from coxswain.runtime import outages, outbox
from coxswain.runtime.outages import is_connection_error
from coxswain.runtime.waiting import first_of
from coxswain.settings import ScoringConfig
from services.scoring import repository
from services.scoring.repository import TIMER_CHANNEL
from services.scoring.service import next_timers

log = logging.getLogger(__name__)


async def fire_one(connection: AsyncConnection, lead_id: uuid.UUID, agreement: Agreement, now: datetime) -> bool:
    """Re-evaluate one lead whose timer is due; False when it is busy or no longer due."""
    state = await load(connection, lead_id, lock="skip")
    if state is None:
        return False
    timer = await repository.due_timer_for_update(connection, lead_id, now)
    if timer is None:
        return False
    outcome = on_timer(state, agreement, timer.due_at, timer.timer_id)
    (due,), unarmed, timers = next_timers([(outcome.state, timer.due_at)], agreement, now)
    if due is not None and due <= timer.due_at:
        # Cannot happen with a consistent core; never spin on it.
        log.warning("re-evaluation changed nothing and is due again at once; dropping: lead_id=%s", lead_id)
        unarmed, timers = [lead_id], []
    # One statement: the lead and its facts when the timer changed something, and the timer re-armed
    # or removed. This loop looks for the next due timer right after its pass, so it need not be
    # woken for one due later than now.
    await repository.save_batch(
        connection,
        states=[outcome.state] if outcome.facts else [],
        facts=outcome.facts,
        unarmed=unarmed,
        timers=timers,
        agreement_version=agreement.version,
        now=now,
        wake_if_due_before=now,
    )
    if outcome.facts:
        await outbox.stage(connection, outcome.facts, now)
    log.info(
        "lead re-evaluated: lead_id=%s timer_id=%s due_at=%s lateness_ms=%d facts=%d",
        lead_id,
        timer.timer_id,
        timer.due_at.isoformat(),
        (now - timer.due_at) / timedelta(milliseconds=1),
        len(outcome.facts),
    )
    return True


async def fire_due(engine: AsyncEngine, agreement: Agreement, now: datetime, limit: int) -> tuple[int, int]:
    """(fired, skipped) for up to ``limit`` due timers, oldest first."""
    async with engine.begin() as connection:
        due = await repository.due_leads(connection, now, limit)
        fired = 0
        for lead_id in due:
            try:
                async with connection.begin_nested():
                    fired += await fire_one(connection, lead_id, agreement, now)
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                # One lead the core cannot re-evaluate must not hold back every other timer.
                log.exception("re-evaluation failed; retrying in a minute: lead_id=%s", lead_id)
                async with connection.begin_nested():
                    await repository.postpone_timer(connection, lead_id, now + timedelta(minutes=1))
        return fired, len(due) - fired


async def next_due(engine: AsyncEngine) -> datetime | None:
    async with engine.connect() as connection:
        return await repository.next_due(connection)


async def run_timer(
    engine: AsyncEngine,
    agreement: Callable[[], Agreement],
    config: ScoringConfig,
    clock: Callable[[], datetime],
    stop: asyncio.Event,
) -> None:
    wake = asyncio.Event()
    listener = asyncio.create_task(_listen(engine, wake, stop))
    max_sleep = timedelta(seconds=config.scoring_timer_max_sleep_seconds)
    try:
        while not stop.is_set():
            wake.clear()
            skipped = 0
            try:
                fired, skipped = await fire_due(engine, agreement(), clock(), config.scoring_timer_claim_batch)
                if fired + skipped == config.scoring_timer_claim_batch and fired:
                    continue
                upcoming = await next_due(engine)
            except Exception as exc:
                log.warning(
                    "timer pass failed, retrying: %s", type(exc).__name__, exc_info=not is_connection_error(exc)
                )
                upcoming = None
            pause = max_sleep if upcoming is None else min(max(upcoming - clock(), timedelta(0)), max_sleep)
            if skipped:
                # Busy leads are retried shortly, not in a hot loop.
                pause = max(pause, timedelta(milliseconds=50))
            await first_of(stop, wake, max(pause.total_seconds(), 0.001))
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def _listen(engine: AsyncEngine, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """LISTEN for newly armed timers on a dedicated connection; reconnect if it goes away."""
    while not stop.is_set():
        try:
            async with engine.connect() as connection:
                raw: Any = (await connection.get_raw_connection()).driver_connection
                await raw.add_listener(TIMER_CHANNEL, lambda *_: wake.set())
                while not stop.is_set() and not raw.is_closed():
                    await first_of(stop, asyncio.Event(), 1.0)
        except Exception as exc:
            log.warning("timer listener lost its connection: %s", type(exc).__name__, extra=outages.about(exc))
            await first_of(stop, asyncio.Event(), 1.0)
