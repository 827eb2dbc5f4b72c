"""The consumer loop every service shares.

Per polled batch: one database transaction that claims the event ids in the inbox, applies the
handler to each event claimed for the first time, stages the resulting facts in the outbox, and
stages undecodable or unprocessable records for the dead-letter topic with the reason. Only after
the commit are the offsets committed: a crash at any point means redelivery, and the inbox turns
redelivery into a no-op.

The claim also reads the tombstones of erased leads (``erasures``, written by the erasure's
transaction): a fact about an erased lead that occurred at or before its erasure (published
before it, applied late by a consumer that was behind) reaches the handler without the personal
values it carries (``coxswain.core.privacy.forget``), so no service writes them back. A fact that
occurred after the erasure (the person came back) is applied as it is. The claim holds shared
locks on the leads' buckets for the transaction and an erasure takes them exclusively: a batch
applied while an erasure runs either commits before the erasure reads (which then scrubs what it
wrote) or is given back (``ErasureInProgress``) and, applied again, sees the tombstone.

The batch is first tried whole: one statement claims every event id, one stages every fact, and
a service with a batch handler reads and writes its own state for the whole batch in a fixed
number of statements too (no round trip per event for the inbox, the outbox, a savepoint or the
service's rows). If any handler fails, that attempt is rolled back and the batch is applied again
record by record, each inside a savepoint with retries, so one bad record goes to the dead-letter
topic and cannot spoil the others. Both ways commit the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.privacy import forget
from coxswain.db import deferred
from coxswain.db.sql import clause
from coxswain.runtime import metrics, outages, outbox, tracing
from coxswain.runtime.kafka import background_task_failure, close_connections, make_consumer, rebalancing
from coxswain.runtime.liveness import Liveness, StallReason
from coxswain.runtime.outages import is_connection_error
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import DecodeError, Headers, WireRecord, decode, encode, header
from schemas.events import Event, dead_letter_topic

log = logging.getLogger(__name__)

# How often applied offsets go to Kafka at most while batches keep coming (see ConsumerService).
COMMIT_EVERY_SECONDS = 1.0
# The longest an offset commit, or a consumer's stop, is waited for (see ``_commit`` and ``run``).
COMMIT_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
# How often the watchdog looks at the loop (coxswain.runtime.liveness).
WATCH_EVERY_SECONDS = 1.0
DEAD_LETTER_NAMESPACE = uuid.UUID("5b0f9a36-3f57-4f0e-9f1c-4a1c8f6d2b10")

Clock = Callable[[], datetime]
Handler = Callable[[AsyncConnection, Event, datetime], Awaitable[Sequence[Event]]]
# Applies events in order as if one at a time, returning each event's facts (same length, same order).
# When it runs, the whole batch is already claimed in the inbox (``claim_many``): a handler that
# reads the inbox to learn what it applied before must leave out the batch's events not reached yet.
BatchHandler = Callable[[AsyncConnection, Sequence[Event], datetime], Awaitable[Sequence[Sequence[Event]]]]


def one_at_a_time(batch: BatchHandler) -> Handler:
    """The per-record handler of a service that only writes the batch form: a batch of one."""

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        return (await batch(connection, [event], now))[0]

    return handle


def utc_now() -> datetime:
    return datetime.now(UTC)


class PermanentError(Exception):
    """The record is wrong, not the world: retrying cannot help, so it goes to the DLQ."""


class RetrySoon(Exception):
    """The batch met a passing conflict (locks another instance holds and that cannot be waited
    for in order): it is rolled back and applied again shortly. Not a fault: never dead-lettered,
    never logged as a warning, counted in ``coxswain_batches_retried``."""


class ConsumerStalled(Exception):
    """The watchdog stopped a consumer that was stuck (coxswain.runtime.liveness); a new one takes over."""


class ErasureInProgress(RetrySoon):
    """A lead of the batch is being erased: applied again once the erasure has committed."""


class Unavailable(Exception):
    """A service the handler calls (a CRM) cannot take the record now, through no fault of the
    record: a refused token, a rate limit longer than a batch may wait. The batch is rolled back
    and redelivered with backoff, like a database outage; never dead-lettered."""


PERMANENT = (PermanentError, DecodeError, ValidationError, ValueError, KeyError, LookupError)


@dataclass(frozen=True)
class Delivery:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


def dead_letter(delivery: Delivery, consumer: str, reason: str, error_type: str) -> tuple[uuid.UUID, WireRecord]:
    """The original bytes, untouched, plus where they came from and why they could not be used."""
    event_id = uuid.uuid5(DEAD_LETTER_NAMESPACE, f"{consumer}/{delivery.topic}/{delivery.partition}/{delivery.offset}")
    headers = (
        *[(name, value) for name, value in delivery.headers if not name.startswith("dlq_")],
        ("dlq_reason", reason[:2000].encode()),
        ("dlq_error_type", error_type.encode()),
        ("dlq_consumer", consumer.encode()),
        ("dlq_topic", delivery.topic.encode()),
        ("dlq_partition", str(delivery.partition).encode()),
        ("dlq_offset", str(delivery.offset).encode()),
        ("dlq_id", str(event_id).encode()),
    )
    record = WireRecord(
        topic=dead_letter_topic(delivery.topic), key=delivery.key or b"", value=delivery.value or b"", headers=headers
    )
    return event_id, record


async def claim_many(
    connection: AsyncConnection, consumer: str, claims: Sequence[tuple[uuid.UUID, str]], now: datetime
) -> set[uuid.UUID]:
    """The event ids of ``claims`` this consumer sees for the first time, in one statement."""
    return set(await claim_first_seen(connection, consumer, [(i, topic, None) for i, topic in claims], now))


async def claim_first_seen(
    connection: AsyncConnection,
    consumer: str,
    claims: Sequence[tuple[uuid.UUID, str, uuid.UUID | None]],
    now: datetime,
) -> dict[uuid.UUID, datetime | None]:
    """The event ids of ``claims`` (event id, topic, lead id) this consumer sees for the first
    time, each with the time its lead was erased (None: never), in one statement: looking the
    tombstones up costs a batch no round trip."""
    return (await claim_batch(connection, consumer, claims, now)).first_seen


@dataclass(frozen=True)
class Claimed:
    """What a claim found: the event ids seen for the first time, each with the time its lead was
    erased (None: never); and that time for every lead the claim named, whose erasure locks the
    transaction holds from then on (``erasure_tombstones``), so no erasure of them commits before
    it does."""

    first_seen: dict[uuid.UUID, datetime | None]
    leads: dict[uuid.UUID, datetime | None]


# The leads the claim of the batch being applied named (``Claimed.leads``), while its handlers run.
_CLAIMED_LEADS: contextvars.ContextVar[Mapping[uuid.UUID, datetime | None] | None] = contextvars.ContextVar(
    "coxswain_claimed_leads", default=None
)


@dataclass(frozen=True)
class ClaimLocks:
    """Transaction-scoped advisory locks a service's batch handler takes before it reads anything
    (``keys``: those its events need), taken instead in the statement that claims the batch: a
    round trip fewer. Each lock is the two-int key (``lock_class``, ``hashtext(key)``), and the
    keys are taken in sorted order, so two transactions wanting overlapping keys cannot deadlock.

    The handler's first read comes in a statement after the claim's, so under READ COMMITTED it
    sees everything the locks' previous holders committed. A handler calls ``take`` before its
    first read: it locks what the claim did not, which is everything outside a batch applied whole
    (record by record, in savepoints, or outside a consumer)."""

    lock_class: int
    keys: Callable[[Sequence[Event]], Iterable[str]]

    async def take(self, connection: AsyncConnection, events: Sequence[Event]) -> set[str]:
        """Take the locks ``events`` need that the claim did not, in one statement of their own
        (record by record, outside a consumer): all of them, sorted, in the same statement. Returns
        the keys, all held from now on."""
        keys = set(self.keys(events))
        if keys - locked_with_the_claim(self.lock_class):
            await connection.execute(clause(f"SELECT {_ADVISORY_LOCKS}"), _lock_parameters(self.lock_class, keys))
        return keys


# Transaction-scoped advisory locks on text keys, in the keys' order: in the claim, and on their own.
_ADVISORY_LOCKS = (
    "count(pg_advisory_xact_lock(:lock_class, hashtext(k))) AS n FROM unnest(CAST(:lock_keys AS text[])) AS k"
)


def _lock_parameters(lock_class: int, keys: Iterable[str]) -> dict[str, object]:
    return {"lock_class": lock_class, "lock_keys": sorted(set(keys))}


# The keys the claim of the batch being applied locked, by lock class, while its handlers run.
_LOCKED_WITH_CLAIM: contextvars.ContextVar[tuple[int, frozenset[str]] | None] = contextvars.ContextVar(
    "coxswain_locked_with_claim", default=None
)


def locked_with_the_claim(lock_class: int) -> frozenset[str]:
    """The keys of ``lock_class`` the claim of the batch being applied holds (``ClaimLocks``)."""
    locked = _LOCKED_WITH_CLAIM.get()
    return locked[1] if locked is not None and locked[0] == lock_class else frozenset()


async def claim_batch(
    connection: AsyncConnection,
    consumer: str,
    claims: Sequence[tuple[uuid.UUID, str, uuid.UUID | None]],
    now: datetime,
    locks: tuple[int, Sequence[str]] | None = None,
) -> Claimed:
    """``claim_first_seen``, and what it learnt of every lead it named; ``locks`` (a lock class and
    its keys, sorted) are taken in the same statement, after the erasure locks (``ClaimLocks``)."""
    if not claims:
        return Claimed({}, {})
    leads = sorted({lead_id for _, _, lead_id in claims if lead_id is not None})
    lock_class, lock_keys = locks or (0, ())
    try:
        rows = await connection.execute(
            clause(
                "WITH claimed AS (INSERT INTO inbox (consumer, event_id, topic, processed_at) "
                "SELECT :c, u.event_id, u.topic, :now FROM unnest(CAST(:ids AS uuid[]), CAST(:topics AS text[])) "
                "AS u(event_id, topic) ON CONFLICT DO NOTHING RETURNING event_id) "
                "SELECT event_id, NULL::uuid AS tombstone, NULL::timestamptz AS erased_at FROM claimed UNION ALL "
                "SELECT NULL, tombstone, erased_at FROM erasure_tombstones(CAST(:leads AS uuid[])) UNION ALL "
                # Last, so an erasure in progress gives the batch back before it waits for these.
                # The count is never negative: the arm returns no row, but runs, in the keys' order.
                f"SELECT NULL, NULL, NULL FROM (SELECT {_ADVISORY_LOCKS}) AS locked WHERE locked.n < 0"
            ),
            {
                "c": consumer,
                "ids": [event_id for event_id, _, _ in claims],
                "topics": [topic for _, topic, _ in claims],
                "leads": leads,
                **_lock_parameters(lock_class, lock_keys),
                "now": now,
            },
        )
    except DBAPIError as exc:
        if _sqlstate(exc) == LOCK_NOT_AVAILABLE:
            raise ErasureInProgress(str(exc.orig)) from exc
        raise
    first_seen: set[uuid.UUID] = set()
    erased: dict[uuid.UUID, datetime] = {}
    for row in rows:
        if row.event_id is not None:
            first_seen.add(row.event_id)
        else:
            erased[row.tombstone] = row.erased_at
    return Claimed(
        {
            event_id: erased.get(lead_id) if lead_id is not None else None
            for event_id, _, lead_id in claims
            if event_id in first_seen
        },
        {lead_id: erased.get(lead_id) for lead_id in leads},
    )


async def claim_with_the_batch(
    connection: AsyncConnection, consumer: str, facts: Sequence[Event], now: datetime
) -> dict[uuid.UUID, datetime | None] | None:
    """Facts the batch being applied produced, claimed for ``consumer`` without a round trip of
    their own: each seen for the first time, with its lead's erasure time as the batch's claim read
    it. None when a fact's lead is not one the batch's claim named (a lead merged into another), or
    outside a batch's handlers: then only a claim of their own (``claim_first_seen``) can lock and
    read its erasure.

    The facts are new: a fact's id is derived from the event that caused it (``fact_id``), and
    the batch's claim has just seen that event for the first time. Their inbox rows ride in the
    statement that stages the facts (``coxswain.db.deferred``); nothing before it reads them."""
    leads = _CLAIMED_LEADS.get()
    if leads is None or any(fact.lead_id not in leads for fact in facts):
        return None
    await deferred.write(
        connection,
        deferred.Write(
            "handed_claims AS (INSERT INTO inbox (consumer, event_id, topic, processed_at) "
            "SELECT :handed_consumer, u.event_id, u.topic, :handed_now "
            "FROM unnest(CAST(:handed_ids AS uuid[]), CAST(:handed_topics AS text[])) AS u(event_id, topic) "
            "ON CONFLICT DO NOTHING)",
            {
                "handed_consumer": consumer,
                "handed_ids": [fact.event_id for fact in facts],
                "handed_topics": [fact.topic for fact in facts],
                "handed_now": now,
            },
        ),
    )
    return {fact.event_id: leads[fact.lead_id] for fact in facts}


LOCK_NOT_AVAILABLE = "55P03"

# How many of the event ids ``:ids`` the inbox holds for consumer ``:c``: one look-up of the primary
# key per id. Written as ``consumer = :c AND event_id = ANY(:ids)`` it is one statement too, but
# PostgreSQL's plan for it, once cached for the consumer's connection (a generic plan, made after
# five executions) may scan the consumer's whole inbox with the ids as a filter: seen in the bench
# at 10 ms a batch for 8,000 rows, and it grows with the inbox, which holds every record the
# consumer applied within retention. A LIMIT in a LATERAL subquery cannot be flattened into a join,
# so each id is its own probe of (consumer, event_id), whatever the statistics say.
COUNT_CLAIMED = (
    "SELECT count(*) FROM unnest(CAST(:ids AS uuid[])) AS u(event_id) CROSS JOIN LATERAL ("
    "SELECT FROM inbox i WHERE i.consumer = :c AND i.event_id = u.event_id LIMIT 1) AS claimed"
)


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, found along its causes (the driver's own exception)."""
    error: BaseException | None = exc
    while error is not None:
        if state := getattr(error, "sqlstate", None):
            return str(state)
        error = error.__cause__ or error.__context__
    return None


def as_applied(event: Event, erased_at: datetime | None) -> Event:
    """The event as handlers see it: without its personal values when its lead was erased after
    it occurred (see the module's docstring)."""
    if erased_at is None or event.occurred_at > erased_at:
        return event
    return forget(event)


async def claim(connection: AsyncConnection, consumer: str, event_id: uuid.UUID, topic: str, now: datetime) -> bool:
    """True the first time this consumer sees the event id; false on every redelivery."""
    inserted = await connection.scalar(
        text(
            "INSERT INTO inbox (consumer, event_id, topic, processed_at) VALUES (:c, :e, :t, :now) "
            "ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"c": consumer, "e": event_id, "t": topic, "now": now},
    )
    return inserted is not None


class _WaitForInFlight(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions are not handed over while a batch is being processed or its offsets committed."""

    def __init__(self, lock: asyncio.Lock, committed: Callable[[], Awaitable[None]]) -> None:
        self._lock = lock
        self._committed = committed

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self._lock:
            await self._committed()
            log.info("partitions revoked: %s", sorted(str(tp) for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted(str(tp) for tp in assigned))


class ConsumerService:
    def __init__(
        self,
        *,
        name: str,
        accepts: Mapping[str, tuple[type[Event], ...]],
        handler: Handler,
        engine: AsyncEngine,
        kafka: KafkaConfig,
        config: ConsumerConfig,
        clock: Clock = utc_now,
        batch_handler: BatchHandler | None = None,
        gather_ms: int = 0,
        skip_applied: bool = False,
        claim_locks: ClaimLocks | None = None,
    ) -> None:
        self.name = name
        self._claim_locks = claim_locks
        # Most records were applied for this consumer in the transaction that produced them
        # (routing in scoring): look the batch up in the inbox first (see ``_all_applied``).
        self._skip_applied = skip_applied
        # COXSWAIN_CONSUMER_GATHER_MS, when set, overrides the service's own choice.
        self.gather_ms = gather_ms if config.consumer_gather_ms is None else config.consumer_gather_ms
        self._accepts = accepts
        self._handler = handler
        self._batch_handler = batch_handler
        self._engine = engine
        self._kafka = kafka
        self._config = config
        self._clock = clock
        self._lock = asyncio.Lock()
        self._committing: asyncio.Task[None] | None = None
        # Offsets of batches applied but not yet committed to Kafka; committed at most every
        # COMMIT_EVERY_SECONDS, when the topics go quiet, before partitions are handed over and
        # on stop. The database holds the work already: an offset not committed in a crash only
        # means a redelivery the inbox skips. One commit per batch was a Kafka request per batch
        # per consumer, most of the broker's work at a few leads per second.
        self._pending: dict[TopicPartition, int] = {}
        self._last_commit = -math.inf
        self._liveness = Liveness(config.consumer_stall_seconds, time.monotonic())
        self.kafka_consumer: Any = None  # the aiokafka consumer of the current run (watched, and seen by tests)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; raise ``ConsumerStalled`` when the watchdog had to stop a stuck
        consumer (the caller starts a new one, as after any failure)."""
        consumer = make_consumer(self._kafka, self.name, (), self._config.consumer_max_batch, self.gather_ms)
        consumer.subscribe(list(self._accepts), listener=_WaitForInFlight(self._lock, lambda: self._flush(consumer)))
        self._liveness = Liveness(self._config.consumer_stall_seconds, time.monotonic())
        self.kafka_consumer = consumer
        try:
            await consumer.start()
        except BaseException:  # Kafka away: the caller tries again with a new consumer; this one is closed
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_SECONDS)
            close_connections(consumer)
            raise
        log.info("consumer %s started on %s", self.name, ", ".join(self._accepts))
        consuming = asyncio.create_task(self._consume(consumer, stop), name=f"consumer {self.name}")
        stalled: tuple[StallReason, str] | None = None
        try:
            stalled = await self._watch(consuming, consumer)
        finally:
            if stalled is not None:
                self._report_stall(consuming, *stalled)
            if not consuming.done():
                # Its batch's transaction rolls back; the records come again to the next consumer.
                consuming.cancel()
                with contextlib.suppress(BaseException):
                    await consuming
            if self._committing is not None and stalled is not None:
                self._committing.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(consumer), COMMIT_TIMEOUT_SECONDS)
            # Leaving the group promptly hands partitions over without waiting for a session
            # timeout; a consumer stuck inside aiokafka may not stop at all, and is left behind.
            try:
                await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.error("consumer %s did not stop within %ss; left behind", self.name, STOP_TIMEOUT_SECONDS)
                close_connections(consumer)
            except Exception as exc:  # a client whose metadata task died raises its error on close
                log.warning("consumer %s stopped with an error: %r", self.name, exc, extra=outages.about(exc))
                close_connections(consumer)  # which that close never reached
            self._committing, self._pending = None, {}
            log.info("consumer %s stopped", self.name)
        if stalled is not None:
            raise ConsumerStalled(stalled[1])

    async def _watch(self, consuming: asyncio.Task[None], consumer: Any) -> tuple[StallReason, str] | None:
        """Wait for the loop to end (its error raised here), or return why it stalled."""
        while True:
            done, _ = await asyncio.wait({consuming}, timeout=WATCH_EVERY_SECONDS)
            if done:
                consuming.result()
                return None
            now = time.monotonic()
            if (paused := self._liveness.paused_for(now, WATCH_EVERY_SECONDS)) is not None:
                metrics.CONSUMER_PAUSES.labels(self.name).inc()
                log.warning(
                    "consumer paused: consumer=%s for=%.1fs; the process did not run (SIGSTOP, a VM or GC pause, "
                    "a blocked event loop), so its partitions may have moved to another instance meanwhile",
                    self.name,
                    paused,
                )
            elif outages.OUTAGE["kafka"].open or outages.OUTAGE["postgres"].open:
                self._liveness.outage(now)
            elif stuck := self._stuck(consumer, now):
                return stuck

    def _stuck(self, consumer: Any, now: float) -> tuple[StallReason, str] | None:
        """Why this consumer is stuck, if it is: a dead background task of its client, or its loop."""
        if (failure := background_task_failure(consumer)) is not None:
            return "client", f"a background task of its Kafka client ended ({failure!r}), so it waits for ever"
        if reason := self._liveness.stalled(now):
            return reason, self._liveness.explain(reason, now)
        return None

    def _report_stall(self, consuming: asyncio.Task[None], reason: StallReason, why: str) -> None:
        metrics.CONSUMER_STALLS.labels(self.name, reason).inc()
        log.error(
            "consumer stalled, starting it again: consumer=%s reason=%s; its loop was waiting in:\n%s",
            self.name,
            why,
            awaiting(consuming),
        )

    async def check(self) -> None:
        """Readiness: raise while this consumer is stalled (before the watchdog restarts it)."""
        if stuck := self._stuck(self.kafka_consumer, time.monotonic()):
            raise ConsumerStalled(stuck[1])

    async def _consume(self, consumer: Any, stop: asyncio.Event) -> None:
        backoff, retried = 0.5, 0
        while not stop.is_set():
            self._liveness.came_round(time.monotonic(), rebalancing(consumer))
            batch: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=500)
            if not batch:
                if self._pending:
                    async with self._lock:
                        await self._flush(consumer)  # quiet: commit what was applied
                continue
            async with self._lock:
                try:
                    await self.process([_delivery(record) for record in in_time_order(batch)])
                except RetrySoon as exc:
                    metrics.BATCHES_RETRIED.labels(self.name, type(exc).__name__).inc()
                    log.debug("batch given back, applying it again shortly: consumer=%s reason=%s", self.name, exc)
                    for tp, records in batch.items():
                        consumer.seek(tp, records[0].offset)
                    # A conflicting transaction lasts milliseconds: come back after about as
                    # long, a little longer each time in a row, never as long as a fault's backoff.
                    retried = min(retried + 1, 6)
                    await asyncio.sleep(random.uniform(0.5, 1.0) * 0.005 * 2**retried)
                    continue
                except Exception as exc:
                    log.warning(
                        "batch failed, will be redelivered: consumer=%s error=%s",
                        self.name,
                        type(exc).__name__,
                        exc_info=not (is_connection_error(exc) or isinstance(exc, Unavailable)),
                        extra=outages.about(exc),
                    )
                    for tp, records in batch.items():
                        consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff, retried = 0.5, 0
                for tp, records in batch.items():
                    self._pending[TopicPartition(tp.topic, tp.partition)] = records[-1].offset + 1
                if time.monotonic() - self._last_commit >= COMMIT_EVERY_SECONDS:
                    # The offsets go to Kafka while the next batch is fetched and applied;
                    # commits stay in order because each waits for the one before.
                    await self._committed()
                    self._committing = asyncio.create_task(self._commit(consumer, self._take_pending()))
                metrics.observe_batch(self.name, consumer, batch)

    async def _committed(self) -> None:
        """Wait for the offset commit in flight, if any."""
        if self._committing is not None:
            await self._committing
            self._committing = None

    async def _flush(self, consumer: Any) -> None:
        """Wait for the commit in flight, then commit what is pending (quiet, hand-over, stop)."""
        await self._committed()
        if self._pending:
            await self._commit(consumer, self._take_pending())

    def _take_pending(self) -> dict[TopicPartition, int]:
        """The offsets to commit now; the clock of the next commit starts."""
        offsets, self._pending = self._pending, {}
        self._last_commit = time.monotonic()
        return offsets

    async def _commit(self, consumer: Any, offsets: Mapping[TopicPartition, int]) -> None:
        # Bounded: aiokafka retries a commit for as long as the coordinator is away, and the loop,
        # a hand-over and a stop all wait for it. A commit given up only means a redelivery.
        try:
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("offset commit gave up after %ss; the records will be redelivered", COMMIT_TIMEOUT_SECONDS)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The work is in the database; the next owner of the partition redelivers and the inbox skips.
            log.warning("offset commit failed after a rebalance: %s", type(exc).__name__, extra=outages.about(exc))

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Apply a batch in one transaction; raise only for errors that deserve a redelivery."""
        if self._skip_applied and await self._all_applied(deliveries):
            metrics.BATCHES_ALREADY_APPLIED.labels(self.name).inc()
            return
        now = self._clock()
        decoded = [(delivery, self._decode(delivery)) for delivery in deliveries]
        try:
            async with self._engine.begin() as connection:
                await self._apply_whole(connection, decoded, now)
                await self._failpoint("before_db_commit")
        except _RecordFailed as failed:
            log.info(
                "batch applied again record by record: consumer=%s records=%s error=%s",
                self.name,
                len(decoded),
                failed.error_type,
            )
            async with self._engine.begin() as connection:
                for delivery, outcome in decoded:
                    await self._process_one(connection, delivery, outcome, now)
                await self._failpoint("before_db_commit")
        await self._failpoint("after_db_commit")

    async def _all_applied(self, deliveries: Sequence[Delivery]) -> bool:
        """Whether the inbox holds every record's event id (its ``ce_id``) for this consumer: then the
        batch is nothing but redeliveries the claim would skip, and is known so in one statement
        outside a transaction, without decoding a record, a BEGIN, a claim or a COMMIT. The inbox
        is the only judge, as in the claim: a record without an id, or any record not claimed yet,
        and the batch is applied the usual way (the claim skips what was applied)."""
        ids: set[uuid.UUID] = set()
        for delivery in deliveries:
            try:
                ids.add(uuid.UUID(header(delivery.headers, "ce_id") or ""))
            except ValueError:
                return False
        async with self._engine.connect() as connection:
            # One statement, no BEGIN and ROLLBACK around it.
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            found = await autocommit.scalar(clause(COUNT_CLAIMED), {"c": self.name, "ids": list(ids)})
        return bool(found == len(ids))

    def _decode(self, delivery: Delivery) -> Event | DecodeError:
        try:
            return decode(delivery.topic, delivery.value, delivery.headers, self._accepts[delivery.topic])
        except DecodeError as exc:
            return exc

    async def _apply_whole(
        self, connection: AsyncConnection, decoded: Sequence[tuple[Delivery, Event | DecodeError]], now: datetime
    ) -> None:
        """The fast way: one claim and one outbox insert for the batch; any failing handler aborts it."""
        plan: list[tuple[uuid.UUID, Delivery, Event | WireRecord]] = []
        for delivery, outcome in decoded:
            if isinstance(outcome, DecodeError):
                event_id, record = dead_letter(delivery, self.name, str(outcome), "DecodeError")
                plan.append((event_id, delivery, record))
            else:
                plan.append((outcome.event_id, delivery, outcome))
        locks = None
        if self._claim_locks is not None:
            events = [item for _, _, item in plan if not isinstance(item, WireRecord)]
            locks = (self._claim_locks.lock_class, sorted(set(self._claim_locks.keys(events))))
        claimed = await claim_batch(
            connection, self.name, [(i, _claim_topic(d, o), _lead_id(o)) for i, d, o in plan], now, locks
        )
        first_seen = claimed.first_seen
        staged: list[tuple[uuid.UUID, WireRecord]] = []
        to_apply: list[tuple[Delivery, Event, datetime | None]] = []
        for event_id, delivery, item in plan:
            if event_id not in first_seen:
                continue
            # A second copy of the same event later in this batch is a redelivery: skip it.
            erased_at = first_seen.pop(event_id)
            if isinstance(item, WireRecord):
                staged.append((event_id, item))
                metrics.dead_lettered(self.name, delivery.topic)
                self._log_dead_letter(delivery, "DecodeError")
            else:
                to_apply.append((delivery, item, erased_at))
        started = tracing.now_ns()
        # The handlers' writes that nothing after them reads ride in the statement that stages
        # the facts (coxswain.db.deferred): a round trip fewer. Only here, where the batch is one
        # attempt: the careful way applies records in savepoints, each writing at once.
        with deferred.deferring(connection):
            # The handlers may claim the facts they hand over under the locks this claim holds
            # (``claim_with_the_batch``).
            handing = _CLAIMED_LEADS.set(claimed.leads)
            holding = _LOCKED_WITH_CLAIM.set(None if locks is None else (locks[0], frozenset(locks[1])))
            try:
                applied = [(delivery, as_applied(event, erased_at)) for delivery, event, erased_at in to_apply]
                if self._batch_handler is not None and applied:
                    facts_per_event = await self._batch_handler(connection, [event for _, event in applied], now)
                else:
                    facts_per_event = [await self._handler(connection, event, now) for _, event in applied]
            except Exception as exc:
                if is_connection_error(exc) or isinstance(exc, RetrySoon | Unavailable):
                    raise
                raise _RecordFailed(type(exc).__name__) from exc
            finally:
                _LOCKED_WITH_CLAIM.reset(holding)
                _CLAIMED_LEADS.reset(handing)
            for (delivery, event), facts in zip(applied, facts_per_event, strict=True):
                traceparent = self._span(delivery, event, started)
                staged += [(fact.event_id, encode(fact, traceparent=traceparent)) for fact in facts]
            carrying = deferred.waiting(connection)
            try:
                await outbox.stage_records(connection, staged, now)
            except Exception as exc:
                # A deferred write that fails is a handler's write failing, found one statement later:
                # the batch goes record by record, as it would have, to find the record at fault.
                if carrying and not is_connection_error(exc):
                    raise _RecordFailed(type(exc).__name__) from exc
                raise

    def _span(self, delivery: Delivery, event: Event, started_ns: int) -> str | None:
        """The event's span (when tracing), a child of the record's traceparent; the traceparent its facts carry."""
        incoming = _traceparent(delivery.headers)
        return tracing.consumed(
            self.name, delivery.topic, delivery.partition, delivery.offset, event, incoming, started_ns
        )

    async def _failpoint(self, where: str) -> None:
        if self._config.consumer_failpoint == where:
            log.warning("failpoint reached: consumer=%s at=%s; hanging until killed", self.name, where)
            await asyncio.Event().wait()

    async def _process_one(
        self, connection: AsyncConnection, delivery: Delivery, event: Event | DecodeError, now: datetime
    ) -> None:
        """The careful way: claim, handle and stage one record inside a savepoint, with retries."""
        if isinstance(event, DecodeError):
            await self._dead_letter(connection, delivery, str(event), "DecodeError", now)
            return
        attempts = self._config.consumer_handler_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with connection.begin_nested():
                    claimed = await claim_first_seen(
                        connection, self.name, [(event.event_id, delivery.topic, event.lead_id)], now
                    )
                    if event.event_id in claimed:
                        started = tracing.now_ns()
                        applied = as_applied(event, claimed[event.event_id])
                        facts = await self._handler(connection, applied, now)
                        await outbox.stage(connection, facts, now, traceparent=self._span(delivery, applied, started))
                return
            except Exception as exc:
                if is_connection_error(exc) or isinstance(exc, RetrySoon | Unavailable):
                    raise
                if isinstance(exc, PERMANENT) or attempt == attempts:
                    log.warning(
                        "dead-lettering event: consumer=%s topic=%s partition=%s offset=%s event_id=%s error=%s",
                        self.name,
                        delivery.topic,
                        delivery.partition,
                        delivery.offset,
                        event.event_id,
                        type(exc).__name__,
                        exc_info=not isinstance(exc, PERMANENT),
                    )
                    await self._dead_letter(
                        connection, delivery, str(exc) or type(exc).__name__, type(exc).__name__, now
                    )
                    return
                await asyncio.sleep(0.05 * attempt)

    async def _dead_letter(
        self, connection: AsyncConnection, delivery: Delivery, reason: str, error_type: str, now: datetime
    ) -> None:
        event_id, record = dead_letter(delivery, self.name, reason, error_type)
        if await claim(connection, self.name, event_id, record.topic, now):
            await outbox.stage_records(connection, [(event_id, record)], now)
            metrics.dead_lettered(self.name, delivery.topic)
        self._log_dead_letter(delivery, error_type)

    def _log_dead_letter(self, delivery: Delivery, error_type: str) -> None:
        log.info(
            "record sent to dead-letter topic: consumer=%s topic=%s partition=%s offset=%s reason=%s",
            self.name,
            delivery.topic,
            delivery.partition,
            delivery.offset,
            error_type,
        )


class _RecordFailed(Exception):
    """A handler failed while the batch was applied whole: roll back and go record by record."""

    def __init__(self, error_type: str) -> None:
        super().__init__(error_type)
        self.error_type = error_type


def _claim_topic(delivery: Delivery, item: Event | WireRecord) -> str:
    return item.topic if isinstance(item, WireRecord) else delivery.topic


def _lead_id(item: Event | WireRecord) -> uuid.UUID | None:
    return None if isinstance(item, WireRecord) else item.lead_id


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where a task is waiting, innermost last: each coroutine it awaits, through awaited tasks
    (an offset commit in flight) down to the future nothing resolves. ``Task.print_stack`` shows
    only the task's own frame, which says the loop is in a batch but not where in it."""
    lines: list[str] = []
    step: Any = task
    for _ in range(64):  # a chain deeper than this is cut, never followed round a cycle
        if isinstance(step, asyncio.Task):
            step = step.get_coro()
        frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None)
        if frame is None:
            if step is not None:
                lines.append(f"  waiting for {type(step).__name__}")
            break
        lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}")
        step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None)
    return "\n".join(lines)


def in_time_order(batch: Mapping[Any, Sequence[Any]]) -> list[Any]:
    """A fetched batch as one sequence: each partition's records in their order, the partitions
    merged by record time. A fact published after another on another topic (a reassignment, then
    the new owner's touch) is applied after it even when a consumer that fell behind fetches both
    at once, which aiokafka hands over partition by partition. Merging only ever compares the
    partitions' next records, so no partition is reordered."""
    return list(heapq.merge(*batch.values(), key=lambda record: record.timestamp))


def _delivery(record: Any) -> Delivery:
    return Delivery(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((name, bytes(value)) for name, value in (record.headers or ())),
    )


def _traceparent(headers: Headers) -> str | None:
    for name, value in headers:
        if name == "traceparent":
            return value.decode(errors="replace")
    return None
