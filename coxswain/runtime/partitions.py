"""Monthly partitions kept ahead, and months past retention dropped whole.

Part of the retention pass (``coxswain/runtime/retention.py``), so under its lock: one process at
a time. Which months come and go is decided in ``coxswain/core/partitions.py``. DDL on a
partitioned table needs a lock on it that waits for readers and blocks writers behind it: every
statement here gives up after ``LOCK_TIMEOUT`` and the next pass tries again, so a long report
query never stalls the services' inserts.

A month of ``report_facts`` is summed into ``report_history`` (counts of facts and leads per
kind, stage and slice) in the transaction that drops it, so the monthly history reports outlive
the detail.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.partitions import (
    PARTITIONED,
    REPORT_FACTS,
    Month,
    PartitionedTable,
    months_to_create,
    months_to_drop,
    retention_cutoff,
)
from coxswain.db import partitions as ddl
from coxswain.runtime.batches import delete_in_batches
from coxswain.settings import RetentionConfig

log = logging.getLogger(__name__)

LOCK_TIMEOUT = "2s"

ROLL_UP = (
    "INSERT INTO report_history (month, kind, stage, source, campaign, persona, agreement_version, facts, leads, "
    "recorded_at) SELECT CAST(:month AS date), f.kind, coalesce(f.payload->>'to_stage', ''), "
    "coalesce(d.source, ''), coalesce(d.campaign, ''), coalesce(d.persona, ''), coalesce(f.agreement_version, ''), "
    "count(*), count(DISTINCT f.lead_id), :now FROM {partition} f LEFT JOIN report_leads d USING (lead_id) "
    "GROUP BY 2, 3, 4, 5, 6, 7 ON CONFLICT ON CONSTRAINT pk_report_history DO NOTHING"
)


def retention_months(table: PartitionedTable, config: RetentionConfig) -> int:
    return config.report_retention_months if table is REPORT_FACTS else config.fact_retention_months


async def existing_months(connection: AsyncConnection, table: PartitionedTable) -> set[Month]:
    names = (await connection.scalars(text(ddl.partitions_of(table)))).all()
    return {month for name in names if (month := table.month_of(name)) is not None}


async def maintain(engine: AsyncEngine, config: RetentionConfig, now: datetime) -> dict[str, int]:
    """Months ahead created, months past retention dropped; rows dropped per table."""
    dropped: dict[str, int] = {}
    for table in PARTITIONED:
        async with engine.connect() as connection:
            existing = await existing_months(connection, table)
        try:
            for month in months_to_create(now, existing):
                await ensure_month(engine, table, month)
            rows = 0
            keep = retention_months(table, config)
            for month in months_to_drop(now, existing, keep):
                rows += await _drop(engine, table, month, now)
            rows += await _drop_stray(engine, table, retention_cutoff(now, keep), now)
            dropped[table.name] = rows
        except DBAPIError as exc:
            if "lock timeout" not in str(exc.orig) and "lock_not_available" not in str(exc.orig):
                raise
            log.warning("partition maintenance of %s waited too long for its lock; next pass", table.name)
    return dropped


async def ensure_month(engine: AsyncEngine, table: PartitionedTable, month: Month) -> None:
    """The month's partition, taking over any rows of it the default partition holds."""
    async with engine.begin() as connection:
        await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        if await connection.scalar(text(ddl.default_rows_in(table, month))):
            for statement in ddl.adopt_month(table, month):
                await connection.execute(text(statement))
        else:
            await connection.execute(text(ddl.create_month(table, month)))
    log.info("partition created: %s", table.partition(month))


async def _drop(engine: AsyncEngine, table: PartitionedTable, month: Month, now: datetime) -> int:
    partition = table.partition(month)
    async with engine.begin() as connection:
        await connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        rows = int(await connection.scalar(text(f"SELECT count(*) FROM {partition}")) or 0)
        if table is REPORT_FACTS:
            await connection.execute(text(ROLL_UP.format(partition=partition)), {"month": month.start, "now": now})
        await connection.execute(text(ddl.drop_month(table, month)))
    log.info("partition dropped: %s rows=%s", partition, rows)
    return rows


async def _drop_stray(engine: AsyncEngine, table: PartitionedTable, cutoff: date, now: datetime) -> int:
    """Rows past retention that landed in the default partition (no month of theirs existed):
    counted into the history of their month first, like a dropped month, then deleted."""
    before = datetime.combine(cutoff, time(), UTC)
    if table is REPORT_FACTS:
        async with engine.begin() as connection:
            month_of = f"CAST(date_trunc('month', {table.column} AT TIME ZONE 'UTC') AS date)"
            months = await connection.scalars(
                text(f"SELECT DISTINCT {month_of} FROM {table.default_partition} WHERE {table.column} < :before"),
                {"before": before},
            )
            for start in months.all():
                rows = f"(SELECT * FROM {table.default_partition} WHERE {month_of} = CAST(:month AS date))"
                await connection.execute(text(ROLL_UP.format(partition=rows)), {"month": start, "now": now})
    return await delete_in_batches(engine, table.default_partition, "ctid", f"{table.column} < :before", before)
