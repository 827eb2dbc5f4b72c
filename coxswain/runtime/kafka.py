"""Our typed wrapper around aiokafka, with the delivery settings we need made explicit.

aiokafka's defaults (acks=1, no idempotence, auto-commit, auto_offset_reset="latest") would lose
or reorder facts; every client here is built through these functions instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from coxswain.settings import KafkaConfig
from schemas.codec import WireRecord
from schemas.events import ALL_EVENTS, dead_letter_topic

log = logging.getLogger(__name__)


def connection_options(config: KafkaConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": config.kafka_bootstrap_servers,
        "client_id": config.kafka_client_id,
        "security_protocol": config.kafka_security_protocol,
    }
    if config.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(
            cafile=str(config.kafka_ssl_cafile) if config.kafka_ssl_cafile else None
        )
    if config.kafka_sasl_mechanism:
        options["sasl_mechanism"] = config.kafka_sasl_mechanism
        options["sasl_plain_username"] = config.kafka_sasl_username
        options["sasl_plain_password"] = (
            config.kafka_sasl_password.get_secret_value() if config.kafka_sasl_password else None
        )
    return options


# How many keys' hashes a partitioner keeps: far more leads than are in flight at once.
KEYS_KEPT = 65_536
# The largest request a publisher sends (aiokafka's and Kafka's default), so the largest record.
MAX_REQUEST_BYTES = 1_048_576


class KeyPartitioner:
    """Kafka's default partitioning (murmur2 of the key, as every Kafka client computes it, so a
    lead's records land where any other producer would put them), each key's hash computed once.

    Every fact of a lead has the lead's id as its key, and all of them are relayed by the holder of
    the lead's outbox bucket: five or six records a lead, one hash. aiokafka's murmur2 is pure
    Python, about 5 µs a key: 7.6% of the router's samples while it relayed the bench's throughput
    phase (docs/benchmarks-history.md, 7 December, afternoon), for a hash it had computed for the lead's record before.
    """

    def __init__(self, kept: int = KEYS_KEPT) -> None:
        self._hash = functools.lru_cache(maxsize=kept)(murmur2)

    def partition(self, key: bytes, partitions: Sequence[int]) -> int:
        """The partition of ``key`` among the topic's ``partitions`` (sorted)."""
        return partitions[(int(self._hash(key)) & 0x7FFFFFFF) % len(partitions)]

    def hashes_computed(self) -> int:
        """How many keys were hashed, not found among those kept (tests)."""
        return int(self._hash.cache_info().misses)


class Publisher:
    """An idempotent producer that waits for all in-sync replicas before a send counts."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        # Made when it is about to start: a producer that failed to start, or whose sequences the
        # broker no longer accepts, is stopped and dropped, and never left unclosed.
        self._producer: AIOKafkaProducer | None = None
        # publish (the relay), ping (the outage watch, probes) and a renewal may all find the
        # producer not started: exactly one of them starts it.
        self._starting = asyncio.Lock()
        self._partitioner = KeyPartitioner()  # kept across the producers it makes

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **connection_options(self._config),
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            request_timeout_ms=15000,
            max_request_size=MAX_REQUEST_BYTES,
        )

    async def start(self) -> AIOKafkaProducer:
        """The started producer: this one, or a new one started now."""
        async with self._starting:
            if self._producer is not None:
                return self._producer
            producer = self._new_producer()
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
            return producer

    async def stop(self) -> None:
        async with self._starting:
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def ping(self) -> None:
        """Raise unless a broker answers a metadata request (readiness probes)."""
        producer = await self.start()
        await producer.client.fetch_all_metadata()

    async def _renew(self, spent: AIOKafkaProducer) -> None:
        """A new producer in place of one whose sequence numbers the broker no longer accepts.

        A restarted broker can lose an idempotent producer's state; from then on every send of
        that producer fails with ``OutOfOrderSequenceNumber``, for good. A new producer gets a new
        id and starts its sequences afresh; the caller sends the batch again (consumers dedupe
        on event id)."""
        async with self._starting:
            if self._producer is spent:
                self._producer = None
        try:
            await spent.stop()
        except Exception:
            close_connections(spent)  # a stop that failed early left them open
        with contextlib.suppress(Exception):
            await self.start()  # else the next publish or ping starts it

    async def publish(self, records: Sequence[WireRecord]) -> None:
        """Send all records and return only once every one is acknowledged (or raise).

        Handed over a batch a partition, not a record at a time: aiokafka's per-record send makes a
        coroutine, a future and its metadata for each record and resolves them one by one when the
        acknowledgement comes; a relay publishes hundreds of records a pass (each partition's in
        their order, as before). A record too large to send fails the publish before it is handed
        over, as the per-record send did."""
        producer = await self.start()
        if (failure := background_task_failure(producer)) is not None:
            log.warning("kafka producer replaced: one of its background tasks ended (%r)", failure)
            await self._renew(producer)
            producer = await self.start()
        pending: list[asyncio.Future[Any]] = []
        try:
            for (topic, partition), grouped in (await self._by_partition(producer, records)).items():
                batch = producer.create_batch()
                for record in grouped:
                    headers = list(record.headers)
                    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, record.value, headers)
                    if size > MAX_REQUEST_BYTES:
                        raise MessageSizeTooLargeError(
                            f"a record of {size} bytes for {topic} is over the {MAX_REQUEST_BYTES} bytes of a request"
                        )
                    while batch.append(key=record.key, value=record.value, timestamp=None, headers=headers) is None:
                        if not batch.record_count():
                            # aiokafka takes any record into an empty batch; were that to change, say so
                            # rather than leave the record out.
                            raise MessageSizeTooLargeError(f"a record of {size} bytes for {topic} fits no batch")
                        pending.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = producer.create_batch()
                # Closed: nothing else may join it in aiokafka's queue.
                batch.close()
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        except BaseException:
            # The batches already handed over still succeed or fail later (a broker away fails
            # them all at once): their outcomes are collected, not left for asyncio to log as
            # "Future exception was never retrieved"; the caller sends the records again.
            for future in pending:
                future.add_done_callback(_collect)
            raise
        # Every acknowledgement is awaited even after one fails, for the same reason; the first
        # failure is raised.
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, OutOfOrderSequenceNumber):
                    await self._renew(producer)
                raise outcome

    async def _by_partition(
        self, producer: Any, records: Sequence[WireRecord]
    ) -> dict[tuple[str, int], list[WireRecord]]:
        """The records by topic and partition (Kafka's default partition of each key), each
        partition's in their order."""
        grouped: dict[tuple[str, int], list[WireRecord]] = {}
        partitions: dict[str, list[int]] = {}
        for record in records:
            if (known := partitions.get(record.topic)) is None:
                known = partitions[record.topic] = sorted(await producer.partitions_for(record.topic))
            grouped.setdefault((record.topic, self._partitioner.partition(record.key, known)), []).append(record)
        return grouped


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# What a gathering consumer's fetch waits for at most, besides its time (``gather_ms``): far more
# than a few hundred milliseconds of leads, so in practice the time decides.
GATHER_BYTES = 1_048_576


def make_consumer(config: KafkaConfig, group_id: str, topics: Iterable[str], max_batch: int, gather_ms: int = 0) -> Any:
    """A consumer that fetches as soon as a record arrives (``gather_ms`` 0), or that lets records
    gather for up to ``gather_ms`` so it applies them in fewer, larger batches (docs/event-path.md)."""
    gathering = {"fetch_min_bytes": GATHER_BYTES, "fetch_max_wait_ms": gather_ms} if gather_ms else {}
    return AIOKafkaConsumer(
        *topics,
        **connection_options(config),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_batch,
        isolation_level="read_committed",
        session_timeout_ms=config.kafka_session_timeout_ms,
        # A third of the session, as Kafka advises: three missed beats before the group gives up.
        heartbeat_interval_ms=max(config.kafka_session_timeout_ms // 3, 100),
        # Static membership (KIP-345): a restarted instance with the same id takes its old place
        # in the group at once, where a new member would wait for the dead one's session to expire.
        group_instance_id=config.kafka_instance_id,
        **gathering,
    )


def background_task_failure(client: Any) -> BaseException | None:
    """The error that ended one of an aiokafka consumer's or producer's background tasks, if one did:
    its client's metadata task, a consumer's fetch task, a producer's send task.

    Seen in a chaos run: the broker went away while the metadata task sent a request, uvloop
    raised ``RuntimeError`` ("the handler is closed") writing to the closed transport, and aiokafka
    (0.14), which expects only Kafka and OS errors there, let the task end (aio-libs/aiokafka#1038).
    From then on every wait for fresh metadata waits for ever: a consumer never finds its group
    coordinator again (its group empties, it reads nothing, it cannot even stop), a producer never
    recovers from a leader change. Nothing is logged. Such a client must be replaced; this says
    when. Read defensively (private attributes): an aiokafka without them reads as healthy."""
    tasks = (
        getattr(_kafka_client(client), "_sync_task", None),
        getattr(getattr(client, "_fetcher", None), "_fetch_task", None),
        getattr(getattr(client, "_sender", None), "_sender_task", None),
    )
    for task in tasks:
        if isinstance(task, asyncio.Task) and task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
    return None


def _kafka_client(client: Any) -> Any:
    """The ``AIOKafkaClient`` inside a consumer (``_client``) or a producer (``client``)."""
    return getattr(client, "_client", None) or getattr(client, "client", None)


def close_connections(client: Any) -> None:
    """Close the broker connections of a consumer or producer whose ``stop()`` failed before it
    reached them (``background_task_failure``): the client is dropped, its sockets must not be."""
    for connection in list(getattr(_kafka_client(client), "_conns", {}).values()):
        with contextlib.suppress(Exception):
            connection.close()


def rebalancing(consumer: Any) -> bool:
    """True while the consumer's group has not (re)assigned it partitions after it (re)joined.

    aiokafka has no public way to tell "the group is rebalancing" from "assigned no partitions"
    (both read as an empty ``assignment()``), and only the first is a stall when it lasts; its
    subscription state knows (aiokafka 0.10 to 0.14). Read defensively: an aiokafka without it
    reads as not rebalancing, which only turns that check of the watchdog off."""
    state = getattr(consumer, "_subscription", None)
    return bool(getattr(state, "reassignment_in_progress", False)) if state is not None else False


def all_topics() -> list[str]:
    topics = [event.topic for event in ALL_EVENTS]
    return topics + [dead_letter_topic(topic) for topic in topics]


async def create_topics(config: KafkaConfig, topics: Sequence[str] | None = None) -> list[str]:
    """Create the topics that are missing; return the names created."""
    admin = AIOKafkaAdminClient(**connection_options(config))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [name for name in (topics or all_topics()) if name not in existing]
        if wanted:
            new = [
                NewTopic(
                    name,
                    num_partitions=config.kafka_topic_partitions,
                    replication_factor=config.kafka_topic_replication,
                )
                for name in wanted
            ]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                log.info("topics created concurrently by another process")
        return wanted
    finally:
        await admin.close()
