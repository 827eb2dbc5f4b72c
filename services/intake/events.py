"""What intake accepts and the events it makes of it, apart from the HTTP app: the simulator
builds its events with these very functions, without loading a web framework."""

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


class LeadBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[LeadEventIn] = Field(min_length=1)


class ActivityBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    activities: list[ActivityIn] = Field(min_length=1)


class Problem(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers


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
            raise Problem(422, f"events[{index}]: {exc}") from None
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
        raise Problem(422, "activity does not validate", validation_errors(exc)) from None
