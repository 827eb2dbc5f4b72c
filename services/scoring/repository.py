"""Every SQL statement of scoring: the leads' states, their facts (``lead_facts``), their identity
keys, and their re-evaluation timers (``scoring_timers``). Each function runs on the caller's
connection, so the caller's transaction decides what commits together; the batched writes take
one statement whatever the number of leads. Rows come back as named records."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.lead import LeadState
from coxswain.db import deferred
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


async def record_facts(connection: AsyncConnection, facts: Sequence[Event], now: datetime) -> None:
    """The facts on their leads' timelines; a fact recorded before is kept as it is."""
    await save_batch(connection, facts=facts, now=now)


# The batch's writes after the core has run, as one statement's data-modifying CTEs over their
# rows as arrays, so a part with no rows inserts or deletes nothing, and the text is the same
# whatever the batch (asyncpg prepares it once per connection). The parts touch different tables,
# except the timers: a lead's timer is either removed or armed, never both (one statement must not
# touch a row twice). The effect wakes the timer loops (on commit) only when asked to. In a
# consumer's batch they ride in the statement that stages its facts (``coxswain.db.deferred``):
# nothing after them in that transaction reads scoring's tables.
_SAVE_BATCH_CTES = (
    "identities AS ("
    " INSERT INTO lead_identities (key, lead_id, created_at)"
    " SELECT key, lead_id, :now FROM unnest(CAST(:identity_keys AS text[]), CAST(:identity_leads AS uuid[]))"
    " AS batch (key, lead_id)"
    " ON CONFLICT (key) DO NOTHING"
    "), leads AS ("
    " INSERT INTO leads (lead_id, stage, source, attributes, touches, score_total, tier, agreement_version,"
    " updated_at, persona, pinned, held_until, recycled_until)"
    " SELECT lead_id, stage, source, attributes, touches, score_total, tier, :agreement_version, :now, persona,"
    " pinned, held_until, recycled_until FROM unnest(CAST(:lead_ids AS uuid[]), CAST(:stages AS text[]),"
    " CAST(:sources AS text[]), CAST(:attributes AS jsonb[]), CAST(:touches AS jsonb[]),"
    " CAST(:scores AS float8[]), CAST(:tiers AS text[]), CAST(:personas AS text[]), CAST(:pinned AS boolean[]),"
    " CAST(:held_until AS timestamptz[]), CAST(:recycled_until AS timestamptz[]))"
    " AS batch (lead_id, stage, source, attributes, touches, score_total, tier, persona, pinned, held_until,"
    " recycled_until)"
    " ON CONFLICT (lead_id) DO UPDATE SET stage = excluded.stage, source = excluded.source,"
    " attributes = excluded.attributes, touches = excluded.touches, score_total = excluded.score_total,"
    " tier = excluded.tier, agreement_version = excluded.agreement_version, updated_at = excluded.updated_at,"
    " persona = excluded.persona, pinned = excluded.pinned, held_until = excluded.held_until,"
    " recycled_until = excluded.recycled_until"
    "), facts AS ("
    " INSERT INTO lead_facts (event_id, lead_id, kind, occurred_at, agreement_version, caused_by, payload,"
    " recorded_at)"
    " SELECT event_id, lead_id, kind, occurred_at, agreement_version, caused_by, payload, :now"
    " FROM unnest(CAST(:fact_ids AS uuid[]), CAST(:fact_leads AS uuid[]), CAST(:fact_kinds AS text[]),"
    " CAST(:fact_times AS timestamptz[]), CAST(:fact_agreements AS text[]), CAST(:fact_causes AS uuid[]),"
    " CAST(:fact_payloads AS jsonb[]))"
    " AS batch (event_id, lead_id, kind, occurred_at, agreement_version, caused_by, payload)"
    " ON CONFLICT (event_id, occurred_at) DO NOTHING"
    "), unarmed AS ("
    " DELETE FROM scoring_timers WHERE lead_id = ANY(CAST(:unarmed AS uuid[]))"
    "), armed AS ("
    " INSERT INTO scoring_timers (lead_id, timer_id, due_at, stage, agreement_version, armed_at)"
    " SELECT * FROM unnest(CAST(:timer_leads AS uuid[]), CAST(:timer_ids AS uuid[]),"
    " CAST(:timer_dues AS timestamptz[]), CAST(:timer_stages AS text[]), CAST(:timer_agreements AS text[]),"
    " CAST(:timer_armed_at AS timestamptz[]))"
    " ON CONFLICT (lead_id) DO UPDATE SET timer_id = excluded.timer_id, due_at = excluded.due_at,"
    " stage = excluded.stage, agreement_version = excluded.agreement_version, armed_at = excluded.armed_at"
    ")"
)
_WAKE_TIMERS = f"(SELECT count(pg_notify('{TIMER_CHANNEL}', '')) WHERE CAST(:wake AS boolean))"


async def save_batch(
    connection: AsyncConnection,
    *,
    now: datetime,
    identities: Mapping[str, uuid.UUID] | None = None,
    states: Sequence[LeadState] = (),
    facts: Sequence[Event] = (),
    unarmed: Sequence[uuid.UUID] = (),
    timers: Sequence[Timer] = (),
    agreement_version: str = "",
    wake_if_due_before: datetime | None = None,
) -> None:
    """Every write of scoring's, in one statement: the new identity keys (a key recorded before
    keeps its lead), the leads' states upserted under ``agreement_version`` (each lead at most
    once), the facts on their leads' timelines (a fact recorded before is kept as it is), and the
    re-evaluation timers removed (``unarmed``) or armed (``timers``), each lead at most once in the
    two together. The timer loops are woken (on commit) if a timer is due before
    ``wake_if_due_before``. Carried in the transaction's last statement when the caller defers
    (``coxswain.db.deferred``), else run now."""
    identities = identities or {}
    armed = {timer.lead_id for timer in timers}
    if len(armed) < len(timers) or armed.intersection(unarmed) or len(set(unarmed)) < len(unarmed):
        raise ValueError("a lead's timer is written at most once per batch")
    await deferred.write(
        connection,
        deferred.Write(
            _SAVE_BATCH_CTES,
            {
                "now": now,
                "agreement_version": agreement_version,
                "identity_keys": list(identities),
                "identity_leads": list(identities.values()),
                "lead_ids": [state.lead_id for state in states],
                "stages": [state.stage.value for state in states],
                "sources": [state.source for state in states],
                "attributes": [state.attributes.model_dump_json(exclude_none=True) for state in states],
                "touches": [_touches_json(state) for state in states],
                "scores": [state.score_total for state in states],
                "tiers": [state.tier.value if state.tier else None for state in states],
                "personas": [state.persona for state in states],
                "pinned": [state.pinned for state in states],
                "held_until": [state.held_until for state in states],
                "recycled_until": [state.recycled_until for state in states],
                "fact_ids": [fact.event_id for fact in facts],
                "fact_leads": [fact.lead_id for fact in facts],
                "fact_kinds": [type(fact).__name__ for fact in facts],
                "fact_times": [fact.occurred_at for fact in facts],
                "fact_agreements": [getattr(fact, "agreement_version", None) for fact in facts],
                "fact_causes": [getattr(fact, "caused_by", None) for fact in facts],
                # The fact's own JSON text: no decode and re-encode on the way.
                "fact_payloads": [fact.model_dump_json() for fact in facts],
                "unarmed": list(unarmed),
                "timer_leads": [timer.lead_id for timer in timers],
                "timer_ids": [timer.timer_id for timer in timers],
                "timer_dues": [timer.due_at for timer in timers],
                "timer_stages": [timer.stage for timer in timers],
                "timer_agreements": [timer.agreement_version for timer in timers],
                "timer_armed_at": [timer.armed_at for timer in timers],
                "wake": wake_if_due_before is not None and any(timer.due_at < wake_if_due_before for timer in timers),
            },
            _WAKE_TIMERS,
        ),
    )


def _touches_json(state: LeadState) -> str:
    return orjson.dumps([[touch.engagement.value, touch.at.isoformat()] for touch in state.touches]).decode()


# Re-evaluation timers.


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


async def postpone_timer(connection: AsyncConnection, lead_id: uuid.UUID, due_at: datetime) -> None:
    await connection.execute(
        text("UPDATE scoring_timers SET due_at = :due_at WHERE lead_id = :lead_id"),
        {"due_at": due_at, "lead_id": lead_id},
    )


async def next_due(connection: AsyncConnection) -> datetime | None:
    value = await connection.scalar(text("SELECT min(due_at) FROM scoring_timers"))
    return value if isinstance(value, datetime) else None
