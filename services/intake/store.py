"""Storing accepted webhooks (inbox, events, outbox) with group commit: webhooks that arrive
together are stored by one statement and one commit.

A webhook is acknowledged only after its events are durable, so each one used to cost a commit
(a disk flush, and PostgreSQL serialises the commits of notifying transactions) and a round trip.
Here each request hands its webhook to a writer and waits for it. A writer takes everything that
queued while the previous statement ran, so at low load a webhook is written alone, at once, and
under load the cost of a commit is shared by every webhook waiting for it; no request ever waits
for a timer.

Whatever the grouping, each webhook keeps its own guarantees: the inbox row, its events and
their outbox rows are stored together or not at all (one statement is atomic), a webhook id seen
before is answered from the inbox, and one bad webhook cannot fail the others (a failed group is
written again one webhook at a time).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime import outbox
from coxswain.runtime.outages import is_connection_error
from schemas.codec import encode
from schemas.events import Event

log = logging.getLogger(__name__)

Kind = Literal["lead", "activity"]


class AcceptedEvent(BaseModel):
    event_id: str
    lead_id: str
    lead_id_provisional: bool = Field(
        description="True when intake derived the lead id itself (marketing events; docs/integrators.md, "
        "Provisional lead ids): it is the lead's id unless a leads.merged.v1 fact later names it as "
        "alias_lead_id of another lead. False when the caller named the lead (CRM activities)."
    )


class Accepted(BaseModel):
    webhook_id: str
    duplicate: bool = Field(description="True when this webhook id was already accepted; nothing new is stored.")
    events: list[AcceptedEvent]


@dataclass(frozen=True)
class Webhook:
    source: str
    webhook_id: str
    kind: Kind
    events: Sequence[Event]
    received_at: datetime
    traceparent: str | None = None


STORE_MANY = (
    "WITH hooks AS (SELECT * FROM unnest(CAST(:h_sources AS text[]), CAST(:h_ids AS text[]), "
    "CAST(:h_kinds AS text[]), CAST(:h_event_ids AS jsonb[]), CAST(:h_lead_ids AS jsonb[]), "
    "CAST(:h_received AS timestamptz[])) WITH ORDINALITY AS h(source, webhook_id, kind, event_ids, lead_ids, "
    "received_at, n)), "
    "inbox AS (INSERT INTO webhook_inbox (source, webhook_id, kind, event_ids, lead_ids, received_at) "
    "SELECT source, webhook_id, kind, event_ids, lead_ids, received_at FROM hooks ORDER BY n "
    "ON CONFLICT DO NOTHING RETURNING source, webhook_id), "
    "fresh AS MATERIALIZED (SELECT h.n, h.source, h.webhook_id, h.kind, h.received_at FROM hooks h "
    "JOIN inbox i ON i.source = h.source AND i.webhook_id = h.webhook_id), "
    "events AS (INSERT INTO intake_events (event_id, lead_id, source, webhook_id, kind, payload, received_at) "
    "SELECT u.event_id, u.lead_id, f.source, f.webhook_id, f.kind, u.payload, f.received_at FROM unnest("
    "CAST(:e_ids AS uuid[]), CAST(:e_leads AS uuid[]), CAST(:e_payloads AS jsonb[]), CAST(:e_hooks AS bigint[])) "
    "AS u(event_id, lead_id, payload, hook) JOIN fresh f ON f.n = u.hook), "
    "staged AS (INSERT INTO outbox (event_id, topic, key, value, headers, bucket, created_at) "
    "SELECT u.event_id, u.topic, u.key, u.value, u.headers, u.bucket, f.received_at FROM unnest("
    "CAST(:e_ids AS uuid[]), CAST(:o_topics AS text[]), CAST(:o_keys AS bytea[]), CAST(:e_payloads_bytes AS bytea[]), "
    "CAST(:o_headers AS jsonb[]), CAST(:o_buckets AS smallint[]), CAST(:e_hooks AS bigint[])) WITH ORDINALITY "
    "AS u(event_id, topic, key, value, headers, bucket, hook, k) JOIN fresh f ON f.n = u.hook ORDER BY u.k "
    "ON CONFLICT (event_id) DO NOTHING) "
    "SELECT coalesce((SELECT array_agg(n) FROM fresh), '{}') AS fresh, "
    f"(SELECT count(*) FROM (SELECT {outbox.NOTIFY_RELAY} FROM (SELECT FROM fresh LIMIT 1) AS any_fresh) AS w) "
    "AS notified"
)


async def store_many(connection: AsyncConnection, webhooks: Sequence[Webhook]) -> list[Accepted]:
    """Inbox first: a webhook id accepted before is answered with what was stored then.

    One statement stores every new webhook's inbox row, events and outbox rows (and wakes the
    relay): atomic on its own, so it needs no surrounding transaction. Each (source, webhook id)
    at most once per call.
    """
    assert len({(w.source, w.webhook_id) for w in webhooks}) == len(webhooks), "a webhook twice in one group"
    records = [
        (n, event, encode(event, traceparent=webhook.traceparent))
        for n, webhook in enumerate(webhooks, start=1)
        for event in webhook.events
    ]
    buckets = [outbox.bucket_of(record.key) for _, _, record in records]
    row = (
        await connection.execute(
            text(STORE_MANY),
            {
                "h_sources": [w.source for w in webhooks],
                "h_ids": [w.webhook_id for w in webhooks],
                "h_kinds": [w.kind for w in webhooks],
                "h_event_ids": [orjson.dumps([str(e.event_id) for e in w.events]).decode() for w in webhooks],
                "h_lead_ids": [orjson.dumps([str(e.lead_id) for e in w.events]).decode() for w in webhooks],
                "h_received": [w.received_at for w in webhooks],
                "e_ids": [event.event_id for _, event, _ in records],
                "e_leads": [event.lead_id for _, event, _ in records],
                # The event as published is the event as stored.
                "e_payloads": [record.value.decode() for _, _, record in records],
                "e_payloads_bytes": [record.value for _, _, record in records],
                "e_hooks": [n for n, _, _ in records],
                "o_topics": [record.topic for _, _, record in records],
                "o_keys": [record.key for _, _, record in records],
                # The lead's bucket, as every other service stages it: the intake's rows are
                # spread over the relays, not all in one bucket.
                "o_buckets": buckets,
                "outbox_wake": outbox.wake_payload(buckets),
                "o_headers": [
                    orjson.dumps([[name, value.decode()] for name, value in record.headers]).decode()
                    for _, _, record in records
                ],
            },
        )
    ).one()
    fresh = set(row.fresh)
    answers: list[Accepted] = []
    for n, webhook in enumerate(webhooks, start=1):
        if n in fresh:
            answers.append(
                Accepted(
                    webhook_id=webhook.webhook_id,
                    duplicate=False,
                    events=[
                        AcceptedEvent(
                            event_id=str(e.event_id), lead_id=str(e.lead_id), lead_id_provisional=webhook.kind == "lead"
                        )
                        for e in webhook.events
                    ],
                )
            )
        else:
            answers.append(await _answered_before(connection, webhook))
    return answers


async def _answered_before(connection: AsyncConnection, webhook: Webhook) -> Accepted:
    row = (
        await connection.execute(
            text("SELECT kind, event_ids, lead_ids FROM webhook_inbox WHERE source = :s AND webhook_id = :w"),
            {"s": webhook.source, "w": webhook.webhook_id},
        )
    ).one()
    return Accepted(
        webhook_id=webhook.webhook_id,
        duplicate=True,
        events=[
            AcceptedEvent(event_id=event, lead_id=lead, lead_id_provisional=row.kind == "lead")
            for event, lead in zip(row.event_ids, row.lead_ids, strict=True)
        ],
    )


@dataclass
class _Waiting:
    webhook: Webhook
    answer: asyncio.Future[Accepted] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    """Queue webhooks and store them in groups on autocommit connections of ``engine``."""

    def __init__(self, engine: AsyncEngine, max_group: int = 256, writers: int = 2) -> None:
        self._engine = engine
        self._max_group = max_group
        self._writers = writers
        self._queue: deque[_Waiting] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def store(self, webhook: Webhook) -> Accepted:
        waiting = _Waiting(webhook)
        self._queue.append(waiting)
        if len(self._running) < self._writers:
            task = asyncio.create_task(self._write_while_queued())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        # Shielded: a client that hangs up does not cancel a write other webhooks share.
        return await asyncio.shield(waiting.answer)

    def _next_group(self) -> list[_Waiting]:
        group: list[_Waiting] = []
        seen: set[tuple[str, str]] = set()
        later: list[_Waiting] = []
        while self._queue and len(group) < self._max_group:
            waiting = self._queue.popleft()
            key = (waiting.webhook.source, waiting.webhook.webhook_id)
            if key in seen:
                later.append(waiting)  # the same webhook retried at once: answered from the inbox next time
            else:
                seen.add(key)
                group.append(waiting)
        self._queue.extendleft(reversed(later))
        return group

    async def _write_while_queued(self) -> None:
        while group := self._next_group():
            try:
                await self._write(group)
            except Exception as exc:
                if is_connection_error(exc) or len(group) == 1:
                    _fail(group, exc)
                    continue
                log.warning("group of %s webhooks failed (%s); storing them one by one", len(group), type(exc).__name__)
                for waiting in group:
                    try:
                        await self._write([waiting])
                    except Exception as each:
                        _fail([waiting], each)

    async def _write(self, group: Sequence[_Waiting]) -> None:
        async with self._engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            answers = await store_many(autocommit, [waiting.webhook for waiting in group])
        for waiting, answer in zip(group, answers, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(answer)


def _fail(group: Sequence[_Waiting], exc: BaseException) -> None:
    for waiting in group:
        if not waiting.answer.done():
            waiting.answer.set_exception(exc)
