"""The one shape of a consumer service, as the composition root reads it.

A service module exports a :class:`ConsumerSpec`: the topics and event types it accepts, and how
to wire it inside a running process (:class:`Process`: the database, the agreement in force, the
clock, the settings). Wiring returns a :class:`Wired`: the per-event handler, the batch handler
if the service has one, and the background tasks it needs beside the consumer loop (timers,
retries, an HTTP server). ``coxswain_app.wiring`` runs every spec the same way, so adding a service
is one spec and one entry in its table, never another ``if name == ...``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.runtime import metrics
from coxswain.runtime.consumer import (
    BatchHandler,
    ClaimLocks,
    Handler,
    RetrySoon,
    as_applied,
    claim_first_seen,
    claim_with_the_batch,
)
from coxswain.runtime.outages import is_connection_error
from coxswain.settings import Settings
from schemas.events import Event

H = TypeVar("H")

log = logging.getLogger(__name__)

Task = Callable[[asyncio.Event], Awaitable[None]]  # runs until the event is set


@dataclass(frozen=True)
class Process:
    """What a consumer process offers the service it runs."""

    name: str
    engine: AsyncEngine
    agreement: Callable[[], Agreement]  # the version in force now (polled, may change)
    clock: Callable[[], datetime]
    settings: Settings


@dataclass(frozen=True)
class Wired:
    handler: Handler
    batch_handler: BatchHandler | None = None
    tasks: tuple[Task, ...] = ()
    # Most of its records are applied for it upstream, in the transaction that produced them
    # (``handing_over``): the consumer looks a batch up in the inbox before it opens a transaction.
    skip_applied: bool = False
    # When set, replaces the spec's ``gather_ms``: how long records may gather, decided at wiring
    # time from the settings (a consumer whose records are applied upstream is off the lead's path).
    gather_ms: int | None = None


@dataclass(frozen=True)
class ConsumerSpec:
    accepts: dict[str, tuple[type[Event], ...]]
    wire: Callable[[Process], Wired]
    # 0: on the path from a webhook to a rep, so every record is fetched as soon as it arrives.
    # Above 0: off that path, so records may gather this long and be applied in fewer, larger
    # batches, which costs far less CPU per record and leaves the cores to the path users wait on.
    gather_ms: int = 0
    # Its batches run on connections that plan every statement once for all calls
    # (coxswain.db.database.BATCH_SETTINGS): for a consumer whose statements look rows up by key.
    generic_plans: bool = False
    # Advisory locks its batch handler needs first, taken in the statement that claims a batch.
    claim_locks: ClaimLocks | None = None


def versioned(current: Callable[[], Agreement], make: Callable[[Agreement], H]) -> Callable[[], H]:
    """The handler for the agreement in force now, rebuilt only when the agreement changes."""
    # Keyed by identity: an Agreement holds dicts, so it is not hashable (hashing it failed every event).
    built: list[tuple[Agreement, H]] = []

    def get() -> H:
        agreement = current()
        if not built or built[0][0] is not agreement:
            built[:] = [(agreement, make(agreement))]
        return built[0][1]

    return get


def versioned_handler(current: Callable[[], Agreement], make_handler: Callable[[Agreement], Handler]) -> Handler:
    """Each event is handled under the agreement in force when it is processed; the facts name it."""
    get = versioned(current, make_handler)

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        return await get()(connection, event, now)

    return handle


def versioned_batch_handler(
    current: Callable[[], Agreement], make: Callable[[Agreement], BatchHandler]
) -> BatchHandler:
    """A batch is handled under the agreement in force when it is processed."""
    get = versioned(current, make)

    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> Sequence[Sequence[Event]]:
        return await get()(connection, events, now)

    return handle


def per_agreement(
    make_handler: Callable[[Agreement], Handler],
    make_batch_handler: Callable[[Agreement], BatchHandler] | None = None,
    tasks: Callable[[Process], tuple[Task, ...]] = lambda _: (),
) -> Callable[[Process], Wired]:
    """The usual wiring: handlers built per agreement version, plus the service's tasks."""

    def wire(process: Process) -> Wired:
        return Wired(
            versioned_handler(process.agreement, make_handler),
            None if make_batch_handler is None else versioned_batch_handler(process.agreement, make_batch_handler),
            tasks(process),
        )

    return wire


class HandOverFailed(RetrySoon):
    """Handing over failed: the batch is rolled back and applied again at once without it."""


# Input events whose batch is applied without handing over, remembered between a failed hand-over
# and the batch applied again; forgotten past this many (a batch seen again only in part, say),
# which costs at most one more failed try each.
_DECLINED_AT_MOST = 10_000


def handing_over(
    first: BatchHandler, consumer: str, kinds: tuple[type[Event], ...], then: BatchHandler
) -> BatchHandler:
    """``first``, then, in the same transaction, ``then`` (the handler of ``consumer``) applied to
    the facts of ``kinds`` that ``first`` produced: one hop fewer for them, no Kafka record waited for.

    The facts are still staged and published; ``consumer`` still reads them from Kafka, and its
    inbox, claimed here in the same transaction, makes that a no-op: either this transaction
    commits (the facts, ``then``'s writes and the claims together) or none of it happened. When
    ``then`` fails (a passing lock conflict, a fact it refuses), the whole batch is rolled back
    (``HandOverFailed``, a ``RetrySoon``) and applied again at once without handing over, so
    ``consumer`` applies those facts from Kafka as it would have anyway, with its own retries and
    dead-letter topic: handing over is never a new way to fail ``first``'s input. The claims ride in
    the statement that stages the facts when the batch's own claim locked and read the erasures of
    their leads (``claim_with_the_batch``), as it has for scoring's facts about the leads it was
    given; a fact about another lead (a merge) is claimed at once. Rolling back to a
    savepoint instead cost every batch two more round trips (the savepoint and its release) for a
    failure that is rare. Each handed fact's own facts follow it, so they are staged (and
    published) after it."""
    declined: set[uuid.UUID] = set()

    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> Sequence[Sequence[Event]]:
        facts = [list(each) for each in await first(connection, events, now)]
        handed = [(index, fact) for index, each in enumerate(facts) for fact in each if isinstance(fact, kinds)]
        if not handed:
            return facts
        inputs = {event.event_id for event in events}
        if not declined.isdisjoint(inputs):
            declined.difference_update(inputs)
            return facts
        try:
            first_seen = await claim_with_the_batch(connection, consumer, [fact for _, fact in handed], now)
            if first_seen is None:
                first_seen = await claim_first_seen(
                    connection, consumer, [(fact.event_id, fact.topic, fact.lead_id) for _, fact in handed], now
                )
            todo = [
                (index, as_applied(fact, first_seen[fact.event_id]))
                for index, fact in handed
                if fact.event_id in first_seen
            ]
            results = await then(connection, [fact for _, fact in todo], now) if todo else []
        except Exception as exc:
            if is_connection_error(exc):
                raise
            # Not a fault of the batch: the facts go by Kafka, as they did before handing over.
            log.log(
                logging.INFO if isinstance(exc, RetrySoon) else logging.WARNING,
                "handing over to %s failed, left to its consumer: facts=%s error=%s",
                consumer,
                len(handed),
                type(exc).__name__,
                exc_info=not isinstance(exc, RetrySoon),
            )
            metrics.handover_left(consumer, type(exc).__name__, len(handed))
            if len(declined) >= _DECLINED_AT_MOST:
                declined.clear()
            declined.update(inputs)
            raise HandOverFailed(f"handing over to {consumer} failed: {type(exc).__name__}") from exc
        for (index, _), found in zip(todo, results, strict=True):
            facts[index].extend(found)
        return facts

    return handle
