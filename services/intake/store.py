"""Storing accepted webhooks (inbox, events, outbox) with group commit: webhooks that arrive
together are stored by one statement (``repository.insert_webhooks``) and one commit.

A webhook is acknowledged only after its events are durable, so each one used to cost a commit
(a disk flush, and PostgreSQL serialises the commits of notifying transactions) and a round trip.
Here each request hands its webhook to a writer and waits for it. A writer takes everything that
queued while the previous statement ran, so at low load a webhook is written alone, at once, and
under load the cost of a commit is shared by every webhook waiting for it; no request ever waits
for a timer.

Whatever the grouping, each webhook keeps its own guarantees: the inbox row, its events and
their outbox rows are stored together or not at all (one statement is atomic), a webhook id seen
before is answered from the inbox, and one bad webhook cannot fail the others (a failed group is
written again one webhook at a time).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.runtime.outages import is_connection_error
from services.intake import repository
from services.intake.repository import Webhook

log = logging.getLogger(__name__)


class AcceptedEvent(BaseModel):
    event_id: str
    lead_id: str
    lead_id_provisional: bool = Field(
        description="True when intake derived the lead id itself (marketing events; docs/integrators.md, "
        "Provisional lead ids): it is the lead's id unless a leads.merged.v1 fact later names it as "
        "alias_lead_id of another lead. False when the caller named the lead (CRM activities)."
    )


class Accepted(BaseModel):
    webhook_id: str
    duplicate: bool = Field(description="True when this webhook id was already accepted; nothing new is stored.")
    events: list[AcceptedEvent]


async def store_many(connection: AsyncConnection, webhooks: Sequence[Webhook]) -> list[Accepted]:
    """Inbox first: a webhook id accepted before is answered with what was stored then.

    One statement stores every new webhook's inbox row, events and outbox rows (and wakes the
    relay): atomic on its own, so it needs no surrounding transaction. Each (source, webhook id)
    at most once per call.
    """
    assert len({(w.source, w.webhook_id) for w in webhooks}) == len(webhooks), "a webhook twice in one group"
    fresh = await repository.insert_webhooks(connection, webhooks)
    answers: list[Accepted] = []
    for n, webhook in enumerate(webhooks, start=1):
        if n in fresh:
            answers.append(
                Accepted(
                    webhook_id=webhook.webhook_id,
                    duplicate=False,
                    events=[
                        AcceptedEvent(
                            event_id=str(e.event_id), lead_id=str(e.lead_id), lead_id_provisional=webhook.kind == "lead"
                        )
                        for e in webhook.events
                    ],
                )
            )
        else:
            answers.append(await _answered_before(connection, webhook))
    return answers


async def _answered_before(connection: AsyncConnection, webhook: Webhook) -> Accepted:
    stored = await repository.stored_webhook(connection, webhook.source, webhook.webhook_id)
    return Accepted(
        webhook_id=webhook.webhook_id,
        duplicate=True,
        events=[
            AcceptedEvent(event_id=event, lead_id=lead, lead_id_provisional=stored.kind == "lead")
            for event, lead in zip(stored.event_ids, stored.lead_ids, strict=True)
        ],
    )


@dataclass
class _Waiting:
    webhook: Webhook
    answer: asyncio.Future[Accepted] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    """Queue webhooks and store them in groups on autocommit connections of ``engine``."""

    def __init__(self, engine: AsyncEngine, max_group: int = 256, writers: int = 2) -> None:
        self._engine = engine
        self._max_group = max_group
        self._writers = writers
        self._queue: deque[_Waiting] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def store(self, webhook: Webhook) -> Accepted:
        waiting = _Waiting(webhook)
        self._queue.append(waiting)
        if len(self._running) < self._writers:
            task = asyncio.create_task(self._write_while_queued())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        # Shielded: a client that hangs up does not cancel a write other webhooks share.
        return await asyncio.shield(waiting.answer)

    def _next_group(self) -> list[_Waiting]:
        group: list[_Waiting] = []
        seen: set[tuple[str, str]] = set()
        later: list[_Waiting] = []
        while self._queue and len(group) < self._max_group:
            waiting = self._queue.popleft()
            key = (waiting.webhook.source, waiting.webhook.webhook_id)
            if key in seen:
                later.append(waiting)  # the same webhook retried at once: answered from the inbox next time
            else:
                seen.add(key)
                group.append(waiting)
        self._queue.extendleft(reversed(later))
        return group

    async def _write_while_queued(self) -> None:
        while group := self._next_group():
            try:
                await self._write(group)
            except Exception as exc:
                if is_connection_error(exc) or len(group) == 1:
                    _fail(group, exc)
                    continue
                log.warning("group of %s webhooks failed (%s); storing them one by one", len(group), type(exc).__name__)
                for waiting in group:
                    try:
                        await self._write([waiting])
                    except Exception as each:
                        _fail([waiting], each)

    async def _write(self, group: Sequence[_Waiting]) -> None:
        async with self._engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            answers = await store_many(autocommit, [waiting.webhook for waiting in group])
        for waiting, answer in zip(group, answers, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(answer)


def _fail(group: Sequence[_Waiting], exc: BaseException) -> None:
    for waiting in group:
        if not waiting.answer.done():
            waiting.answer.set_exception(exc)
