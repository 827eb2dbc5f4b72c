"""Reporting shell: store every published fact once, and each lead's report dimensions.

Reports are queries over these rows, so any date range can be recomputed at any time and gives
the same figures; a redelivered fact hits the inbox (and the primary key) and changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.runtime.consumer import Handler
from schemas.events import (
    ALL_EVENTS,
    ActivityRecordedV1,
    Event,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadScoredV1,
    ScorecardIssuedV1,
)
from services.reporting import repository

# Scores are the bulk of the traffic and reports need none of them (stage changes carry the
# verdicts); scorecards are reporting's own output, kept in scorecard_periods. Raw CRM activities
# are left out too: reports count activities as scoring judged them (ActivityAcceptedV1), so an
# activity the agreement refused never reaches a figure.
ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    event.topic: (event,) for event in ALL_EVENTS if event not in (LeadScoredV1, ScorecardIssuedV1, ActivityRecordedV1)
}


async def record(connection: AsyncConnection, event: Event, now: datetime) -> None:
    await repository.store_fact(connection, event, now)
    if isinstance(event, (LeadReceivedV1, LeadQualifiedV1)):
        await repository.remember_lead(connection, event)


def make_handler(_: Agreement) -> Handler:
    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        await record(connection, event, now)
        return []

    return handle
