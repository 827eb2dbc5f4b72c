"""Reading the roster API's changes (``rep_overrides``, ``pool_member_overrides``) and their
revision. The roster API writes them; the router routes by them, and crm-sync writes the CRM ids
in force from them."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.crm_sync import CrmKind, roster_owner_ids
from coxswain.core.roster import RepOverride, RosterOverrides, build_roster


async def roster_revision(connection: AsyncConnection) -> int:
    """Bumped by every roster change, in its transaction."""
    return int(await connection.scalar(text("SELECT revision FROM roster_revision WHERE id = 1")) or 0)


async def load_overrides(connection: AsyncConnection, revision: int) -> RosterOverrides:
    reps = await connection.execute(text("SELECT rep_id, body FROM rep_overrides"))
    members = await connection.execute(text("SELECT pool_id, rep_id, weight FROM pool_member_overrides"))
    return RosterOverrides(
        reps={row.rep_id: RepOverride.model_validate(row.body) for row in reps},
        members={(row.pool_id, row.rep_id): row.weight for row in members},
        revision=revision,
    )


async def crm_owner_ids(connection: AsyncConnection, agreement: Agreement, kind: CrmKind) -> dict[str, str]:
    """rep id -> the rep's id in ``kind`` now: the agreement's, with the roster API's changes."""
    revision = await roster_revision(connection)
    return roster_owner_ids(build_roster(agreement, await load_overrides(connection, revision)), kind)
