"""Scoring shell: load the lead under a row lock, ask the core, save, return the facts."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.lead import LeadState, Outcome, on_activity, on_received
from coxswain.core.scoring import Touch
from coxswain.db.models import table
from coxswain.runtime.consumer import Handler, PermanentError
from schemas.events import (
    ActivityRecordedV1,
    EngagementType,
    Event,
    LeadAttributes,
    LeadReceivedV1,
    Stage,
    Tier,
)

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadReceivedV1.topic: (LeadReceivedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
}


async def load(connection: AsyncConnection, lead_id: uuid.UUID) -> LeadState | None:
    row = (
        await connection.execute(
            text(
                "SELECT stage, source, attributes, touches, score_total, tier FROM leads WHERE lead_id = :id FOR UPDATE"
            ),
            {"id": lead_id},
        )
    ).one_or_none()
    if row is None:
        return None
    return LeadState(
        lead_id=lead_id,
        stage=Stage(row.stage),
        source=row.source,
        attributes=LeadAttributes.model_validate(row.attributes),
        touches=tuple(Touch(EngagementType(kind), datetime.fromisoformat(at)) for kind, at in row.touches),
        score_total=row.score_total,
        tier=Tier(row.tier) if row.tier else None,
    )


async def save(connection: AsyncConnection, state: LeadState, agreement_version: str, now: datetime) -> None:
    values = {
        "lead_id": state.lead_id,
        "stage": state.stage.value,
        "source": state.source,
        "attributes": state.attributes.model_dump(mode="json", exclude_none=True),
        "touches": [[touch.engagement.value, touch.at.isoformat()] for touch in state.touches],
        "score_total": state.score_total,
        "tier": state.tier.value if state.tier else None,
        "agreement_version": agreement_version,
        "updated_at": now,
    }
    statement = insert(table("leads")).values(values)
    await connection.execute(
        statement.on_conflict_do_update(
            index_elements=["lead_id"], set_={k: statement.excluded[k] for k in values if k != "lead_id"}
        )
    )


def make_handler(agreement: Agreement) -> Handler:
    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        state = await load(connection, event.lead_id)
        outcome: Outcome
        if isinstance(event, LeadReceivedV1):
            # Scored at the event's own time, so a replay of the same events reproduces every fact.
            outcome = on_received(state or LeadState(lead_id=event.lead_id), event, agreement, event.occurred_at)
        elif isinstance(event, ActivityRecordedV1):
            if state is None:
                raise PermanentError(
                    f"activity {event.activity.value} for lead {event.lead_id}, which scoring has never seen"
                )
            outcome = on_activity(state, event, agreement, event.occurred_at)
        else:
            raise PermanentError(f"scoring does not handle {type(event).__name__}")
        await save(connection, outcome.state, agreement.version, now)
        return list(outcome.facts)

    return handle
