"""Reading the ``leads`` table: a lead's state as the core knows it, and the lead a provisional id
was folded into. Scoring owns the table (it saves); the admin API reads it through these too."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.identity import alias_key
from coxswain.core.lead import LeadState
from coxswain.core.scoring import Touch
from coxswain.db.sql import clause
from schemas.events import EngagementType, LeadAttributes, Stage, Tier

LOCKS = {"wait": " FOR UPDATE", "skip": " FOR UPDATE SKIP LOCKED", "none": ""}


STATE_COLUMNS = (
    "lead_id, stage, source, attributes, touches, score_total, tier, persona, pinned, held_until, recycled_until"
)


async def load(
    connection: AsyncConnection, lead_id: uuid.UUID, lock: Literal["wait", "skip", "none"] = "wait"
) -> LeadState | None:
    row = (
        await connection.execute(
            text(f"SELECT {STATE_COLUMNS} FROM leads WHERE lead_id = :id" + LOCKS[lock]), {"id": lead_id}
        )
    ).one_or_none()
    return None if row is None else _state_of(row)


async def identities_and_leads(
    connection: AsyncConnection, keys: Sequence[str], lead_ids: Sequence[uuid.UUID]
) -> tuple[dict[str, uuid.UUID], dict[uuid.UUID, LeadState]]:
    """In one statement (one round trip where two were): the identity keys recorded among ``keys``
    (key -> lead id), and the stored leads among ``lead_ids`` and the leads those keys name, locked
    in id order (a fixed order cannot deadlock). Every row carries the keys; a row without a lead (none
    stored) carries only them."""
    rows = (
        await connection.execute(
            clause(
                "WITH known AS (SELECT key, lead_id FROM lead_identities WHERE key = ANY(CAST(:keys AS text[]))), "
                f"locked AS (SELECT {STATE_COLUMNS} FROM leads WHERE lead_id = ANY("
                "ARRAY(SELECT lead_id FROM known) || CAST(:ids AS uuid[])) ORDER BY lead_id FOR UPDATE) "
                "SELECT (SELECT coalesce(array_agg(key ORDER BY key), '{}') FROM known) AS known_keys, "
                "(SELECT coalesce(array_agg(lead_id ORDER BY key), '{}') FROM known) AS known_leads, locked.* "
                "FROM (SELECT 1) AS one LEFT JOIN locked ON true"
            ),
            {"keys": list(keys), "ids": sorted(set(lead_ids))},
        )
    ).all()
    known = dict(zip(rows[0].known_keys, rows[0].known_leads, strict=True)) if rows else {}
    return known, {row.lead_id: _state_of(row) for row in rows if row.lead_id is not None}


def _state_of(row: Row[Any]) -> LeadState:
    return LeadState(
        lead_id=row.lead_id,
        stage=Stage(row.stage),
        source=row.source,
        attributes=LeadAttributes.model_validate(row.attributes),
        touches=tuple(Touch(EngagementType(kind), datetime.fromisoformat(at)) for kind, at in row.touches),
        score_total=row.score_total,
        tier=Tier(row.tier) if row.tier else None,
        persona=row.persona,
        pinned=row.pinned,
        held_until=row.held_until,
        recycled_until=row.recycled_until,
    )


async def canonical_lead_id(connection: AsyncConnection, lead_id: uuid.UUID) -> uuid.UUID:
    """A provisional id that identity resolution folded into another lead names that lead."""
    found = await connection.scalar(
        text("SELECT lead_id FROM lead_identities WHERE key = :k"), {"k": alias_key(lead_id)}
    )
    return found if isinstance(found, uuid.UUID) else lead_id
