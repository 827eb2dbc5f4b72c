"""Every SQL statement of intake: accepted webhooks (inbox, events and outbox rows, in one
statement) and the look-ups that resolve a CRM contact to its lead. Each function runs on the
caller's connection, so the caller's transaction decides what commits together. Rows come back as
named records or plain typed values."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.runtime import outbox
from schemas.codec import encode
from schemas.events import Event

Kind = Literal["lead", "activity"]


@dataclass(frozen=True)
class Webhook:
    """An accepted webhook to store: its inbox entry and the events it carries."""

    source: str
    webhook_id: str
    kind: Kind
    events: Sequence[Event]
    received_at: datetime
    traceparent: str | None = None


class StoredWebhook(NamedTuple):
    """A webhook's inbox entry: its kind and the ids of the events stored for it, in order."""

    kind: Kind
    event_ids: list[str]
    lead_ids: list[str]


_STORE_MANY = text(
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
    "ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id, bucket) "
    "SELECT coalesce((SELECT array_agg(n) FROM fresh), '{}') AS fresh, "
    f"{outbox.notify_staged('staged', 'e_ids', 'o_notes')} AS notified"
)


async def insert_webhooks(connection: AsyncConnection, webhooks: Sequence[Webhook]) -> set[int]:
    """Store every webhook not in the inbox yet (its inbox row, events and outbox rows) and wake
    the relay, in one statement, atomic on its own; the positions (from 1) of the webhooks stored
    now. Each (source, webhook id) at most once per call."""
    records = [
        (n, event, encode(event, traceparent=webhook.traceparent))
        for n, webhook in enumerate(webhooks, start=1)
        for event in webhook.events
    ]
    buckets = [outbox.bucket_of(record.key) for _, _, record in records]
    headers = [outbox.headers_json(record) for _, _, record in records]
    row = (
        await connection.execute(
            _STORE_MANY,
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
                "o_headers": headers,
                # What the notifications hand the relays: each row, so they publish it unread,
                # or for a large batch its id alone (``outbox.CARRIED_ROWS``).
                "o_notes": outbox.notes_of([record for _, _, record in records], headers),
            },
        )
    ).one()
    return set(row.fresh)


async def stored_webhook(connection: AsyncConnection, source: str, webhook_id: str) -> StoredWebhook:
    """The inbox entry of a webhook stored before."""
    row = (
        await connection.execute(
            text(
                "SELECT kind, event_ids, lead_ids FROM webhook_inbox WHERE source = :source AND webhook_id = :webhook_id"
            ),
            {"source": source, "webhook_id": webhook_id},
        )
    ).one()
    return StoredWebhook(kind=row.kind, event_ids=list(row.event_ids), lead_ids=list(row.lead_ids))


async def leads_written_for_contacts(
    connection: AsyncConnection, crm_connection: str, contact_ids: Sequence[str]
) -> dict[str, uuid.UUID]:
    """Contact id -> the lead crm-sync last wrote that contact for, on ``crm_connection``."""
    rows = await connection.execute(
        text(
            "SELECT DISTINCT ON (contact_id) contact_id, lead_id FROM crm_writes "
            "WHERE connection = :crm_connection AND contact_id = ANY(:contact_ids) ORDER BY contact_id, written_at DESC"
        ),
        {"crm_connection": crm_connection, "contact_ids": list(contact_ids)},
    )
    return {row.contact_id: row.lead_id for row in rows}


async def identities(connection: AsyncConnection, keys: Sequence[str]) -> dict[str, uuid.UUID]:
    """Identity key -> lead id, for the ``keys`` recorded (``lead_identities``)."""
    rows = await connection.execute(
        text("SELECT key, lead_id FROM lead_identities WHERE key = ANY(:keys)"), {"keys": list(keys)}
    )
    return {row.key: row.lead_id for row in rows}
