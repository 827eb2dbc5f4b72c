"""CRM activities read back, decided as data: which ``crm.activities.v1`` facts a changed CRM
record stands for (no I/O).

The Salesforce poller (services/crm_sync/poller.py) reads Task, Event, Lead and Opportunity
changes and hands each record, already traced to the Coxswain lead it belongs to, to
:func:`activities_of` with the mapping the connection is configured with (:class:`Mapping`):

- a **Task** that is closed, by a rep of the roster, whose ``TaskSubtype`` is one of
  ``first_touch_task_subtypes`` (``Call``, ``Email``): ``first_touch``; one of
  ``automated_email_task_subtypes`` (``ListEmail``, a mass email): ``automated_email``, which
  counts as a response only where the agreement says so;
- an **Event** (a meeting booked) by a rep of the roster: ``first_touch`` when
  ``events_are_first_touch``;
- a **Lead** whose ``Status`` is one of ``sal_accepted_statuses``: ``sal_accepted``; one of
  ``sal_rejected_statuses``: ``sal_rejected`` with that status's reason code (or the value of
  the Lead's reason field, when one is configured and filled);
- an **Opportunity** (converted from the lead): ``opportunity_created``, then ``won`` or
  ``lost`` when it closes, with its ``Amount``.

Each activity has a key naming the record and what it stands for (``Task/<id>/first_touch``,
``Lead/<id>/sal_accepted/<status>``...): the key, not the poll, decides whether an activity is
new, so a record read twice or edited again never yields a second one. The event id is derived
from the connection and the key, so even a copy published twice is deduped by consumers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping as MappingOf
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from schemas.events import ActivityRecordedV1, ActivityType

SObject = Literal["Task", "Event", "Lead", "Opportunity"]
SOURCE = "salesforce"
KEY_NAMESPACE = uuid.UUID("6b1f3c1e-5a40-4f51-9d7e-3c0a2f1d9b42")


@dataclass(frozen=True)
class Mapping:
    """Which Salesforce changes are which activities (COXSWAIN_CRM_SALESFORCE_* settings)."""

    first_touch_task_subtypes: frozenset[str] = frozenset({"Call", "Email"})
    automated_email_task_subtypes: frozenset[str] = frozenset({"ListEmail"})
    events_are_first_touch: bool = True
    sal_accepted_statuses: frozenset[str] = frozenset({"Working - Contacted"})
    sal_rejected_statuses: MappingOf[str, str] = field(default_factory=dict)
    rejection_reason_field: str | None = None


@dataclass(frozen=True)
class Change:
    """A changed CRM record, traced to the Coxswain lead it belongs to."""

    sobject: SObject
    record: MappingOf[str, Any]  # the fields as the CRM answered them
    lead_id: uuid.UUID


@dataclass(frozen=True)
class Activity:
    key: str
    lead_id: uuid.UUID
    activity: ActivityType
    occurred_at: datetime
    rep_id: str | None = None
    reason: str | None = None
    amount: Decimal | None = None


def parse_datetime(value: object) -> datetime | None:
    """A Salesforce datetime (``2026-12-04T10:00:00.000+0000``) or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _amount(value: object) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount >= 0 else None


def activities_of(change: Change, mapping: Mapping, reps: MappingOf[str, str]) -> tuple[Activity, ...]:
    """The activities one changed record stands for; ``reps`` maps CRM user ids to roster reps."""
    record = change.record
    record_id = str(record.get("Id"))
    rep = reps.get(str(record.get("OwnerId")))
    changed_at = parse_datetime(record.get("LastModifiedDate")) or parse_datetime(record.get("SystemModstamp"))
    if changed_at is None:
        return ()

    def made(activity: ActivityType, at: datetime, suffix: str = "", **extra: Any) -> Activity:
        key = f"{change.sobject}/{record_id}/{activity.value}{suffix}"
        return Activity(key=key, lead_id=change.lead_id, activity=activity, occurred_at=at, rep_id=rep, **extra)

    if change.sobject == "Task":
        if rep is None or not record.get("IsClosed"):
            return ()
        subtype = str(record.get("TaskSubtype") or "")
        at = parse_datetime(record.get("CompletedDateTime")) or changed_at
        if subtype in mapping.first_touch_task_subtypes:
            return (made(ActivityType.first_touch, at),)
        if subtype in mapping.automated_email_task_subtypes:
            return (made(ActivityType.automated_email, at),)
        return ()
    if change.sobject == "Event":
        if rep is None or not mapping.events_are_first_touch:
            return ()
        return (made(ActivityType.first_touch, parse_datetime(record.get("CreatedDate")) or changed_at),)
    if change.sobject == "Lead":
        status = str(record.get("Status") or "")
        if status in mapping.sal_accepted_statuses:
            return (made(ActivityType.sal_accepted, changed_at, f"/{status}"),)
        if status in mapping.sal_rejected_statuses:
            field_reason = record.get(mapping.rejection_reason_field) if mapping.rejection_reason_field else None
            reason = str(field_reason).strip() if field_reason else mapping.sal_rejected_statuses[status]
            return (made(ActivityType.sal_rejected, changed_at, f"/{status}", reason=reason[:256]),)
        return ()
    # Opportunity
    amount = _amount(record.get("Amount"))
    created = made(
        ActivityType.opportunity_created,
        parse_datetime(record.get("CreatedDate")) or changed_at,
        amount=amount,
    )
    if not record.get("IsClosed"):
        return (created,)
    outcome = ActivityType.won if record.get("IsWon") else ActivityType.lost
    return (created, made(outcome, changed_at, amount=amount))


def activity_event(activity: Activity, connection: str) -> ActivityRecordedV1:
    """The fact for an activity: its id derived from the connection and the key."""
    return ActivityRecordedV1(
        event_id=uuid.uuid5(KEY_NAMESPACE, f"{connection}/{activity.key}"),
        lead_id=activity.lead_id,
        occurred_at=activity.occurred_at,
        source=SOURCE,
        webhook_id=f"{connection}/{activity.key}"[:256],
        activity=activity.activity,
        rep_id=activity.rep_id,
        reason=activity.reason,
        amount=activity.amount,
    )
