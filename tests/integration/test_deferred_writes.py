"""A write nothing later in its transaction reads rides in a statement sent anyway
(``coxswain.db.deferred``): the one that stages the facts, or, for scoring's write in a batch that
routes, the router's read of names before its routing locks. Scoring's batch is one round trip
shorter, and nothing else changes.
Outside a consumer's batch the same write runs at once; a deferred write that fails sends the
batch record by record, as a failing handler does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import load_agreement
from coxswain.db import deferred
from coxswain.runtime import outbox
from coxswain.runtime.consumer import ConsumerService, Delivery, one_at_a_time
from coxswain.runtime.service import Process
from coxswain.settings import ConsumerConfig, KafkaConfig, Settings
from coxswain_app.wiring import CONSUMERS, consumer_service
from schemas.codec import encode
from schemas.events import Event, LeadReceivedV1
from tests.integration.test_routing_in_scoring import received
from tests.support.databases import engine_without_relays

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
# A write of this test's own: an inbox row under a consumer name nothing else uses.
MARK = "INSERT INTO inbox (consumer, event_id, topic, processed_at) SELECT :mark_consumer, e, 'mark', :mark_now FROM unnest(CAST(:mark_ids AS uuid[])) AS e"


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        yield database


def mark(consumer: str, ids: Sequence[uuid.UUID]) -> deferred.Write:
    return deferred.Write(f"marked AS ({MARK})", {"mark_consumer": consumer, "mark_ids": list(ids), "mark_now": NOW})


async def marked(connection: AsyncConnection, consumer: str) -> set[uuid.UUID]:
    rows = await connection.execute(text("SELECT event_id FROM inbox WHERE consumer = :c"), {"c": consumer})
    return {row.event_id for row in rows}


class Statements:
    """Every statement an engine sends, in order."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sent: list[str] = []
        self._engine = engine

    def _record(self, *args: Any) -> None:
        self.sent.append(str(args[2]))

    def __enter__(self) -> Statements:
        event.listen(self._engine.sync_engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._engine.sync_engine, "before_cursor_execute", self._record)


async def test_outside_a_scope_a_write_runs_at_once(engine: AsyncEngine) -> None:
    consumer, ids = f"at-once-{uuid.uuid4()}", [uuid.uuid4()]
    async with engine.begin() as connection:
        await deferred.write(connection, mark(consumer, ids))
        assert await marked(connection, consumer) == set(ids)


async def test_in_a_scope_a_write_waits_for_the_staging_statement_and_rides_in_it(engine: AsyncEngine) -> None:
    consumer, ids = f"carried-{uuid.uuid4()}", [uuid.uuid4(), uuid.uuid4()]
    fact = received(1)
    async with engine.begin() as connection:
        with deferred.deferring(connection):
            await deferred.write(connection, mark(consumer, ids))
            assert await marked(connection, consumer) == set()
            with Statements(engine) as statements:
                await outbox.stage(connection, [fact], NOW)
        assert len(statements.sent) == 1
        assert "INSERT INTO outbox" in statements.sent[0] and "marked AS" in statements.sent[0]
        assert await marked(connection, consumer) == set(ids)
        staged = await connection.scalar(text("SELECT count(*) FROM outbox WHERE event_id = :e"), {"e": fact.event_id})
        assert staged == 1


async def test_writes_with_nothing_to_stage_still_run(engine: AsyncEngine) -> None:
    consumer, ids = f"alone-{uuid.uuid4()}", [uuid.uuid4()]
    async with engine.begin() as connection:
        with deferred.deferring(connection):
            await deferred.write(connection, mark(consumer, ids))
            await outbox.stage_records(connection, [], NOW)
        assert await marked(connection, consumer) == set(ids)


async def test_a_write_left_waiting_is_an_error_not_a_silent_loss(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        with pytest.raises(RuntimeError, match="left unwritten"), deferred.deferring(connection):
            await deferred.write(connection, mark("left", [uuid.uuid4()]))
        # The scope is gone: the next write runs at once.
        await deferred.write(connection, mark("left", [uuid.uuid4()]))
        await connection.rollback()


async def test_writes_carried_together_must_not_share_parameter_names(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="share parameter names"):
        deferred.carried([mark("a", []), mark("b", [])])
    with pytest.raises(ValueError, match="share parameter names"):
        deferred.carried([mark("a", [])], own={"mark_now": NOW})
    with pytest.raises(ValueError, match="share parameter names"):
        deferred.carried_before([mark("a", [])], [], "SELECT 1 FROM effects", {"mark_now": NOW})


async def test_writes_carried_before_a_read_land_and_their_effect_runs_once_however_many_rows_it_returns(
    engine: AsyncEngine,
) -> None:
    """The router's read of names carries scoring's write this way: its effect (waking the timer
    loops) must run once, not once per rep the read returns, and not be skipped."""
    consumer = f"before-{uuid.uuid4()}"
    ids = [uuid.uuid4(), uuid.uuid4()]
    async with engine.connect() as connection:
        await connection.execute(text("CREATE TEMPORARY SEQUENCE effects_run"))
        counted = deferred.Write(mark(consumer, ids).ctes, mark(consumer, ids).parameters, "nextval('effects_run')")
        sql, parameters = deferred.carried_before(
            [counted],
            ["numbers AS (SELECT generate_series(1, :rows) AS n)"],
            "SELECT numbers.n FROM effects LEFT JOIN numbers ON true ORDER BY numbers.n",
            {"rows": 3},
        )
        rows = (await connection.execute(text(sql), parameters)).scalars().all()
        assert rows == [1, 2, 3]
        ran = (await connection.execute(text("SELECT last_value, is_called FROM effects_run"))).one()
        assert tuple(ran) == (1, True)
        # The write ran in that statement, before anything else in the transaction.
        assert await marked(connection, consumer) == set(ids)
        await connection.rollback()


def scoring(engine: AsyncEngine) -> ConsumerService:
    """Scoring's consumer as ``run_consumer`` builds it (routing inline), without its Kafka loop."""
    settings = Settings()
    spec = CONSUMERS["scoring"]
    wired = spec.wire(Process("scoring", engine, lambda: AGREEMENT, lambda: NOW, settings))
    return consumer_service("scoring", spec, wired, engine, settings, clock=lambda: NOW)


def delivery(fact: Event, offset: int) -> Delivery:
    record = encode(fact)
    return Delivery(fact.topic, 0, offset, record.key, record.value, record.headers)


async def test_scorings_batch_writes_its_rows_before_the_routing_locks_and_routes_in_its_last_statement(
    engine: AsyncEngine,
) -> None:
    leads = [received(n) for n in range(3)]
    with Statements(engine) as statements:
        await scoring(engine).process([delivery(lead, n) for n, lead in enumerate(leads)])
    last = len(statements.sent) - 1
    reading_names = [n for n, sql in enumerate(statements.sent) if "named AS (" in sql]
    reading_state = [n for n, sql in enumerate(statements.sent) if "FROM routing_state(" in sql]
    assert len(reading_names) == 1 and reading_state and reading_names[0] < min(reading_state)
    # Scoring's rows ride with the router's read of the names, the statement before the read that
    # takes the routing locks: a second instance waiting for the same pool does not wait for them.
    writing_leads = [n for n, sql in enumerate(statements.sent) if "INSERT INTO leads" in sql]
    assert writing_leads == reading_names
    # The router's decisions ride in the last statement, the one that stages the facts.
    assert "INSERT INTO outbox" in statements.sent[last]
    writing_assignments = [n for n, sql in enumerate(statements.sent) if "INSERT INTO assignments" in sql]
    assert writing_assignments == [last]
    # The router's inbox claims of the facts it was handed ride with scoring's rows: the batch's
    # own claim is the only other statement that claims (tests/integration/test_handed_claims.py).
    claiming = [n for n, sql in enumerate(statements.sent) if "INSERT INTO inbox" in sql]
    assert claiming == [0, *reading_names]
    # The identity keys (hashed text, where the router's keys are ints) are locked by the claim
    # too (tests/integration/test_claim_locks.py).
    locking = [n for n, sql in enumerate(statements.sent) if "hashtext(k)" in sql]
    assert locking == [0]
    # And the routing locks by the read of the routing state, which waits for them first
    # (services/router/locks.py): no statement takes them alone.
    assert not [sql for sql in statements.sent if "pg_advisory_xact_lock(:lock_class, k)" in sql]
    assert [n for n, sql in enumerate(statements.sent) if "FROM routing_state(" in sql]
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT count(*) FROM leads WHERE lead_id = ANY(:ids)"), {"ids": [lead.lead_id for lead in leads]}
        )
        routed = await connection.scalar(
            text("SELECT count(*) FROM assignments WHERE lead_id = ANY(:ids)"),
            {"ids": [lead.lead_id for lead in leads]},
        )
    assert (stored, routed) == (3, 3)


async def test_a_deferred_write_that_fails_sends_the_batch_record_by_record(engine: AsyncEngine) -> None:
    """The bad record is dead-lettered, the others applied once: what a handler failing at once gets."""
    consumer = f"deferring-{uuid.uuid4()}"
    effects = f"{consumer}-effects"
    events = [received(n) for n in range(3)]
    poison = events[1].event_id

    async def handle(connection: AsyncConnection, batch: Sequence[Event], now: datetime) -> list[list[Event]]:
        # Like scoring's: one write for the batch. It fails when it runs, not when it is
        # deferred, for a batch holding the poison event: a value its column refuses.
        at = "CAST('not a time' AS timestamptz)" if poison in {e.event_id for e in batch} else ":mark_now"
        await deferred.write(
            connection,
            deferred.Write(
                "marked AS (INSERT INTO inbox (consumer, event_id, topic, processed_at) "
                f"SELECT :mark_consumer, e, 'mark', {at} FROM unnest(CAST(:mark_ids AS uuid[])) AS e)",
                {"mark_consumer": effects, "mark_ids": [e.event_id for e in batch], "mark_now": now},
            ),
        )
        return [[] for _ in batch]

    service = ConsumerService(
        name=consumer,
        accepts={LeadReceivedV1.topic: (LeadReceivedV1,)},
        handler=one_at_a_time(handle),
        batch_handler=handle,
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(consumer_handler_retries=0),
        clock=lambda: NOW,
    )
    await service.process([delivery(event, n) for n, event in enumerate(events)])
    async with engine.connect() as connection:
        assert await marked(connection, effects) == {events[0].event_id, events[2].event_id}
        dead = await connection.scalar(
            text(
                "SELECT count(*) FROM outbox o JOIN inbox i ON i.event_id = o.event_id "
                "WHERE i.consumer = :c AND o.topic = :t"
            ),
            {"c": consumer, "t": f"{LeadReceivedV1.topic}.dlq"},
        )
    assert dead == 1
