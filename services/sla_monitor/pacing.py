"""Marketing's side of the SLA: MQL volume against the pro-rated target, checked periodically.

A shortfall is a missing event, so it is found by looking, not by consuming. Every monitor may
look; the alert's deterministic id (target, period, shortfall level) and its row in
``mql_pacing_alerts`` let only the first raise it. Pacing counts from when the target was first
watched (``mql_pacing_watch``), never expecting MQLs from before Coxswain ran.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.core.sla import Pacing, pacing, pacing_alert, period_bounds
from coxswain.runtime import outbox
from schemas.events import MqlPacingAlertV1
from services.sla_monitor import alerts, repository
from services.sla_monitor.metrics import SlaMetrics

log = logging.getLogger(__name__)


async def check_pacing(
    engine: AsyncEngine, agreement: Agreement, now: datetime, metrics: SlaMetrics, alert_webhook: bool = False
) -> tuple[Sequence[Pacing], list[MqlPacingAlertV1]]:
    results: list[Pacing] = []
    raised: list[MqlPacingAlertV1] = []
    for target in agreement.marketing.mql_targets:
        calendar = agreement.calendar(target.calendar or agreement.sla.calendar)
        start, _ = period_bounds(target.period, now, calendar.zone)
        async with engine.begin() as connection:
            seen = await repository.watch_pacing(connection, target.key, start, now)
            result = pacing(target, calendar, now, seen.actual, seen.watched_since)
            results.append(result)
            if result.ratio is not None:
                metrics.mql_pacing.labels(result.target_id).set(result.ratio)
            alert = pacing_alert(result, now, seen.alerted_level)
            if alert is None:
                continue
            first = await repository.record_pacing_alert(
                connection, alert.event_id, alert.target_id, alert.period_start, result.shortfall_level, now
            )
            if not first:
                continue
            await outbox.stage(connection, [alert], now)
            if alert_webhook:
                await alerts.enqueue(connection, [alert], now)
            raised.append(alert)
            log.info(
                "mql pacing behind: target=%s actual=%s expected=%.1f pacing=%.2f level=%s",
                alert.target_id,
                alert.actual,
                alert.expected,
                alert.pacing,
                result.shortfall_level,
            )
    return results, raised
