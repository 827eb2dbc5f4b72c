"""Monthly partitions on real PostgreSQL: a month past retention goes whole and its report counts
stay in ``report_history``; a month inside retention, however old its rows, stays; rows that fell
into the default partition move into their month when it is created; a redelivered fact is
still stored once under the new primary keys."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.partitions import LEAD_FACTS, REPORT_FACTS, Month
from coxswain.runtime.partitions import ensure_month, existing_months, maintain
from coxswain.settings import RetentionConfig
from schemas.events import LeadStageChangedV1, Stage
from services.reporting import consumer as reporting
from services.reporting.repository import Scope, history
from services.scoring.repository import record_facts
from tests.support.databases import fresh_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Maintenance runs "in" June 2029: the months the migration made (around today) are long past.
LATER = datetime(2029, 6, 10, 12, 0, tzinfo=UTC)
CONFIG = RetentionConfig(report_retention_months=25, fact_retention_months=13)
# One fact a month from December 2026 (the migration's months) to June 2029.
MONTHS = [Month(2026, 12).plus(n) for n in range(31)]


def stage_change(lead_id: uuid.UUID, month: Month, to_stage: Stage = Stage.mql) -> LeadStageChangedV1:
    return LeadStageChangedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=datetime(month.year, month.month, 15, 9, 30, tzinfo=UTC),
        agreement_version="partitions-test",
        caused_by=uuid.uuid4(),
        from_stage=Stage.lead,
        to_stage=to_stage,
        reason="test",
    )


async def months_held(connection: AsyncConnection, table: str) -> Counter[str]:
    rows = await connection.scalars(text(f"SELECT to_char(occurred_at, 'YYYY-MM') FROM {table}"))
    return Counter(rows.all())


async def store(engine: AsyncEngine, facts: list[LeadStageChangedV1]) -> None:
    async with engine.begin() as connection:
        await record_facts(connection, facts, LATER)
        for fact in facts:
            await reporting.record(connection, fact, LATER)


async def test_only_months_past_retention_are_dropped_and_their_counts_are_kept(infrastructure: None) -> None:
    async with fresh_database("partitions") as engine:
        lead = uuid.uuid4()
        facts = [stage_change(lead, month) for month in MONTHS]
        facts.append(stage_change(uuid.uuid4(), Month(2027, 1), Stage.sal))  # a second lead in January 2027
        await store(engine, facts)
        async with engine.connect() as connection:
            before = await months_held(connection, "report_facts")
            assert await existing_months(connection, REPORT_FACTS) == {Month(2026, 12).plus(n) for n in range(4)}

        dropped = await maintain(engine, CONFIG, LATER)

        async with engine.connect() as connection:
            reports = await months_held(connection, "report_facts")
            timelines = await months_held(connection, "lead_facts")
            report_months = await existing_months(connection, REPORT_FACTS)
            fact_months = await existing_months(connection, LEAD_FACTS)
            kept = await history(connection, Scope(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 6, 1, tzinfo=UTC)))
        # Reports keep 25 months: everything from May 2027 on. Timelines keep 13: from May 2028.
        assert reports == Counter({month: n for month, n in before.items() if month >= "2027-05"})
        assert timelines == Counter({month: 1 for month in before if month >= "2028-05"})
        assert dropped == {"lead_facts": 18, "report_facts": 6, "intake_events": 0}
        # The migration's months went whole; the current month and three ahead now exist.
        assert min(report_months) == Month(2029, 6) and min(fact_months) == Month(2029, 6)
        assert max(report_months) == Month(2029, 9)
        assert kept.model_dump()["months"] == [
            {"month": "2026-12", "counts": [{"kind": "LeadStageChangedV1", "facts": 1, "leads": 1, "stage": "mql"}]},
            {
                "month": "2027-01",
                "counts": [
                    {"kind": "LeadStageChangedV1", "facts": 1, "leads": 1, "stage": "mql"},
                    {"kind": "LeadStageChangedV1", "facts": 1, "leads": 1, "stage": "sal"},
                ],
            },
            *(
                {
                    "month": f"2027-0{m}",
                    "counts": [{"kind": "LeadStageChangedV1", "facts": 1, "leads": 1, "stage": "mql"}],
                }
                for m in (2, 3, 4)
            ),
        ]

        # A second pass finds nothing more to drop and counts nothing twice.
        assert await maintain(engine, CONFIG, LATER) == {"lead_facts": 0, "report_facts": 0, "intake_events": 0}
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT sum(facts) FROM report_history")) == 6


async def test_a_month_created_late_takes_its_rows_from_the_default_partition(infrastructure: None) -> None:
    async with fresh_database("partitions") as engine:
        far = Month(2031, 5)  # no partition: the row waits in the default one
        fact = stage_change(uuid.uuid4(), far)
        await store(engine, [fact])
        async with engine.connect() as connection:
            where = await connection.scalar(
                text("SELECT tableoid::regclass::text FROM report_facts WHERE event_id = :e"), {"e": fact.event_id}
            )
        assert where == "report_facts_default"

        await ensure_month(engine, REPORT_FACTS, far)

        async with engine.connect() as connection:
            where = await connection.scalar(
                text("SELECT tableoid::regclass::text FROM report_facts WHERE event_id = :e"), {"e": fact.event_id}
            )
            assert far in await existing_months(connection, REPORT_FACTS)
        assert where == "report_facts_p2031_05"


async def test_a_redelivered_fact_is_stored_once_under_the_partitioned_keys(infrastructure: None) -> None:
    async with fresh_database("partitions") as engine:
        fact = stage_change(uuid.uuid4(), Month.of(datetime.now(UTC)))
        await store(engine, [fact])
        await store(engine, [fact])
        async with engine.connect() as connection:
            for table in ("lead_facts", "report_facts"):
                count = await connection.scalar(
                    text(f"SELECT count(*) FROM {table} WHERE event_id = :e"), {"e": fact.event_id}
                )
                assert count == 1, table
