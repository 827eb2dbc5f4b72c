"""Every SQL statement of scoring: the leads' states, their facts (``lead_facts``), their identity
keys, and their re-evaluation timers (``scoring_timers``). Each function runs on the caller's
connection, so the caller's transaction decides what commits together; the batched writes take
one statement whatever the number of leads. Rows come back as named records."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.lead import LeadState
from coxswain.db.models import table
from schemas.events import Event

# LISTENed to by the timer loop, NOTIFYed when a timer is armed.
TIMER_CHANNEL = "coxswain_scoring_timers"
# First half of the two-int advisory keys of identity keys (pg_locks.classid).
IDENTITY_LOCK_CLASS = 0x1D


class Timer(NamedTuple):
    """A lead's one re-evaluation timer; the field names are the columns."""

    lead_id: uuid.UUID
    timer_id: uuid.UUID
    due_at: datetime
    stage: str
    agreement_version: str
    armed_at: datetime


class DueTimer(NamedTuple):
    timer_id: uuid.UUID
    due_at: datetime


async def save_leads(
    connection: AsyncConnection, states: Sequence[LeadState], agreement_version: str, now: datetime
) -> None:
    """Upsert the leads in one statement; each lead at most once (ON CONFLICT touches a row once)."""
    if not states:
        return
    rows = [
        {
            "lead_id": state.lead_id,
            "stage": state.stage.value,
            "source": state.source,
            "attributes": state.attributes.model_dump(mode="json", exclude_none=True),
            "touches": [[touch.engagement.value, touch.at.isoformat()] for touch in state.touches],
            "score_total": state.score_total,
            "tier": state.tier.value if state.tier else None,
            "agreement_version": agreement_version,
            "updated_at": now,
            "persona": state.persona,
            "pinned": state.pinned,
            "held_until": state.held_until,
            "recycled_until": state.recycled_until,
        }
        for state in states
    ]
    await connection.execute(_upsert("leads", tuple(rows[0])), rows)


@functools.cache
def _upsert(table_name: str, columns: tuple[str, ...]) -> Insert:
    """Insert-or-update by lead id, built once: SQLAlchemy caches its SQL with the statement object."""
    statement = insert(table(table_name))
    return statement.on_conflict_do_update(
        index_elements=["lead_id"],
        set_={column: statement.excluded[column] for column in columns if column != "lead_id"},
    )


async def record_facts(connection: AsyncConnection, facts: Sequence[Event], now: datetime) -> None:
    """The facts on their leads' timelines, in one statement; a fact recorded before is kept as it is."""
    if not facts:
        return
    # The payload goes in as the fact's own JSON text: no decode and re-encode on the way.
    await connection.execute(
        text(
            "INSERT INTO lead_facts (event_id, lead_id, kind, occurred_at, agreement_version, caused_by, payload, "
            "recorded_at) VALUES (:event_id, :lead_id, :kind, :occurred_at, :agreement_version, :caused_by, "
            "CAST(:payload AS jsonb), :recorded_at) ON CONFLICT (event_id, occurred_at) DO NOTHING"
        ),
        [
            {
                "event_id": fact.event_id,
                "lead_id": fact.lead_id,
                "kind": type(fact).__name__,
                "occurred_at": fact.occurred_at,
                "agreement_version": getattr(fact, "agreement_version", None),
                "caused_by": getattr(fact, "caused_by", None),
                "payload": fact.model_dump_json(),
                "recorded_at": now,
            }
            for fact in facts
        ],
    )


# Identity keys.


async def lock_identity_keys(connection: AsyncConnection, keys: Sequence[str]) -> None:
    """Transaction-scoped advisory locks on ``keys``, taken in the order given (sorted, by the
    caller) in one statement, so two transactions locking overlapping keys cannot deadlock."""
    await connection.execute(
        text(
            "SELECT pg_advisory_xact_lock(:lock_class, hashtext(k)) "
            "FROM (SELECT unnest(CAST(:keys AS text[])) AS k) AS keys"
        ),
        {"lock_class": IDENTITY_LOCK_CLASS, "keys": list(keys)},
    )


async def identities(connection: AsyncConnection, keys: Sequence[str]) -> dict[str, uuid.UUID]:
    """Identity key -> lead id, for the ``keys`` recorded."""
    rows = await connection.execute(
        text("SELECT key, lead_id FROM lead_identities WHERE key = ANY(:keys)"), {"keys": list(keys)}
    )
    return {row.key: row.lead_id for row in rows}


async def record_identities(connection: AsyncConnection, leads: Mapping[str, uuid.UUID], now: datetime) -> None:
    """Identity key -> lead id, in one statement; a key recorded before keeps its lead."""
    if not leads:
        return
    await connection.execute(
        insert(table("lead_identities")).on_conflict_do_nothing(index_elements=["key"]),
        [{"key": key, "lead_id": lead_id, "created_at": now} for key, lead_id in leads.items()],
    )


# Re-evaluation timers.


async def remove_timers(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> None:
    if lead_ids:
        await connection.execute(
            text("DELETE FROM scoring_timers WHERE lead_id = ANY(:lead_ids)"), {"lead_ids": list(lead_ids)}
        )


async def arm_timers(connection: AsyncConnection, timers: Sequence[Timer], wake_if_due_before: datetime) -> None:
    """Each lead's timer (one per lead, each lead once) in one statement, and wake the timer loops
    if one of them is due before ``wake_if_due_before``."""
    if not timers:
        return
    await connection.execute(_upsert("scoring_timers", Timer._fields), [timer._asdict() for timer in timers])
    # Delivered on commit. A timer loop looks for the next due timer at least once per its longest
    # sleep, so only a timer due sooner needs to wake it. Most timers (decay, cooldowns) are days
    # away: waking the loops for them cost every scoring batch a round trip here, and each loop a
    # pass (two transactions) that found nothing to do.
    if min(timer.due_at for timer in timers) < wake_if_due_before:
        await connection.execute(text(f"NOTIFY {TIMER_CHANNEL}"))


async def due_leads(connection: AsyncConnection, now: datetime, limit: int) -> list[uuid.UUID]:
    """Without locks: the leads of up to ``limit`` timers due at ``now``, the longest due first."""
    rows = await connection.execute(
        text("SELECT lead_id FROM scoring_timers WHERE due_at <= :now ORDER BY due_at LIMIT :limit"),
        {"now": now, "limit": limit},
    )
    return [row.lead_id for row in rows]


async def due_timer_for_update(connection: AsyncConnection, lead_id: uuid.UUID, now: datetime) -> DueTimer | None:
    """The lead's timer, its row locked, if it is due at ``now``."""
    row = (
        await connection.execute(
            text("SELECT timer_id, due_at FROM scoring_timers WHERE lead_id = :lead_id AND due_at <= :now FOR UPDATE"),
            {"lead_id": lead_id, "now": now},
        )
    ).one_or_none()
    return None if row is None else DueTimer(timer_id=row.timer_id, due_at=row.due_at)


async def remove_timer(connection: AsyncConnection, lead_id: uuid.UUID) -> None:
    await connection.execute(text("DELETE FROM scoring_timers WHERE lead_id = :lead_id"), {"lead_id": lead_id})


async def postpone_timer(connection: AsyncConnection, lead_id: uuid.UUID, due_at: datetime) -> None:
    await connection.execute(
        text("UPDATE scoring_timers SET due_at = :due_at WHERE lead_id = :lead_id"),
        {"due_at": due_at, "lead_id": lead_id},
    )


async def next_due(connection: AsyncConnection) -> datetime | None:
    value = await connection.scalar(text("SELECT min(due_at) FROM scoring_timers"))
    return value if isinstance(value, datetime) else None
