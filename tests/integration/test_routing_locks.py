"""Two routers (two handlers, two database connections) deciding at the same time: a decision for
another pool goes through while the first transaction is still open; a decision that reads a pool
or a rep the open one holds waits for its commit, and then sees what it committed.

No clock is read: "waits" is PostgreSQL's own word for it (``pg_stat_activity.wait_event_type``),
and "goes through" is the second transaction having committed while the first is still open.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.runtime.consumer import BatchHandler
from schemas.events import Event, LeadAttributes, LeadQualifiedV1, LeadRoutedV1, Tier
from services.router import locks, repository
from services.router import service as router

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def agreement(suffix: str) -> Agreement:
    """US -> pool A, DE -> pool B (no rep in common with A), FR -> pool C (shares a rep with A)."""
    rep = {name: f"lk-{name}-{suffix}" for name in ("a1", "a2", "b1", "b2", "c1", "desk")}
    return parse_agreement(
        {
            "version": f"locks-{suffix}",
            "name": "Router lock tests",
            "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
            "roster": [{"id": rep_id, "name": name} for name, rep_id in rep.items()],
            "routing": {
                "rules": [
                    {"id": "us", "when": {"country": ["US"]}, "pool": f"lk-a-{suffix}"},
                    {"id": "de", "when": {"country": ["DE"]}, "pool": f"lk-b-{suffix}"},
                    {"id": "fr", "when": {"country": ["FR"]}, "pool": f"lk-c-{suffix}"},
                ],
                "fallback_pool": f"lk-desk-{suffix}",
                "pools": [
                    {"id": f"lk-a-{suffix}", "members": [{"rep": rep["a1"]}, {"rep": rep["a2"]}]},
                    {"id": f"lk-b-{suffix}", "members": [{"rep": rep["b1"]}, {"rep": rep["b2"]}]},
                    {"id": f"lk-c-{suffix}", "members": [{"rep": rep["a1"]}, {"rep": rep["c1"]}]},
                    {"id": f"lk-desk-{suffix}", "members": [{"rep": rep["desk"]}]},
                ],
            },
            "sla": {"policies": {t: {"first_touch": "30d"} for t in ("hot", "warm", "cold")}},
        }
    )


def qualified(country: str) -> LeadQualifiedV1:
    return LeadQualifiedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=NOW,
        agreement_version="scoring-1",
        caused_by=uuid.uuid4(),
        tier=Tier.warm,
        score=75,
        reason="lock test",
        attributes=LeadAttributes(country=country),  # no email: no domain, so no domain lock in common
        source="webform",
    )


def routed(facts: list[Event]) -> LeadRoutedV1:
    [fact] = facts
    assert isinstance(fact, LeadRoutedV1), fact
    return fact


class Second:
    """The second router: decides one lead in its own transaction and commits."""

    def __init__(self, engine: AsyncEngine, handler: BatchHandler, event: LeadQualifiedV1) -> None:
        self.pid: int | None = None
        self.task = asyncio.create_task(self._run(engine, handler, event))

    async def _run(self, engine: AsyncEngine, handler: BatchHandler, event: LeadQualifiedV1) -> list[Event]:
        async with engine.begin() as connection:
            self.pid = await connection.scalar(text("SELECT pg_backend_pid()"))
            [facts] = await handler(connection, [event], NOW)
            return list(facts)

    async def waits_or_finishes(self, observer: AsyncConnection) -> bool:
        """True once PostgreSQL shows it waiting for a lock; False once it has committed."""
        async with asyncio.timeout(120):  # a guard against a hang, not a measurement
            while not self.task.done():
                if self.pid is not None:
                    waiting = await observer.scalar(
                        text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"), {"p": self.pid}
                    )
                    if waiting:
                        return True
                await asyncio.sleep(0.01)
        self.task.result()  # re-raise what failed
        return False


async def assignments(observer: AsyncConnection, event: LeadQualifiedV1) -> int:
    count = await observer.scalar(
        text("SELECT count(*) FROM assignments WHERE decision_key = :k"), {"k": event.event_id}
    )
    return int(count or 0)


@pytest.mark.parametrize(
    ("country", "waits"),
    [
        pytest.param("DE", False, id="another-pool-goes-through"),
        pytest.param("US", True, id="same-pool-waits"),
        pytest.param("FR", True, id="another-pool-sharing-a-rep-waits"),
    ],
)
async def test_a_second_router_waits_only_for_the_pools_and_reps_the_first_holds(
    engine: AsyncEngine, country: str, waits: bool
) -> None:
    terms = agreement(uuid.uuid4().hex[:6])
    first_handler, second_handler = router.make_batch_handler(terms), router.make_batch_handler(terms)
    held, other = qualified("US"), qualified(country)
    async with engine.connect() as observer, engine.connect() as first:
        await observer.execution_options(isolation_level="AUTOCOMMIT")
        transaction = await first.begin()
        try:
            [held_facts] = await first_handler(first, [held], NOW)
            second = Second(engine, second_handler, other)
            waited = await second.waits_or_finishes(observer)
            # The first transaction is still open: its decision is not visible to anyone yet.
            assert await assignments(observer, held) == 0
            assert await assignments(observer, other) == (0 if waited else 1)
            await transaction.commit()
        finally:
            if transaction.is_active:
                await transaction.rollback()
        other_facts = await second.task

    assert waited is waits
    first_fact, second_fact = routed(list(held_facts)), routed(other_facts)
    rule = {"US": "us", "DE": "de", "FR": "fr"}
    assert (first_fact.rule_id, second_fact.rule_id) == ("us", rule[country])
    if country == "US":
        # It waited, so it saw the first decision: the rotation moved on to the next rep.
        assert second_fact.rep_id != first_fact.rep_id
    async with engine.connect() as observer:
        counters: dict[str, Any] = {
            row.rep_id: row.open_leads
            for row in await observer.execute(
                text("SELECT rep_id, open_leads FROM rep_counters WHERE rep_id = ANY(:r)"),
                {"r": [first_fact.rep_id, second_fact.rep_id]},
            )
        }
    # Each decision counted once on its rep, however the two were interleaved.
    expected: dict[str, int] = {}
    for fact in (first_fact, second_fact):
        expected[fact.rep_id] = expected.get(fact.rep_id, 0) + 1
    assert counters == expected


async def waiting(observer: AsyncConnection, pid: int) -> bool:
    state = await observer.scalar(
        text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
    )
    return bool(state)


async def until_waiting_or_done(observer: AsyncConnection, pid: int, task: asyncio.Task[Any]) -> None:
    """Until backend ``pid`` waits for a lock or ``task`` has finished."""
    async with asyncio.timeout(120):  # a guard against a hang, not a measurement
        while not task.done():
            if await waiting(observer, pid):
                return
            await asyncio.sleep(0.01)


async def test_a_lock_below_one_already_held_is_refused_rather_than_waited_for(engine: AsyncEngine) -> None:
    """The order rule itself: waiting for a key below one already held could close a cycle with a
    transaction holding the lower key and waiting for the higher one, so the batch is given back."""
    low, high = 1_000_001, 1_000_002
    async with engine.connect() as holder, engine.connect() as other, holder.begin():
        await locks.acquire(holder, [low])
        async with other.begin():
            await locks.acquire(other, [high])
            async with asyncio.timeout(120):  # a guard against a hang, not a measurement
                with pytest.raises(locks.RoutingLocksBusy):
                    await locks.acquire(other, [low])


async def test_a_lock_above_every_one_held_is_waited_for_even_after_a_savepoint_gave_some_back(
    engine: AsyncEngine,
) -> None:
    """Waiting in ascending order cannot deadlock, so it waits; and a savepoint rolled back gives
    its locks back, which the next request must not count as held."""
    low, middle, high = 1_000_011, 1_000_012, 1_000_013
    async with engine.connect() as observer, engine.connect() as holder, engine.connect() as other:
        await observer.execution_options(isolation_level="AUTOCOMMIT")
        first = await holder.begin()
        await locks.acquire(holder, [middle])
        transaction = await other.begin()
        pid = int(await other.scalar(text("SELECT pg_backend_pid()")) or 0)
        nested = await other.begin_nested()
        await locks.acquire(other, [high])
        await nested.rollback()  # gives ``high`` back: now nothing is held above ``middle``
        await locks.acquire(other, [low])
        task = asyncio.create_task(locks.acquire(other, [middle]))
        await until_waiting_or_done(observer, pid, task)
        assert not task.done(), "it must wait for the holder, not be refused"
        await first.commit()
        await task
        await transaction.commit()


async def held_keys(connection: AsyncConnection) -> set[int]:
    return await repository.held_locks(connection, locks.ROUTING_LOCK_CLASS)


async def test_a_transactions_first_locks_are_taken_by_the_read_of_the_routing_state_and_it_sees_their_holder(
    engine: AsyncEngine,
) -> None:
    """A batch leaves its first locks to the read of the routing state (one round trip fewer): the
    read waits for them, then reads in a snapshot of its own, so it sees what their holder committed
    while it waited, here a rep's counters, which the read does not lock as rows."""
    key, rep = 1_000_021, f"lk-read-{uuid.uuid4().hex[:6]}"
    async with engine.connect() as observer, engine.connect() as holder, engine.connect() as reader:
        await observer.execution_options(isolation_level="AUTOCOMMIT")
        first = await holder.begin()
        await locks.acquire(holder, [key])
        await holder.execute(
            text(
                "INSERT INTO rep_counters (rep_id, open_load, open_leads, assigned_on_day, updated_at) "
                "VALUES (:r, 7, 3, 0, :now)"
            ),
            {"r": rep, "now": NOW},
        )
        transaction = await reader.begin()
        pid = int(await reader.scalar(text("SELECT pg_backend_pid()")) or 0)
        assert locks.acquire_with_the_read(reader, [key])
        assert await held_keys(reader) == set()  # left to the read: nothing taken yet
        reading = asyncio.create_task(
            repository.load_state(
                reader,
                pools=[],
                candidates=[],
                domains={},
                leads=[],
                decision_keys=[],
                reps=[rep],
                now=NOW,
                lock_class=locks.ROUTING_LOCK_CLASS,
                wait_keys=locks.taken_by_the_read(reader),
            )
        )
        await until_waiting_or_done(observer, pid, reading)
        assert not reading.done(), "the read must wait for the lock's holder"
        await first.commit()
        loaded = await reading
        assert (loaded.state.loads[rep].open_load, loaded.state.loads[rep].open_leads) == (7, 3)
        assert await held_keys(reader) == {key}
        await transaction.rollback()


async def test_locks_left_to_the_read_are_taken_first_by_any_other_acquire(engine: AsyncEngine) -> None:
    """Whatever asks for routing locks before the read (a release, a reassignment) takes the ones
    left to it in the same ordered statement, so nothing is read under locks not yet held, and the
    read then has nothing left to take."""
    first, later = 1_000_031, 1_000_032
    async with engine.connect() as connection, connection.begin():
        assert locks.acquire_with_the_read(connection, [first])
        await locks.acquire(connection, [later])
        assert await held_keys(connection) == {first, later}
        assert locks.taken_by_the_read(connection) == []


async def test_only_a_transactions_first_locks_can_be_left_to_the_read(engine: AsyncEngine) -> None:
    """Once a transaction holds routing locks, a read waiting for more could wait out of order."""
    held, more = 1_000_041, 1_000_042
    async with engine.connect() as connection:
        async with connection.begin():
            await locks.acquire(connection, [held])
            assert not locks.acquire_with_the_read(connection, [more])
        # A new transaction on the same connection starts afresh; a leftover of an earlier one is dropped.
        async with connection.begin():
            assert locks.acquire_with_the_read(connection, [more])
        async with connection.begin():
            assert locks.taken_by_the_read(connection) == []
            assert await held_keys(connection) == set()
