"""One SLA monitor process: the consumer handler plus the tasks that run beside it.

The timer loop, the metrics refresher, the pacing check and the alert webhook are independent
tasks: a failing or slow one never stops the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.runtime import metrics as runtime_metrics
from coxswain.runtime import outages
from coxswain.runtime.consumer import BatchHandler, Handler
from coxswain.settings import SlaConfig
from schemas.events import Event
from services.sla_monitor import repository
from services.sla_monitor.alerts import AlertWebhook
from services.sla_monitor.metrics import SlaMetrics
from services.sla_monitor.pacing import check_pacing
from services.sla_monitor.service import make_batch_handler, make_handler
from services.sla_monitor.timers import run_timer

log = logging.getLogger(__name__)

GAUGE_REFRESH_SECONDS = 5.0


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Monitor:
    def __init__(
        self,
        agreement: Callable[[], Agreement],
        config: SlaConfig,
        engine: AsyncEngine,
        clock: Callable[[], datetime],
        registry: CollectorRegistry,
        instance: str | None = None,
    ) -> None:
        self.agreement = agreement
        self.config = config
        self.engine = engine
        self.clock = clock
        self.metrics = SlaMetrics(registry)
        self.instance = instance or instance_name()
        self.alert_webhook = config.alert_webhook_url is not None
        self._built: list[tuple[Agreement, Handler]] = []
        self._built_batch: list[tuple[Agreement, BatchHandler]] = []

    async def handler(self, connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        """Each event is handled under the agreement in force when it is processed."""
        current = self.agreement()
        if not self._built or self._built[0][0] is not current:
            self._built[:] = [(current, make_handler(current, self.metrics, self.alert_webhook))]
        return list(await self._built[0][1](connection, event, now))

    async def batch_handler(
        self, connection: AsyncConnection, events: Sequence[Event], now: datetime
    ) -> list[list[Event]]:
        """A polled batch, handled under the agreement in force when it is processed."""
        current = self.agreement()
        if not self._built_batch or self._built_batch[0][0] is not current:
            self._built_batch[:] = [(current, make_batch_handler(current, self.metrics, self.alert_webhook))]
        return [list(facts) for facts in await self._built_batch[0][1](connection, events, now)]

    async def run(self, stop: asyncio.Event, metrics_port: int | None = None) -> None:
        if metrics_port:
            # One /metrics per process: ours joins the endpoint the shared runtime serves.
            runtime_metrics.serve(metrics_port, self.metrics.registry)
        async with asyncio.TaskGroup() as group:
            group.create_task(
                run_timer(
                    self.engine,
                    clock=self.clock,
                    stop=stop,
                    metrics=self.metrics,
                    instance=self.instance,
                    batch=self.config.sla_claim_batch,
                    max_sleep=timedelta(seconds=self.config.sla_max_sleep_seconds),
                    alert_webhook=self.alert_webhook,
                    failpoint_pass=self.config.sla_failpoint_pass,
                    agreement=self.agreement,
                )
            )
            group.create_task(self._every(GAUGE_REFRESH_SECONDS, self.refresh_gauges, stop, "gauges"))
            group.create_task(self._every(self.config.sla_pacing_interval_seconds, self.check_pacing, stop, "pacing"))
            if self.alert_webhook:
                group.create_task(AlertWebhook(self.engine, self.config, self.clock, self.metrics).run(stop))

    async def refresh_gauges(self) -> None:
        async with self.engine.connect() as connection:
            self.metrics.set_open_deadlines(await repository.armed_deadlines(connection))
            pending = await repository.pending_timers(connection)
            overdue = await repository.pending_timers_due_by(
                connection, self.clock() - timedelta(seconds=self.config.sla_max_sleep_seconds * 2)
            )
            self.metrics.set_pending_timers(pending, overdue)

    async def check_pacing(self) -> None:
        await check_pacing(self.engine, self.agreement(), self.clock(), self.metrics, self.alert_webhook)

    @staticmethod
    async def _every(seconds: float, job: Callable[[], Awaitable[None]], stop: asyncio.Event, what: str) -> None:
        while not stop.is_set():
            try:
                await job()
            except Exception as exc:
                log.warning("periodic job failed: job=%s error=%s", what, type(exc).__name__, extra=outages.about(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=seconds)
