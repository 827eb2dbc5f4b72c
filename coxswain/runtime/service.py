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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.runtime.consumer import BatchHandler, Handler
from coxswain.settings import Settings
from schemas.events import Event

H = TypeVar("H")

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


@dataclass(frozen=True)
class ConsumerSpec:
    accepts: dict[str, tuple[type[Event], ...]]
    wire: Callable[[Process], Wired]
    # 0: on the path from a webhook to a rep, so every record is fetched as soon as it arrives.
    # Above 0: off that path, so records may gather this long and be applied in fewer, larger
    # batches, which costs far less CPU per record and leaves the cores to the path users wait on.
    gather_ms: int = 0


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
