"""Prometheus metrics every service shares: consumer lag, per-stage processing latency, dead
letters, outbox backlog, HTTP requests.

One ``/metrics`` per process: intake mounts it on its HTTP app, consumer services serve it on
``COXSWAIN_METRICS_PORT``. Service-specific metrics (e.g. the SLA monitor's) join the same
endpoint through ``serve(port, registry)`` or ``include(registry)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coxswain.runtime import outages
from coxswain.runtime.waiting import sleep_or_stop
from schemas.events import Event

if TYPE_CHECKING:  # only the HTTP apps are instrumented; a consumer never loads FastAPI
    from fastapi import FastAPI, Request, Response

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PROCESSING_SECONDS = Histogram(
    "coxswain_processing_seconds",
    "Time a consumer's handler took for one event (the stage's own work, inside its transaction).",
    ["consumer", "topic"],
    buckets=LATENCY_BUCKETS,
)
EVENTS_PROCESSED = Counter(
    "coxswain_events_processed",
    "Events a consumer applied (redeliveries the inbox skipped are not counted).",
    ["consumer", "topic"],
)
CONSUMER_LAG = Gauge(
    "coxswain_consumer_lag_records",
    "Records on a partition not yet processed by the consumer group, as of its last batch.",
    ["consumer", "topic", "partition"],
)
LAST_BATCH = Gauge(
    "coxswain_consumer_last_batch_timestamp_seconds", "When the consumer last committed a batch.", ["consumer"]
)
DEAD_LETTERS = Counter(
    "coxswain_dead_letters",
    "Records sent to the dead-letter topic, by the topic they came from.",
    ["consumer", "topic"],
)
BATCHES_RETRIED = Counter(
    "coxswain_batches_retried",
    "Batches given back to be applied again shortly because they met a passing conflict, not a fault "
    "(for example routing locks another router holds); nothing is dead-lettered for it.",
    ["consumer", "reason"],
)
BATCHES_ALREADY_APPLIED = Counter(
    "coxswain_batches_already_applied",
    "Batches whose every record the inbox showed applied already (in the transaction that produced "
    "them: routing in scoring), skipped without a transaction of their own.",
    ["consumer"],
)
HANDOVERS_LEFT = Counter(
    "coxswain_handovers_left",
    "Facts a service could not apply for the next consumer in its own transaction (routing in scoring), "
    "left to that consumer to apply from Kafka as usual; by the error, for example RoutingLocksBusy.",
    ["consumer", "reason"],
)
CONSUMER_STALLS = Counter(
    "coxswain_consumer_stalls",
    "Consumers the watchdog stopped and started again: their Kafka client's metadata task had ended (client), or "
    "their loop had not come round (loop) or their group had not finished a rebalance (rebalance) for "
    "COXSWAIN_CONSUMER_STALL_SECONDS.",
    ["consumer", "reason"],
)
CONSUMER_PAUSES = Counter(
    "coxswain_consumer_paused",
    "Times a consumer's process did not run for COXSWAIN_CONSUMER_STALL_SECONDS or longer (SIGSTOP, a VM or GC "
    "pause, a blocked event loop): its partitions may have moved to another instance meanwhile.",
    ["consumer"],
)
CRM_WRITES = Counter(
    "coxswain_crm_writes",
    "Writes a CRM connector made (contact_created, lead_created, owner_set, task_created, task_closed), and writes it "
    "found already made (task_found: a task for the assignment existed, so none was created).",
    ["crm", "write"],
)
CRM_ERRORS = Counter(
    "coxswain_crm_errors",
    "Failed CRM requests by status (429, 5xx, 4xx, connection), retried or not.",
    ["crm", "status"],
)
CRM_RETRIES = Counter(
    "coxswain_crm_retries", "CRM requests sent again after a 429, a 5xx or a connection error.", ["crm", "reason"]
)
CRM_ACTIVITIES = Counter(
    "coxswain_crm_activities",
    "Activities a CRM connector read back and published to crm.activities.v1, by activity.",
    ["crm", "activity"],
)
CRM_API_USED = Gauge(
    "coxswain_crm_api_calls_used",
    "API calls the CRM account has used of its daily limit, as its last answer said (Salesforce: Sforce-Limit-Info; "
    "HubSpot: X-HubSpot-RateLimit-Daily minus -Daily-Remaining).",
    ["crm"],
)
CRM_API_LIMIT = Gauge(
    "coxswain_crm_api_calls_limit", "The CRM org's daily API call limit, as its last answer said.", ["crm"]
)
OUTBOX_BACKLOG = Gauge("coxswain_outbox_backlog", "Facts in the outbox waiting for the relay.")
OUTBOX_OLDEST = Gauge("coxswain_outbox_oldest_age_seconds", "Age of the oldest fact waiting in the outbox (0 if none).")
OUTBOX_PUBLISHED = Counter("coxswain_outbox_published", "Facts the relay published to Kafka.")
OUTBOX_BUCKETS_OWNED = Gauge(
    "coxswain_outbox_buckets_owned", "Outbox buckets this process's relay holds a lease on (of 32)."
)
OUTBOX_LEASES_LOST = Counter(
    "coxswain_outbox_leases_lost",
    "Bucket leases this relay lost while it still held them: it stalled past its lease (a pause, SIGSTOP).",
)
PRUNED_ROWS = Counter("coxswain_pruned_rows", "Rows the retention pass deleted, by table.", ["table"])
TABLE_ROWS = Gauge("coxswain_table_rows", "Rows in each table, as PostgreSQL estimates them (pg_class).", ["table"])
TABLE_BYTES = Gauge("coxswain_table_bytes", "Size of each table with its indexes and TOAST.", ["table"])
HTTP_REQUESTS = Counter("coxswain_http_requests", "HTTP requests by route and status.", ["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "coxswain_http_request_seconds", "HTTP request latency by route.", ["route"], buckets=LATENCY_BUCKETS
)

_served: dict[int, Any] = {}
_included: set[int] = set()


def include(registry: CollectorRegistry) -> None:
    """Expose another registry's metrics on this process's endpoint."""
    if registry is REGISTRY or id(registry) in _included:
        return
    REGISTRY.register(registry)  # a registry is itself a collector
    _included.add(id(registry))


def serve(port: int | None, registry: CollectorRegistry | None = None) -> None:
    """Serve /metrics on ``port`` once per process; a busy port costs the metrics, never the service."""
    if registry is not None:
        include(registry)
    if port is None or port in _served:
        return
    try:
        _served[port] = start_http_server(port)
    except OSError as exc:
        log.warning("metrics endpoint not started: port=%s error=%s", port, exc.strerror)
        return
    log.info("metrics served: port=%s", port)


def timed(consumer: str, handler: Callable[[AsyncConnection, Event, datetime], Awaitable[Sequence[Event]]]) -> Any:
    """Wrap a consumer's handler so every applied event is counted and timed per topic."""

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        started = time.perf_counter()
        facts = await handler(connection, event, now)
        PROCESSING_SECONDS.labels(consumer, event.topic).observe(time.perf_counter() - started)
        EVENTS_PROCESSED.labels(consumer, event.topic).inc()
        return facts

    return handle


def timed_batch(
    consumer: str,
    handler: Callable[[AsyncConnection, Sequence[Event], datetime], Awaitable[Sequence[Sequence[Event]]]],
) -> Callable[[AsyncConnection, Sequence[Event], datetime], Awaitable[Sequence[Sequence[Event]]]]:
    """Like ``timed`` for a batch handler: each event is charged its share of the batch's time."""

    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> Sequence[Sequence[Event]]:
        started = time.perf_counter()
        facts = await handler(connection, events, now)
        share = (time.perf_counter() - started) / max(len(events), 1)
        for event in events:
            PROCESSING_SECONDS.labels(consumer, event.topic).observe(share)
            EVENTS_PROCESSED.labels(consumer, event.topic).inc()
        return facts

    return handle


def observe_batch(consumer_name: str, consumer: Any, batch: Mapping[Any, list[Any]]) -> None:
    """Lag per partition after a committed batch: the high watermark minus the next offset."""
    for tp, records in batch.items():
        highwater = consumer.highwater(tp)
        if highwater is not None and records:
            CONSUMER_LAG.labels(consumer_name, tp.topic, str(tp.partition)).set(
                max(highwater - (records[-1].offset + 1), 0)
            )
    LAST_BATCH.labels(consumer_name).set_to_current_time()


def handover_left(consumer: str, reason: str, count: int) -> None:
    HANDOVERS_LEFT.labels(consumer, reason).inc(count)


def dead_lettered(consumer: str, topic: str) -> None:
    DEAD_LETTERS.labels(consumer, topic).inc()


def outbox_published(count: int) -> None:
    OUTBOX_PUBLISHED.inc(count)


# One process counts the outbox per window, whichever takes the row first; the others read what
# it stored (migration 0022_outbox_sample says why). SKIP LOCKED: a sampler never waits behind
# another's count, which during an outage may take seconds; it reads the previous figure instead.
# The count is a sub-select of the UPDATE's SET, so it runs only when the row is taken. The age is
# by the database's clock, which stamped created_at.
SAMPLE_OUTBOX = text(
    "WITH due AS (SELECT id FROM outbox_sample WHERE sampled_at <= now() - make_interval(secs => :window) "
    "FOR UPDATE SKIP LOCKED), "
    "counted AS (UPDATE outbox_sample AS s SET sampled_at = now(), "
    "(backlog, oldest_created_at) = (SELECT count(*), min(created_at) FROM outbox) "
    "FROM due WHERE s.id = due.id RETURNING s.backlog, s.oldest_created_at), "
    "sample AS (SELECT backlog, oldest_created_at, true AS counted FROM counted "
    "UNION ALL SELECT backlog, oldest_created_at, false FROM outbox_sample WHERE NOT EXISTS (SELECT FROM counted)) "
    "SELECT backlog, counted, "
    "coalesce(greatest(extract(epoch FROM now() - oldest_created_at), 0), 0) AS oldest_age_s FROM sample"
)


@dataclass(frozen=True, slots=True)
class BacklogReading:
    """What one read of ``outbox_sample`` reported (the table's model is ``db.models.OutboxSample``)."""

    backlog: int
    oldest_age_s: float
    counted: bool  # this call counted the outbox (its window had passed), rather than reading the stored figure


async def read_outbox_sample(engine: AsyncEngine, window: float) -> BacklogReading:
    """The deployment's outbox backlog, counted by this call if the last count is older than ``window``."""
    async with engine.connect() as connection:
        # One statement, atomic by itself: no BEGIN and COMMIT around it.
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        row = (await autocommit.execute(SAMPLE_OUTBOX, {"window": window})).one()
    return BacklogReading(int(row.backlog), float(row.oldest_age_s), bool(row.counted))


async def sample_outbox(engine: AsyncEngine, stop: asyncio.Event, interval: float = 5.0) -> None:
    """Every instance reports the same global figure, counted by one of them per ``interval``."""
    while not stop.is_set():
        try:
            sample = await read_outbox_sample(engine, interval)
            OUTBOX_BACKLOG.set(sample.backlog)
            OUTBOX_OLDEST.set(sample.oldest_age_s)
        except Exception as exc:
            log.warning("outbox sample failed: error=%s", type(exc).__name__, extra=outages.about(exc))
        await sleep_or_stop(stop, interval)


def instrument(app: FastAPI) -> None:
    """Mount /metrics on an ASGI app and count and time its requests by route template."""
    from fastapi import Response

    async def exposition(_: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", exposition, methods=["GET"], include_in_schema=False)
    app.add_middleware(_Measured)


class _Measured:
    """Counts and times requests by route template.

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    runs every request in an extra task with memory streams, which costs the intake more CPU per
    webhook than the metrics are worth.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # The router records the matched route in the scope it was given, which is this one.
            name = getattr(scope.get("route"), "path", None) or "unmatched"
            if name != "/metrics":
                HTTP_REQUESTS.labels(name, scope["method"], str(status)).inc()
                HTTP_SECONDS.labels(name).observe(time.perf_counter() - started)
