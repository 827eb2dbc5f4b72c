"""Why a lead is where it is: stage, score with every rule's decayed value, tier, owner, SLA
clocks and the timeline of facts, read from the tables the services write."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.playbooks import playbook_for
from coxswain.core.scoring import score
from coxswain.db.leads import canonical_lead_id, load
from services.admin import repository
from services.admin.models import LeadExplained, Refusal, Score, TimelineEntry


async def explain(
    connection: AsyncConnection, requested: uuid.UUID, agreement: Agreement, now: datetime
) -> LeadExplained | None:
    lead_id = await canonical_lead_id(connection, requested)
    state = await load(connection, lead_id, lock="none")
    if state is None:
        return None
    folded = await repository.aliases(connection, lead_id)
    ids = [lead_id, *folded]
    current = score(state.attributes, state.touches, agreement, now)
    definition = agreement.lifecycle.stages.get(state.stage)
    playbook = playbook_for(agreement, state.persona, state.stage, state.tier)
    reevaluation = await repository.next_reevaluation(connection, lead_id)
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
        next_reevaluation=reevaluation,
        playbook=None if playbook is None else playbook.model_dump(mode="json"),
        owner=await repository.owner(connection, lead_id),
        sla=await repository.sla_clocks(connection, lead_id),
        refusals=await _refusals(connection, ids),
        timeline=await _timeline(connection, ids),
    )


async def _refusals(connection: AsyncConnection, ids: list[uuid.UUID]) -> list[Refusal]:
    """The CRM activities scoring refused for this lead, with the agreement's reason: they changed nothing."""
    rows = await repository.refusals(connection, ids)
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


async def _timeline(connection: AsyncConnection, ids: list[uuid.UUID]) -> list[TimelineEntry]:
    entries: list[tuple[int, TimelineEntry]] = []
    for received in await repository.received_events(connection, ids):
        payload = received.payload
        at = datetime.fromisoformat(payload["occurred_at"]) if "occurred_at" in payload else received.received_at
        if received.kind == "lead":
            kind, summary = "LeadReceivedV1", f"{payload.get('engagement')} from {payload.get('source')}"
        else:
            reason = f" ({payload['reason']})" if payload.get("reason") else ""
            kind, summary = "ActivityRecordedV1", f"{payload.get('activity')}{reason} from {payload.get('source')}"
        entries.append((0, TimelineEntry(at=at, kind=kind, event_id=received.event_id, summary=summary)))
    for fact in await repository.facts(connection, ids):
        order = {"LeadScoredV1": 1, "LeadStageChangedV1": 2, "LeadQualifiedV1": 3}.get(fact.kind, 4)
        entry = TimelineEntry(
            at=fact.occurred_at,
            kind=fact.kind,
            event_id=fact.event_id,
            caused_by=fact.caused_by,
            agreement_version=fact.agreement_version,
            summary=_summary(fact.kind, fact.payload),
            detail=fact.payload,
        )
        entries.append((order, entry))
    for routed in await repository.routings(connection, ids):
        summary = f"routed to {routed.rep_id} (pool {routed.pool_id}, rule {routed.rule_id})"
        entry = TimelineEntry(
            at=routed.routed_at,
            kind="LeadRoutedV1",
            assignment_id=routed.assignment_id,
            agreement_version=routed.agreement_version,
            summary=summary,
        )
        entries.append((5, entry))
    for deadline in await repository.deadlines(connection, ids):
        armed = f"{deadline.milestone} due {deadline.due_at.isoformat()}"
        entries.append((6, TimelineEntry(at=deadline.armed_at, kind="SlaArmed", summary=armed)))
        if deadline.decided_at is not None:
            decided = f"{deadline.milestone} {deadline.status}"
            entries.append((7, TimelineEntry(at=deadline.decided_at, kind="SlaDecided", summary=decided)))
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
