"""Salesforce activities polled back into ``crm.activities.v1`` (the shell of
``coxswain.core.salesforce_activities``).

Runs inside ``coxswain run crm-sync`` for a Salesforce connection, every
``COXSWAIN_CRM_SALESFORCE_POLL_SECONDS``. Per object (Task, Event, Lead, Opportunity):

1. read the connection's cursor (``crm_cursors``; a new one starts
   ``COXSWAIN_CRM_SALESFORCE_POLL_LOOKBACK_SECONDS`` back);
2. query the records changed since the cursor less the overlap
   (``WHERE SystemModstamp >= <cursor - overlap> ORDER BY SystemModstamp, Id``, every page);
3. trace each record to the Coxswain lead: a Lead by its id in ``crm_writes.contact_id`` (the
   Lead crm-sync wrote the owner on) or by the external-id field holding the Coxswain lead id; a
   Task or Event by its ``WhoId`` (that Lead); an Opportunity by the Lead converted into it
   (``Lead.ConvertedOpportunityId``). Records of leads Coxswain does not know are skipped;
4. decide the activities (pure, :func:`coxswain.core.salesforce_activities.activities_of`);
5. in one transaction: record their keys in ``crm_activity_keys`` (those already there are
   dropped), stage the new ones in the outbox, move the cursor forward to the newest
   ``SystemModstamp`` read. A crash before the commit publishes nothing and leaves the cursor;
   the next poll reads the same changes again.

The HTTP requests run outside any transaction. A Salesforce or database failure ends the pass
with a warning; the next pass starts from the same cursor.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.core.salesforce_activities import (
    Activity,
    Change,
    Mapping,
    SObject,
    activities_of,
    activity_event,
    parse_datetime,
)
from coxswain.db.roster import crm_owner_ids
from coxswain.runtime import metrics
from coxswain.runtime.outbox import stage
from coxswain.runtime.waiting import sleep_or_stop
from coxswain.settings import CrmSyncConfig
from services.crm_sync import repository
from services.crm_sync.salesforce import SalesforceClient, soql_literal

log = logging.getLogger(__name__)

OBJECTS: tuple[SObject, ...] = ("Task", "Event", "Lead", "Opportunity")
FIELDS: dict[SObject, tuple[str, ...]] = {
    "Task": ("Id", "WhoId", "OwnerId", "Status", "IsClosed", "TaskSubtype", "CompletedDateTime"),
    "Event": ("Id", "WhoId", "OwnerId", "CreatedDate"),
    "Lead": ("Id", "OwnerId", "Status"),
    "Opportunity": ("Id", "OwnerId", "Amount", "IsClosed", "IsWon", "CreatedDate"),
}
STAMPS = ("LastModifiedDate", "SystemModstamp")
IN_CHUNK = 200


def mapping_of(config: CrmSyncConfig) -> Mapping:
    return Mapping(
        first_touch_task_subtypes=frozenset(config.crm_salesforce_first_touch_task_subtypes),
        automated_email_task_subtypes=frozenset(config.crm_salesforce_automated_email_task_subtypes),
        events_are_first_touch=config.crm_salesforce_events_are_first_touch,
        sal_accepted_statuses=frozenset(config.crm_salesforce_sal_accepted_statuses),
        sal_rejected_statuses=dict(config.crm_salesforce_sal_rejected_statuses),
        rejection_reason_field=config.crm_salesforce_rejection_reason_field,
    )


def soql_datetime(when: datetime) -> str:
    """A SOQL datetime literal (unquoted, UTC, whole seconds: Salesforce keeps no finer)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]


def _in_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(soql_literal(value) for value in values) + ")"


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


class SalesforcePoller:
    def __init__(
        self,
        client: SalesforceClient,
        engine: AsyncEngine,
        config: CrmSyncConfig,
        connection: str,
        agreement: Callable[[], Agreement],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.engine = engine
        self.config = config
        self.connection = connection
        self.agreement = agreement
        self.clock = clock
        self.mapping = mapping_of(config)
        self._lead_field = config.crm_salesforce_lead_external_id_field

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll()
            except Exception as exc:  # the next pass starts from the same cursor
                log.warning("salesforce poll failed: %s: %s", type(exc).__name__, exc)
            await sleep_or_stop(stop, self.config.crm_salesforce_poll_seconds)

    async def poll(self) -> int:
        """One pass over every object; the number of activities published."""
        now = self.clock()
        return sum([await self.poll_object(sobject, now) for sobject in OBJECTS])

    async def poll_object(self, sobject: SObject, now: datetime) -> int:
        cursor = await self._cursor(sobject, now)
        since = cursor - timedelta(seconds=self.config.crm_salesforce_poll_overlap_seconds)
        fields = [*FIELDS[sobject], *STAMPS, *self._extra_fields(sobject)]
        closed = " AND IsClosed = true" if sobject == "Task" else ""
        soql = (
            f"SELECT {', '.join(fields)} FROM {sobject} WHERE SystemModstamp >= {soql_datetime(since)}{closed} "
            "ORDER BY SystemModstamp, Id"
        )
        records = await self.client.query(soql)
        if not records:
            return 0
        stamps = [parse_datetime(record.get("SystemModstamp")) for record in records]
        newest = max((stamp for stamp in stamps if stamp is not None), default=cursor)
        leads = await self._trace(sobject, records)
        async with self.engine.connect() as connection:
            owners = await crm_owner_ids(connection, self.agreement(), "salesforce")
        reps = {user: rep for rep, user in owners.items()}
        activities = [
            activity
            for record in records
            if (lead_id := leads.get(str(record.get("Id")))) is not None
            for activity in activities_of(Change(sobject, record, lead_id), self.mapping, reps)
        ]
        published = await self._publish(sobject, activities, max(newest, cursor), now)
        log.info(
            "salesforce polled: object=%s read=%s traced=%s published=%s", sobject, len(records), len(leads), published
        )
        return published

    def _extra_fields(self, sobject: SObject) -> list[str]:
        extra = []
        if sobject == "Lead" and self._lead_field:
            extra.append(self._lead_field)
        if sobject == "Lead" and self.mapping.rejection_reason_field:
            extra.append(self.mapping.rejection_reason_field)
        return extra

    async def _cursor(self, sobject: SObject, now: datetime) -> datetime:
        async with self.engine.connect() as connection:
            found = await repository.poll_cursor(connection, self.connection, sobject)
        if found is not None:
            return found
        return now - timedelta(seconds=self.config.crm_salesforce_poll_lookback_seconds)

    # ----------------------------------------------------------------- tracing records to leads

    async def _trace(self, sobject: SObject, records: list[dict[str, Any]]) -> dict[str, uuid.UUID]:
        """Record id -> the Coxswain lead it belongs to, for the records that can be traced."""
        if sobject == "Lead":
            return await self._leads({str(r["Id"]): r for r in records})
        if sobject in ("Task", "Event"):
            who = {str(r["Id"]): str(r.get("WhoId") or "") for r in records}
            leads = await self._leads({lead: None for lead in who.values() if lead.startswith("00Q")})
            return {record: leads[lead] for record, lead in who.items() if lead in leads}
        # Opportunity: the Lead converted into it.
        converted: dict[str, str] = {}
        lead_records: dict[str, dict[str, Any] | None] = {}
        extra = f", {self._lead_field}" if self._lead_field else ""
        for chunk in _chunks([str(r["Id"]) for r in records]):
            soql = (
                f"SELECT Id, ConvertedOpportunityId{extra} FROM Lead WHERE ConvertedOpportunityId IN {_in_list(chunk)}"
            )
            for lead in await self.client.query(soql):
                converted[str(lead["ConvertedOpportunityId"])] = str(lead["Id"])
                lead_records[str(lead["Id"])] = lead
        leads = await self._leads(lead_records)
        return {opportunity: leads[lead] for opportunity, lead in converted.items() if lead in leads}

    async def _leads(self, known: dict[str, dict[str, Any] | None]) -> dict[str, uuid.UUID]:
        """Salesforce Lead id -> Coxswain lead id: from crm_writes, else the external-id field
        (read from the record when at hand, else queried)."""
        if not known:
            return {}
        traced: dict[str, uuid.UUID] = {}
        async with self.engine.connect() as connection:
            traced.update(await repository.leads_by_record(connection, self.connection, list(known)))
        if self._lead_field is None:
            return traced
        missing = []
        for lead_id, record in known.items():
            if lead_id in traced:
                continue
            own = _uuid(record.get(self._lead_field)) if record is not None else None
            if own is not None:
                traced[lead_id] = own
            elif record is None:
                missing.append(lead_id)
        for chunk in _chunks(missing):
            soql = f"SELECT Id, {self._lead_field} FROM Lead WHERE Id IN {_in_list(chunk)}"
            for lead in await self.client.query(soql):
                if (own := _uuid(lead.get(self._lead_field))) is not None:
                    traced[str(lead["Id"])] = own
        return traced

    # ----------------------------------------------------------------- publishing

    async def _publish(self, sobject: SObject, activities: list[Activity], cursor: datetime, now: datetime) -> int:
        events = {activity.key: activity_event(activity, self.connection) for activity in activities}
        async with self.engine.begin() as connection:
            fresh: set[str] = set()
            if events:
                keys = [repository.ActivityKey(key, event.event_id, event.lead_id) for key, event in events.items()]
                fresh = await repository.record_activity_keys(connection, self.connection, keys, now)
            if fresh:
                await stage(connection, [event for key, event in events.items() if key in fresh], now)
            await repository.advance_cursor(connection, self.connection, sobject, cursor, now)
        for key in fresh:
            metrics.CRM_ACTIVITIES.labels("salesforce", events[key].activity.value).inc()
        return len(fresh)
