"""Scoring shell: resolve the leads of a batch, load them under row locks, ask the core for each
event in order, save the states, the facts (``lead_facts``, the lead's timeline) and the next
re-evaluations (``scoring_timers``) in the consumer's transaction, and return the facts for the
outbox. A fixed number of statements per batch (see ``apply_batch``)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.identity import alias_key, identity_keys, merged, resolve
from coxswain.core.lead import (
    LeadState,
    Outcome,
    evaluation_time,
    next_reevaluation,
    on_activity,
    on_received,
    timer_id_for,
    unknown_lead,
)
from coxswain.db.leads import load_many
from coxswain.db.models import table
from coxswain.runtime.consumer import BatchHandler, Handler, PermanentError, one_at_a_time
from schemas.events import (
    ActivityRecordedV1,
    Event,
    LeadReceivedV1,
)
from services.scoring.metrics import count_refusals

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadReceivedV1.topic: (LeadReceivedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
}

TIMER_CHANNEL = "coxswain_scoring_timers"
IDENTITY_LOCK_CLASS = 0x1D


async def save(connection: AsyncConnection, state: LeadState, agreement_version: str, now: datetime) -> None:
    await save_many(connection, [state], agreement_version, now)


async def save_many(
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


async def arm(
    connection: AsyncConnection, state: LeadState, agreement: Agreement, at: datetime, now: datetime
) -> datetime | None:
    """Keep the lead's one timer at the core's next re-evaluation, or remove it when there is none."""
    return (await arm_many(connection, [(state, at)], agreement, now))[0]


async def arm_many(
    connection: AsyncConnection,
    evaluated: Sequence[tuple[LeadState, datetime]],
    agreement: Agreement,
    now: datetime,
) -> list[datetime | None]:
    """``arm`` for several leads (each once) in at most three statements."""
    dues = [next_reevaluation(state, agreement, at) for state, at in evaluated]
    idle = [state.lead_id for (state, _), due in zip(evaluated, dues, strict=True) if due is None]
    if idle:
        await connection.execute(text("DELETE FROM scoring_timers WHERE lead_id = ANY(:ids)"), {"ids": idle})
    rows = [
        {
            "lead_id": state.lead_id,
            "timer_id": timer_id_for(state, due),
            "due_at": due,
            "stage": state.stage.value,
            "agreement_version": agreement.version,
            "armed_at": now,
        }
        for (state, _), due in zip(evaluated, dues, strict=True)
        if due is not None
    ]
    if rows:
        await connection.execute(_upsert("scoring_timers", tuple(rows[0])), rows)
        # Delivered on commit: wakes the timer loop if a timer is due before its next pass.
        await connection.execute(text(f"NOTIFY {TIMER_CHANNEL}"))
    return dues


async def apply(connection: AsyncConnection, event: Event, agreement: Agreement, now: datetime) -> Outcome:
    return (await apply_batch(connection, [event], agreement, now))[0]


async def apply_batch(
    connection: AsyncConnection, events: Sequence[Event], agreement: Agreement, now: datetime
) -> list[Outcome]:
    """Apply events in order as if one at a time, with a fixed number of statements per batch.

    Identity keys are locked and read once, every lead the batch touches is loaded under one
    row lock statement, the core runs over the events in order against the states in memory
    (a lead named twice sees its first event's result), and the final states, the facts and the
    re-evaluation timers are written once each.
    """
    for event in events:
        if not isinstance(event, (LeadReceivedV1, ActivityRecordedV1)):
            raise PermanentError(f"scoring does not handle {type(event).__name__}")
    known = await _lock_and_read_identities(connection, events)
    lead_ids: list[uuid.UUID] = []
    recorded: dict[str, uuid.UUID] = {}
    # An alias is recorded once, under the identity locks, so it is announced once.
    merges: dict[int, Event] = {}
    for index, event in enumerate(events):
        if isinstance(event, LeadReceivedV1):
            keys = identity_keys(event.attributes.email, event.source, event.external_id)
            if not keys:
                lead_ids.append(event.lead_id)
                continue
            resolution = resolve(keys, known, event.lead_id)
            for key in resolution.record:
                known[key] = recorded[key] = resolution.lead_id
            announced = merged(event, resolution)
            if announced is not None:
                merges[index] = announced
            lead_ids.append(resolution.lead_id)
        else:
            lead_ids.append(known.get(alias_key(event.lead_id), event.lead_id))
    if recorded:
        await connection.execute(
            insert(table("lead_identities")).on_conflict_do_nothing(index_elements=["key"]),
            [{"key": key, "lead_id": lead_id, "created_at": now} for key, lead_id in recorded.items()],
        )
    states = await load_many(connection, lead_ids)
    outcomes: list[Outcome] = []
    evaluated_at: dict[uuid.UUID, datetime] = {}
    for event, lead_id in zip(events, lead_ids, strict=True):
        state = states.get(lead_id)
        if isinstance(event, LeadReceivedV1):
            state = state or LeadState(lead_id=lead_id)
            at = evaluation_time(state, event.occurred_at)
            # Scored at the event's own time, so a replay of the same events reproduces every fact.
            outcome = on_received(state, event, agreement, at)
        else:
            assert isinstance(event, ActivityRecordedV1)
            if state is None:
                # Refused like any input the agreement does not allow: a fact, not a dead letter,
                # so every consumer hears that nothing is to be done. There is no lead to save.
                outcomes.append(
                    Outcome(LeadState(lead_id=lead_id), (unknown_lead(event, agreement, event.occurred_at),))
                )
                continue
            outcome = on_activity(state, event, agreement, event.occurred_at)
            at = evaluation_time(outcome.state, event.occurred_at)
        states[lead_id] = outcome.state
        evaluated_at[lead_id] = at
        outcomes.append(outcome)
    for index, merge in merges.items():
        outcomes[index] = Outcome(outcomes[index].state, (merge, *outcomes[index].facts))
    changed = [states[lead_id] for lead_id in evaluated_at]
    await save_many(connection, changed, agreement.version, now)
    await record_facts(connection, [fact for outcome in outcomes for fact in outcome.facts], now)
    await arm_many(connection, [(state, evaluated_at[state.lead_id]) for state in changed], agreement, now)
    return outcomes


async def _lock_and_read_identities(connection: AsyncConnection, events: Sequence[Event]) -> dict[str, uuid.UUID]:
    """Lock the identity keys of the batch's new leads, then read every key the batch may need.

    Transaction-scoped advisory locks, taken in sorted order in one statement, serialise two
    events of one person processed at once by different instances, so both see the same keys.
    """
    locked: set[str] = set()
    wanted: set[str] = set()
    for event in events:
        if isinstance(event, LeadReceivedV1):
            keys = identity_keys(event.attributes.email, event.source, event.external_id)
            if keys:
                locked.update((*keys, alias_key(event.lead_id)))
        wanted.add(alias_key(event.lead_id))
    if locked:
        await connection.execute(
            text(
                "SELECT pg_advisory_xact_lock(:c, hashtext(k)) FROM (SELECT unnest(CAST(:keys AS text[])) AS k) AS keys"
            ),
            {"c": IDENTITY_LOCK_CLASS, "keys": sorted(locked)},
        )
    rows = await connection.execute(
        text("SELECT key, lead_id FROM lead_identities WHERE key = ANY(:keys)"), {"keys": sorted(locked | wanted)}
    )
    return {row.key: row.lead_id for row in rows}


def make_batch_handler(agreement: Agreement) -> BatchHandler:
    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> list[list[Event]]:
        facts = [list(outcome.facts) for outcome in await apply_batch(connection, events, agreement, now)]
        count_refusals(fact for each in facts for fact in each)
        return facts

    return handle


def make_handler(agreement: Agreement) -> Handler:
    return one_at_a_time(make_batch_handler(agreement))
