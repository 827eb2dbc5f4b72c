"""Scoring shell: resolve the leads of a batch, load them under row locks, ask the core for each
event in order, save the states, the facts (``lead_facts``, the lead's timeline) and the next
re-evaluations (``scoring_timers``) in the consumer's transaction, and return the facts for the
outbox. A fixed number of statements per batch (see ``apply_batch``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

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
from coxswain.db.leads import identities_and_leads
from coxswain.runtime.consumer import (
    BatchHandler,
    ClaimLocks,
    Handler,
    PermanentError,
    one_at_a_time,
)
from schemas.events import (
    ActivityRecordedV1,
    Event,
    LeadReceivedV1,
)
from services.scoring import repository
from services.scoring.metrics import count_refusals
from services.scoring.repository import Timer

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadReceivedV1.topic: (LeadReceivedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
}


# How soon a newly armed timer must be due for its commit to wake the timer loops: their longest
# sleep (COXSWAIN_SCORING_TIMER_MAX_SLEEP_SECONDS, whose default this is; the service's wiring
# passes the configured value). A timer due later is found by a loop's next regular look.
WAKE_WITHIN = timedelta(seconds=1)


def next_timers(
    evaluated: Sequence[tuple[LeadState, datetime]], agreement: Agreement, now: datetime
) -> tuple[list[datetime | None], list[uuid.UUID], list[Timer]]:
    """Each lead's next re-evaluation, and the leads split by it: those whose timer goes, the
    timers armed for the others (disjoint sets: each lead is in one)."""
    dues = [next_reevaluation(state, agreement, at) for state, at in evaluated]
    unarmed: list[uuid.UUID] = []
    timers: list[Timer] = []
    for (state, _), due in zip(evaluated, dues, strict=True):
        if due is None:
            unarmed.append(state.lead_id)
        else:
            timers.append(
                Timer(
                    lead_id=state.lead_id,
                    timer_id=timer_id_for(state, due),
                    due_at=due,
                    stage=state.stage.value,
                    agreement_version=agreement.version,
                    armed_at=now,
                )
            )
    return dues, unarmed, timers


async def apply(
    connection: AsyncConnection, event: Event, agreement: Agreement, now: datetime, wake_within: timedelta = WAKE_WITHIN
) -> Outcome:
    return (await apply_batch(connection, [event], agreement, now, wake_within))[0]


async def apply_batch(
    connection: AsyncConnection,
    events: Sequence[Event],
    agreement: Agreement,
    now: datetime,
    wake_within: timedelta = WAKE_WITHIN,
) -> list[Outcome]:
    """Apply events in order as if one at a time, with a fixed number of statements per batch.

    Identity keys are locked in one statement (the consumer's claim, ``CLAIM_LOCKS``), then read
    in the next together with every lead the batch may touch, loaded under row locks; the core runs over the events in order against
    the states in memory (a lead named twice sees its first event's result), and then the new
    identity keys, the final states, the facts and the re-evaluation timers are written in one
    statement: three statements per batch, whatever its size. The new identity keys wait for that statement:
    nothing in the batch reads them back from the table (the core sees them in ``known``), and
    the identity locks keep other transactions off those keys until the commit anyway.
    """
    for event in events:
        if not isinstance(event, (LeadReceivedV1, ActivityRecordedV1)):
            raise PermanentError(f"scoring does not handle {type(event).__name__}")
    known, stored = await _lock_and_read_identities(connection, events)
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
    # Every lead the batch resolves to is its own provisional id or one a key names: loaded above.
    states = {lead_id: stored[lead_id] for lead_id in lead_ids if lead_id in stored}
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
    _, unarmed, timers = next_timers([(state, evaluated_at[state.lead_id]) for state in changed], agreement, now)
    await repository.save_batch(
        connection,
        identities=recorded,
        states=changed,
        facts=[fact for outcome in outcomes for fact in outcome.facts],
        unarmed=unarmed,
        timers=timers,
        agreement_version=agreement.version,
        now=now,
        wake_if_due_before=now + wake_within,
    )
    return outcomes


async def _lock_and_read_identities(
    connection: AsyncConnection, events: Sequence[Event]
) -> tuple[dict[str, uuid.UUID], dict[uuid.UUID, LeadState]]:
    """Lock the identity keys of the batch's new leads, then read every key the batch may need and,
    in the same statement, load under row locks every lead the batch may resolve to: its events'
    own ids and the leads its keys name.

    Transaction-scoped advisory locks, taken in sorted order in one statement, serialise two
    events of one person processed at once by different instances, so both see the same keys.
    The read comes in a statement after the locks, so it sees what their last holder committed.
    In a batch applied whole the consumer's claim has taken them already (``CLAIM_LOCKS``).
    """
    locked = await CLAIM_LOCKS.take(connection, events)
    wanted = {alias_key(event.lead_id) for event in events}
    return await identities_and_leads(connection, sorted(locked | wanted), [event.lead_id for event in events])


def identity_locks(events: Sequence[Event]) -> set[str]:
    """The identity keys a batch locks: every key of its new leads, and each one's provisional id."""
    locked: set[str] = set()
    for event in events:
        if isinstance(event, LeadReceivedV1):
            keys = identity_keys(event.attributes.email, event.source, event.external_id)
            if keys:
                locked.update((*keys, alias_key(event.lead_id)))
    return locked


# Taken in the statement that claims the batch: a round trip fewer per batch. The claim computes
# them from the events before an erased lead's are stripped of its values, so they are a superset.
CLAIM_LOCKS = ClaimLocks(repository.IDENTITY_LOCK_CLASS, identity_locks)


def make_batch_handler(agreement: Agreement, wake_within: timedelta = WAKE_WITHIN) -> BatchHandler:
    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> list[list[Event]]:
        facts = [list(outcome.facts) for outcome in await apply_batch(connection, events, agreement, now, wake_within)]
        count_refusals(fact for each in facts for fact in each)
        return facts

    return handle


def make_handler(agreement: Agreement, wake_within: timedelta = WAKE_WITHIN) -> Handler:
    return one_at_a_time(make_batch_handler(agreement, wake_within))
