"""Retention on real PostgreSQL and Kafka: the window is checked against the retention the topics
really have, and a pass deletes only dedupe records older than it, so a redelivery inside the
window is still skipped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.retention import RetentionTooShort
from coxswain.runtime.consumer import claim_many
from coxswain.runtime.kafka import create_topics
from coxswain.runtime.retention import PRUNE_LOCK, prune, topic_retention
from coxswain.settings import KafkaConfig, RetentionConfig
from tests.support.databases import fresh_database
from tests.support.infra import ENVIRONMENT

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TOPIC = "leads.received.v1"


def kept_for(span: timedelta) -> Callable[[], Awaitable[timedelta]]:
    """What ``topic_retention`` would answer for topics that keep events ``span`` long."""

    async def read() -> timedelta:
        return span

    return read


async def test_the_retention_is_read_from_the_topics(infrastructure: None) -> None:
    await create_topics(KafkaConfig())  # as every service does when it starts
    # The test broker keeps every topic for a day (deploy/local/kafka.sh: log.retention.hours=24);
    # a topic created a moment ago may answer "unknown" at first (and holds nothing yet).
    for _ in range(50):
        if (kept := await topic_retention(KafkaConfig())) == timedelta(days=1):
            break
        await asyncio.sleep(0.1)
    assert kept == timedelta(days=1)


async def test_a_pass_keeps_every_dedupe_record_inside_the_window(infrastructure: None) -> None:
    config = RetentionConfig(inbox_retention_days=3, alert_retention_days=30)
    ages = {uuid.uuid4(): timedelta(days=days) for days in (0, 1, 2.9, 3.1, 10)}
    async with fresh_database("retention") as engine:
        for event_id, age in ages.items():
            async with engine.begin() as connection:
                assert await claim_many(connection, "scoring", [(event_id, TOPIC)], NOW - age) == {event_id}
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO sla_alert_deliveries (event_id, alert, status, attempts, next_attempt_at, created_at) "
                    "VALUES (:a, '{}', 'delivered', 1, :old, :old), (:b, '{}', 'pending', 3, :old, :old), "
                    "(:c, '{}', 'delivered', 1, :new, :new)"
                ),
                {"a": uuid.uuid4(), "b": uuid.uuid4(), "c": uuid.uuid4(), "old": NOW - timedelta(days=40), "new": NOW},
            )

        clocks = await decided_clocks(engine)
        open_task, recently_closed = await crm_writes(engine)
        async with engine.begin() as connection:
            # A key published 14 months ago goes (lead timelines keep 13); one from last month stays.
            await connection.execute(
                text(
                    "INSERT INTO crm_activity_keys (connection, key, event_id, lead_id, published_at) VALUES "
                    "('salesforce', 'Task:00T1:first_touch', :a, :lead, :old), "
                    "('salesforce', 'Task:00T2:first_touch', :b, :lead, :recent)"
                ),
                {
                    "a": uuid.uuid4(),
                    "b": uuid.uuid4(),
                    "lead": uuid.uuid4(),
                    "old": NOW - timedelta(days=430),
                    "recent": NOW - timedelta(days=30),
                },
            )

        pruned = await prune(engine, config, kept_for(timedelta(days=1)), NOW)

        assert pruned is not None
        assert pruned.window == timedelta(days=3)
        assert pruned.rows == {
            "inbox": 2,
            "webhook_inbox": 0,
            "sla_alert_deliveries": 1,
            "sla_timers": 2,
            "deadlines": 1,
            "crm_writes": 1,
            "crm_activity_keys": 1,
            # No month of facts is past its retention yet (tests/integration/test_partitions.py).
            "lead_facts": 0,
            "report_facts": 0,
            "intake_events": 0,
        }
        async with engine.begin() as connection:
            kept = set(await connection.scalars(text("SELECT event_id FROM inbox")))
            # Every event inside the window redelivered now is still seen as a repeat.
            again = await claim_many(
                connection, "scoring", [(e, TOPIC) for e, age in ages.items() if age < 3 * timedelta(days=1)], NOW
            )
            pending = await connection.scalar(
                text("SELECT count(*) FROM sla_alert_deliveries WHERE status = 'pending'")
            )
        assert kept == {e for e, age in ages.items() if age < timedelta(days=3)}
        assert again == set()
        assert pending == 1  # an alert still being delivered is never pruned, however old
        async with engine.connect() as connection:
            deadlines = set(await connection.scalars(text("SELECT deadline_id FROM deadlines")))
            timers = set(await connection.execute(text("SELECT deadline_id, key FROM sla_timers")))
        # Only the old, decided deadline whose timers are all done went, with its timers; an old
        # breach still escalating, an armed one and a recent one stay.
        assert deadlines == clocks.keep
        assert {deadline for deadline, _ in timers} == clocks.keep - {clocks.armed_without_timers}
        async with engine.connect() as connection:
            writes = set(await connection.scalars(text("SELECT assignment_id FROM crm_writes")))
        # The task closed long ago went; an old task still open (the lead keeps its owner) and one
        # closed yesterday stay.
        assert writes == {open_task, recently_closed}
        async with engine.connect() as connection:
            keys = set(await connection.scalars(text("SELECT key FROM crm_activity_keys")))
        assert keys == {"Task:00T2:first_touch"}


async def crm_writes(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    """Three CRM write records, all written 40 days ago: closed then (goes), still open (stays),
    closed yesterday (stays). Returns the two that stay."""
    closed_long_ago, still_open, closed_yesterday = (uuid.uuid4() for _ in range(3))
    old = NOW - timedelta(days=40)
    async with engine.begin() as connection:
        for assignment_id, closed_at in (
            (closed_long_ago, old),
            (still_open, None),
            (closed_yesterday, NOW - timedelta(days=1)),
        ):
            await connection.execute(
                text(
                    "INSERT INTO crm_writes (connection, assignment_id, lead_id, rep_id, owner_id, contact_id, "
                    "task_id, written_at, closed_at) VALUES ('hubspot', :assignment_id, :lead_id, 'ava', '51', "
                    "'101', '201', :written_at, :closed_at)"
                ),
                {"assignment_id": assignment_id, "lead_id": uuid.uuid4(), "written_at": old, "closed_at": closed_at},
            )
    return still_open, closed_yesterday


@dataclass(frozen=True)
class Clocks:
    keep: set[uuid.UUID]
    armed_without_timers: uuid.UUID


async def decided_clocks(engine: AsyncEngine) -> Clocks:
    """Four deadlines: decided long ago with every timer done (goes), decided long ago with an
    escalation still pending (stays, and so does the pending timer; its fired one goes), still
    armed (stays), decided yesterday (stays, with its timer)."""
    gone, escalating, armed, recent = (uuid.uuid4() for _ in range(4))
    old, new = NOW - timedelta(days=40), NOW - timedelta(days=1)
    deadlines = [(gone, "met", old), (escalating, "breached", old), (armed, "armed", None), (recent, "met", new)]
    timers = [
        (gone, "breach", "cancelled", old),
        (escalating, "breach", "fired", old),
        (escalating, "step-1", "pending", None),
        (recent, "breach", "cancelled", new),
    ]
    async with engine.begin() as connection:
        for deadline_id, status, decided in deadlines:
            await connection.execute(
                text(
                    "INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, armed_at, "
                    "due_at, status, decided_at) VALUES (:d, :a, :l, 'ava', 'first_touch', 'hot', :armed, :armed, "
                    ":status, :decided)"
                ),
                {
                    "d": deadline_id,
                    "a": uuid.uuid4(),
                    "l": uuid.uuid4(),
                    "armed": NOW - timedelta(days=50),
                    "status": status,
                    "decided": decided,
                },
            )
        for deadline_id, key, status, decided in timers:
            await connection.execute(
                text(
                    "INSERT INTO sla_timers (deadline_id, key, kind, due_at, status, decided_at) "
                    "VALUES (:d, :k, 'breach', :due, :status, :decided)"
                ),
                {"d": deadline_id, "k": key, "due": NOW - timedelta(days=45), "status": status, "decided": decided},
            )
    return Clocks(keep={escalating, armed, recent}, armed_without_timers=armed)


async def test_a_window_inside_the_topics_retention_prunes_nothing(infrastructure: None) -> None:
    async with fresh_database("retention") as engine:
        async with engine.begin() as connection:
            await claim_many(connection, "router", [(uuid.uuid4(), TOPIC)], NOW - timedelta(days=30))
        with pytest.raises(RetentionTooShort):
            await prune(engine, RetentionConfig(inbox_retention_days=7), kept_for(timedelta(days=7)), NOW)
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT count(*) FROM inbox")) == 1


async def test_one_process_prunes_at_a_time_and_only_it_asks_kafka(infrastructure: None) -> None:
    asked: list[datetime] = []

    async def retention() -> timedelta:
        asked.append(datetime.now(UTC))
        return timedelta(days=1)

    async with fresh_database("retention") as engine:
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PRUNE_LOCK})
            assert await prune(engine, RetentionConfig(), retention, NOW) is None
            assert asked == []  # the process that skips the pass does not ask Kafka either
            await other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PRUNE_LOCK})
        assert await prune(engine, RetentionConfig(), retention, NOW) is not None
        assert len(asked) == 1


def prune_command(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "coxswain_app", "maintenance", "prune"]
    return subprocess.run(command, env=environment, capture_output=True, text=True, check=False)


async def test_the_cli_refuses_a_window_inside_the_topics_retention(infrastructure: None) -> None:
    environment = {**os.environ, **ENVIRONMENT, "COXSWAIN_INBOX_RETENTION_DAYS": "1.5"}
    refused = await asyncio.to_thread(prune_command, environment)
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        "cannot prune: COXSWAIN_INBOX_RETENTION_DAYS is 1.5 days, but the topics keep events for 1 day: dedupe "
        "records must outlive them by 1 day, so set it to at least 2 days (or shorten the topics' retention.ms)",
    )
    async with fresh_database("retention") as engine:  # not the shared one: other tests' records stay
        url = engine.url.render_as_string(hide_password=False).replace("postgresql://", "postgresql+asyncpg://")
        window = {"COXSWAIN_INBOX_RETENTION_DAYS": "2", "COXSWAIN_DATABASE_URL": url}
        done = await asyncio.to_thread(prune_command, {**environment, **window})
    assert done.returncode == 0, done.stderr
    assert "inbox: " in done.stdout and "sla_alert_deliveries: " in done.stdout
