"""Every SQL statement of the shadow service: the live decisions ``coxswain shadow report``
compares the candidate's with (``lead_facts``, ``assignments``). Read-only; each function runs
on the caller's connection (the report's own engine over the live database) and returns the
decisions by lead, the last one of the period winning.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def live_stages(connection: AsyncConnection, since: datetime, until: datetime) -> dict[uuid.UUID, str]:
    """lead id -> the stage the live side last moved the lead to in ``[since, until)``."""
    rows = await connection.execute(
        text(
            "SELECT lead_id, payload->>'to_stage' AS to_stage FROM lead_facts "
            "WHERE kind = 'LeadStageChangedV1' AND occurred_at >= :since AND occurred_at < :until "
            "ORDER BY occurred_at, recorded_at"
        ),
        {"since": since, "until": until},
    )
    return {row.lead_id: row.to_stage for row in rows}


async def live_owners(connection: AsyncConnection, since: datetime, until: datetime) -> dict[uuid.UUID, str]:
    """lead id -> ``rep@pool`` of the live side's last assignment of the lead in ``[since, until)``."""
    rows = await connection.execute(
        text(
            "SELECT lead_id, rep_id, pool_id FROM assignments WHERE routed_at >= :since AND routed_at < :until "
            "ORDER BY routed_at"
        ),
        {"since": since, "until": until},
    )
    return {row.lead_id: f"{row.rep_id}@{row.pool_id}" for row in rows}
