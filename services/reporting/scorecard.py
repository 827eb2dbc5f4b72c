"""Scorecard shell: gather a period's figures from the stored facts, issue each closed period once.

Issuing a period is one transaction: insert its row in ``scorecard_periods`` (ON CONFLICT DO
NOTHING) and, only if the row is new, stage the ``ScorecardIssuedV1`` fact in the outbox. Two
reporting instances, or one restarted, may both try; the primary key lets exactly one through.
A period missed while nothing ran is found on the next pass and issued late, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.core.scorecard import Figures, Latency, Period, periods_due, scorecard
from coxswain.runtime import outages, outbox
from coxswain.runtime.waiting import sleep_or_stop
from coxswain.settings import ReportingConfig
from schemas.events import ScorecardIssuedV1
from services.reporting import repository
from services.reporting.models import Attainment, Percentiles
from services.reporting.repository import Scope

log = logging.getLogger(__name__)


def _latency(figures: Percentiles) -> Latency:
    return Latency(count=figures.count, p50=figures.p50, p90=figures.p90, p95=figures.p95, p99=figures.p99)


def _counts(section: dict[str, Attainment]) -> dict[str, tuple[int, int]]:
    return {key: (c.met, c.breached) for key, c in section.items()}


async def figures(connection: AsyncConnection, start: datetime, end: datetime, timezone: str) -> Figures:
    """The period's figures, by the same queries as the reports API (so the two always agree)."""
    scope = Scope(start, end, timezone=timezone)
    sla = await repository.sla(connection, scope, "day")
    speed = await repository.speed_to_lead(connection, scope)
    rejections = await repository.sal_rejections(connection, scope)
    return Figures(
        sla_by_rep=_counts(sla.by_rep),
        sla_by_team=_counts(sla.by_team),
        sla_by_tier=_counts(sla.by_tier),
        routed=speed.routed,
        untouched=speed.untouched,
        system_seconds=_latency(speed.system_seconds),
        human_seconds=_latency(speed.human_seconds),
        sal_accepted=rejections.accepted,
        sal_rejections={r.reason: r.count for r in rejections.reasons},
        leads_by_source=await repository.leads_by_source(connection, scope),
        mqls_by_source=await repository.mqls_by_source(connection, scope),
        mqls=await repository.mql_count(connection, scope, start, end),
    )


async def compose(
    connection: AsyncConnection, agreement: Agreement, period: Period, timezone: str, now: datetime
) -> ScorecardIssuedV1:
    return scorecard(await figures(connection, period.start, period.end, timezone), agreement, period, timezone, now)


async def issue(engine: AsyncEngine, agreement: Agreement, period: Period, timezone: str, now: datetime) -> bool:
    """Issue one period; false when another instance (or an earlier run) already did."""
    async with engine.begin() as connection:
        card = await compose(connection, agreement, period, timezone, now)
        inserted = await repository.store_scorecard(connection, card, period, now)
        if not inserted:
            return False
        await outbox.stage(connection, [card], now)
    log.info(
        "scorecard issued: period=%s cadence=%s sales=%s marketing=%s event_id=%s",
        period.label,
        period.cadence,
        card.sales.verdict,
        card.marketing.verdict,
        card.event_id,
    )
    return True


async def issue_due(engine: AsyncEngine, agreement: Agreement, config: ReportingConfig, now: datetime) -> list[Period]:
    """Every period due now that this call issued (not those another instance got to first)."""
    zone = ZoneInfo(config.reporting_timezone)
    async with engine.connect() as connection:
        last = await repository.last_issued_start(connection, config.scorecard_cadence)
    due = periods_due(
        config.scorecard_cadence,
        zone,
        last,
        now,
        timedelta(seconds=config.scorecard_grace_seconds),
        config.scorecard_catch_up,
    )
    issued = []
    for period in due:
        if await issue(engine, agreement, period, config.reporting_timezone, now):
            issued.append(period)
    return issued


async def run(
    engine: AsyncEngine,
    agreement: Callable[[], Agreement],
    config: ReportingConfig,
    clock: Callable[[], datetime],
    stop: asyncio.Event,
) -> None:
    """Look for a due period every ``scorecard_check_seconds``; a failing pass is retried on the next."""
    first = True
    while not stop.is_set():
        try:
            issued = await issue_due(engine, agreement(), config, clock())
            if first:
                log.info(
                    "scorecards checked: cadence=%s timezone=%s issued=%s",
                    config.scorecard_cadence,
                    config.reporting_timezone,
                    ",".join(p.label for p in issued) or "none",
                )
                first = False
        except Exception as exc:
            log.warning(
                "scorecard pass failed; retrying: error=%s",
                type(exc).__name__,
                exc_info=not outages.about(exc),
                extra=outages.about(exc),
            )
        await sleep_or_stop(stop, config.scorecard_check_seconds)
