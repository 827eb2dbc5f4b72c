"""Scoring shell: resolve the lead, load it under a row lock, ask the core, save the state, the
facts (``lead_facts``, the lead's timeline) and the next re-evaluation (``scoring_timers``) in
the consumer's transaction, and return the facts for the outbox."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import orjson
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.identity import alias_key, identity_keys, resolve
from coxswain.core.lead import (
    LeadState,
    Outcome,
    evaluation_time,
    next_reevaluation,
    on_activity,
    on_received,
    timer_id_for,
)
from coxswain.core.scoring import Touch
from coxswain.db.models import table
from coxswain.runtime.consumer import Handler, PermanentError
from schemas.events import (
    ActivityRecordedV1,
    EngagementType,
    Event,
    LeadAttributes,
    LeadReceivedV1,
    Stage,
    Tier,
)

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadReceivedV1.topic: (LeadReceivedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
}

TIMER_CHANNEL = "coxswain_scoring_timers"
IDENTITY_LOCK_CLASS = 0x1D


LOCKS = {"wait": " FOR UPDATE", "skip": " FOR UPDATE SKIP LOCKED", "none": ""}


async def load(
    connection: AsyncConnection, lead_id: uuid.UUID, lock: Literal["wait", "skip", "none"] = "wait"
) -> LeadState | None:
    row = (
        await connection.execute(
            text(
                "SELECT stage, source, attributes, touches, score_total, tier, persona, pinned, held_until, "
                "recycled_until FROM leads WHERE lead_id = :id" + LOCKS[lock]
            ),
            {"id": lead_id},
        )
    ).one_or_none()
    if row is None:
        return None
    return LeadState(
        lead_id=lead_id,
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


async def save(connection: AsyncConnection, state: LeadState, agreement_version: str, now: datetime) -> None:
    values = {
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
    await connection.execute(_upsert("leads", tuple(values)), values)


@functools.cache
def _upsert(table_name: str, columns: tuple[str, ...]) -> Insert:
    """Insert-or-update by lead id, built once: SQLAlchemy caches its SQL with the statement object."""
    statement = insert(table(table_name))
    return statement.on_conflict_do_update(
        index_elements=["lead_id"],
        set_={column: statement.excluded[column] for column in columns if column != "lead_id"},
    )


async def resolve_lead(connection: AsyncConnection, event: LeadReceivedV1, now: datetime) -> uuid.UUID:
    """Apply the identity rule (coxswain.core.identity) and record the event's new keys.

    Transaction-scoped advisory locks on the keys, taken in sorted order, serialise two events
    of one person processed at once by different instances, so both see the same keys.
    """
    keys = identity_keys(event.attributes.email, event.source, event.external_id)
    if not keys:
        return event.lead_id
    # One round trip for all the locks; the subquery's order is the order they are taken in.
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(:c, hashtext(k)) FROM (SELECT unnest(CAST(:keys AS text[])) AS k) AS keys"),
        {"c": IDENTITY_LOCK_CLASS, "keys": sorted({*keys, alias_key(event.lead_id)})},
    )
    rows = await connection.execute(
        text("SELECT key, lead_id FROM lead_identities WHERE key = ANY(:keys)"),
        {"keys": [*keys, alias_key(event.lead_id)]},
    )
    known = {row.key: row.lead_id for row in rows}
    resolution = resolve(keys, known, event.lead_id)
    if resolution.record:
        await connection.execute(
            insert(table("lead_identities")).on_conflict_do_nothing(index_elements=["key"]),
            [{"key": key, "lead_id": resolution.lead_id, "created_at": now} for key in resolution.record],
        )
    return resolution.lead_id


async def canonical_lead_id(connection: AsyncConnection, lead_id: uuid.UUID) -> uuid.UUID:
    """A provisional id that identity resolution folded into another lead names that lead."""
    found = await connection.scalar(
        text("SELECT lead_id FROM lead_identities WHERE key = :k"), {"k": alias_key(lead_id)}
    )
    return found if isinstance(found, uuid.UUID) else lead_id


async def record_facts(connection: AsyncConnection, facts: Sequence[Event], now: datetime) -> None:
    if not facts:
        return
    await connection.execute(
        insert(table("lead_facts")).on_conflict_do_nothing(index_elements=["event_id"]),
        [
            {
                "event_id": fact.event_id,
                "lead_id": fact.lead_id,
                "kind": type(fact).__name__,
                "occurred_at": fact.occurred_at,
                "agreement_version": getattr(fact, "agreement_version", None),
                "caused_by": getattr(fact, "caused_by", None),
                "payload": orjson.loads(fact.model_dump_json()),
                "recorded_at": now,
            }
            for fact in facts
        ],
    )


async def arm(
    connection: AsyncConnection, state: LeadState, agreement: Agreement, at: datetime, now: datetime
) -> datetime | None:
    """Keep the lead's one timer at the core's next re-evaluation, or remove it when there is none."""
    due = next_reevaluation(state, agreement, at)
    if due is None:
        await connection.execute(text("DELETE FROM scoring_timers WHERE lead_id = :l"), {"l": state.lead_id})
        return None
    values = {
        "lead_id": state.lead_id,
        "timer_id": timer_id_for(state, due),
        "due_at": due,
        "stage": state.stage.value,
        "agreement_version": agreement.version,
        "armed_at": now,
    }
    await connection.execute(_upsert("scoring_timers", tuple(values)), values)
    # Delivered on commit: wakes the timer loop if this timer is due before its next pass.
    await connection.execute(text(f"NOTIFY {TIMER_CHANNEL}"))
    return due


async def apply(connection: AsyncConnection, event: Event, agreement: Agreement, now: datetime) -> Outcome:
    outcome: Outcome
    if isinstance(event, LeadReceivedV1):
        lead_id = await resolve_lead(connection, event, now)
        state = await load(connection, lead_id) or LeadState(lead_id=lead_id)
        at = evaluation_time(state, event.occurred_at)
        # Scored at the event's own time, so a replay of the same events reproduces every fact.
        outcome = on_received(state, event, agreement, at)
    elif isinstance(event, ActivityRecordedV1):
        lead_id = await canonical_lead_id(connection, event.lead_id)
        found = await load(connection, lead_id)
        if found is None:
            raise PermanentError(
                f"activity {event.activity.value} for lead {event.lead_id}, which scoring has never seen"
            )
        state = found
        outcome = on_activity(state, event, agreement, event.occurred_at)
        at = evaluation_time(outcome.state, event.occurred_at)
    else:
        raise PermanentError(f"scoring does not handle {type(event).__name__}")
    await save(connection, outcome.state, agreement.version, now)
    await record_facts(connection, outcome.facts, now)
    await arm(connection, outcome.state, agreement, at, now)
    return outcome


def make_handler(agreement: Agreement) -> Handler:
    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        outcome = await apply(connection, event, agreement, now)
        return list(outcome.facts)

    return handle
