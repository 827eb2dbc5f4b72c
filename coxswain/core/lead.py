"""What scoring decides for one lead: a pure function from (state, event, agreement, now) to
the new state and the facts to publish. The shell loads, calls, saves and publishes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime

from coxswain.core.agreement import Agreement
from coxswain.core.lifecycle import ACTIVITY_TARGET, QUALIFIABLE, transition
from coxswain.core.scoring import Score, Touch, fast_lane_tier, score, tier_for
from schemas.events import (
    ActivityRecordedV1,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadScoredV1,
    LeadStageChangedV1,
    Stage,
    Tier,
)

MAX_TOUCHES = 500


@dataclass(frozen=True)
class LeadState:
    lead_id: uuid.UUID
    stage: Stage = Stage.lead
    source: str = "unknown"
    attributes: LeadAttributes = field(default_factory=LeadAttributes)
    touches: tuple[Touch, ...] = ()
    score_total: float = 0.0
    tier: Tier | None = None


@dataclass(frozen=True)
class Outcome:
    state: LeadState
    facts: tuple[Event, ...]


def fact_id(caused_by: uuid.UUID, kind: str) -> uuid.UUID:
    """Deterministic, so a re-run of the same input yields the same ids and consumers dedupe."""
    return uuid.uuid5(caused_by, kind)


def merge_attributes(old: LeadAttributes, new: LeadAttributes) -> LeadAttributes:
    return old.model_copy(update=new.model_dump(exclude_none=True))


def on_received(state: LeadState, event: LeadReceivedV1, agreement: Agreement, now: datetime) -> Outcome:
    touches = (*state.touches, Touch(event.engagement, event.occurred_at))[-MAX_TOUCHES:]
    updated = replace(
        state,
        source=event.source if state.source == "unknown" else state.source,
        attributes=merge_attributes(state.attributes, event.attributes),
        touches=touches,
    )
    current = score(updated.attributes, touches, agreement, now)
    updated = replace(updated, score_total=current.total)
    facts: list[Event] = [_scored(updated, current, event.event_id, agreement, now)]
    lane = fast_lane_tier(event.engagement, agreement)
    enters = current.total >= agreement.scoring.mql.enter
    if state.stage in QUALIFIABLE and (enters or lane is not None):
        tier = lane if lane is not None else tier_for(current.total, agreement)
        reason = (
            f"fast lane {event.engagement.value}"
            if lane is not None and not enters
            else f"score {current.total:g} reached MQL entry {agreement.scoring.mql.enter:g}"
        )
        updated = replace(updated, stage=transition(state.stage, Stage.mql, "qualification"), tier=tier)
        facts.append(_stage_changed(state.stage, Stage.mql, reason, event.event_id, updated, agreement, now))
        facts.append(
            LeadQualifiedV1(
                event_id=fact_id(event.event_id, "qualified"),
                lead_id=state.lead_id,
                occurred_at=now,
                agreement_version=agreement.version,
                caused_by=event.event_id,
                tier=tier,
                score=current.total,
                reason=reason,
                attributes=updated.attributes,
                source=updated.source,
            )
        )
    return Outcome(updated, tuple(facts))


def on_activity(state: LeadState, event: ActivityRecordedV1, agreement: Agreement, now: datetime) -> Outcome:
    """Apply a CRM activity to the lifecycle; raises IllegalTransition for a move the graph forbids."""
    target = ACTIVITY_TARGET.get(event.activity)
    if target is None or target == state.stage:
        return Outcome(state, ())
    new_stage = transition(state.stage, target, f"activity {event.activity.value}")
    reason = f"{event.activity.value}" + (f" ({event.reason})" if event.reason else "")
    updated = replace(state, stage=new_stage)
    return Outcome(updated, (_stage_changed(state.stage, new_stage, reason, event.event_id, updated, agreement, now),))


def _scored(
    state: LeadState, current: Score, caused_by: uuid.UUID, agreement: Agreement, now: datetime
) -> LeadScoredV1:
    return LeadScoredV1(
        event_id=fact_id(caused_by, "scored"),
        lead_id=state.lead_id,
        occurred_at=now,
        agreement_version=agreement.version,
        caused_by=caused_by,
        fit=current.fit,
        engagement=current.engagement,
        total=current.total,
        contributions=current.contributions,
    )


def _stage_changed(
    old: Stage, new: Stage, reason: str, caused_by: uuid.UUID, state: LeadState, agreement: Agreement, now: datetime
) -> LeadStageChangedV1:
    return LeadStageChangedV1(
        event_id=fact_id(caused_by, "stage_changed"),
        lead_id=state.lead_id,
        occurred_at=now,
        agreement_version=agreement.version,
        caused_by=caused_by,
        from_stage=old,
        to_stage=new,
        reason=reason,
    )
