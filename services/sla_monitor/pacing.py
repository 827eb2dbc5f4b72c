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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.core.sla import Pacing, pacing, pacing_alert, period_bounds
from coxswain.runtime import outbox
from schemas.events import MqlPacingAlertV1
from services.sla_monitor import alerts
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
            # The first check of a target starts watching it; the row keeps that moment for good.
            row = (
                await connection.execute(
                    text(
                        "WITH watch AS (INSERT INTO mql_pacing_watch (target_id, since) VALUES (:t, :now) "
                        "ON CONFLICT DO NOTHING RETURNING since) "
                        "SELECT coalesce((SELECT since FROM watch), (SELECT since FROM mql_pacing_watch "
                        "WHERE target_id = :t)) AS since, "
                        "(SELECT count(DISTINCT lead_id) FROM marketing_mqls WHERE qualified_at >= :start "
                        "AND qualified_at <= :now) AS actual, "
                        "(SELECT max(level) FROM mql_pacing_alerts WHERE target_id = :t AND period_start = :start) "
                        "AS alerted"
                    ),
                    {"t": target.key, "now": now, "start": start},
                )
            ).one()
            result = pacing(target, calendar, now, int(row.actual or 0), row.since)
            results.append(result)
            if result.ratio is not None:
                metrics.mql_pacing.labels(result.target_id).set(result.ratio)
            alert = pacing_alert(result, now, row.alerted)
            if alert is None:
                continue
            first = await connection.scalar(
                text(
                    "INSERT INTO mql_pacing_alerts (event_id, target_id, period_start, alerted_at, level) "
                    "VALUES (:e, :t, :p, :now, :level) ON CONFLICT DO NOTHING RETURNING 1"
                ),
                {
                    "e": alert.event_id,
                    "t": alert.target_id,
                    "p": alert.period_start,
                    "now": now,
                    "level": result.shortfall_level,
                },
            )
            if first is None:
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
