"""SLA monitors as real processes: every deadline fires exactly once across SIGKILL and restart, and
a monitor that was down catches up on start, in due order.

The deadlines are written straight into PostgreSQL, as the monitor itself arms them (a deadline
row and its timer rows): the timer path is what is under test, and due times that fall exactly
within the minute do not depend on how fast routed events are consumed. Arming through Kafka is
covered by the walking skeleton and the integration tests.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coxswain.core.sla import FIRST_TOUCH, deadline_id_for
from coxswain.runtime.kafka import connection_options
from coxswain.runtime.outbox import bucket_of
from coxswain.settings import DatabaseConfig, KafkaConfig
from tests.support.stack import ServiceProcess, Stack, TopicWatcher, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def quiet_stack(stack: Stack) -> Iterator[Stack]:
    """The session's own monitor steps aside, so the monitors under test are the only ones."""
    monitor = stack.services["sla-monitor"]
    monitor.stop()
    try:
        yield stack
    finally:
        monitor.start()
        stack.wait_ready("sla-monitor")


@pytest_asyncio.fixture(loop_scope="session")
async def engine(quiet_stack: Stack) -> AsyncIterator[AsyncEngine]:
    database = create_async_engine(DatabaseConfig().database_url)
    yield database
    await database.dispose()


@dataclass
class Monitors:
    stack: Stack
    root: Path
    processes: list[ServiceProcess]

    def start(self, label: str, **extra: str) -> ServiceProcess:
        log_dir = self.root / f"{label}-{len(self.processes)}"
        log_dir.mkdir()
        env = {
            **self.stack.env(),
            "COXSWAIN_METRICS_PORT": str(free_port()),
            "COXSWAIN_SLA_MAX_SLEEP_SECONDS": "0.2",
            "COXSWAIN_SLA_CLAIM_BATCH": "500",
            **extra,
        }
        process = ServiceProcess("sla-monitor", env, log_dir)
        process.start()
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def monitors(quiet_stack: Stack, tmp_path: Path) -> Iterator[Monitors]:
    running = Monitors(quiet_stack, tmp_path, [])
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Planted:
    team: str
    deadlines: dict[uuid.UUID, datetime]


async def plant(
    engine: AsyncEngine,
    dues: list[datetime],
    *,
    warn_before: timedelta | None = None,
    ladder_after: timedelta | None = None,
) -> Planted:
    """Armed first-touch deadlines with their timers, as the monitor writes them when it arms."""
    team = f"sla-e2e-{uuid.uuid4().hex[:8]}"
    assignments = [uuid.uuid4() for _ in dues]
    deadlines = [deadline_id_for(a, FIRST_TOUCH) for a in assignments]
    now = datetime.now(UTC)
    timers: list[tuple[uuid.UUID, str, str, datetime, float | None, str | None, int | None]] = []
    for deadline, due in zip(deadlines, dues, strict=True):
        timers.append((deadline, "breach", "breach", due, None, None, None))
        if warn_before is not None:
            timers.append((deadline, "warning:0.9", "warning", due - warn_before, 0.9, None, None))
        if ladder_after is not None:
            timers.append(
                (deadline, "escalation:0:page_oncall", "escalation", due + ladder_after, None, "page_oncall", 0)
            )
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, armed_at, due_at, "
                "status, team, started_at, calendar, agreement_version) "
                "SELECT d, a, l, 'ava', 'first_touch', 'hot', :now, due, 'armed', :team, :now, '24x7', 'e2e-1' "
                "FROM unnest(CAST(:d AS uuid[]), CAST(:a AS uuid[]), CAST(:l AS uuid[]), CAST(:due AS timestamptz[])) "
                "AS u(d, a, l, due)"
            ),
            {
                "d": deadlines,
                "a": assignments,
                "l": [uuid.uuid4() for _ in dues],
                "due": dues,
                "now": now,
                "team": team,
            },
        )
        columns = list(zip(*timers, strict=True))
        await connection.execute(
            text(
                "INSERT INTO sla_timers (deadline_id, key, kind, due_at, status, fraction, step, step_index, target) "
                "SELECT d, k, kind, due, 'pending', f, s, i, CASE WHEN s IS NULL THEN NULL ELSE 'oncall' END "
                "FROM unnest(CAST(:d AS uuid[]), CAST(:k AS text[]), CAST(:kind AS text[]), "
                "CAST(:due AS timestamptz[]), CAST(:f AS float8[]), CAST(:s AS text[]), CAST(:i AS int[])) "
                "AS u(d, k, kind, due, f, s, i)"
            ),
            {
                "d": list(columns[0]),
                "k": list(columns[1]),
                "kind": list(columns[2]),
                "due": list(columns[3]),
                "f": list(columns[4]),
                "s": list(columns[5]),
                "i": list(columns[6]),
            },
        )
    return Planted(team, dict(zip(deadlines, dues, strict=True)))


async def timer_counts(engine: AsyncEngine, team: str) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT t.status, count(*) AS n FROM sla_timers t JOIN deadlines d USING (deadline_id) "
                "WHERE d.team = :team GROUP BY t.status"
            ),
            {"team": team},
        )
        return {row.status: row.n for row in rows}


def pid_instance(process: ServiceProcess) -> str:
    assert process.process is not None
    return f"{socket.gethostname()}:{process.process.pid}"


async def breaches_by_partition(planted: Planted, count: int) -> dict[tuple[int, int], list[datetime]]:
    """The breaches on the wire per (partition, outbox bucket), in offset order: one relay at a time
    publishes a bucket, in outbox order (docs/event-path.md), while buckets go out in parallel."""
    consumer = AIOKafkaConsumer(
        "sla.breached.v1", **connection_options(KafkaConfig()), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: dict[tuple[int, int], list[datetime]] = defaultdict(list)
    planted_ids = {str(deadline) for deadline in planted.deadlines}
    try:
        found, deadline = 0, time.monotonic() + 60
        while found < count and time.monotonic() < deadline:
            for partition, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    try:
                        value = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        continue  # another test's undecodable record (dead-letter tests)
                    if str(value.get("deadline_id")) in planted_ids:
                        seen[(partition.partition, bucket_of(record.key))].append(
                            datetime.fromisoformat(value["due_at"])
                        )
                        found += 1
    finally:
        await consumer.stop()
    return seen


async def held_back(engine: AsyncEngine, team: str) -> set[uuid.UUID]:
    """Due timers still pending a while after their time: only a hung monitor's locks keep them."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT t.deadline_id FROM sla_timers t JOIN deadlines d USING (deadline_id) WHERE d.team = :team "
                "AND t.status = 'pending' AND t.due_at < now() - interval '2 seconds'"
            ),
            {"team": team},
        )
        return {row.deadline_id for row in rows}


async def test_ten_thousand_deadlines_fire_exactly_once_across_sigkill_and_restart(
    engine: AsyncEngine, monitors: Monitors
) -> None:
    count = 10_000
    start = datetime.now(UTC) + timedelta(seconds=8)
    planted = await plant(engine, [start + timedelta(seconds=30 * i / count) for i in range(count)])
    # The first monitor commits two passes, then hangs inside its third with the rows locked.
    # (Its session is kept while it hangs, as a process stuck in a database call would be.)
    first = monitors.start("a", COXSWAIN_SLA_FAILPOINT_PASS="3", COXSWAIN_DATABASE_IDLE_IN_TRANSACTION_SECONDS="0")
    second = monitors.start("b")
    killed_instance = pid_instance(first)

    async def fired(at_least: int) -> bool:
        return (await timer_counts(engine, planted.team)).get("fired", 0) >= at_least

    await asyncio.to_thread(first.wait_for_log, "failpoint reached", 90)
    await wait_until(lambda: fired(6_000), "6,000 breaches while the first monitor hangs", within=90)
    held = await held_back(engine, planted.team)
    first.kill(signal.SIGKILL)
    restarted = monitors.start("a")
    await wait_until(lambda: fired(count), "every breach", within=120)

    async with engine.connect() as connection:
        decided = (
            await connection.execute(
                text(
                    "SELECT count(*) AS deadlines, count(*) FILTER (WHERE d.status = 'breached') AS breached, "
                    "count(*) FILTER (WHERE t.decided_at < t.due_at) AS early "
                    "FROM deadlines d JOIN sla_timers t USING (deadline_id) WHERE d.team = :team"
                ),
                {"team": planted.team},
            )
        ).one()
        fired_by = {
            row.deadline_id: row.fired_by
            for row in await connection.execute(
                text(
                    "SELECT t.deadline_id, t.fired_by FROM sla_timers t JOIN deadlines d USING (deadline_id) WHERE d.team = :team"
                ),
                {"team": planted.team},
            )
        }
    by_instance = Counter(fired_by.values())
    assert (decided.deadlines, decided.breached, decided.early) == (count, count, 0)
    assert await timer_counts(engine, planted.team) == {"fired": count}
    assert by_instance[killed_instance] > 0 and by_instance[pid_instance(second)] > 0, by_instance
    assert sum(by_instance.values()) == count
    # What the killed monitor held when it died was fired by another one, once.
    assert held and all(fired_by[deadline] != killed_instance for deadline in held)
    assert restarted.process is not None and restarted.process.poll() is None

    planted_ids = {str(deadline) for deadline in planted.deadlines}
    async with TopicWatcher(["sla.breached.v1"]) as watcher:
        # Other tests put undecodable records on this topic (dead-letter tests): they are not ours.
        mine = lambda seen: str(seen.value.get("deadline_id")) in planted_ids  # noqa: E731
        await watcher.wait_for("sla.breached.v1", mine, count=count, within=120)
        await watcher.wait_until_settled()  # a duplicate a relay publishes after a crash is read by now
        records = watcher.matching("sla.breached.v1", mine)
    ids_per_deadline: dict[str, set[str]] = defaultdict(set)
    for record in records:
        assert record.headers["ce_id"] == record.value["event_id"]
        ids_per_deadline[record.value["deadline_id"]].add(record.value["event_id"])
    # At least once on the wire; exactly once after dedupe by event id.
    assert len(ids_per_deadline) == count
    assert all(len(ids) == 1 for ids in ids_per_deadline.values())
    print(f"\nbreaches: {count}, records: {len(records)}, held at the kill: {len(held)}, per monitor: {by_instance}")


async def test_a_monitor_down_for_ten_minutes_fires_everything_on_start_in_due_order(
    engine: AsyncEngine, monitors: Monitors
) -> None:
    count = 2_000
    now = datetime.now(UTC)
    dues = [now - timedelta(minutes=10) + timedelta(seconds=599 * i / count) for i in range(count)]
    planted = await plant(engine, dues, warn_before=timedelta(seconds=30), ladder_after=timedelta(seconds=1))
    timers = 3 * count

    started = time.monotonic()
    monitor = monitors.start("solo")
    await wait_until(lambda: _all_fired(engine, planted.team, timers), "the backlog", within=60)
    caught_up = time.monotonic() - started

    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT t.due_at, t.decided_at, t.kind FROM sla_timers t JOIN deadlines d USING (deadline_id) "
                    "WHERE d.team = :team ORDER BY t.due_at"
                ),
                {"team": planted.team},
            )
        ).all()
    assert len(rows) == timers
    assert all(row.decided_at >= row.due_at for row in rows)
    # One monitor, passes in due order: nothing due later is decided in an earlier pass.
    decided = [row.decided_at for row in rows]
    assert decided == sorted(decided)

    # Each bucket's relay publishes in outbox order, so each partition carries a bucket's breaches
    # in due order (and so every lead's facts in order).
    by_partition = await breaches_by_partition(planted, count)
    assert sum(len(dues_seen) for dues_seen in by_partition.values()) == count
    assert all(dues_seen == sorted(dues_seen) for dues_seen in by_partition.values())

    port = monitor.env["COXSWAIN_METRICS_PORT"]
    async with httpx.AsyncClient() as client:
        exposition = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    labels = (("team", planted.team), ("tier", "hot"))
    assert samples[("coxswain_sla_breaches_total", labels)] == count
    assert samples[("coxswain_sla_warnings_total", labels)] == count
    assert samples[("coxswain_sla_escalations_total", tuple(sorted((*labels, ("step", "page_oncall")))))] == count
    assert samples[("coxswain_sla_timer_lag_seconds_count", ())] >= timers
    span = (decided[-1] - decided[0]).total_seconds()
    print(f"\nbacklog of {timers} timers: fired within {span:.1f}s, {caught_up:.1f}s after the process was spawned")


async def _all_fired(engine: AsyncEngine, team: str, timers: int) -> bool:
    return (await timer_counts(engine, team)).get("fired", 0) == timers
