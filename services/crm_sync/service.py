"""CRM sync shell: carries out the writes ``coxswain.core.crm_sync`` decides, against one CRM
(a :class:`CrmClient`: HubSpot or Salesforce).

Exactly one effect per assignment, in three layers:

1. the consumer's inbox: a redelivered fact (same event id) is skipped before the handler runs;
2. ``crm_writes``: the row of a completed assignment is committed with the inbox claim; an
   assignment found there is not written again (the same assignment in another fact);
3. the CRM itself: before a task is created it is looked up by its assignment id (HubSpot's
   custom task property ``coxswain_assignment_id``, Salesforce's Task field
   ``Coxswain_Assignment_Id__c``), so a crash between the CRM's write and our commit, or a batch
   rolled back and applied again record by record, finds the task instead of adding one. Tasks
   created by this process are also remembered in memory, because HubSpot's search index lags its
   writes by a few seconds.

The HTTP requests run inside the consumer's transaction (the handler gets its connection);
``keepalive`` statements keep the transaction from looking idle while a request or a wait runs.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.crm_sync import (
    CloseOpenTask,
    CloseTask,
    CreateTask,
    CrmKind,
    SetAliasOwner,
    SetOwner,
    plan_merged,
    plan_routed,
    plan_stage_changed,
    roster_owner_ids,
)
from coxswain.core.roster import build_roster
from coxswain.db.roster import load_overrides, roster_revision
from coxswain.runtime import metrics
from coxswain.runtime.consumer import Handler, PermanentError
from schemas.events import Event, LeadMergedV1, LeadRoutedV1, LeadStageChangedV1
from services.crm_sync import repository
from services.crm_sync.retrying import CrmGaveUp, Keepalive

log = logging.getLogger(__name__)

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadRoutedV1.topic: (LeadRoutedV1,),
    LeadStageChangedV1.topic: (LeadStageChangedV1,),
    LeadMergedV1.topic: (LeadMergedV1,),
}
REMEMBERED = 10_000


def consumer_name(connection: str) -> str:
    """The consumer group and inbox name of one CRM connection."""
    return f"crm_sync.{connection}"


class NoEmail(PermanentError):
    """The lead has no email to find its contact or Lead by (never given, or erased)."""


class CrmClient(Protocol):
    """What the connector asks of a CRM (services/crm_sync/hubspot.py, salesforce.py); every
    request honours ``keepalive`` and the shared retry policy (services/crm_sync/retrying.py)."""

    crm: CrmKind

    async def set_owner(self, write: SetOwner, keepalive: Keepalive) -> str:
        """Find or create the person's record (contact, Lead), set its owner; its id."""
        ...

    async def find_task(self, assignment_id: str, keepalive: Keepalive) -> str | None: ...

    async def create_task(self, task: CreateTask, record_id: str, keepalive: Keepalive) -> str: ...

    async def complete_task(self, task_id: str, keepalive: Keepalive) -> None: ...

    async def set_owner_if_found(self, email: str, owner_id: str, keepalive: Keepalive) -> bool:
        """Set the owner of the record with this email if the CRM has one; never creates one."""
        ...

    async def aclose(self) -> None: ...


class _Bounded(OrderedDict[uuid.UUID, str]):
    def remember(self, key: uuid.UUID, value: str) -> None:
        self[key] = value
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class CrmSync:
    """The connector's state beyond one event: the client (and its Retry-After), the tasks this
    process created, and the events whose requests already failed every attempt."""

    def __init__(self, client: CrmClient, connection: str | None = None) -> None:
        self.client = client
        self.crm: CrmKind = client.crm
        self.connection = connection or client.crm
        self._created = _Bounded()
        # A record that failed every attempt while its batch was applied whole is dead-lettered at
        # once when the batch is applied again record by record (not tried as often again).
        self._gave_up = _Bounded()
        self._owners: tuple[Agreement, int, dict[str, str]] | None = None

    async def owners(self, connection: AsyncConnection, agreement: Agreement) -> Mapping[str, str]:
        """rep id -> owner id in this CRM: the agreement's, with the roster API's changes on top
        (a rep added at runtime, ids changed there); rebuilt when either changes."""
        revision = await roster_revision(connection)
        if self._owners is None or self._owners[0] is not agreement or self._owners[1] != revision:
            roster = build_roster(agreement, await load_overrides(connection, revision))
            self._owners = (agreement, revision, roster_owner_ids(roster, self.crm))
        return self._owners[2]

    async def routed(
        self, connection: AsyncConnection, fact: LeadRoutedV1, owners: Mapping[str, str], now: datetime
    ) -> None:
        if fact.event_id in self._gave_up:
            raise CrmGaveUp(self._gave_up[fact.event_id])
        if await repository.assignment_written(connection, self.connection, fact.assignment_id):
            log.info("assignment already written to the crm: assignment_id=%s", fact.assignment_id)
            return
        attributes = await repository.lead_attributes(connection, fact.lead_id)
        email = attributes.get("email")
        if not isinstance(email, str) or not email:
            raise NoEmail(f"lead {fact.lead_id} has no email: {self.crm} records are found by email")
        keepalive = _keepalive(connection)
        contact_id = task_id = ""
        aliases = await repository.lead_emails(connection, fact.lead_id)
        try:
            for write in plan_routed(fact, owners, email, self.crm, attributes, aliases):
                if isinstance(write, CloseTask):
                    await self._close(connection, write.assignment_id, write.reason, now, keepalive)
                elif isinstance(write, SetOwner):
                    contact_id = await self.client.set_owner(write, keepalive)
                elif isinstance(write, SetAliasOwner):
                    await self.client.set_owner_if_found(write.email, write.owner_id, keepalive)
                elif isinstance(write, CreateTask):
                    task_id = await self._task(write, contact_id, keepalive)
        except CrmGaveUp as exc:
            self._gave_up.remember(fact.event_id, str(exc))
            raise
        await repository.record_write(
            connection,
            self.connection,
            repository.NewCrmWrite(
                assignment_id=fact.assignment_id,
                lead_id=fact.lead_id,
                rep_id=fact.rep_id,
                owner_id=owners[fact.rep_id],
                contact_id=contact_id,
                task_id=task_id,
                written_at=now,
            ),
        )
        log.info("crm written: crm=%s assignment_id=%s task_id=%s", self.crm, fact.assignment_id, task_id)

    async def merged(self, connection: AsyncConnection, fact: LeadMergedV1) -> None:
        """An alias of a lead that has an owner here: its record (found by the alias's email) gets
        that owner. Setting an owner twice is harmless, so a redelivery needs no record of its own."""
        if fact.event_id in self._gave_up:
            raise CrmGaveUp(self._gave_up[fact.event_id])
        owner = await repository.open_owner(connection, self.connection, fact.lead_id)
        email = (await repository.lead_attributes(connection, fact.lead_id)).get("email")
        keepalive = _keepalive(connection)
        try:
            for write in plan_merged(fact, owner, email if isinstance(email, str) else None):
                if isinstance(write, SetAliasOwner):
                    await self.client.set_owner_if_found(write.email, write.owner_id, keepalive)
        except CrmGaveUp as exc:
            self._gave_up.remember(fact.event_id, str(exc))
            raise
        log.info("merge followed: crm=%s lead_id=%s alias=%s", self.crm, fact.lead_id, fact.alias_lead_id)

    async def stage_changed(self, connection: AsyncConnection, fact: LeadStageChangedV1, now: datetime) -> None:
        for write in plan_stage_changed(fact):
            if isinstance(write, CloseOpenTask):
                for assignment_id in await repository.open_assignments(connection, self.connection, write.lead_id):
                    await self._close(connection, assignment_id, write.reason, now, _keepalive(connection))

    async def _close(
        self, connection: AsyncConnection, assignment_id: uuid.UUID, reason: str, now: datetime, keepalive: Keepalive
    ) -> None:
        """Complete the assignment's task: the one recorded, else one found by its assignment id."""
        row = await repository.lock_write(connection, self.connection, assignment_id)
        if row is not None and row.closed_at is not None:
            return
        task_id = row.task_id if row is not None else self._created.get(assignment_id)
        if task_id is None:
            task_id = await self.client.find_task(str(assignment_id), keepalive)
        if task_id is None:
            log.info("no task to close: assignment_id=%s", assignment_id)
            return
        await self.client.complete_task(task_id, keepalive)
        metrics.CRM_WRITES.labels(self.crm, "task_closed").inc()
        if row is not None:
            await repository.close_write(connection, self.connection, assignment_id, now, reason[:500])

    async def _task(self, write: CreateTask, contact_id: str, keepalive: Keepalive) -> str:
        task_id = self._created.get(write.assignment_id) or await self.client.find_task(
            str(write.assignment_id), keepalive
        )
        if task_id is not None:
            metrics.CRM_WRITES.labels(self.crm, "task_found").inc()
            return task_id
        task_id = await self.client.create_task(write, contact_id, keepalive)
        self._created.remember(write.assignment_id, task_id)
        metrics.CRM_WRITES.labels(self.crm, "task_created").inc()
        return task_id


def _keepalive(connection: AsyncConnection) -> Keepalive:
    async def keepalive() -> None:
        await repository.keepalive(connection)

    return keepalive


def make_handler(agreement: Agreement, sync: CrmSync) -> Handler:

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        if isinstance(event, LeadRoutedV1):
            await sync.routed(connection, event, await sync.owners(connection, agreement), now)
        elif isinstance(event, LeadStageChangedV1):
            await sync.stage_changed(connection, event, now)
        elif isinstance(event, LeadMergedV1):
            await sync.merged(connection, event)
        return ()

    return handle
