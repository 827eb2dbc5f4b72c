"""The transactional outbox and its relays to Kafka.

A fact is written to ``outbox`` in the same transaction as the state change that caused it, so
either both happen or neither. Each row carries a bucket, a stable hash of its Kafka key (the lead
id), so all of one lead's facts share a bucket. Every process runs a relay; relays share the
buckets out between them with leases in ``outbox_leases`` and publish their own buckets in
parallel, each bucket's rows in order, deleting them after Kafka acknowledged them. A relay learns
its rows from the notifications of the commits that staged them, which carry the rows (a large
batch's carry their ids, and it reads those rows by id); it reads the outbox when it cannot go by
them (see ``OutboxRelay.relay_pass``).

Why each lead's facts stay in order: one bucket has one publisher at a time (its lease holder), it
takes its next batch only after Kafka acknowledged the one before (and leaves that one out until
it is deleted), and a batch continues the bucket where the last one stopped: a read in id order,
or the rows heard since a read that saw the bucket to its end, in the order their transactions
committed. A newer row of the bucket is never sent before an older one is acknowledged.
Why nothing is lost: a row leaves the outbox only after its acknowledgement; a relay that dies
leaves its rows, and its buckets are taken over when its lease expires (or at once, when it
stops cleanly and hands them back). A relay that hangs past its lease (a long pause, SIGSTOP) may
have sent a batch the next holder sends again: a duplicate that consumers skip by event id, never
a gap. It notices on waking, says so and stops publishing those buckets (docs/event-path.md).
"""

from __future__ import annotations

import asyncio
import base64
import collections
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

from coxswain.db import deferred
from coxswain.db.sql import clause
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


# Delivered on commit: wakes the relays without polling latency, and carries the row itself, so
# that its relay publishes it without reading the outbox (see ``OutboxRelay.relay_heard``). Each
# bucket has its own channel and a relay LISTENs only on its buckets' channels, so a commit wakes
# only the relays that hold one of its buckets: with one channel for all, every commit of every
# service woke every relay's connection and process (PostgreSQL sends a notification to every
# session listening on its channel), only for most of them to find the buckets were not theirs.
#
# One notification per row staged, in id order, its payload the row's id and its note (``note_of``).
# A row whose note would not fit in a notification (PostgreSQL takes payloads under 8000 bytes)
# notifies its id alone. A statement that stages more than CARRIED_ROWS carries no notes, and
# notifies once a bucket (IDS_A_NOTE ids at most) instead of once a row: a notification a row,
# even an id alone, cost the relays' processes more than PostgreSQL saved. The relay reads the rows
# it heard by id alone in one statement a pass (``OutboxRelay.relay_heard``).
NOTE_LIMIT = 7900
# Every session that LISTENs copies every notification of the database, whatever its channel, and
# a note is about 1.5 KB: in a probe of the session (7 December, evening; 300 rows a commit, three
# relays and one other listener) PostgreSQL spent 17 to 22 µs a row with the rows in their notes
# and 8 to 12 µs with their ids there and the rows read by id, a statement a relay a commit. A
# lead's own commit stages five or six rows, which its relay publishes without a statement of its
# own; a batch of fifty leads stages three hundred, and one read by id costs less than their notes.
CARRIED_ROWS = 16
# Ids a notification names at most: a bigint is up to 19 digits and a comma, and 300 of them fit
# in a payload (PostgreSQL refuses the whole transaction for a payload of 8000 bytes or more).
IDS_A_NOTE = 300


def notify_staged(staged: str, ids: str, notes: str) -> str:
    """A scalar subquery that notifies the relays of the rows a data-modifying ``staged`` CTE
    inserted (it must return ``id, event_id, bucket``); ``ids`` and ``notes`` name the parameters
    holding each record's event id and note. A notification per row, its id and note (its id alone
    when the note is empty), in id order; or, when no row has a note, one per bucket and
    IDS_A_NOTE of its rows, their ids in id order (``1,2,3``)."""
    notes_array = f"CAST(:{notes} AS text[])"
    return (
        f"(SELECT count(pg_notify('{CHANNEL}_' || n.bucket, n.payload)) FROM ("
        "SELECT s.bucket, CASE WHEN u.note = '' THEN s.id::text ELSE s.id || ' ' || u.note END AS payload, "
        f"s.id AS first FROM {staged} s JOIN unnest(CAST(:{ids} AS uuid[]), {notes_array}) AS u(event_id, note) "
        f"ON u.event_id = s.event_id WHERE '' <> ANY({notes_array}) "
        "UNION ALL "
        "SELECT c.bucket, string_agg(c.id::text, ',' ORDER BY c.id), min(c.id) FROM ("
        f"SELECT s.bucket, s.id, (row_number() OVER (PARTITION BY s.bucket ORDER BY s.id) - 1) / {IDS_A_NOTE} AS chunk "
        f"FROM {staged} s WHERE '' = ALL({notes_array})) AS c GROUP BY c.bucket, c.chunk "
        "ORDER BY first) AS n)"
    )


def channel_of(bucket: int) -> str:
    """The notification channel of a bucket: rows staged in it notify there."""
    return f"{CHANNEL}_{bucket}"


def headers_json(record: WireRecord) -> str:
    """A record's headers as the outbox stores them (a JSON list of [name, value] pairs)."""
    return orjson.dumps([[name, value.decode()] for name, value in record.headers]).decode()


def note_of(record: WireRecord, headers: str) -> str:
    """What a row's notification carries besides its id: topic, key, value and headers, enough to
    publish it; empty when that would not fit in a notification."""
    note = f"{record.topic} {base64.b64encode(record.key).decode()} {base64.b64encode(record.value).decode()} {headers}"
    return note if len(note) <= NOTE_LIMIT else ""


def notes_of(records: Sequence[WireRecord], headers: Sequence[str]) -> list[str]:
    """The notes of rows staged in one statement: each row's (``note_of``) when there are at most
    CARRIED_ROWS of them, none otherwise (their notifications carry their ids alone)."""
    if len(records) > CARRIED_ROWS:
        return [""] * len(records)
    return [note_of(record, header) for record, header in zip(records, headers, strict=True)]


def heard_rows(payload: str) -> list[tuple[int, WireRecord | None]] | None:
    """The rows a notification names, in order: each one's id and the record it carries, or None
    for the record when it carries ids alone (the relay reads those rows by id). None for an empty
    payload, which a relay of before 7 December, evening, sent for a row too large for its note."""
    if not payload:
        return None
    if " " not in payload:
        return [(int(row_id), None) for row_id in payload.split(",")]
    row_id, topic, key, value, headers = payload.split(" ", 4)
    return [(int(row_id), record_of(topic, base64.b64decode(key), base64.b64decode(value), orjson.loads(headers)))]


def staging(
    records: Sequence[tuple[uuid.UUID, WireRecord]], now: datetime, only_if: str = ""
) -> tuple[str, dict[str, Any]]:
    """The INSERT that stages ``records`` (in their order), and its parameters; it returns the
    rows inserted (``id, event_id, bucket``) for ``notify_staged``.

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
        f"{'WHERE ' + only_if if only_if else ''} ORDER BY u.n ON CONFLICT (event_id) DO NOTHING "
        "RETURNING id, event_id, bucket"
    )
    headers = [headers_json(record) for _, record in records]
    parameters = {
        "outbox_now": now,
        "outbox_ids": [event_id for event_id, _ in records],
        "outbox_topics": [record.topic for _, record in records],
        "outbox_keys": [record.key for _, record in records],
        "outbox_values": [record.value for _, record in records],
        "outbox_headers": headers,
        "outbox_buckets": [bucket_of(record.key) for _, record in records],
        "outbox_notes": notes_of([record for _, record in records], headers),
    }
    return sql, parameters


async def stage_records(
    connection: AsyncConnection, records: Sequence[tuple[uuid.UUID, WireRecord]], now: datetime
) -> None:
    """Stage ``records`` and, in the same statement, the writes deferred to it on this connection
    (``coxswain.db.deferred``): one round trip for the rows, the notifications that hand them to
    their relays, and whatever else the transaction left to its last statement."""
    writes = deferred.take(connection)
    if not records:
        if writes:
            sql, parameters = deferred.carried(writes)
            await connection.execute(clause(sql), parameters)
        return
    insert, staged = staging(records, now)
    notify = notify_staged("staged", "outbox_ids", "outbox_notes")
    sql, parameters = deferred.carried(writes, [f"staged AS ({insert})"], [notify], own=staged)
    await connection.execute(clause(sql), parameters)


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
# The same delete on its own, behind the same gate (whether it was open comes back): once the
# oldest published row has waited DELETE_WITHIN, on a clean stop and before buckets are handed back.
DELETE_PUBLISHED = text(
    "WITH gate AS (SELECT pg_try_advisory_xact_lock_shared(:gate) AS open), "
    "relaxed AS (SELECT set_config('synchronous_commit', 'off', true)), "
    "deleted AS (DELETE FROM outbox WHERE id = ANY(:ids) AND (SELECT open FROM gate) "
    "AND EXISTS (SELECT FROM relaxed)) SELECT open FROM gate"
)
# The rows heard by their ids alone, read for a pass that publishes them (``relay_heard``).
READ_BY_ID = "SELECT id, topic, key, value, headers FROM outbox WHERE id = ANY($1::bigint[])"


def record_of(topic: str, key: bytes, value: bytes, headers: list[list[str]]) -> WireRecord:
    """An outbox row's columns as the record it is published as."""
    return WireRecord(
        topic=topic,
        key=bytes(key),
        value=bytes(value),
        headers=tuple((name, header.encode()) for name, header in headers),
    )


# How often a relay reads its buckets when nothing broke the chain of notifications that hands it
# their rows (``relay_pass``), whatever the length of its lease: whatever a notification failed to
# hand over (none is known to) waits this long at most. Not at every renewal, as until 8 December:
# a read visits every row of its buckets deleted since the last vacuum (the index on the bucket is
# deduplicated), 8 to 20 ms a read under load, and the relay publishes nothing meanwhile
# (docs/benchmarks-history.md, 8 December).
SAFETY_READ_SECONDS = 10.0

# How long a published batch may wait for the next pass to delete it. Under load the next
# notification comes sooner and the delete rides with that pass's read; when the buckets go quiet
# the batch is deleted on its own this long after it was published (as every batch was before).
# The rows of a relay that dies in this window are published again by the bucket's next holder:
# duplicates, which consumers skip by event id, never a gap.
DELETE_WITHIN = 0.05
# How many rows heard and not yet published a relay holds in memory; beyond it, it reads instead.
HEARD_KEPT = 10_000
# How many ids of rows published by reads a relay remembers, to skip their late notifications.
READ_IDS_KEPT = 20_000


# Whether ``owner`` is an earlier process under this relay's instance id (``:predecessors``, its
# ``instance/`` prefix; NULL: the relay has no instance id, and no predecessors).
_PREDECESSOR = (
    "COALESCE(left(owner, length(CAST(:predecessors AS text))) = CAST(:predecessors AS text) AND owner <> :me, false)"
)


def relay_name(instance: str | None = None) -> str:
    """This relay's name in ``outbox_leases``: host, process and a random part (a restarted
    process is a new relay), after the process's instance id when it has one (``instance/``)."""
    own = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return own if instance is None else f"{instance}/{own}"


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
        standby: bool = False,
        instance: str | None = None,
    ) -> None:
        # A standby relay publishes only while no full relay is alive (see ``refresh_leases``).
        self.standby = standby
        # Monotonic time since which this standby has seen no full relay alive (None: it saw one).
        self._alone_since: float | None = None
        self._engine = engine
        # The relay's read and delete are one statement each: run without BEGIN and COMMIT round
        # trips, which were most of what a relay pass cost at a few leads per second.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._publisher = publisher
        self._batch = batch
        self._idle_poll = idle_poll_seconds
        self._lease = lease_seconds
        self.name = name or relay_name(instance)
        # A process restarted under the same instance id (static membership: a StatefulSet's pod
        # comes back under its name) takes its dead predecessor's buckets at once, as its consumer
        # takes back its partitions, where any other relay waits for their leases to run out. An
        # instance id names one process at a time (one pod, one container); a predecessor that was
        # only frozen and wakes within its lease could publish rows it had read once more, which
        # the consumers' inboxes drop as redeliveries.
        self._predecessors = None if instance is None else f"{instance}/"
        self._failpoint = failpoint
        self._wake = asyncio.Event()
        self.owned: tuple[int, ...] = ()
        # The listening connection and the buckets whose channels it LISTENs on.
        self._listener: Any = None
        self._listening: set[int] = set()
        self._listening_changes = asyncio.Lock()
        self._valid_until = 0.0  # monotonic: publish only before this (our leases by our clock)
        self._refreshed = -math.inf
        # Ids of rows published (acknowledged by Kafka) and not yet deleted: the next read deletes
        # them in the statement that reads its batch, or they are deleted on their own once the
        # oldest has waited DELETE_WITHIN (``_published_at``).
        self._published: list[int] = []
        self._published_at = math.inf
        # Rows the notifications of commits handed over, in commit order, not yet published; and
        # whether the next pass must read the outbox instead (see ``relay_pass``).
        # A row heard by its id alone has no record yet: the pass reads it by id.
        self._heard: collections.deque[tuple[int, int, WireRecord | None]] = collections.deque()
        self._must_read = True
        self._caught_up = False
        self._read_at = -math.inf  # when this relay last read its buckets (``relay_once``)
        # Ids the last reads published, so that their notifications, which may come after the
        # read, do not send them again. Bounded: a notification comes within moments of its commit.
        self._read_ids: collections.OrderedDict[int, None] = collections.OrderedDict()

    @property
    def listening(self) -> frozenset[int]:
        """The buckets whose channels this relay's connection LISTENs on now."""
        return frozenset(self._listening)

    async def run(self, stop: asyncio.Event, on_published: Callable[[int], None] | None = None) -> None:
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                # Cleared before the pass, never after: a notification that arrives while a batch
                # is being published must wake the next pass, not wait for the idle poll.
                self._wake.clear()
                try:
                    if time.monotonic() - self._refreshed >= self._lease / 3:
                        await self.refresh_leases()
                        # Before the read: a commit to a bucket just taken, after this pass's read,
                        # must notify this relay (a bucket taken is read: ``_listen_to_owned``).
                        await self._listen_to_owned()
                    published = await self.relay_pass()
                    if self._published and time.monotonic() - self._published_at >= DELETE_WITHIN:
                        # Notifications keep coming, so no read deletes the batches published: the
                        # oldest has waited long enough.
                        await self.delete_published()
                except Exception as exc:
                    if dependency := outages.about(exc):
                        log.warning(
                            "outbox relay failed; retrying: relay=%s error=%s", self.name, exc, extra=dependency
                        )
                    else:
                        log.exception("outbox relay failed; retrying: relay=%s", self.name)
                    self._must_read = True  # what the failed pass held is read again
                    await sleep_or_stop(stop, 1.0)
                    continue
                if published and on_published:
                    on_published(published)
                if published is not None and published >= self._batch:
                    continue  # a full batch: more may wait, look again at once
                if self._heard or self._wake.is_set():
                    continue  # rows handed over while this pass published
                # Otherwise wait for a notification: rows committed after this pass notify after
                # the wake was cleared above, so they are never left for the idle poll.
                next_refresh = self._refreshed + self._lease / 3 - time.monotonic()
                idle = max(min(self._idle_poll, next_refresh), 0.0)
                # A wait cut short by the renewal is not an idle poll: the renewal reads when it must.
                polling = self._idle_poll <= next_refresh
                if self._published:
                    # Delete the batch just published when the oldest row has waited DELETE_WITHIN,
                    # unless a notification comes first (its pass may read, and delete with it).
                    await first_of(stop, self._wake, max(self._published_at + DELETE_WITHIN - time.monotonic(), 0.0))
                    if self._wake.is_set() or stop.is_set():
                        continue
                    try:
                        await self.delete_published()
                    except Exception as exc:  # the next pass deletes them, or says why it cannot
                        log.debug("outbox relay could not delete its last batch yet: %s", type(exc).__name__)
                    idle = max(idle - DELETE_WITHIN, 0.0)
                await first_of(stop, self._wake, idle)
                if polling and not self._wake.is_set():
                    self._must_read = True  # the idle poll: a read, whatever was heard
        finally:
            listener.cancel()
            with contextlib.suppress(Exception):
                await self.release_leases()

    async def relay_pass(self) -> int | None:
        """Publish what waits: the rows the notifications handed over, or, when those may not be
        all there is, what a read of the outbox finds; how many (None: paused).

        Why the rows handed over are enough, and in order, once a read came back short of a full
        batch (``_caught_up``): that read saw every row committed before it in this relay's
        buckets; every row committed after it notifies this relay (it LISTENs on its buckets'
        channels before it reads) with the row itself or its id, and PostgreSQL delivers notifications in
        the order their transactions committed. So publishing the rows heard, in the order heard,
        skipping those the read already published, sends each bucket's rows in commit order, and
        none is left out. Anything that may break the chain (a row too large to be handed over, a
        listening connection lost and made again, buckets taken or lost, a failed pass, the idle
        poll) makes the next pass a read, which starts it again; and so does a last read
        ``SAFETY_READ_SECONDS`` old, against what nothing known breaks.
        """
        if self._must_read or not self._caught_up or time.monotonic() - self._read_at >= SAFETY_READ_SECONDS:
            return await self.relay_once()
        return await self.relay_heard()

    async def relay_heard(self) -> int:
        """Publish the rows the notifications handed over since the last pass, of the buckets this
        relay holds, in the order heard; how many. Those heard by their id alone are read by id,
        together, in one statement."""
        owned = set(self._held())
        heard: list[tuple[int, WireRecord | None]] = []
        while self._heard:
            bucket, row_id, record = self._heard.popleft()
            if bucket in owned and row_id not in self._read_ids:
                heard.append((row_id, record))
        unread = [row_id for row_id, record in heard if record is None]
        if unread:
            async with self._autocommit.connect() as connection:
                # On the driver's connection: SQLAlchemy's rows cost the relay more a row than
                # the notes this read saves PostgreSQL (docs/benchmarks-history.md, 7 December, evening).
                raw: Any = (await connection.get_raw_connection()).driver_connection
                rows = await raw.fetch(READ_BY_ID, unread)
            found = {row["id"]: record_of(row["topic"], row["key"], row["value"], row["headers"]) for row in rows}
            if len(found) < len(unread):
                # Gone: a row leaves the outbox only once Kafka has it, so another relay published
                # it (this relay cannot tell how it came to, so the next pass reads the buckets).
                self._must_read = True
            heard = [(row_id, record or found.get(row_id)) for row_id, record in heard]
        ids = [row_id for row_id, record in heard if record is not None]
        records = [record for _, record in heard if record is not None]
        if records:
            await self._send(ids, records)
        return len(records)

    async def refresh_leases(self) -> tuple[int, ...]:
        """Say this relay is alive, renew its leases, and move towards its fair share: take
        buckets nobody holds (or whose holder's lease ran out), hand back any beyond the share.

        A standby relay does not say it is alive, so the full relays share the buckets among
        themselves; its share is none while any full relay is alive, and all of them once it has
        seen none for a whole lease (the first standby to look takes them, the others find none
        free). Not at its first look: after a database outage, and in a restored database, the
        full relays' last sightings are old until each renews once, and a standby that took every
        bucket then would only hand them back a renewal later, holding up publishing twice."""
        started = time.monotonic()
        async with self._engine.begin() as connection:
            others = await connection.scalar(
                text(
                    (
                        "WITH "
                        if self.standby
                        else "WITH me AS (INSERT INTO outbox_relays (owner, seen_at) VALUES (:me, now()) "
                        "ON CONFLICT (owner) DO UPDATE SET seen_at = now()), "
                    )
                    # A predecessor is gone: the other relays stop counting it at once.
                    + "gone AS (DELETE FROM outbox_relays WHERE "
                    + _PREDECESSOR
                    + "), "
                    "seeded AS (INSERT INTO outbox_leases (bucket) SELECT generate_series(0, :n - 1) "
                    "ON CONFLICT DO NOTHING) "
                    "SELECT count(*) FROM outbox_relays WHERE owner <> :me "
                    "AND seen_at > now() - make_interval(secs => :lease) AND NOT " + _PREDECESSOR
                ),
                {"me": self.name, "n": BUCKETS, "lease": self._lease, "predecessors": self._predecessors},
            )
            share = math.ceil(BUCKETS / (int(others or 0) + 1))
            if self.standby:
                share = self._standby_share(bool(others), started)
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
                            "SELECT bucket FROM outbox_leases WHERE (expires_at <= now() OR "
                            + _PREDECESSOR
                            + ") ORDER BY bucket LIMIT :k FOR UPDATE SKIP LOCKED) RETURNING bucket"
                        ),
                        {
                            "me": self.name,
                            "lease": self._lease,
                            "k": share - len(renewed),
                            "predecessors": self._predecessors,
                        },
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

    def _standby_share(self, full_relay_alive: bool, now: float) -> int:
        """A standby's share: none while a full relay is alive; every bucket once none has been
        for a lease, or while it still holds the buckets it took then."""
        if full_relay_alive:
            self._alone_since = None
            return 0
        if self._alone_since is None:
            self._alone_since = now
        return BUCKETS if self.owned or now - self._alone_since >= self._lease else 0

    async def relay_once(self) -> int | None:
        """Delete the batch the last pass published, then publish the oldest rows of the buckets
        this relay holds; how many (None: paused)."""
        mine = self._held()
        if not mine and not self._published:
            # What was heard belongs to buckets this relay no longer holds (it handed them back, or
            # lost them): their holder reads those rows. Kept, they would make every pass look
            # like one that heard more, and the loop would go round without ever waiting.
            self._heard.clear()
            return 0
        # Before the read: what was heard until now was committed before it, so the read finds it;
        # what is heard from now on is kept for the next pass (see ``relay_pass``).
        self._must_read = False
        self._heard.clear()
        self._read_at = time.monotonic()
        async with self._autocommit.connect() as connection:
            rows = (
                await connection.execute(
                    READ_BATCH,
                    {"gate": RELAY_LOCK, "mine": list(mine), "batch": self._batch, "published": self._published},
                )
            ).all()
        if not rows[0].open:
            self._must_read = True
            return None
        self._published, self._published_at = [], math.inf
        rows = [row for row in rows if row.id is not None]
        self._caught_up = len(rows) < self._batch
        if not rows:
            return 0
        ids = [row.id for row in rows]
        for row_id in ids:
            self._read_ids[row_id] = None
        while len(self._read_ids) > READ_IDS_KEPT:
            self._read_ids.popitem(last=False)
        await self._send(ids, [record_of(row.topic, row.key, row.value, row.headers) for row in rows])
        return len(rows)

    async def _send(self, ids: list[int], records: list[WireRecord]) -> None:
        """Publish the rows and wait for Kafka's acknowledgement; they are deleted afterwards."""
        # No transaction is open while Kafka acknowledges: nothing waits on this relay's pause.
        await self._publisher.publish(records)
        if self._failpoint == "after_publish":
            log.warning("failpoint reached: relay=%s published %s rows; hanging until killed", self.name, len(ids))
            await asyncio.Event().wait()
        if time.monotonic() >= self._valid_until:
            # Stalled while Kafka acknowledged: the next holder may send these rows again.
            self._lost(set(self.owned), "it stalled while publishing; the next holder may publish a batch again")
        # Acknowledged: deleted later (deleting them is safe whoever holds the buckets then).
        if not self._published:
            self._published_at = time.monotonic()
        self._published += ids

    def _held(self) -> tuple[int, ...]:
        """The buckets this relay may publish now: none once its leases ran out by its own clock
        (it stalled), which it says, and then takes a fair share again."""
        if self.owned and time.monotonic() >= self._valid_until:
            self._lost(set(self.owned), "it was not renewed in time (the process stalled)")
        return self.owned

    async def delete_published(self) -> None:
        """Delete the batch the last pass published, if any, in a statement of its own: when no
        pass follows soon, on a clean stop, and before buckets are handed back (so their next
        holder does not send it again)."""
        if not self._published:
            return
        async with self._autocommit.connect() as connection:
            deleted = await connection.scalar(DELETE_PUBLISHED, {"ids": self._published, "gate": RELAY_LOCK})
        if not deleted:
            # The outbox is held still: the rows stay until it is not, and the next pass reads,
            # so this relay pauses too rather than publish what it hears meanwhile.
            self._must_read = True
            return
        self._published, self._published_at = [], math.inf

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
        # A bucket lost may be taken again in the same renewal, without a LISTEN of its own, after
        # another relay held it: the next pass reads.
        self._must_read = True

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

    def _notified(self, _connection: object, _pid: int, channel: str, payload: str) -> None:
        self._wake.set()
        try:
            heard = heard_rows(payload)
        except Exception:  # not a payload this relay wrote: read the outbox rather than guess
            log.warning("outbox relay could not read a notification on %s; reading the outbox", channel)
            heard = None
        if heard is None or len(self._heard) + len(heard) > HEARD_KEPT:
            # Nothing to hand over, or more heard than a relay that is stuck on Kafka should hold
            # in memory: the next pass reads, and finds these rows in the outbox.
            self._heard.clear()
            self._must_read = True
            return
        bucket = int(channel.rsplit("_", 1)[1])
        self._heard.extend((bucket, row_id, record) for row_id, record in heard)

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
                    self._must_read = True  # what was committed before this LISTEN is read
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
                        self._must_read = True  # what was committed while nobody listened is read
                    try:
                        while not stop.is_set() and not raw.is_closed():
                            await self._listen_to_owned()
                            await sleep_or_stop(stop, 1.0)
                    finally:
                        self._listener = None
            except Exception as exc:
                log.warning("outbox listener lost its connection: %s", type(exc).__name__, extra=outages.about(exc))
                await sleep_or_stop(stop, 1.0)
