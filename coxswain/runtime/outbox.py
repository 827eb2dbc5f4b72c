"""The transactional outbox and its relay to Kafka.

A fact is written to ``outbox`` in the same transaction as the state change that caused it, so
either both happen or neither. The relay publishes rows in id order and deletes them after Kafka
acknowledged them: at least once, and consumers dedupe by event id. One relay at a time holds an
advisory lock, which keeps the order of each lead's facts even with many service instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime.kafka import Publisher
from schemas.codec import WireRecord, encode
from schemas.events import Event

log = logging.getLogger(__name__)

CHANNEL = "coxswain_outbox"
RELAY_LOCK = 0x636F78  # advisory lock key: "cox"
LOCK_RETRY_SECONDS = 0.005


# Delivered on commit, coalesced per transaction: wakes the relay without polling latency.
NOTIFY_RELAY = f"pg_notify('{CHANNEL}', '')"


def staging(
    records: Sequence[tuple[uuid.UUID, WireRecord]], now: datetime, only_if: str = ""
) -> tuple[str, dict[str, Any]]:
    """The INSERT that stages ``records`` (in their order), and its parameters.

    One statement whatever the number of records, so it can also run inside a larger one (a
    data-modifying WITH) that stores the state change it belongs to; ``only_if`` is an SQL
    condition the rows are staged under, e.g. that the state change happened.
    """
    sql = (
        "INSERT INTO outbox (event_id, topic, key, value, headers, created_at) "
        "SELECT u.event_id, u.topic, u.key, u.value, u.headers, :outbox_now FROM unnest("
        "CAST(:outbox_ids AS uuid[]), CAST(:outbox_topics AS text[]), CAST(:outbox_keys AS bytea[]), "
        "CAST(:outbox_values AS bytea[]), CAST(:outbox_headers AS jsonb[])) "
        "WITH ORDINALITY AS u(event_id, topic, key, value, headers, n) "
        f"{'WHERE ' + only_if if only_if else ''} ORDER BY u.n ON CONFLICT (event_id) DO NOTHING"
    )
    parameters = {
        "outbox_now": now,
        "outbox_ids": [event_id for event_id, _ in records],
        "outbox_topics": [record.topic for _, record in records],
        "outbox_keys": [record.key for _, record in records],
        "outbox_values": [record.value for _, record in records],
        "outbox_headers": [
            orjson.dumps([[name, value.decode()] for name, value in record.headers]).decode() for _, record in records
        ],
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


class OutboxRelay:
    def __init__(
        self, engine: AsyncEngine, publisher: Publisher, batch: int = 1000, idle_poll_seconds: float = 0.5
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._batch = batch
        self._idle_poll = idle_poll_seconds
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event, on_published: Callable[[int], None] | None = None) -> None:
        listener = asyncio.create_task(self._listen(stop))
        retry = LOCK_RETRY_SECONDS
        try:
            while not stop.is_set():
                # Cleared before the read, never after: a notification that arrives while a batch is
                # being published must wake the next pass, not wait for the idle poll.
                self._wake.clear()
                try:
                    published = await self.relay_once()
                except Exception:
                    log.exception("outbox relay failed; retrying")
                    await _sleep_or_stop(stop, 1.0)
                    continue
                if published is None:
                    # Every service's relay shares the outbox and the lock. The holder may have read
                    # the outbox before our rows committed, and their notification is spent: try
                    # again shortly instead of waiting for the idle poll (that wait was most of each
                    # hop's latency), backing off while the lock stays taken.
                    await _sleep_or_stop(stop, retry)
                    retry = min(retry * 2, self._idle_poll)
                    continue
                retry = LOCK_RETRY_SECONDS
                if published:
                    if on_published:
                        on_published(published)
                    # Rows committed while this batch was being published: their notification may
                    # have reached relays that found the lock taken. Look again at once.
                    continue
                await _first_of(stop, self._wake, self._idle_poll)
        finally:
            listener.cancel()

    async def relay_once(self) -> int | None:
        """Publish the oldest outbox rows; how many, or None when another relay holds the lock."""
        async with self._engine.begin() as connection:
            leader = await connection.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RELAY_LOCK})
            if not leader:
                return None
            rows = (
                await connection.execute(
                    text("SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT :batch"),
                    {"batch": self._batch},
                )
            ).all()
            if not rows:
                return 0
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
            await connection.execute(
                text("DELETE FROM outbox WHERE id = ANY(:ids)").bindparams(bindparam("ids")),
                {"ids": [row.id for row in rows]},
            )
            return len(rows)

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on a dedicated connection; reconnect if the database goes away."""
        while not stop.is_set():
            try:
                async with self._engine.connect() as connection:
                    raw: Any = (await connection.get_raw_connection()).driver_connection
                    await raw.add_listener(CHANNEL, lambda *_: self._wake.set())
                    while not stop.is_set() and not raw.is_closed():
                        await _sleep_or_stop(stop, 1.0)
            except Exception as exc:
                log.warning("outbox listener lost its connection: %s", type(exc).__name__)
                await _sleep_or_stop(stop, 1.0)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _first_of(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
