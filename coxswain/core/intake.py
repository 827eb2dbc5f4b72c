"""What intake accepts and the events it makes of it, as data: the models of a lead event and a CRM
activity as senders post them, and the pure functions that turn them into ``leads.received.v1``
and ``crm.activities.v1`` facts. Intake's HTTP app and the simulator build their events with
these very functions (the simulator without loading a web framework)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from coxswain.core.identity import intake_event_id, lead_id_for
from schemas.events import (
    ActivityRecordedV1,
    ActivityType,
    Code,
    EngagementType,
    LeadAttributes,
    LeadReceivedV1,
    ShortText,
)


class Unacceptable(ValueError):
    """An input that validates as JSON but cannot become an event (intake answers 422)."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


class LeadEventIn(BaseModel):
    """One marketing-automation event about a person."""

    model_config = ConfigDict(extra="forbid")

    type: EngagementType
    occurred_at: AwareDatetime | None = Field(default=None, description="Defaults to the time of receipt.")
    external_id: ShortText | None = Field(default=None, description="The sender's contact id.")
    contact: LeadAttributes


class ActivityIn(BaseModel):
    """One thing a rep did, reported by a CRM."""

    model_config = ConfigDict(extra="forbid")

    lead_id: uuid.UUID = Field(description="The lead id Coxswain published in leads.routed.v1.")
    activity: ActivityType
    occurred_at: AwareDatetime | None = None
    rep_id: Code | None = None
    reason: ShortText | None = None
    amount: float | None = Field(default=None, ge=0)


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(part) for part in error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False)[:50]
    ]


def build_lead_events(
    source: str, webhook_id: str, batch: Sequence[LeadEventIn], now: datetime
) -> list[LeadReceivedV1]:
    events = []
    for index, item in enumerate(batch):
        try:
            lead_id = lead_id_for(item.contact.email, source, item.external_id)
        except ValueError as exc:
            raise Unacceptable(f"events[{index}]: {exc}") from None
        events.append(
            LeadReceivedV1(
                event_id=intake_event_id(source, webhook_id, index),
                lead_id=lead_id,
                occurred_at=item.occurred_at or now,
                source=source,
                webhook_id=webhook_id,
                external_id=item.external_id,
                engagement=item.type,
                attributes=item.contact,
            )
        )
    return events


def build_activities(
    source: str, webhook_id: str, batch: Sequence[ActivityIn], now: datetime
) -> list[ActivityRecordedV1]:
    try:
        return [
            ActivityRecordedV1(
                event_id=intake_event_id(source, webhook_id, index),
                lead_id=item.lead_id,
                occurred_at=item.occurred_at or now,
                source=source,
                webhook_id=webhook_id,
                activity=item.activity,
                rep_id=item.rep_id,
                reason=item.reason,
                amount=item.amount,
            )
            for index, item in enumerate(batch)
        ]
    except ValidationError as exc:
        raise Unacceptable("activity does not validate", validation_errors(exc)) from None
