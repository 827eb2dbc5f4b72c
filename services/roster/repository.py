"""Every SQL statement of the roster API: runtime overrides, the roster revision, rep counters,
accounts and the router's records of a lead. Each function runs on the caller's connection, so
the caller's transaction decides what commits together."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.capacity import RepLoad
from coxswain.core.roster import RepOverride, RosterOverrides


class Record(BaseModel):
    """A row as the API shows it: read-only, built from the row's columns by name."""

    model_config = ConfigDict(frozen=True)


class AccountRecord(Record):
    domain: str
    owner_rep_id: str
    external_id: str | None
    updated_at: datetime


class AssignmentRecord(Record):
    assignment_id: uuid.UUID
    decision_key: uuid.UUID
    rep_id: str | None
    pool_id: str
    rule_id: str
    reason: str
    tier: str
    agreement_version: str
    routed_at: datetime
    decision: dict[str, Any]


class HolderRecord(Record):
    assignment_id: uuid.UUID
    rep_id: str
    pool_id: str
    owners: list[str]
    open: bool
    load: int
    opened_at: datetime
    released_at: datetime | None


class WaitingRecord(Record):
    decision_key: uuid.UUID
    kind: str
    reason: str
    waiting_for: str | None
    pool_id: str
    rule_id: str
    parked_at: datetime
    last_tried_at: datetime
    attempts: int


class UnassignedRecord(WaitingRecord):
    lead_id: uuid.UUID
    tier: str


async def bump_revision(connection: AsyncConnection, now: datetime) -> int:
    """Serialise roster writers and tell routers the roster changed; the same transaction commits both."""
    revision = await connection.scalar(
        text("UPDATE roster_revision SET revision = revision + 1, updated_at = :now WHERE id = 1 RETURNING revision"),
        {"now": now},
    )
    return int(revision or 0)


async def overrides(connection: AsyncConnection) -> RosterOverrides:
    revision = await connection.scalar(text("SELECT revision FROM roster_revision WHERE id = 1"))
    reps = await connection.execute(text("SELECT rep_id, body FROM rep_overrides"))
    members = await connection.execute(text("SELECT pool_id, rep_id, weight FROM pool_member_overrides"))
    return RosterOverrides(
        reps={row.rep_id: RepOverride.model_validate(row.body) for row in reps},
        members={(row.pool_id, row.rep_id): row.weight for row in members},
        revision=int(revision or 0),
    )


async def stored_override(connection: AsyncConnection, rep_id: str) -> dict[str, Any]:
    """The rep's override as stored (only the fields set at runtime); empty when none."""
    body = await connection.scalar(text("SELECT body FROM rep_overrides WHERE rep_id = :rep_id"), {"rep_id": rep_id})
    return dict(body) if body else {}


async def save_override(connection: AsyncConnection, rep_id: str, override: RepOverride, now: datetime) -> None:
    await connection.execute(
        text(
            "INSERT INTO rep_overrides (rep_id, body, updated_at) VALUES (:rep_id, CAST(:body AS jsonb), :now) "
            "ON CONFLICT (rep_id) DO UPDATE SET body = EXCLUDED.body, updated_at = EXCLUDED.updated_at"
        ),
        {"rep_id": rep_id, "body": override.model_dump_json(exclude_unset=True), "now": now},
    )


async def set_member(connection: AsyncConnection, pool_id: str, rep_id: str, weight: int | None, now: datetime) -> None:
    """A weight adds or re-weights the member; None takes them out of the pool."""
    await connection.execute(
        text(
            "INSERT INTO pool_member_overrides (pool_id, rep_id, weight, updated_at) "
            "VALUES (:pool_id, :rep_id, :weight, :now) "
            "ON CONFLICT (pool_id, rep_id) DO UPDATE SET weight = EXCLUDED.weight, updated_at = EXCLUDED.updated_at"
        ),
        {"pool_id": pool_id, "rep_id": rep_id, "weight": weight, "now": now},
    )


async def loads(connection: AsyncConnection) -> dict[str, RepLoad]:
    rows = await connection.execute(
        text("SELECT rep_id, open_load, open_leads, day, assigned_on_day FROM rep_counters")
    )
    return {row.rep_id: RepLoad(row.open_load, row.open_leads, row.day, row.assigned_on_day) for row in rows}


async def upsert_accounts(
    connection: AsyncConnection, owners: Sequence[tuple[str, str, str | None]], now: datetime
) -> None:
    """``(domain, owner_rep_id, external_id)`` per account, in one statement."""
    if not owners:
        return
    await connection.execute(
        text(
            "INSERT INTO accounts (domain, owner_rep_id, external_id, updated_at) "
            "SELECT domain, owner_rep_id, external_id, :now "
            "FROM unnest(CAST(:domains AS text[]), CAST(:owners AS text[]), CAST(:external_ids AS text[])) "
            "AS given(domain, owner_rep_id, external_id) "
            "ON CONFLICT (domain) DO UPDATE SET owner_rep_id = EXCLUDED.owner_rep_id, "
            "external_id = EXCLUDED.external_id, updated_at = EXCLUDED.updated_at"
        ),
        {
            "domains": [domain for domain, _, _ in owners],
            "owners": [owner for _, owner, _ in owners],
            "external_ids": [external_id for _, _, external_id in owners],
            "now": now,
        },
    )


async def remove_accounts(connection: AsyncConnection, domains: Sequence[str]) -> None:
    if domains:
        await connection.execute(text("DELETE FROM accounts WHERE domain = ANY(:domains)"), {"domains": list(domains)})


async def account(connection: AsyncConnection, domain: str) -> AccountRecord | None:
    row = (
        await connection.execute(
            text("SELECT domain, owner_rep_id, external_id, updated_at FROM accounts WHERE domain = :domain"),
            {"domain": domain},
        )
    ).one_or_none()
    return AccountRecord.model_validate(row._asdict()) if row is not None else None


async def delete_account(connection: AsyncConnection, domain: str) -> bool:
    deleted = await connection.scalar(
        text("DELETE FROM accounts WHERE domain = :domain RETURNING 1"), {"domain": domain}
    )
    return deleted is not None


async def assignments(connection: AsyncConnection, lead_id: uuid.UUID) -> list[AssignmentRecord]:
    rows = await connection.execute(
        text(
            "SELECT assignment_id, decision_key, rep_id, pool_id, rule_id, reason, tier, agreement_version, "
            "routed_at, decision FROM assignments WHERE lead_id = :lead_id ORDER BY routed_at, assignment_id"
        ),
        {"lead_id": lead_id},
    )
    return [AssignmentRecord.model_validate(row._asdict()) for row in rows]


async def holder(connection: AsyncConnection, lead_id: uuid.UUID) -> HolderRecord | None:
    row = (
        await connection.execute(
            text(
                "SELECT assignment_id, rep_id, pool_id, owners, open, load, opened_at, released_at "
                "FROM lead_routing WHERE lead_id = :lead_id"
            ),
            {"lead_id": lead_id},
        )
    ).one_or_none()
    return HolderRecord.model_validate(row._asdict()) if row is not None else None


async def waiting(connection: AsyncConnection, lead_id: uuid.UUID) -> WaitingRecord | None:
    row = (
        await connection.execute(
            text(
                "SELECT decision_key, kind, reason, waiting_for, pool_id, rule_id, parked_at, last_tried_at, "
                "attempts FROM unassigned_leads WHERE lead_id = :lead_id"
            ),
            {"lead_id": lead_id},
        )
    ).one_or_none()
    return WaitingRecord.model_validate(row._asdict()) if row is not None else None


async def unassigned(connection: AsyncConnection, limit: int) -> list[UnassignedRecord]:
    """Leads nobody could take yet, oldest first."""
    rows = await connection.execute(
        text(
            "SELECT lead_id, decision_key, kind, reason, waiting_for, pool_id, rule_id, tier, parked_at, "
            "last_tried_at, attempts FROM unassigned_leads ORDER BY parked_at LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [UnassignedRecord.model_validate(row._asdict()) for row in rows]
