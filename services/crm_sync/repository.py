"""Every SQL statement of crm-sync: the connector's record of what it wrote (``crm_writes``), the
lead's attributes and emails it writes by, and the Salesforce poller's cursors and activity keys
(``crm_cursors``, ``crm_activity_keys``). Each function runs on the caller's connection, so the
caller's transaction decides what commits together (the consumer's inbox claim with the
``crm_writes`` row; the poller's keys, outbox and cursor); rows come back as named tuples, built
by column name.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# ---------------------------------------------------------------------------------------------
# The connector (service.py): one transaction per fact, the consumer's.


class CrmWrite(NamedTuple):
    """A written assignment's task and whether it is closed (locked until the commit)."""

    task_id: str
    closed_at: datetime | None


class NewCrmWrite(NamedTuple):
    """The row of an assignment whose writes are done."""

    assignment_id: uuid.UUID
    lead_id: uuid.UUID
    rep_id: str
    owner_id: str
    contact_id: str
    task_id: str
    written_at: datetime


async def assignment_written(connection: AsyncConnection, crm_connection: str, assignment_id: uuid.UUID) -> bool:
    """Whether the assignment's writes are already recorded for this CRM connection."""
    done = await connection.scalar(
        text("SELECT 1 FROM crm_writes WHERE connection = :crm_connection AND assignment_id = :assignment_id"),
        {"crm_connection": crm_connection, "assignment_id": assignment_id},
    )
    return bool(done)


async def lead_attributes(connection: AsyncConnection, lead_id: uuid.UUID) -> dict[str, Any]:
    """``leads.attributes`` as a mapping (empty for an unknown lead; the driver may hand jsonb
    back as text)."""
    value = await connection.scalar(text("SELECT attributes FROM leads WHERE lead_id = :lead_id"), {"lead_id": lead_id})
    if isinstance(value, str | bytes):
        value = orjson.loads(value)
    return value if isinstance(value, dict) else {}


async def lead_emails(connection: AsyncConnection, lead_id: uuid.UUID) -> list[str]:
    """Every email identity resolution knows the lead by (its aliases' among them)."""
    keys = await connection.scalars(
        text("SELECT key FROM lead_identities WHERE lead_id = :lead_id AND key LIKE 'email:%' ORDER BY key"),
        {"lead_id": lead_id},
    )
    return [key.removeprefix("email:") for key in keys]


async def record_write(connection: AsyncConnection, crm_connection: str, write: NewCrmWrite) -> None:
    """Record the assignment's writes (a row already there stays as it is)."""
    await connection.execute(
        text(
            "INSERT INTO crm_writes (connection, assignment_id, lead_id, rep_id, owner_id, contact_id, task_id, written_at) "
            "VALUES (:crm_connection, :assignment_id, :lead_id, :rep_id, :owner_id, :contact_id, :task_id, :written_at) "
            "ON CONFLICT DO NOTHING"
        ),
        {"crm_connection": crm_connection, **write._asdict()},
    )


async def open_owner(connection: AsyncConnection, crm_connection: str, lead_id: uuid.UUID) -> str | None:
    """The owner of the lead's newest open assignment written to this CRM connection."""
    owner: str | None = await connection.scalar(
        text(
            "SELECT owner_id FROM crm_writes WHERE connection = :crm_connection AND lead_id = :lead_id "
            "AND closed_at IS NULL ORDER BY written_at DESC LIMIT 1"
        ),
        {"crm_connection": crm_connection, "lead_id": lead_id},
    )
    return owner


async def open_assignments(connection: AsyncConnection, crm_connection: str, lead_id: uuid.UUID) -> list[uuid.UUID]:
    """The lead's assignments written to this CRM connection whose task is not closed."""
    rows = await connection.execute(
        text(
            "SELECT assignment_id FROM crm_writes "
            "WHERE connection = :crm_connection AND lead_id = :lead_id AND closed_at IS NULL"
        ),
        {"crm_connection": crm_connection, "lead_id": lead_id},
    )
    return [row.assignment_id for row in rows]


async def lock_write(connection: AsyncConnection, crm_connection: str, assignment_id: uuid.UUID) -> CrmWrite | None:
    """The assignment's recorded task, its row locked until the transaction ends."""
    row = (
        await connection.execute(
            text(
                "SELECT task_id, closed_at FROM crm_writes "
                "WHERE connection = :crm_connection AND assignment_id = :assignment_id FOR UPDATE"
            ),
            {"crm_connection": crm_connection, "assignment_id": assignment_id},
        )
    ).first()
    return None if row is None else CrmWrite(task_id=row.task_id, closed_at=row.closed_at)


async def close_write(
    connection: AsyncConnection, crm_connection: str, assignment_id: uuid.UUID, closed_at: datetime, reason: str
) -> None:
    """Mark the assignment's task closed, with why."""
    await connection.execute(
        text(
            "UPDATE crm_writes SET closed_at = :closed_at, closed_reason = :reason "
            "WHERE connection = :crm_connection AND assignment_id = :assignment_id"
        ),
        {"closed_at": closed_at, "reason": reason, "crm_connection": crm_connection, "assignment_id": assignment_id},
    )


async def keepalive(connection: AsyncConnection) -> None:
    """A trivial statement, so the transaction does not look idle while a request or a wait runs."""
    await connection.execute(text("SELECT 1"))


# ---------------------------------------------------------------------------------------------
# The Salesforce poller (poller.py).


class ActivityKey(NamedTuple):
    """An activity to record as published, unless its key is already there."""

    key: str
    event_id: uuid.UUID
    lead_id: uuid.UUID


async def poll_cursor(connection: AsyncConnection, crm_connection: str, sobject: str) -> datetime | None:
    """Where the poll of this object stopped last time (None before the first)."""
    found = await connection.scalar(
        text("SELECT cursor FROM crm_cursors WHERE connection = :crm_connection AND sobject = :sobject"),
        {"crm_connection": crm_connection, "sobject": sobject},
    )
    return found if isinstance(found, datetime) else None


async def leads_by_record(
    connection: AsyncConnection, crm_connection: str, record_ids: Sequence[str]
) -> dict[str, uuid.UUID]:
    """CRM record id (the ``contact_id`` written) -> Coxswain lead id, the newest write's."""
    rows = await connection.execute(
        text(
            "SELECT DISTINCT ON (contact_id) contact_id, lead_id FROM crm_writes "
            "WHERE connection = :crm_connection AND contact_id = ANY(:record_ids) ORDER BY contact_id, written_at DESC"
        ),
        {"crm_connection": crm_connection, "record_ids": list(record_ids)},
    )
    return {row.contact_id: row.lead_id for row in rows}


async def record_activity_keys(
    connection: AsyncConnection, crm_connection: str, keys: Sequence[ActivityKey], published_at: datetime
) -> set[str]:
    """Record the activities' keys; the keys that were not there yet (one statement)."""
    rows = await connection.execute(
        text(
            "INSERT INTO crm_activity_keys (connection, key, event_id, lead_id, published_at) "
            "SELECT :crm_connection, k, e, l, :published_at FROM unnest(CAST(:keys AS text[]), "
            "CAST(:event_ids AS uuid[]), CAST(:lead_ids AS uuid[])) AS u(k, e, l) ON CONFLICT DO NOTHING RETURNING key"
        ),
        {
            "crm_connection": crm_connection,
            "published_at": published_at,
            "keys": [key.key for key in keys],
            "event_ids": [key.event_id for key in keys],
            "lead_ids": [key.lead_id for key in keys],
        },
    )
    return {row.key for row in rows}


async def advance_cursor(
    connection: AsyncConnection, crm_connection: str, sobject: str, cursor: datetime, updated_at: datetime
) -> None:
    """Move the object's cursor forward to ``cursor`` (never back)."""
    await connection.execute(
        text(
            "INSERT INTO crm_cursors (connection, sobject, cursor, updated_at) "
            "VALUES (:crm_connection, :sobject, :cursor, :updated_at) "
            "ON CONFLICT (connection, sobject) DO UPDATE SET "
            "cursor = GREATEST(crm_cursors.cursor, EXCLUDED.cursor), updated_at = EXCLUDED.updated_at"
        ),
        {"crm_connection": crm_connection, "sobject": sobject, "cursor": cursor, "updated_at": updated_at},
    )
