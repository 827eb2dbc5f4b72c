"""The transactional outbox and its relays to Kafka.

A fact is written to ``outbox`` in the same transaction as the state change that caused it, so
either both happen or neither. Each row carries a bucket, a stable hash of its Kafka key (the lead
id), so all of one lead's facts share a bucket. Every process runs a relay; relays share the
buckets out between them with leases in ``outbox_leases`` and publish their own buckets in
parallel, each bucket's rows in id order, deleting them after Kafka acknowledged them (in the
statement that reads the next batch, or on their own when no batch follows soon).

Why each lead's facts stay in order: one bucket has one publisher at a time (its lease holder), it
reads its next batch only after Kafka acknowledged the one before (and leaves that one out of the
read until it is deleted), and a row is deleted only after Kafka acknowledged it, so a newer row of
the bucket is never sent before an older one is acknowledged.
Why nothing is lost: a row leaves the outbox only after its acknowledgement; a relay that dies
leaves its rows, and its buckets are taken over when its lease expires (or at once, when it
stops cleanly and hands them back). A relay that hangs past its lease (a long pause, SIGSTOP) may
have sent a batch the next holder sends again: a duplicate that consumers skip by event id, never
a gap. It notices on waking, says so and stops publishing those buckets (docs/event-path.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime import metrics, outages
from coxswain.runtime.kafka import Publisher
from coxswain.runtime.waiting import first_of, sleep_or_stop
from schemas.codec import WireRecord, encode
from schemas.events import Event

log = logging.getLogger(__name__)

CHANNEL = "coxswain_outbox"
# Held shared by every relay while it reads and deletes, exclusively by a test that needs the
# outbox to stay put (tests/support/databases.py): relays never wait for it, they skip a pass.
RELAY_LOCK = 0x636F78  # advisory lock key: "cox"
# Fixed for good: the bucket of a key must not change while its rows wait in the outbox.
BUCKETS = 32
LEASE_SECONDS = 3.0
# A relay stops publishing this long before its lease ends by its own clock, so that the next
# holder, which goes by the database's clock, never starts while it still sends.
LEASE_MARGIN_SECONDS = 0.5


def bucket_of(key: bytes) -> int:
    """The outbox bucket of a Kafka key: the same for every fact of a lead, in every process."""
    return zlib.crc32(key) % BUCKETS


# Delivered on commit: wakes the relays without polling latency. Each bucket has its own channel
# and a relay LISTENs only on its buckets' channels, so a commit wakes only the relays that hold
# one of its buckets: with one channel for all, every commit of every service woke every relay's
# connection and process (PostgreSQL sends a notification to every session listening on its
# channel), only for most of them to find the buckets were not theirs.
NOTIFY_RELAY = f"(SELECT count(pg_notify('{CHANNEL}_' || b, '')) FROM unnest(CAST(:outbox_wake AS int[])) AS b)"


def channel_of(bucket: int) -> str:
    """The notification channel of a bucket: rows staged in it notify there."""
    return f"{CHANNEL}_{bucket}"


def wake_buckets(buckets: Sequence[int]) -> list[int]:
    """The buckets a commit that staged rows in ``buckets`` notifies, each once."""
    return sorted(set(buckets))


def staging(
    records: Sequence[tuple[uuid.UUID, WireRecord]], now: datetime, only_if: str = ""
) -> tuple[str, dict[str, Any]]:
    """The INSERT that stages ``records`` (in their order), and its parameters.

    One statement whatever the number of records, so it can also run inside a larger one (a
    data-modifying WITH) that stores the state change it belongs to; ``only_if`` is an SQL
    condition the rows are staged under, e.g. that the state change happened.
    """
    sql = (
        "INSERT INTO outbox (event_id, topic, key, value, headers, bucket, created_at) "
        "SELECT u.event_id, u.topic, u.key, u.value, u.headers, u.bucket, :outbox_now FROM unnest("
        "CAST(:outbox_ids AS uuid[]), CAST(:outbox_topics AS text[]), CAST(:outbox_keys AS bytea[]), "
        "CAST(:outbox_values AS bytea[]), CAST(:outbox_headers AS jsonb[]), CAST(:outbox_buckets AS smallint[])) "
        "WITH ORDINALITY AS u(event_id, topic, key, value, headers, bucket, n) "
        f"{'WHERE ' + only_if if only_if else ''} ORDER BY u.n ON CONFLICT (event_id) DO NOTHING"
    )
    buckets = [bucket_of(record.key) for _, record in records]
    parameters = {
        "outbox_now": now,
        "outbox_ids": [event_id for event_id, _ in records],
        "outbox_topics": [record.topic for _, record in records],
        "outbox_keys": [record.key for _, record in records],
        "outbox_values": [record.value for _, record in records],
        "outbox_headers": [
            orjson.dumps([[name, value.decode()] for name, value in record.headers]).decode() for _, record in records
        ],
        "outbox_buckets": buckets,
        "outbox_wake": wake_buckets(buckets),
    }
    return sql, parameters


async def stage_records(
    connection: AsyncConnection, records: Sequence[tuple[uuid.UUID, WireRecord]], now: datetime
) -> None:
    if not records:
        return
    insert, parameters = staging(records, now)
    # One round trip: the rows and the notification that wakes the relay.
    await connection.execute(text(f"WITH staged AS ({insert}) SELECT {NOTIFY_RELAY}"), parameters)


async def stage(
    connection: AsyncConnection, events: Sequence[Event], now: datetime, traceparent: str | None = None
) -> None:
    await stage_records(connection, [(event.event_id, encode(event, traceparent=traceparent)) for event in events], now)


# One statement, so one round trip and its own transaction: it deletes the rows the relay's last
# pass published (Kafka acknowledged them) and reads the next ones. The gate is a shared hold of
# RELAY_LOCK for the statement (a test holding it exclusively keeps the outbox still, and the relay
# skips the pass rather than waiting: ``open`` is false, nothing is deleted and no rows come
# back). The LEFT JOIN returns the gate's row even when there is nothing to publish. The read sees
# the statement's snapshot, in which the rows being deleted still stand, so it leaves them out by
# id. Not waiting for the WAL flush is safe: a delete lost in a crash only means the rows are
# published again (consumers dedupe), and the bucket's next batch is not held up by an fsync. The
# setting is local to the statement's own transaction and read when it commits.
#
# Deleting a batch with the next read, not in a statement of its own after the acknowledgement,
# saves a round trip and a commit per pass: at a few leads per second every pass publishes one
# row, so that was a third of each relay's statements. A batch waits at most DELETE_WITHIN for
# the pass that deletes it (see ``run``).
READ_BATCH = text(
    "WITH gate AS (SELECT pg_try_advisory_xact_lock_shared(:gate) AS open), "
    "relaxed AS (SELECT set_config('synchronous_commit', 'off', true)), "
    "deleted AS (DELETE FROM outbox WHERE id = ANY(:published) AND (SELECT open FROM gate) "
    "AND EXISTS (SELECT FROM relaxed) RETURNING id) "
    "SELECT gate.open, o.id, o.topic, o.key, o.value, o.headers FROM gate LEFT JOIN LATERAL ("
    "SELECT id, topic, key, value, headers FROM outbox WHERE gate.open AND bucket = ANY(:mine) "
    "AND id <> ALL(:published) ORDER BY id LIMIT :batch) o ON true ORDER BY o.id"
)
# The same delete on its own: on a clean stop and before buckets are handed back.
DELETE_PUBLISHED = text(
    "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) "
    "DELETE FROM outbox WHERE id = ANY(:ids) AND EXISTS (SELECT FROM relaxed)"
)
# How long a published batch may wait for the next pass to delete it. Under load the next
# notification comes sooner and the delete rides with that pass's read; when the buckets go quiet
# the batch is deleted on its own this long after it was published (as every batch was before).
# The rows of a relay that dies in this window are published again by the bucket's next holder:
# duplicates, which consumers skip by event id, never a gap.
DELETE_WITHIN = 0.05


def relay_name() -> str:
    """This relay's name in ``outbox_leases``: host, process and a random part (a restarted
    process is a new relay)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class OutboxRelay:
    """Publishes the outbox rows of the buckets this relay leases; takes its fair share of buckets
    (all of them divided by the relays alive), renews its leases, and hands them back on stop."""

    def __init__(
        self,
        engine: AsyncEngine,
        publisher: Publisher,
        batch: int = 1000,
        idle_poll_seconds: float = 0.5,
        lease_seconds: float = LEASE_SECONDS,
        name: str | None = None,
        failpoint: str = "",
    ) -> None:
        self._engine = engine
        # The relay's read and delete are one statement each: run without BEGIN and COMMIT round
        # trips, which were most of what a relay pass cost at a few leads per second.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._publisher = publisher
        self._batch = batch
        self._idle_poll = idle_poll_seconds
        self._lease = lease_seconds
        self.name = name or relay_name()
        self._failpoint = failpoint
        self._wake = asyncio.Event()
        self.owned: tuple[int, ...] = ()
        # The listening connection and the buckets whose channels it LISTENs on.
        self._listener: Any = None
        self._listening: set[int] = set()
        self._listening_changes = asyncio.Lock()
        self._valid_until = 0.0  # monotonic: publish only before this (our leases by our clock)
        self._refreshed = -math.inf
        # Ids of rows published (acknowledged by Kafka) and not yet deleted: the next pass deletes
        # them in the statement that reads its batch.
        self._published: list[int] = []

    async def run(self, stop: asyncio.Event, on_published: Callable[[int], None] | None = None) -> None:
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                # Cleared before the read, never after: a notification that arrives while a batch is
                # being published must wake the next pass, not wait for the idle poll.
                self._wake.clear()
                try:
                    if time.monotonic() - self._refreshed >= self._lease / 3:
                        await self.refresh_leases()
                        # Before the read: a commit to a bucket just taken, after this pass's read,
                        # must notify this relay.
                        await self._listen_to_owned()
                    published = await self.relay_once()
                except Exception as exc:
                    if dependency := outages.about(exc):
                        log.warning(
                            "outbox relay failed; retrying: relay=%s error=%s", self.name, exc, extra=dependency
                        )
                    else:
                        log.exception("outbox relay failed; retrying: relay=%s", self.name)
                    await sleep_or_stop(stop, 1.0)
                    continue
                if published and on_published:
                    on_published(published)
                if published is not None and published >= self._batch:
                    continue  # a full batch: more may wait, look again at once
                # Otherwise wait for a notification: rows committed after this pass's read notify
                # after the wake was cleared above, so they are never left for the idle poll.
                next_refresh = self._refreshed + self._lease / 3 - time.monotonic()
                idle = max(min(self._idle_poll, next_refresh), 0.0)
                if self._published:
                    # The next pass deletes the batch just published with its read; if no
                    # notification comes within DELETE_WITHIN, the batch is deleted on its own.
                    await first_of(stop, self._wake, min(DELETE_WITHIN, idle))
                    if self._wake.is_set() or stop.is_set():
                        continue
                    try:
                        await self.delete_published()
                    except Exception as exc:  # the next pass deletes them, or says why it cannot
                        log.debug("outbox relay could not delete its last batch yet: %s", type(exc).__name__)
                    idle = max(idle - DELETE_WITHIN, 0.0)
                await first_of(stop, self._wake, idle)
        finally:
            listener.cancel()
            with contextlib.suppress(Exception):
                await self.release_leases()

    async def refresh_leases(self) -> tuple[int, ...]:
        """Say this relay is alive, renew its leases, and move towards its fair share: take
        buckets nobody holds (or whose holder's lease ran out), hand back any beyond the share."""
        started = time.monotonic()
        async with self._engine.begin() as connection:
            others = await connection.scalar(
                text(
                    "WITH me AS (INSERT INTO outbox_relays (owner, seen_at) VALUES (:me, now()) "
                    "ON CONFLICT (owner) DO UPDATE SET seen_at = now()), "
                    "seeded AS (INSERT INTO outbox_leases (bucket) SELECT generate_series(0, :n - 1) "
                    "ON CONFLICT DO NOTHING) "
                    "SELECT count(*) FROM outbox_relays WHERE owner <> :me "
                    "AND seen_at > now() - make_interval(secs => :lease)"
                ),
                {"me": self.name, "n": BUCKETS, "lease": self._lease},
            )
            share = math.ceil(BUCKETS / (int(others or 0) + 1))
            renewed = list(
                (
                    await connection.scalars(
                        text(
                            "UPDATE outbox_leases SET expires_at = now() + make_interval(secs => :lease) "
                            "WHERE owner = :me AND expires_at > now() RETURNING bucket"
                        ),
                        {"me": self.name, "lease": self._lease},
                    )
                ).all()
            )
            lost = set(self.owned) - set(renewed)
            if lost:
                self._lost(lost, "its lease ran out before it was renewed")
            renewed.sort()
            if len(renewed) > share:
                # A bucket handed back is read by its next holder at once: the batch published last
                # must be gone by then, or it would be sent again.
                await self.delete_published()
                extra = renewed[share:]
                await connection.execute(
                    text("UPDATE outbox_leases SET expires_at = now() WHERE owner = :me AND bucket = ANY(:extra)"),
                    {"me": self.name, "extra": extra},
                )
                renewed = renewed[:share]
            elif len(renewed) < share:
                taken = (
                    await connection.scalars(
                        text(
                            "UPDATE outbox_leases SET owner = :me, token = token + 1, "
                            "expires_at = now() + make_interval(secs => :lease) WHERE bucket IN ("
                            "SELECT bucket FROM outbox_leases WHERE expires_at <= now() ORDER BY bucket "
                            "LIMIT :k FOR UPDATE SKIP LOCKED) RETURNING bucket"
                        ),
                        {"me": self.name, "lease": self._lease, "k": share - len(renewed)},
                    )
                ).all()
                renewed += taken
            await connection.execute(
                text("DELETE FROM outbox_relays WHERE seen_at < now() - interval '1 hour'"),
            )
        self.owned = tuple(sorted(renewed))
        self._refreshed = started
        self._valid_until = started + self._lease - LEASE_MARGIN_SECONDS
        metrics.OUTBOX_BUCKETS_OWNED.set(len(self.owned))
        return self.owned

    async def relay_once(self) -> int | None:
        """Delete the batch the last pass published, then publish the oldest rows of the buckets
        this relay holds; how many (None: paused)."""
        mine = self.owned
        if mine and time.monotonic() >= self._valid_until:
            self._lost(set(mine), "it was not renewed in time (the process stalled)")
            mine = ()
        if not mine and not self._published:
            return 0
        async with self._autocommit.connect() as connection:
            rows = (
                await connection.execute(
                    READ_BATCH,
                    {"gate": RELAY_LOCK, "mine": list(mine), "batch": self._batch, "published": self._published},
                )
            ).all()
        if not rows[0].open:
            return None
        self._published = []
        rows = [row for row in rows if row.id is not None]
        if not rows:
            return 0
        # No transaction is open while Kafka acknowledges: nothing waits on this relay's pause.
        await self._publisher.publish(
            [
                WireRecord(
                    topic=row.topic,
                    key=bytes(row.key),
                    value=bytes(row.value),
                    headers=tuple((name, value.encode()) for name, value in row.headers),
                )
                for row in rows
            ]
        )
        if self._failpoint == "after_publish":
            log.warning("failpoint reached: relay=%s published %s rows; hanging until killed", self.name, len(rows))
            await asyncio.Event().wait()
        if time.monotonic() >= self._valid_until:
            # Stalled while Kafka acknowledged: the next holder may send these rows again.
            self._lost(set(self.owned), "it stalled while publishing; the next holder may publish a batch again")
        # Acknowledged: deleted by the next pass (deleting them is safe whoever holds the buckets then).
        self._published = [row.id for row in rows]
        return len(rows)

    async def delete_published(self) -> None:
        """Delete the batch the last pass published, if any, in a statement of its own: when no
        pass follows soon, on a clean stop, and before buckets are handed back (so their next
        holder does not send it again)."""
        if not self._published:
            return
        async with self._autocommit.connect() as connection:
            await connection.execute(DELETE_PUBLISHED, {"ids": self._published})
        self._published = []

    def _lost(self, buckets: set[int], why: str) -> None:
        # While Kafka is away the relay is stuck on it and loses its leases again and again: that is
        # the outage already announced, so the line joins it (counted, one warning per outage).
        # Stuck for any other reason (a pause, a hung process) it is a warning of its own.
        during_outage = {"dependency": "kafka"} if outages.OUTAGE["kafka"].open else None
        log.warning(
            "outbox relay lost its buckets: relay=%s buckets=%s reason=%s",
            self.name,
            ",".join(map(str, sorted(buckets))),
            why,
            extra=during_outage,
        )
        metrics.OUTBOX_LEASES_LOST.inc(len(buckets))
        self.owned = tuple(bucket for bucket in self.owned if bucket not in buckets)
        self._refreshed = -math.inf  # refresh at once: take a fair share again

    async def release_leases(self) -> None:
        """Hand the buckets back on a clean stop, so other relays take them at once."""
        with contextlib.suppress(Exception):
            await self.delete_published()  # else their next holder sends them again
        async with self._engine.begin() as connection:
            await connection.execute(
                text("UPDATE outbox_leases SET expires_at = now() WHERE owner = :me"), {"me": self.name}
            )
            await connection.execute(text("DELETE FROM outbox_relays WHERE owner = :me"), {"me": self.name})
        self.owned = ()

    def _notified(self, _connection: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    async def _listen_to_owned(self) -> None:
        """LISTEN on the channels of the buckets this relay holds, and on no others. Without a
        listening connection (the database is away) there is nothing to do: the listener listens
        again when it reconnects, and the idle poll covers the gap."""
        async with self._listening_changes:
            raw = self._listener
            if raw is None or raw.is_closed():
                return
            try:
                wanted = set(self.owned)
                for bucket in sorted(wanted - self._listening):
                    await raw.add_listener(channel_of(bucket), self._notified)
                    self._listening.add(bucket)
                for bucket in sorted(self._listening - wanted):
                    await raw.remove_listener(channel_of(bucket), self._notified)
                    self._listening.discard(bucket)
            except Exception as exc:
                log.debug("outbox listener could not change its channels: %s", type(exc).__name__)

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on a dedicated connection, following the buckets held; reconnect if the database
        goes away."""
        while not stop.is_set():
            try:
                async with self._engine.connect() as connection:
                    raw: Any = (await connection.get_raw_connection()).driver_connection
                    async with self._listening_changes:
                        self._listener, self._listening = raw, set()
                    try:
                        while not stop.is_set() and not raw.is_closed():
                            await self._listen_to_owned()
                            await sleep_or_stop(stop, 1.0)
                    finally:
                        self._listener = None
            except Exception as exc:
                log.warning("outbox listener lost its connection: %s", type(exc).__name__, extra=outages.about(exc))
                await sleep_or_stop(stop, 1.0)
