"""Outbox relays without a global lock, on real PostgreSQL and Kafka: relays share the buckets
out, publish in parallel, keep each lead's facts in order, and a relay that is killed between
publish and delete, or frozen past its lease, costs at most a duplicate and a few seconds of its
own share, never a lost or reordered fact."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chaos.topics import read_all
from coxswain.db.database import create_engine
from coxswain.runtime import metrics, outbox
from coxswain.runtime.kafka import Publisher, connection_options
from coxswain.runtime.outbox import (
    BUCKETS,
    OutboxRelay,
    bucket_of,
    channel_of,
    headers_json,
    note_of,
    stage_records,
)
from coxswain.settings import DatabaseConfig, KafkaConfig
from schemas.codec import WireRecord
from tests.support.databases import engine_without_relays

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The test's own topic: no service reads it, and no other test sees these records.
TOPIC = "test.outbox-relays.v1"
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
RelayT = TypeVar("RelayT", bound=OutboxRelay)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def topic(infrastructure: None) -> str:
    admin = AIOKafkaAdminClient(**connection_options(KafkaConfig()))
    await admin.start()
    try:
        if TOPIC not in await admin.list_topics():
            await admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    return TOPIC


@pytest_asyncio.fixture(loop_scope="session")
async def engine(topic: str) -> AsyncIterator[AsyncEngine]:
    database = create_engine(DatabaseConfig())
    # Leases of relays from earlier tests (in-process ones) must not linger into this one.
    async with database.begin() as connection:
        await connection.execute(text("UPDATE outbox_leases SET expires_at = now() - interval '1 hour'"))
        await connection.execute(text("DELETE FROM outbox_relays"))
    yield database
    await database.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def publisher(infrastructure: None) -> AsyncIterator[Publisher]:
    producer = Publisher(KafkaConfig())
    await producer.start()
    yield producer
    await producer.stop()


async def stage(engine: AsyncEngine, leads: int, facts: int) -> dict[str, list[int]]:
    """``facts`` numbered facts for each of ``leads`` new leads, each lead's in order, in several
    transactions interleaved across leads; returns lead -> the numbers staged."""
    staged: dict[str, list[int]] = defaultdict(list)
    keys = [str(uuid.uuid4()) for _ in range(leads)]
    for n in range(facts):
        records = []
        for key in keys:
            value = orjson.dumps({"lead": key, "n": n})
            records.append((uuid.uuid4(), WireRecord(topic=TOPIC, key=key.encode(), value=value, headers=())))
            staged[key].append(n)
        async with engine.begin() as connection:
            await stage_records(connection, records, NOW)
    return staged


async def pending(engine: AsyncEngine, keys: list[str]) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM outbox WHERE key = ANY(:keys)"), {"keys": [key.encode() for key in keys]}
        )
    return int(count or 0)


async def wait_published(engine: AsyncEngine, keys: list[str], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while await pending(engine, keys):
        assert time.monotonic() < deadline, f"{await pending(engine, keys)} rows still in the outbox"
        await asyncio.sleep(0.1)


async def assert_in_order_and_complete(staged: dict[str, list[int]]) -> int:
    """Every staged fact is on the topic, and each lead's facts first appear in the order staged;
    returns how many duplicates (a relay killed between publish and delete sends a batch twice)."""
    seen: dict[str, list[int]] = defaultdict(list)
    for record in await read_all(KafkaConfig().kafka_bootstrap_servers, [TOPIC]):
        lead = record.value.get("lead")
        if lead in staged:
            seen[lead].append(int(record.value["n"]))
    duplicates = 0
    for lead, numbers in staged.items():
        first = list(dict.fromkeys(seen[lead]))
        assert first == numbers, f"lead {lead}: {seen[lead]}"
        duplicates += len(seen[lead]) - len(first)
    return duplicates


async def test_a_leads_facts_share_one_bucket() -> None:
    key = str(uuid.uuid4()).encode()
    assert bucket_of(key) == bucket_of(bytes(key)) and 0 <= bucket_of(key) < BUCKETS
    assert len({bucket_of(str(uuid.uuid4()).encode()) for _ in range(2000)}) == BUCKETS


async def test_relays_take_fair_disjoint_shares_and_hand_them_back(engine: AsyncEngine, publisher: Publisher) -> None:
    first = OutboxRelay(engine, publisher, lease_seconds=2.0, name="share-a")
    second = OutboxRelay(engine, publisher, lease_seconds=2.0, name="share-b")
    try:
        assert len(await first.refresh_leases()) == BUCKETS, "alone, a relay takes every bucket"
        await second.refresh_leases()  # sees a second relay alive: takes nothing held
        await first.refresh_leases()  # hands back what is beyond its share
        await second.refresh_leases()
        assert len(first.owned) == len(second.owned) == BUCKETS // 2
        assert not set(first.owned) & set(second.owned)
    finally:
        await second.release_leases()
        await first.release_leases()
    async with engine.connect() as connection:
        held = await connection.scalar(text("SELECT count(*) FROM outbox_leases WHERE expires_at > now()"))
    assert held == 0, "a relay that stops hands its buckets back at once"


async def test_a_standby_relay_publishes_only_while_no_full_relay_is_alive(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    lease = 1.0
    standby = OutboxRelay(engine, publisher, lease_seconds=lease, name="standby", standby=True)
    full = OutboxRelay(engine, publisher, lease_seconds=lease, name="full")
    other_standby = OutboxRelay(engine, publisher, lease_seconds=lease, name="standby-2", standby=True)
    try:
        # No full relay alive: not at the first look (a full relay may be about to renew), but
        # once none has been seen for a lease.
        assert await standby.refresh_leases() == ()
        await asyncio.sleep(lease)
        assert len(await standby.refresh_leases()) == BUCKETS, "alone for a lease, a standby takes them all"
        assert await other_standby.refresh_leases() == ()
        await asyncio.sleep(lease)
        assert len(await standby.refresh_leases()) == BUCKETS, "renewed: it keeps them while alone"
        assert await other_standby.refresh_leases() == (), "a second standby finds none free"
        await full.refresh_leases()  # a standby is not counted: the full relay's share is every bucket
        assert await standby.refresh_leases() == (), "a full relay is alive: the standby hands its buckets back"
        assert len(await full.refresh_leases()) == BUCKETS
        await full.release_leases()  # the full relay goes: the standbys take over a lease later
        assert await standby.refresh_leases() == ()
        await asyncio.sleep(lease)
        await other_standby.refresh_leases()
        await standby.refresh_leases()
        assert sorted(standby.owned + other_standby.owned) == list(range(BUCKETS))
    finally:
        await other_standby.release_leases()
        await standby.release_leases()
        await full.release_leases()


async def test_two_relays_publish_in_parallel_and_keep_each_leads_order(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    staged = await stage(engine, leads=40, facts=15)
    relays = [OutboxRelay(engine, publisher, lease_seconds=2.0, name=f"parallel-{n}", batch=50) for n in range(2)]
    published = [0, 0]
    stop = asyncio.Event()

    def counter(n: int) -> Callable[[int], None]:
        def add(count: int) -> None:
            published[n] += count

        return add

    for relay in relays:
        await relay.refresh_leases()
    await relays[0].refresh_leases()
    tasks = [asyncio.create_task(relay.run(stop, counter(n))) for n, relay in enumerate(relays)]
    try:
        await wait_published(engine, list(staged))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert all(published), f"both relays published: {published}"
    assert await assert_in_order_and_complete(staged) == 0


async def test_under_a_steady_trickle_a_pass_is_one_statement_that_deletes_the_last_batch(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    relay_engine = create_engine(DatabaseConfig())
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(relay_engine.sync_engine, "before_cursor_execute", count)
    relay = OutboxRelay(relay_engine, publisher, lease_seconds=30.0, name="trickle")
    staged: dict[str, list[int]] = {}
    try:
        await relay.refresh_leases()
        for _ in range(10):
            staged.update(await stage(engine, leads=1, facts=1))
            before = len(statements)
            assert await relay.relay_once() == 1
            assert len(statements) - before == 1, statements[before:]
        # Each pass deleted the batch before it, and only that: the last one waits for its pass.
        assert await pending(engine, list(staged)) == 1
        assert await relay.relay_once() == 0
        assert await pending(engine, list(staged)) == 0
        assert await assert_in_order_and_complete(staged) == 0, "a batch is never read again once published"
    finally:
        await relay.release_leases()
        await relay_engine.dispose()


async def test_a_bucket_handed_back_is_not_sent_again_by_its_next_holder(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    first = OutboxRelay(engine, publisher, lease_seconds=30.0, name="handing-a")
    second = OutboxRelay(engine, publisher, lease_seconds=30.0, name="handing-b")
    try:
        await first.refresh_leases()
        staged = await stage(engine, leads=20, facts=2)
        while await first.relay_once() != 0:
            pass
        staged.update(more := await stage(engine, leads=20, facts=1))
        assert await first.relay_once() == len(more), "published; deleted only by the next pass"
        await second.refresh_leases()
        await first.refresh_leases()  # hands half of the buckets back
        await second.refresh_leases()  # and the other relay takes them
        assert second.owned
        assert await second.relay_once() == 0, "the batch published last was gone before its buckets were"
        assert await assert_in_order_and_complete(staged) == 0
    finally:
        await second.release_leases()
        await first.release_leases()


class CountingRelay(OutboxRelay):
    """A relay that counts its reads of the outbox and the notifications its connection receives."""

    passes = 0
    notifications = 0

    async def relay_once(self) -> int | None:
        self.passes += 1
        return await super().relay_once()

    def _notified(self, connection: object, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        super()._notified(connection, pid, channel, payload)


async def test_a_relay_that_hands_back_buckets_it_heard_rows_of_waits_instead_of_spinning(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    """Seen in the bench: the intake's standby, alone, took every bucket and heard rows; it handed
    them back when the full relays came, and from then on its loop went round without waiting
    (each pass a read of no buckets that returned at once, the rows heard still there), so the
    intake answered webhooks only when the relay's renewal, once a second, let the loop go."""
    lease = 3.0
    standby = CountingRelay(engine, publisher, lease_seconds=lease, name="spin-standby", standby=True)
    full = OutboxRelay(engine, publisher, lease_seconds=lease, name="spin-full")
    try:
        await full.refresh_leases()
        assert await standby.refresh_leases() == (), "a full relay is alive: the standby holds nothing"
        # Rows heard for a bucket it held until now (its notifications arrive as the relay's
        # connection delivers them: through the same callback).
        (_, record), *_ = records_for(keys_in((0,), 1), 0)
        payload = f"7 {note_of(record, headers_json(record))}"
        standby._notified(None, 0, channel_of(0), payload)
        stop = asyncio.Event()
        task = asyncio.create_task(standby.run(stop))
        await asyncio.sleep(2.5)  # two renewals; the idle poll is 0.5 s
        stop.set()
        await task
    finally:
        await standby.release_leases()
        await full.release_leases()
    # Waiting for notifications and its idle poll, it reads a handful of times; spinning, it
    # read hundreds of thousands of times.
    assert standby.passes < 50, f"{standby.passes} passes in 2.5 s: the relay's loop never waited"


def records_for(keys: list[str], n: int, size: int = 0) -> list[tuple[uuid.UUID, WireRecord]]:
    """Fact number ``n`` of each lead; ``size`` bytes of padding (a row too large for a notification)."""
    return [
        (
            uuid.uuid4(),
            WireRecord(
                topic=TOPIC,
                key=key.encode(),
                value=orjson.dumps({"lead": key, "n": n, "pad": "x" * size}),
                headers=(("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
            ),
        )
        for key in keys
    ]


async def running_pair(engine: AsyncEngine, publisher: Publisher) -> tuple[CountingRelay, CountingRelay]:
    # Long idle polls and leases: any read during the test comes from a notification.
    relays = [
        CountingRelay(engine, publisher, lease_seconds=60.0, idle_poll_seconds=60.0, name=f"woken-{n}")
        for n in range(2)
    ]
    for relay in relays:
        await relay.refresh_leases()
    await relays[0].refresh_leases()  # hands half of the buckets back
    await relays[1].refresh_leases()  # and the other relay takes them
    assert relays[0].owned and relays[1].owned
    return relays[0], relays[1]


@asynccontextmanager
async def running(*relays: OutboxRelay) -> AsyncIterator[None]:
    """The relays running, from when each one's connection LISTENs on all of its buckets' channels
    (a commit before that is read, not heard) until the block ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop)) for relay in relays]
    try:
        deadline = time.monotonic() + 10
        while any(relay.listening != set(relay.owned) for relay in relays):
            assert time.monotonic() < deadline, "a relay's connection never listened on all of its buckets"
            await asyncio.sleep(0.05)
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def keys_in(buckets: tuple[int, ...], count: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < count:
        key = str(uuid.uuid4())
        if bucket_of(key.encode()) in buckets:
            keys.append(key)
    return keys


async def test_a_commit_is_published_from_its_notification_by_the_relay_that_holds_its_bucket_only(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    holder, other = await running_pair(engine, publisher)
    async with running(holder, other):
        # The first commit after the relays started is read: their listening connections came up
        # after their first pass, so a read makes sure nothing committed before them is missed.
        warm = keys_in(holder.owned, 1) + keys_in(other.owned, 1)
        async with engine.begin() as connection:
            await stage_records(connection, records_for(warm, 0), NOW)
        await wait_published(engine, warm, within=30)
        before = (holder.passes, other.passes)
        heard = (holder.notifications, other.notifications)
        keys = keys_in(holder.owned, 5)
        staged: dict[str, list[int]] = {key: [] for key in keys}
        for n in range(3):
            async with engine.begin() as connection:
                await stage_records(connection, records_for(keys, n), NOW)
            for key in keys:
                staged[key].append(n)
        await wait_published(engine, keys, within=30)
        await asyncio.sleep(0.5)  # a second pass or the other relay's would come now
    assert holder.notifications - heard[0] == 15, "one notification per row"
    assert holder.passes == before[0], "the rows came with their notifications: the outbox was not read"
    assert other.passes == before[1], "a relay that holds none of the commit's buckets is not woken"
    assert other.notifications == heard[1], "nor does its connection hear of the commit"
    assert await assert_in_order_and_complete(staged) == 0


class ReadingByIdRelay(CountingRelay):
    """A counting relay that also counts the rows it read by id, a pass at a time."""

    def __init__(self, engine: AsyncEngine, publisher: Publisher, **options: Any) -> None:
        super().__init__(engine, publisher, **options)
        self.read_by_id: list[int] = []

    async def relay_heard(self) -> int:
        unread = sum(1 for _, _, record in self._heard if record is None)
        published = await super().relay_heard()
        if unread:
            self.read_by_id.append(unread)
        return published


@asynccontextmanager
async def warmed_up(engine: AsyncEngine, relay: RelayT) -> AsyncIterator[RelayT]:
    """``relay`` holding its buckets, running, past its first read (its listening connection came
    up after its first pass, so the first commit after that is read): from here on what is
    committed reaches it through its notifications."""
    await relay.refresh_leases()
    async with running(relay):
        warm = keys_in(relay.owned, 1)
        async with engine.begin() as connection:
            await stage_records(connection, records_for(warm, 0), NOW)
        await wait_published(engine, warm, within=30)
        yield relay


@asynccontextmanager
async def relaying_by_id(engine: AsyncEngine, publisher: Publisher, name: str) -> AsyncIterator[ReadingByIdRelay]:
    """One relay holding every bucket, running, past its first read."""
    relay = ReadingByIdRelay(engine, publisher, lease_seconds=60.0, idle_poll_seconds=60.0, name=name)
    async with warmed_up(engine, relay):
        yield relay


async def test_a_large_batch_is_heard_by_its_ids_and_read_by_id_in_the_order_committed(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    """A statement that stages more than ``CARRIED_ROWS`` rows notifies their ids alone, once a
    bucket: the relay reads them by id, one statement a pass, without reading its buckets, and
    publishes them in the order committed, mixed with the rows of small commits handed over whole."""
    async with relaying_by_id(engine, publisher, "by-id") as holder:
        before, heard = holder.passes, holder.notifications
        keys = keys_in(holder.owned[:2], outbox.CARRIED_ROWS + 4)  # two buckets
        staged: dict[str, list[int]] = {key: [] for key in keys}
        for n in range(4):
            # Large and small commits in turns: fact n of every lead at once, then of three only.
            async with engine.begin() as connection:
                await stage_records(connection, records_for(keys if n % 2 == 0 else keys[:3], n), NOW)
            for key in keys if n % 2 == 0 else keys[:3]:
                staged[key].append(n)
        await wait_published(engine, keys, within=30)
    assert holder.passes == before, "the outbox was not read: the rows came by id"
    assert sum(holder.read_by_id) == 2 * len(keys), "the large commits' rows were read by id"
    assert holder.notifications - heard == 2 * 2 + 2 * 3, "a large commit notifies once a bucket, a small one a row"
    assert await assert_in_order_and_complete(staged) == 0


async def test_a_batch_larger_than_a_notification_holds_is_named_over_several(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    """Ids as long as a bigint's, more of them in one bucket than one payload takes: the commit
    goes through (PostgreSQL refuses a transaction whose payload is too long), notifying the
    bucket's ids ``IDS_A_NOTE`` at a time, and every row is published in order."""
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE outbox ALTER COLUMN id RESTART WITH 1000000000000000000"))
    async with relaying_by_id(engine, publisher, "long-ids") as holder:
        heard = holder.notifications
        [key] = keys_in(holder.owned, 1)
        rows = 2 * outbox.IDS_A_NOTE + 100
        async with engine.begin() as connection:
            await stage_records(connection, [records_for([key], n)[0] for n in range(rows)], NOW)
        await wait_published(engine, [key], within=30)
    assert holder.notifications - heard == 3, "one bucket's ids, 300 a notification"
    assert sum(holder.read_by_id) == rows
    assert await assert_in_order_and_complete({key: list(range(rows))}) == 0


async def test_a_row_heard_by_id_and_gone_is_left_out_and_the_next_pass_reads(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    """Gone from the outbox means published: a relay that hears of such a row does not wait for it,
    and reads its buckets next, since it cannot tell how that came to be."""
    relay = CountingRelay(engine, publisher, lease_seconds=30.0, name="gone-by-id")
    try:
        await relay.refresh_leases()
        assert await relay.relay_once() == 0  # read to the end: from here on it goes by what it hears
        [key] = keys_in(relay.owned, 1)
        relay._notified(None, 0, channel_of(bucket_of(key.encode())), "-1")  # no row has id -1
        assert await relay.relay_pass() == 0
        before = relay.passes
        assert await relay.relay_pass() == 0
        assert relay.passes == before + 1, "the pass after it read the outbox"
    finally:
        await relay.release_leases()


async def test_a_row_too_large_to_hand_over_is_read_and_keeps_its_place(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    holder, other = await running_pair(engine, publisher)
    keys = keys_in(holder.owned, 3) + keys_in(other.owned, 3)
    staged: dict[str, list[int]] = {key: [] for key in keys}
    async with running(holder, other):
        before = holder.passes
        for n in range(12):
            # Every third fact of each lead is too large for a notification: its relay must read
            # it, and still publish it after the fact before it and before the fact after it.
            async with engine.begin() as connection:
                await stage_records(connection, records_for(keys, n, size=9000 if n % 3 == 1 else 0), NOW)
            for key in keys:
                staged[key].append(n)
            await asyncio.sleep(0.01)
        await wait_published(engine, keys, within=30)
    assert holder.passes > before, "the large rows were read"
    assert await assert_in_order_and_complete(staged) == 0, "a row read is not sent again when its notification comes"


async def test_a_notification_that_comes_after_the_read_of_its_row_does_not_send_it_again(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    relay = OutboxRelay(engine, publisher, lease_seconds=30.0, name="late-notification")
    try:
        await relay.refresh_leases()
        [key] = keys_in(relay.owned, 1)
        records = records_for([key], 0)
        async with engine.begin() as connection:
            await stage_records(connection, records, NOW)
        assert await relay.relay_once() == 1
        [row_id] = relay._published
        # The row's notification reaches the relay only now, after the read that published it.
        record = records[0][1]
        payload = f"{row_id} {note_of(record, headers_json(record))}"
        relay._notified(None, 0, channel_of(bucket_of(key.encode())), payload)
        assert await relay.relay_pass() == 0
        assert await assert_in_order_and_complete({key: [0]}) == 0
    finally:
        await relay.release_leases()


async def test_a_relay_stalled_past_its_lease_loses_its_buckets_and_says_so(
    engine: AsyncEngine, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    stalled = OutboxRelay(engine, publisher, lease_seconds=1.0, name="stalled")
    taker = OutboxRelay(engine, publisher, lease_seconds=1.0, name="taker")
    try:
        assert len(await stalled.refresh_leases()) == BUCKETS
        staged = await stage(engine, leads=10, facts=3)
        assert await taker.refresh_leases() == (), "held buckets are not taken while their lease runs"
        await asyncio.sleep(1.1)  # the stalled relay does nothing for longer than its lease
        assert len(await taker.refresh_leases()) == BUCKETS
        while await taker.relay_once():
            pass
        before = metrics.OUTBOX_LEASES_LOST._value.get()
        assert await stalled.relay_once() == 0, "a relay whose lease ran out publishes nothing"
        assert metrics.OUTBOX_LEASES_LOST._value.get() - before == BUCKETS
        assert "outbox relay lost its buckets: relay=stalled" in caplog.text
        assert stalled.owned == ()
        assert await assert_in_order_and_complete(staged) == 0
    finally:
        await taker.release_leases()
        await stalled.release_leases()


async def test_a_paused_outbox_is_left_alone(engine: AsyncEngine, publisher: Publisher) -> None:
    relay = OutboxRelay(engine, publisher, name="paused")
    try:
        async with engine_without_relays() as paused:
            staged = await stage(paused, leads=3, facts=2)
            await relay.refresh_leases()
            assert await relay.relay_once() is None
            assert await pending(paused, list(staged)) == 6
        assert await relay.relay_once() == 6
    finally:
        await relay.release_leases()


async def test_a_relay_that_heard_more_than_it_keeps_reads_instead(
    engine: AsyncEngine, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "HEARD_KEPT", 3)
    relay = CountingRelay(engine, publisher, lease_seconds=30.0, name="overheard")
    try:
        await relay.refresh_leases()
        assert await relay.relay_once() == 0  # read to the end: from here on it may go by what it hears
        keys = keys_in(relay.owned, 5)
        records = records_for(keys, 0)
        async with engine.begin() as connection:
            await stage_records(connection, records, NOW)
            rows = await connection.execute(
                text("SELECT event_id, id FROM outbox WHERE event_id = ANY(:ids)"),
                {"ids": [event_id for event_id, _ in records]},
            )
            ids: dict[uuid.UUID, int] = {row.event_id: row.id for row in rows}
        # No listening connection here: the notifications are handed to it by hand.
        for event_id, record in records:
            payload = f"{ids[event_id]} {note_of(record, headers_json(record))}"
            relay._notified(None, 0, channel_of(bucket_of(record.key)), payload)
        assert await relay.relay_pass() == 5
        assert relay.passes == 2, "it read the outbox rather than keep more than three rows in memory"
        assert await assert_in_order_and_complete({key: [0] for key in keys}) == 0
    finally:
        await relay.release_leases()


async def test_a_running_relay_leaves_a_paused_outbox_alone_whatever_it_heard(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    relay = OutboxRelay(engine, publisher, lease_seconds=60.0, name="paused-running")
    await relay.refresh_leases()
    async with running(relay):
        warm = keys_in(relay.owned, 1)
        async with engine.begin() as connection:
            await stage_records(connection, records_for(warm, 0), NOW)
        await wait_published(engine, warm, within=30)  # from here on it publishes what it hears
        async with engine_without_relays() as paused:
            keys = keys_in(relay.owned, 3)
            async with paused.begin() as connection:
                await stage_records(connection, records_for(keys, 0), NOW)
            await asyncio.sleep(1.0)  # its notifications, a pass, and the delete after 50 ms
            assert await pending(paused, keys) == 3, "the rows stay while the outbox is held still"
        await wait_published(engine, keys, within=30)


# --------------------------------------------------------------------------- relays as processes


class RelayProcess:
    def __init__(self, name: str, log_dir: Path, **env: str) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        environment = {**os.environ, "COXSWAIN_OUTBOX_LEASE_SECONDS": "1.5", **env}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.relay_process", name],
                cwd=ROOT,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, needle: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while needle not in self.text():
            assert self.process.poll() is None, self.text()[-2000:]
            assert time.monotonic() < deadline, f"{self.name} did not log {needle!r}:\n{self.text()[-2000:]}"
            await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.stop()


async def holders(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT owner, count(*) AS n FROM outbox_leases WHERE expires_at > now() GROUP BY owner")
        )
        return {row.owner: int(row.n) for row in rows}


async def wait_shared(engine: AsyncEngine, names: set[str], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while set(await holders(engine)) != names:
        assert time.monotonic() < deadline, await holders(engine)
        await asyncio.sleep(0.1)


async def test_a_relay_killed_between_publish_and_delete_loses_and_reorders_nothing(
    engine: AsyncEngine, relays: list[RelayProcess], tmp_path: Path
) -> None:
    survivor = RelayProcess("survivor", tmp_path)
    relays.append(survivor)
    await survivor.wait_for("relay survivor started")
    doomed = RelayProcess("doomed", tmp_path, COXSWAIN_OUTBOX_FAILPOINT="after_publish")
    relays.append(doomed)
    await wait_shared(engine, {"survivor", "doomed"})

    staged = await stage(engine, leads=60, facts=8)
    await doomed.wait_for("failpoint reached")
    doomed.signal(signal.SIGKILL)
    # The survivor takes the dead relay's buckets when their lease runs out and sends its batch again.
    await wait_published(engine, list(staged))

    duplicates = await assert_in_order_and_complete(staged)
    assert duplicates > 0, "the killed relay's batch was published before it died, and again after"


async def test_a_frozen_relay_delays_only_its_share_and_says_so_when_it_wakes(
    engine: AsyncEngine, relays: list[RelayProcess], tmp_path: Path
) -> None:
    awake = RelayProcess("awake", tmp_path)
    relays.append(awake)
    await awake.wait_for("relay awake started")
    frozen = RelayProcess("frozen", tmp_path)
    relays.append(frozen)
    await wait_shared(engine, {"awake", "frozen"})

    frozen.signal(signal.SIGSTOP)
    staged = await stage(engine, leads=60, facts=5)
    # Published while the frozen relay is still frozen: its buckets were taken over.
    await wait_published(engine, list(staged), within=30)
    assert await holders(engine) == {"awake": BUCKETS}
    frozen.signal(signal.SIGCONT)
    await frozen.wait_for("outbox relay lost its buckets: relay=frozen")
    assert await assert_in_order_and_complete(staged) == 0
    await wait_shared(engine, {"awake", "frozen"})  # and it takes a fair share again


async def test_a_relay_restarted_under_its_instance_id_takes_its_predecessors_buckets_at_once(
    engine: AsyncEngine, publisher: Publisher
) -> None:
    lease = 30.0  # long: nothing here may wait for a lease to run out
    peer = OutboxRelay(engine, publisher, lease_seconds=lease, name="peer")
    killed = OutboxRelay(engine, publisher, lease_seconds=lease, instance="router-0")
    successor = OutboxRelay(engine, publisher, lease_seconds=lease, instance="router-0")
    stranger = OutboxRelay(engine, publisher, lease_seconds=lease, instance="router-01")
    try:
        await peer.refresh_leases()
        await killed.refresh_leases()
        await peer.refresh_leases()  # hands back what is beyond its share
        await killed.refresh_leases()
        held_by_killed = killed.owned
        assert len(held_by_killed) == len(peer.owned) == BUCKETS // 2
        assert killed.name.startswith("router-0/") and killed.name != successor.name
        # ``killed`` stops renewing (SIGKILL); a process of another instance id waits for its leases.
        assert await stranger.refresh_leases() == ()
        await stranger.release_leases()
        # Its successor takes them at once, and does not count it among the relays alive.
        assert await successor.refresh_leases() == held_by_killed
        assert await peer.refresh_leases() == tuple(sorted(set(range(BUCKETS)) - set(held_by_killed)))
        async with engine.connect() as connection:
            owners = await connection.scalars(text("SELECT DISTINCT owner FROM outbox_leases WHERE expires_at > now()"))
            assert set(owners) == {peer.name, successor.name}
    finally:
        await stranger.release_leases()
        await successor.release_leases()
        await peer.release_leases()
        await killed.release_leases()


class RenewalCountingRelay(CountingRelay):
    """A counting relay that also counts its renewals."""

    renewals = 0

    async def refresh_leases(self) -> tuple[int, ...]:
        self.renewals += 1
        return await super().refresh_leases()


async def test_a_caught_up_relay_reads_its_buckets_at_the_safety_interval_not_at_every_renewal(
    engine: AsyncEngine, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its notifications hand it every row committed in its buckets, so a read at every renewal (a
    third of a lease) visited every row of them deleted since the last vacuum for nothing. A row
    that no notification named (staged here without one) is still published: by the read that
    comes every ``SAFETY_READ_SECONDS``."""
    monkeypatch.setattr(outbox, "SAFETY_READ_SECONDS", 5.0)
    relay = RenewalCountingRelay(engine, publisher, lease_seconds=1.0, idle_poll_seconds=60.0, name="safety-read")
    async with warmed_up(engine, relay):
        reads, renewals = relay.passes, relay.renewals
        await asyncio.sleep(2.0)
        quiet_reads, quiet_renewals = relay.passes - reads, relay.renewals - renewals
        silent = keys_in(relay.owned, 1)
        ((event_id, record),) = records_for(silent, 0)
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO outbox (event_id, topic, key, value, headers, bucket, created_at) "
                    "VALUES (:event_id, :topic, :key, :value, '[]', :bucket, :now)"
                ),
                {
                    "event_id": event_id,
                    "topic": record.topic,
                    "key": record.key,
                    "value": record.value,
                    "bucket": bucket_of(record.key),
                    "now": NOW,
                },
            )
        await wait_published(engine, silent, within=30)
    assert quiet_renewals >= 2, "the lease of a second is renewed every third of a second"
    assert quiet_reads == 0, f"{quiet_reads} reads in {quiet_renewals} renewals"
    assert await assert_in_order_and_complete({key: [0] for key in silent}) == 0
