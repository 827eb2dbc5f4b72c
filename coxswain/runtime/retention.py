"""Retention: dedupe records, delivered alerts and lapsed relay rows pruned on a schedule, table
sizes exported, without ever letting a redelivered event through twice.

Every service runs ``run``; a pass takes an advisory lock and is skipped by the others while one
runs, so one process prunes at a time whatever the number of instances. ``coxswain maintenance
prune`` runs one pass now. The window comes from ``coxswain/core/retention.py``: it is checked
against the retention the consumed topics really have (read from Kafka), not a setting that
could drift from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.partitions import retention_cutoff
from coxswain.core.retention import RetentionTooShort, inbox_window, longest_retention
from coxswain.runtime import metrics, outages, partitions
from coxswain.runtime.batches import delete_in_batches
from coxswain.runtime.kafka import connection_options
from coxswain.runtime.waiting import sleep_or_stop
from coxswain.settings import KafkaConfig, RetentionConfig
from schemas.events import ALL_EVENTS

log = logging.getLogger(__name__)

PRUNE_LOCK = 0x636F7870  # advisory lock key: "coxp"
WATCHED_TABLES = (
    "inbox",
    "webhook_inbox",
    "outbox",
    "sla_alert_deliveries",
    "sla_timers",
    "deadlines",
    "lead_facts",
    "report_facts",
    "intake_events",
    "leads",
    "audit_log",
    "report_history",
)


async def topic_retention(kafka: KafkaConfig) -> timedelta | None:
    """The longest retention of the topics consumers read (and so may redeliver from)."""
    admin = AIOKafkaAdminClient(**connection_options(kafka))
    await admin.start()
    try:
        topics = sorted({event.topic for event in ALL_EVENTS})
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None}) for topic in topics]
        )
    finally:
        await admin.close()
    values: list[int] = []
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                continue  # a topic not created yet holds nothing to redeliver
            values.extend(
                int(entry["config_value"])
                for entry in resource["config_entries"]
                if entry["config_names"] == "retention.ms"
            )
    return longest_retention(values)


@dataclass(frozen=True)
class Pruned:
    window: timedelta | None  # None: inbox kept for ever (a topic keeps records for ever)
    rows: dict[str, int]


async def prune(
    engine: AsyncEngine,
    config: RetentionConfig,
    retention: Callable[[], Awaitable[timedelta | None]],
    now: datetime,
) -> Pruned | None:
    """One pass; None when another process is pruning. Raises ``RetentionTooShort``.

    ``retention`` (the topics' longest, e.g. ``topic_retention``) is asked only by the process
    that holds the lock: the others skip the pass without asking Kafka."""
    async with engine.connect() as holder:
        if not await holder.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": PRUNE_LOCK}):
            return None
        try:
            # First: a month must exist before its rows arrive, whatever else fails this pass.
            rows: dict[str, int] = await partitions.maintain(engine, config, now)
            window = inbox_window(
                timedelta(days=config.inbox_retention_days),
                await retention(),
                timedelta(hours=config.retention_margin_hours),
            )
            if window is not None:
                before = now - window
                rows["inbox"] = await delete_in_batches(engine, "inbox", "ctid", "processed_at < :before", before)
                # A sender's retry of a webhook is seen by its id for as long as any event it carried.
                rows["webhook_inbox"] = await delete_in_batches(
                    engine, "webhook_inbox", "ctid", "received_at < :before", before
                )
            alerts_before = now - timedelta(days=config.alert_retention_days)
            rows["sla_alert_deliveries"] = await delete_in_batches(
                engine, "sla_alert_deliveries", "id", "status <> 'pending' AND created_at < :before", alerts_before
            )
            clocks_before = now - timedelta(days=config.clock_retention_days)
            # A timer goes once it has fired or been cancelled; a deadline once it is decided and
            # none of its timers (an escalation ladder after a breach) is still to come.
            rows["sla_timers"] = await delete_in_batches(
                engine, "sla_timers", "ctid", "status <> 'pending' AND decided_at < :before", clocks_before
            )
            rows["deadlines"] = await delete_in_batches(
                engine,
                "deadlines",
                "deadline_id",
                "status <> 'armed' AND decided_at < :before AND NOT EXISTS (SELECT 1 FROM sla_timers t "
                "WHERE t.deadline_id = deadlines.deadline_id AND t.status = 'pending')",
                clocks_before,
            )
            # A closed task's row no longer guards anything a redelivery could repeat (the fact
            # is long past the topics' retention); an open task's row is how a reassignment
            # finds the task to close, so it stays.
            rows["crm_writes"] = await delete_in_batches(
                engine,
                "crm_writes",
                "ctid",
                "closed_at < :before",
                now - timedelta(days=config.crm_write_retention_days),
            )
            # A CRM change read again after its key is gone would be published again (with the same
            # event id, past the inbox's window): keys live as long as the lead timelines do.
            rows["crm_activity_keys"] = await delete_in_batches(
                engine,
                "crm_activity_keys",
                "ctid",
                "published_at < :before",
                datetime.combine(retention_cutoff(now, config.fact_retention_months), time(), UTC),
            )
        finally:
            await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PRUNE_LOCK})
            await holder.commit()
    for table, count in rows.items():
        metrics.PRUNED_ROWS.labels(table).inc(count)
    return Pruned(window, rows)


async def sample_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                # A partitioned table's rows and bytes are its partitions'.
                "SELECT t.relname, sum(greatest(c.reltuples, 0))::bigint AS estimate, "
                "sum(pg_total_relation_size(c.oid))::bigint AS bytes FROM pg_class t "
                "CROSS JOIN LATERAL pg_partition_tree(t.oid) AS p JOIN pg_class c ON c.oid = p.relid "
                "WHERE t.relkind IN ('r', 'p') AND t.relname = ANY(:tables) GROUP BY t.relname"
            ),
            {"tables": list(WATCHED_TABLES)},
        )
        for row in rows:
            metrics.TABLE_ROWS.labels(row.relname).set(row.estimate)
            metrics.TABLE_BYTES.labels(row.relname).set(row.bytes)


async def run(
    engine: AsyncEngine, kafka: KafkaConfig, config: RetentionConfig, clock: Callable[[], datetime], stop: asyncio.Event
) -> None:
    """Prune every ``prune_every_seconds`` while the service runs; a window too short for the
    topics is logged as an error each pass (and nothing is pruned) rather than stopping routing."""
    while not stop.is_set():
        try:
            await sample_tables(engine)
            pruned = await prune(engine, config, lambda: topic_retention(kafka), clock())
            if pruned is not None and any(pruned.rows.values()):
                log.info(
                    "retention pass: %s",
                    " ".join(f"{table}={count}" for table, count in pruned.rows.items()),
                )
        except RetentionTooShort as exc:
            log.error("retention pass refused: %s", exc)
        except Exception as exc:
            log.warning("retention pass failed: error=%s", type(exc).__name__, extra=outages.about(exc))
        await sleep_or_stop(stop, config.prune_every_seconds)
