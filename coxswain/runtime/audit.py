"""The audit trail: every admin action, and every admin request refused, as a row in
``audit_log`` and a fact on ``admin.audit.v1``.

An action is recorded on the connection of the transaction that makes the change, so the change
and its record commit together or not at all; the fact goes through the outbox in that same
transaction. A refusal changes nothing and is recorded in a transaction of its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime import outbox
from schemas.events import AUDIT_KEY, AdminActionAuditedV1

Outcome = Literal["done", "unchanged", "refused", "not_found", "conflict", "invalid"]
UNKNOWN_TOKEN = "?"  # the name recorded for a bearer token that matches none


async def record(
    connection: AsyncConnection,
    *,
    token: str,
    action: str,
    target: str,
    outcome: Outcome,
    at: datetime,
    detail: dict[str, str] | None = None,
) -> AdminActionAuditedV1:
    """Record one action in the caller's transaction: the row and the fact to publish."""
    fact = AdminActionAuditedV1(
        event_id=uuid.uuid4(),
        lead_id=AUDIT_KEY,
        occurred_at=at,
        token=token[:64],
        action=action,
        target=target[:256],
        outcome=outcome,
        detail=detail or {},
    )
    await connection.execute(
        text(
            "INSERT INTO audit_log (event_id, at, token, action, target, outcome, detail) "
            "VALUES (:event_id, :at, :token, :action, :target, :outcome, CAST(:detail AS jsonb))"
        ),
        {
            "event_id": fact.event_id,
            "at": at,
            "token": fact.token,
            "action": action,
            "target": fact.target,
            "outcome": outcome,
            "detail": orjson.dumps(fact.detail).decode(),
        },
    )
    await outbox.stage(connection, [fact], at)
    return fact


async def record_alone(
    engine: AsyncEngine,
    *,
    token: str,
    action: str,
    target: str,
    outcome: Outcome,
    at: datetime,
    detail: dict[str, str] | None = None,
) -> None:
    """Record something that changed nothing (a refusal, a read) in a transaction of its own."""
    async with engine.begin() as connection:
        await record(connection, token=token, action=action, target=target, outcome=outcome, at=at, detail=detail)


@dataclass(frozen=True)
class Entry:
    at: datetime
    token: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]
    event_id: uuid.UUID


async def entries(
    connection: AsyncConnection,
    *,
    since: datetime | None,
    until: datetime | None,
    token: str | None,
    action: str | None,
    target: str | None,
    limit: int,
) -> list[Entry]:
    """The newest entries first, filtered by each criterion given."""
    rows = await connection.execute(
        text(
            "SELECT at, token, action, target, outcome, detail, event_id FROM audit_log "
            "WHERE (CAST(:since AS timestamptz) IS NULL OR at >= :since) "
            "AND (CAST(:until AS timestamptz) IS NULL OR at < :until) "
            "AND (CAST(:token AS text) IS NULL OR token = :token) "
            "AND (CAST(:action AS text) IS NULL OR action = :action) "
            "AND (CAST(:target AS text) IS NULL OR target = :target) "
            "ORDER BY at DESC, id DESC LIMIT :limit"
        ),
        {"since": since, "until": until, "token": token, "action": action, "target": target, "limit": limit},
    )
    return [
        Entry(
            at=row.at,
            token=row.token,
            action=row.action,
            target=row.target,
            outcome=row.outcome,
            detail=row.detail,
            event_id=row.event_id,
        )
        for row in rows
    ]
