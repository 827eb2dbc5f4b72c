"""The optional outbound alert webhook: its own durable queue, retried with backoff.

An alert is queued in the same transaction as its fact, so it is never lost and never sent for a
fact that did not happen. A separate task delivers the queue: the clock only ever inserts a row,
so a slow or dead receiver cannot delay a breach. Delivery is at least once; the body and the
``webhook-id`` header carry the event id for the receiver to dedupe on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime import outages
from coxswain.settings import SlaConfig
from schemas.events import Event, MqlPacingAlertV1, SlaBreachedV1, SlaEscalatedV1, SlaWarnedV1, utc_iso
from services.sla_monitor import repository
from services.sla_monitor.metrics import SlaMetrics

log = logging.getLogger(__name__)

ALERTS: tuple[type[Event], ...] = (SlaWarnedV1, SlaBreachedV1, SlaEscalatedV1, MqlPacingAlertV1)


def alert_document(event: Event) -> dict[str, Any]:
    """The generic JSON body: the fact as published, with its type and topic. Ids only, no PII."""
    return {
        "event_id": str(event.event_id),
        "type": event.ce_type,
        "topic": event.topic,
        "lead_id": str(event.lead_id),
        "occurred_at": utc_iso(event.occurred_at),
        "summary": summary(event),
        "data": event.model_dump(mode="json"),
    }


def summary(event: Event) -> str:
    match event:
        case SlaBreachedV1():
            return f"SLA breached: {event.milestone} of lead {event.lead_id} ({event.tier.value}, rep {event.rep_id}) was due {utc_iso(event.due_at)}"
        case SlaWarnedV1():
            return f"SLA warning: {event.fraction:.0%} of the time for {event.milestone} of lead {event.lead_id} ({event.tier.value}, rep {event.rep_id}) is used; due {utc_iso(event.due_at)}"
        case SlaEscalatedV1():
            return f"SLA escalation {event.step.value} -> {event.target}: {event.milestone} of lead {event.lead_id} ({event.tier.value}, rep {event.rep_id}) was due {utc_iso(event.due_at)}"
        case MqlPacingAlertV1():
            return f"MQL pacing behind for {event.target_id}: {event.actual} of {event.expected:.1f} expected so far ({event.pacing:.0%}, alert below {event.threshold:.0%}); target {event.target} per {event.period}"
        case _:
            return f"{event.ce_type} for lead {event.lead_id}"


def render(alert: dict[str, Any], fmt: str) -> dict[str, Any]:
    if fmt == "slack":
        return {"text": alert["summary"]}
    return alert


async def enqueue(connection: AsyncConnection, facts: Sequence[Event], now: datetime) -> int:
    queued = [
        repository.QueuedAlert(fact.event_id, orjson.dumps(alert_document(fact)).decode())
        for fact in facts
        if isinstance(fact, ALERTS)
    ]
    if queued:
        await repository.queue_alerts(connection, queued, now)
    return len(queued)


def backoff(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    return min(base * (1 << min(max(attempts - 1, 0), 30)), cap)


class AlertWebhook:
    def __init__(
        self,
        engine: AsyncEngine,
        config: SlaConfig,
        clock: Callable[[], datetime],
        metrics: SlaMetrics,
        *,
        batch: int = 50,
        poll_seconds: float = 0.5,
        backoff_base: timedelta = timedelta(seconds=1),
        backoff_cap: timedelta = timedelta(minutes=5),
    ) -> None:
        assert config.alert_webhook_url is not None
        self._engine = engine
        self._url = config.alert_webhook_url
        self._format = config.alert_webhook_format
        self._timeout = config.alert_webhook_timeout_seconds
        self._max_attempts = config.alert_webhook_max_attempts
        self._clock = clock
        self._metrics = metrics
        self._batch = batch
        self._poll = poll_seconds
        self._base = backoff_base
        self._cap = backoff_cap
        # A claim is a lease: if this process dies mid-request, another one retries after it.
        self._lease = timedelta(seconds=self._timeout * 2 + 5)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            while not stop.is_set():
                try:
                    sent = await self.deliver_once(client)
                except Exception as exc:
                    log.warning(
                        "alert webhook pass failed, retrying: error=%s", type(exc).__name__, extra=outages.about(exc)
                    )
                    sent = 0
                if sent < self._batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self._poll)

    async def deliver_once(self, client: httpx.AsyncClient) -> int:
        now = self._clock()
        async with self._engine.begin() as connection:
            claimed = await repository.claim_alerts(connection, now, now + self._lease, self._batch)
            backlog = await repository.pending_alerts(connection)
        self._metrics.alert_backlog.set(backlog)
        if not claimed:
            return 0
        outcomes = await asyncio.gather(
            *(self._post(client, delivery.event_id, delivery.alert) for delivery in claimed)
        )
        async with self._engine.begin() as connection:
            for delivery, error in zip(claimed, outcomes, strict=True):
                await self._record(connection, delivery.delivery_id, delivery.attempts, error)
        return len(claimed)

    async def _post(self, client: httpx.AsyncClient, event_id: object, alert: dict[str, Any]) -> str | None:
        try:
            response = await client.post(
                self._url,
                content=orjson.dumps(render(alert, self._format)),
                headers={"content-type": "application/json", "webhook-id": str(event_id)},
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if response.is_success else f"HTTP {response.status_code}"

    async def _record(self, connection: AsyncConnection, row_id: int, attempts: int, error: str | None) -> None:
        now = self._clock()
        if error is None:
            outcome = "delivered"
            await repository.alert_delivered(connection, row_id, now)
        else:
            outcome = "failed" if attempts >= self._max_attempts else "retry"
            await repository.alert_not_delivered(
                connection,
                row_id,
                "failed" if outcome == "failed" else "pending",
                now + backoff(attempts, self._base, self._cap),
                error[:500],
            )
            log.warning(
                "alert webhook attempt failed: id=%s attempts=%s outcome=%s error=%s", row_id, attempts, outcome, error
            )
        self._metrics.alert_deliveries.labels(outcome).inc()
