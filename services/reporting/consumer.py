"""Reporting shell: store every published fact once, and each lead's report dimensions.

Reports are queries over these rows, so any date range can be recomputed at any time and gives
the same figures; a redelivered fact hits the inbox (and the primary key) and changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.db.models import table
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

# Scores are the bulk of the traffic and reports need none of them (stage changes carry the
# verdicts); scorecards are reporting's own output, kept in scorecard_periods. Raw CRM activities
# are left out too: reports count activities as scoring judged them (ActivityAcceptedV1), so an
# activity the agreement refused never reaches a figure.
ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    event.topic: (event,) for event in ALL_EVENTS if event not in (LeadScoredV1, ScorecardIssuedV1, ActivityRecordedV1)
}


async def record(connection: AsyncConnection, event: Event, now: datetime) -> None:
    await connection.execute(
        insert(table("report_facts"))
        .values(
            event_id=event.event_id,
            kind=type(event).__name__,
            lead_id=event.lead_id,
            occurred_at=event.occurred_at,
            agreement_version=getattr(event, "agreement_version", None),
            payload=event.model_dump(mode="json"),
            recorded_at=now,
        )
        .on_conflict_do_nothing(index_elements=["event_id", "occurred_at"])
    )
    if isinstance(event, (LeadReceivedV1, LeadQualifiedV1)):
        await remember_lead(connection, event)


async def remember_lead(connection: AsyncConnection, event: LeadReceivedV1 | LeadQualifiedV1) -> None:
    """First touch wins: a lead keeps the source and campaign it arrived with. Topics are not
    ordered with each other, so a qualification may be seen before the event that caused it."""
    await connection.execute(
        text(
            "INSERT INTO report_leads (lead_id, first_seen_at, source, campaign, persona) "
            "VALUES (:lead_id, :at, :source, :campaign, :persona) ON CONFLICT (lead_id) DO UPDATE SET "
            "source = CASE WHEN excluded.first_seen_at < report_leads.first_seen_at "
            "THEN excluded.source ELSE report_leads.source END, "
            "campaign = CASE WHEN excluded.first_seen_at < report_leads.first_seen_at "
            "THEN coalesce(excluded.campaign, report_leads.campaign) "
            "ELSE coalesce(report_leads.campaign, excluded.campaign) END, "
            "persona = coalesce(excluded.persona, report_leads.persona), "
            "first_seen_at = least(report_leads.first_seen_at, excluded.first_seen_at)"
        ),
        {
            "lead_id": event.lead_id,
            "at": event.occurred_at,
            "source": event.source,
            "campaign": event.attributes.campaign,
            "persona": getattr(event, "persona", None),
        },
    )


def make_handler(_: Agreement) -> Handler:
    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        await record(connection, event, now)
        return []

    return handle
