"""Two router processes in one consumer group route 5,000 leads while one is killed with SIGKILL
mid-way and restarted: every lead is assigned exactly once, and the pool counters, rep loads and
published facts all agree with the assignments table."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coxswain.runtime.kafka import connection_options
from coxswain.settings import DatabaseConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import LeadAttributes, LeadQualifiedV1, Tier
from tests.support.stack import ServiceProcess, Stack, TopicWatcher

pytestmark = pytest.mark.asyncio(loop_scope="session")

LEADS = 5_000
RUN = uuid.uuid4().hex[:6]
REPS = {f"cc-ava-{RUN}": 2, f"cc-ben-{RUN}": 1, f"cc-eli-{RUN}": 1}
DESK = f"cc-desk-{RUN}"
POOL, OVERFLOW = f"cc-na-{RUN}", f"cc-overflow-{RUN}"


def agreement_document() -> dict[str, Any]:
    return {
        "version": f"concurrency-{RUN}",
        "name": "Router concurrency test",
        "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
        "roster": [{"id": rep, "name": rep} for rep in [*REPS, DESK]],
        "routing": {
            "rules": [{"id": "north-america", "when": {"country": ["US", "CA"]}, "pool": POOL}],
            "fallback_pool": OVERFLOW,
            "pools": [
                {"id": POOL, "members": [{"rep": rep, "weight": weight} for rep, weight in REPS.items()]},
                {"id": OVERFLOW, "members": [{"rep": DESK}]},
            ],
        },
        # Far-off deadlines: an SLA monitor running in the same session never breaches these leads.
        "sla": {"policies": {tier: {"first_touch": "12h"} for tier in ("hot", "warm", "cold")}},
    }


@pytest.fixture
def routers(stack: Stack, tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Our two routers are the consumer group: the session's own router steps aside meanwhile."""
    stack.services["router"].stop()
    agreement = tmp_path / "agreement.yaml"
    agreement.write_text(yaml.safe_dump(agreement_document()), encoding="utf-8")
    env = {
        **os.environ,
        "COXSWAIN_AGREEMENT_FILE": str(agreement),
        "COXSWAIN_CONSUMER_MAX_BATCH": "100",
    }
    pair = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        pair.append(ServiceProcess("router", env, tmp_path / name))
    try:
        yield pair[0], pair[1]
    finally:
        for router in pair:
            router.stop()
        stack.services["router"].start()
        stack.wait_ready("router")


def lead_event(n: int) -> LeadQualifiedV1:
    return LeadQualifiedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        agreement_version="scoring",
        caused_by=uuid.uuid4(),
        tier=(Tier.hot, Tier.warm, Tier.cold)[n % 3],
        score=70,
        reason="concurrency test",
        attributes=LeadAttributes(country="US" if n % 10 else "FR"),
        source="concurrency-test",
    )


async def produce(events: list[LeadQualifiedV1]) -> None:
    producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        sent = []
        for event in events:
            record = encode(event)
            sent.append(await producer.send(record.topic, record.value, key=record.key, headers=list(record.headers)))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def assigned(engine: AsyncEngine, lead_ids: list[uuid.UUID]) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM assignments WHERE lead_id = ANY(:ids)"), {"ids": lead_ids}
        )
    return int(count or 0)


async def wait_until(engine: AsyncEngine, lead_ids: list[uuid.UUID], at_least: int, within: float) -> int:
    deadline = time.monotonic() + within
    count = await assigned(engine, lead_ids)
    while count < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = await assigned(engine, lead_ids)
    return count


async def test_two_routers_one_killed_mid_way_assign_every_lead_exactly_once(
    routers: tuple[ServiceProcess, ServiceProcess],
) -> None:
    victim, survivor = routers
    for router in routers:
        router.start()
        # Under our agreement (not a version some other test left activated in the database).
        await asyncio.to_thread(router.wait_for_log, f"router running under agreement concurrency-{RUN}", 90)
        await asyncio.to_thread(router.wait_for_log, "partitions assigned", 90)
    events = [lead_event(n) for n in range(LEADS)]
    lead_ids = [event.lead_id for event in events]
    engine = create_async_engine(DatabaseConfig().database_url)
    try:
        async with TopicWatcher(["leads.routed.v1"]) as watcher:
            await produce(events)

            at_kill = await wait_until(engine, lead_ids, LEADS // 5, within=180)
            victim.kill(signal.SIGKILL)
            assert 0 < at_kill < LEADS, "the kill must land while leads are still being routed"
            victim.start()
            done = await wait_until(engine, lead_ids, LEADS, within=240)
            assert done == LEADS

            mine = {str(lead_id) for lead_id in lead_ids}
            await watcher.wait_for("leads.routed.v1", lambda seen: seen.key in mine, count=LEADS, within=120)
            await watcher.wait_until_settled()  # any duplicate is on the topic and read by now
            published = watcher.matching("leads.routed.v1", lambda seen: seen.key in mine)
            distinct = {(seen.key, seen.value["event_id"]) for seen in published}
            # At least once on the wire, but exactly one routing fact (one event id) per lead.
            assert Counter(key for key, _ in distinct) == Counter(mine)

        async with engine.connect() as connection:
            per_lead = await connection.execute(
                text("SELECT lead_id, count(*) AS n FROM assignments WHERE lead_id = ANY(:ids) GROUP BY lead_id"),
                {"ids": lead_ids},
            )
            assert {row.lead_id: row.n for row in per_lead} == dict.fromkeys(lead_ids, 1)
            rotations = {
                row.pool_id: row.assigned
                for row in await connection.execute(
                    text("SELECT pool_id, assigned FROM pool_rotation WHERE pool_id = ANY(:p)"),
                    {"p": [POOL, OVERFLOW]},
                )
            }
            counted: dict[str, dict[str, int]] = {POOL: {}, OVERFLOW: {}}
            for row in await connection.execute(
                text(
                    "SELECT pool_id, rep_id, count(*) AS n FROM assignments WHERE pool_id = ANY(:p) "
                    "GROUP BY pool_id, rep_id"
                ),
                {"p": [POOL, OVERFLOW]},
            ):
                counted[row.pool_id][row.rep_id] = row.n
            loads = await connection.execute(
                text(
                    "SELECT c.rep_id, c.open_load, c.open_leads, COALESCE(sum(r.load), 0) AS held, count(r.lead_id) AS n "
                    "FROM rep_counters c LEFT JOIN lead_routing r ON r.rep_id = c.rep_id AND r.open "
                    "WHERE c.rep_id = ANY(:reps) GROUP BY c.rep_id, c.open_load, c.open_leads"
                ),
                {"reps": [*REPS, DESK]},
            )
            load_rows = list(loads)
            parked = await connection.scalar(
                text("SELECT count(*) FROM unassigned_leads WHERE lead_id = ANY(:ids)"), {"ids": lead_ids}
            )
    finally:
        await engine.dispose()

    assert rotations == counted
    assert sum(counted[POOL].values()) == sum(1 for n in range(LEADS) if n % 10)
    assert counted[OVERFLOW] == {DESK: LEADS // 10}
    shares = {rep: count / sum(counted[POOL].values()) for rep, count in counted[POOL].items()}
    assert shares == pytest.approx({rep: weight / 4 for rep, weight in REPS.items()}, abs=0.01)
    assert len(load_rows) == len(REPS) + 1
    assert all((row.open_load, row.open_leads) == (row.held, row.n) for row in load_rows), load_rows
    assert parked == 0
    assert victim.starts == 2
    assert survivor.process is not None and survivor.process.poll() is None
    assert survivor.log_text().count("lead routed") > 0, "both routers took part"


STATIC_SESSION_S = 30


async def test_a_killed_router_restarted_under_its_instance_id_takes_its_partitions_back_at_once(
    routers: tuple[ServiceProcess, ServiceProcess],
) -> None:
    """Static membership: the restarted router is the same member of the group, so it serves its
    partitions as soon as it is up. A new member would wait for the killed one's session (30 s
    here) to expire before the group could rebalance."""
    victim, survivor = routers
    session = {"COXSWAIN_KAFKA_SESSION_TIMEOUT_MS": str(STATIC_SESSION_S * 1000)}
    identities = {id(victim): f"router-a-{RUN}", id(survivor): f"router-b-{RUN}"}
    try:
        for router in routers:
            router.start({**session, "COXSWAIN_KAFKA_INSTANCE_ID": identities[id(router)]})
            await asyncio.to_thread(router.wait_for_log, f"router running under agreement concurrency-{RUN}", 90)
        # Both members of one generation: each holds some of the partitions.
        for router in routers:
            await asyncio.to_thread(router.wait_for_log, 'partitions assigned: ["', 90)

        victim.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.start({**session, "COXSWAIN_KAFKA_INSTANCE_ID": identities[id(victim)]})
        await asyncio.to_thread(victim.wait_for_log, 'partitions assigned: ["', STATIC_SESSION_S)
        assert time.monotonic() - killed_at < STATIC_SESSION_S / 2, "the restart waited for the old session"

        # Every partition is served: leads of all keys are routed with the survivor untouched.
        events = [lead_event(n) for n in range(60)]
        lead_ids = [event.lead_id for event in events]
        engine = create_async_engine(DatabaseConfig().database_url)
        try:
            await produce(events)
            assert await wait_until(engine, lead_ids, len(events), within=STATIC_SESSION_S / 2) == len(events)
        finally:
            await engine.dispose()
        assert survivor.log_text().count("partitions assigned") == 1, "no rebalance: the survivor kept its share"
    finally:
        for router in routers:
            router.stop()
        # Static members do not leave on stop: the next test's router would wait for their sessions.
        await asyncio.sleep(STATIC_SESSION_S + 2)
