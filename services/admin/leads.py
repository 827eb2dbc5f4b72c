"""Why a lead is where it is: stage, score with every rule's decayed value, tier, owner, SLA
clocks and the timeline of facts, read from the tables the services write."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.playbooks import playbook_for
from coxswain.core.scoring import score
from coxswain.db.leads import canonical_lead_id, load
from services.admin.models import (
    LeadExplained,
    Owner,
    Reevaluation,
    Refusal,
    Score,
    SlaClock,
    TimelineEntry,
)


async def aliases_of(connection: AsyncConnection, lead_id: uuid.UUID) -> list[uuid.UUID]:
    """The provisional ids identity resolution folded into the lead (``id:`` keys), in order."""
    keys = await connection.scalars(
        text("SELECT key FROM lead_identities WHERE lead_id = :lead_id AND key LIKE 'id:%' ORDER BY key"),
        {"lead_id": lead_id},
    )
    return [uuid.UUID(key.removeprefix("id:")) for key in keys]


async def explain(
    connection: AsyncConnection, requested: uuid.UUID, agreement: Agreement, now: datetime
) -> LeadExplained | None:
    lead_id = await canonical_lead_id(connection, requested)
    state = await load(connection, lead_id, lock="none")
    if state is None:
        return None
    folded = await aliases_of(connection, lead_id)
    ids = [lead_id, *folded]
    current = score(state.attributes, state.touches, agreement, now)
    definition = agreement.lifecycle.stages.get(state.stage)
    playbook = playbook_for(agreement, state.persona, state.stage, state.tier)
    timer = (
        await connection.execute(
            text("SELECT due_at, stage, timer_id FROM scoring_timers WHERE lead_id = :lead_id"), {"lead_id": lead_id}
        )
    ).one_or_none()
    return LeadExplained(
        lead_id=lead_id,
        aliases=folded,
        stage=state.stage.value,
        stage_definition=None if definition is None else definition.model_dump(mode="json"),
        persona=state.persona,
        tier=state.tier.value if state.tier else None,
        attributes=state.attributes.model_dump(mode="json", exclude_none=True),
        score=Score(
            at=now,
            agreement_version=agreement.version,
            fit=current.fit,
            engagement=current.engagement,
            total=current.total,
            contributions=[c.model_dump(mode="json") for c in current.contributions],
            mql={"enter": agreement.scoring.mql.enter, "exit": agreement.scoring.mql.exit},
            sql=None if agreement.scoring.sql is None else agreement.scoring.sql.model_dump(mode="json"),
        ),
        decay_protected=state.pinned,
        held_until=state.held_until,
        recycled_until=state.recycled_until,
        next_reevaluation=None
        if timer is None
        else Reevaluation(due_at=timer.due_at, stage=timer.stage, timer_id=timer.timer_id),
        playbook=None if playbook is None else playbook.model_dump(mode="json"),
        owner=await _owner(connection, lead_id),
        sla=await _sla(connection, lead_id),
        refusals=await _refusals(connection, ids),
        timeline=await _timeline(connection, ids),
    )


async def _refusals(connection: AsyncConnection, ids: list[uuid.UUID]) -> list[Refusal]:
    """The CRM activities scoring refused for this lead, with the agreement's reason: they changed nothing."""
    rows = await connection.execute(
        text(
            "SELECT event_id, occurred_at, agreement_version, payload FROM lead_facts "
            "WHERE lead_id = ANY(:ids) AND kind = 'ActivityRefusedV1' ORDER BY occurred_at, event_id"
        ),
        {"ids": ids},
    )
    return [
        Refusal(
            event_id=row.event_id,
            at=row.occurred_at,
            activity_id=str(row.payload["caused_by"]),
            activity=row.payload["activity"],
            rep_id=row.payload.get("rep_id"),
            refusal=row.payload["refusal"],
            reason=row.payload["reason"],
            agreement_version=row.agreement_version,
        )
        for row in rows
    ]


async def _owner(connection: AsyncConnection, lead_id: uuid.UUID) -> Owner | None:
    row = (
        await connection.execute(
            text(
                "SELECT assignment_id, rep_id, pool_id, rule_id, reason, tier, agreement_version, routed_at "
                "FROM assignments WHERE lead_id = :lead_id ORDER BY routed_at DESC LIMIT 1"
            ),
            {"lead_id": lead_id},
        )
    ).one_or_none()
    return None if row is None else Owner.model_validate(row._asdict())


async def _sla(connection: AsyncConnection, lead_id: uuid.UUID) -> list[SlaClock]:
    rows = await connection.execute(
        text(
            "SELECT deadline_id, assignment_id, rep_id, milestone, tier, armed_at, due_at, status, decided_at, "
            "responded_by, superseded_by, reassignments, paged FROM deadlines WHERE lead_id = :lead_id "
            "ORDER BY armed_at, milestone"
        ),
        {"lead_id": lead_id},
    )
    return [SlaClock.model_validate(row._asdict()) for row in rows]


async def _timeline(connection: AsyncConnection, ids: list[uuid.UUID]) -> list[TimelineEntry]:
    entries: list[tuple[int, TimelineEntry]] = []
    for row in await connection.execute(
        text("SELECT event_id, kind, payload, received_at FROM intake_events WHERE lead_id = ANY(:ids)"), {"ids": ids}
    ):
        payload = row.payload
        at = datetime.fromisoformat(payload["occurred_at"]) if "occurred_at" in payload else row.received_at
        if row.kind == "lead":
            kind, summary = "LeadReceivedV1", f"{payload.get('engagement')} from {payload.get('source')}"
        else:
            reason = f" ({payload['reason']})" if payload.get("reason") else ""
            kind, summary = "ActivityRecordedV1", f"{payload.get('activity')}{reason} from {payload.get('source')}"
        entries.append((0, TimelineEntry(at=at, kind=kind, event_id=row.event_id, summary=summary)))
    for row in await connection.execute(
        text(
            "SELECT event_id, kind, occurred_at, agreement_version, caused_by, payload FROM lead_facts "
            "WHERE lead_id = ANY(:ids)"
        ),
        {"ids": ids},
    ):
        order = {"LeadScoredV1": 1, "LeadStageChangedV1": 2, "LeadQualifiedV1": 3}.get(row.kind, 4)
        entry = TimelineEntry(
            at=row.occurred_at,
            kind=row.kind,
            event_id=row.event_id,
            caused_by=row.caused_by,
            agreement_version=row.agreement_version,
            summary=_summary(row.kind, row.payload),
            detail=row.payload,
        )
        entries.append((order, entry))
    for row in await connection.execute(
        text(
            "SELECT assignment_id, rep_id, pool_id, rule_id, agreement_version, routed_at FROM assignments "
            "WHERE lead_id = ANY(:ids)"
        ),
        {"ids": ids},
    ):
        summary = f"routed to {row.rep_id} (pool {row.pool_id}, rule {row.rule_id})"
        entry = TimelineEntry(
            at=row.routed_at,
            kind="LeadRoutedV1",
            assignment_id=row.assignment_id,
            agreement_version=row.agreement_version,
            summary=summary,
        )
        entries.append((5, entry))
    for row in await connection.execute(
        text("SELECT milestone, status, armed_at, due_at, decided_at FROM deadlines WHERE lead_id = ANY(:ids)"),
        {"ids": ids},
    ):
        armed = f"{row.milestone} due {row.due_at.isoformat()}"
        entries.append((6, TimelineEntry(at=row.armed_at, kind="SlaArmed", summary=armed)))
        if row.decided_at is not None:
            decided = f"{row.milestone} {row.status}"
            entries.append((7, TimelineEntry(at=row.decided_at, kind="SlaDecided", summary=decided)))
    entries.sort(key=lambda entry: (entry[1].at, entry[0]))
    return [entry for _, entry in entries]


def _summary(kind: str, payload: dict[str, Any]) -> str:
    if kind == "LeadScoredV1":
        return f"score {payload['total']:g} (fit {payload['fit']:g}, engagement {payload['engagement']:g})"
    if kind == "LeadStageChangedV1":
        return f"{payload['from_stage']} -> {payload['to_stage']}: {payload['reason']}"
    if kind == "LeadQualifiedV1":
        return f"qualified {payload['tier']}: {payload['reason']}"
    if kind == "ActivityAcceptedV1":
        by = f" by {payload['rep_id']}" if payload.get("rep_id") else ""
        moved = (
            ""
            if payload["from_stage"] == payload["to_stage"]
            else f": {payload['from_stage']} -> {payload['to_stage']}"
        )
        skipped = f" (skipped {', '.join(payload['skipped_stages'])})" if payload.get("skipped_stages") else ""
        return f"accepted {payload['activity']}{by}{moved}{skipped}"
    if kind == "ActivityRefusedV1":
        return f"refused {payload['activity']} ({payload['refusal']}): {payload['reason']}"
    if kind == "LeadMergedV1":
        return f"provisional id {payload['alias_lead_id']} is this lead ({payload['rule']}, from {payload['source']})"
    return kind
