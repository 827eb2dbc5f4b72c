"""What scoring decides for one lead: a pure function from (state, input, agreement, now) to the
new state and the facts to publish. The shell loads, calls, saves and publishes.

Inputs are marketing events (``on_received``), CRM activities (``on_activity``) and the
re-evaluation timer the shell arms at ``next_reevaluation`` (``on_timer``): because the score
only falls between events, the moment a qualified lead drops below its exit threshold is known
in advance, so no batch job is needed to notice it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from coxswain.core.agreement import Agreement, FastLane
from coxswain.core.ids import uuid5
from coxswain.core.lifecycle import (
    ACTIVITY_TARGET,
    DEMOTION,
    QUALIFIABLE,
    WATERFALL,
    IllegalTransition,
    UnknownRejectionReason,
    skipped_stages,
    transition,
)
from coxswain.core.memo import derived
from coxswain.core.playbooks import playbook_for
from coxswain.core.scoring import (
    Score,
    Touch,
    falls_below_at,
    falls_below_bound,
    priority_tier,
    score,
    score_total,
)
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityRefusedV1,
    ActivityType,
    EngagementType,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadScoredV1,
    LeadStageChangedV1,
    Playbook,
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
    persona: str | None = None
    # The stage was set by a person (a CRM activity) or by a fast lane without a hold: decay
    # never undoes it.
    pinned: bool = False
    # A fast lane's hold: decay may not demote this MQL before then.
    held_until: datetime | None = None
    # Recycle cooldown: the lead may not re-qualify before then.
    recycled_until: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    state: LeadState
    facts: tuple[Event, ...]


def fact_id(caused_by: uuid.UUID, kind: str) -> uuid.UUID:
    """Deterministic, so a re-run of the same input yields the same ids and consumers dedupe."""
    return uuid5(caused_by, kind)


def merge_attributes(old: LeadAttributes, new: LeadAttributes) -> LeadAttributes:
    if new is old:
        return old
    update = new.model_dump(exclude_none=True)
    # Most events repeat what is known: then the copy would equal one of the two, set fields included.
    kept, given = old.model_fields_set, old.__dict__
    if all(name in kept and given[name] == value for name, value in update.items()):
        return old
    if not kept and new.model_fields_set == update.keys() and old == _NO_ATTRIBUTES:
        return new
    return old.model_copy(update=update)


_NO_ATTRIBUTES = LeadAttributes()


def fast_lane(engagement: EngagementType, agreement: Agreement) -> FastLane | None:
    return next((lane for lane in agreement.scoring.fast_lanes if lane.event == engagement), None)


def evaluation_time(state: LeadState, at: datetime) -> datetime:
    """No earlier than the latest touch: an event dated before a touch already seen must not
    score the lead as if that touch had not happened."""
    return max(at, max((touch.at for touch in state.touches), default=at))


def on_received(
    state: LeadState, event: LeadReceivedV1, agreement: Agreement, now: datetime, *, score_fact: bool = True
) -> Outcome:
    """``score_fact=False`` leaves the ``LeadScoredV1`` out: the simulator, which publishes
    nothing, skips building it; the state and every other fact are the same."""
    touches = (*state.touches, Touch(event.engagement, event.occurred_at))[-MAX_TOUCHES:]
    attributes = merge_attributes(state.attributes, event.attributes)
    current = score(attributes, touches, agreement, now) if score_fact else None
    if current is not None:
        total, persona = current.total, current.persona
    else:
        total, persona = score_total(attributes, touches, agreement, now)
    source = event.source if state.source == "unknown" else state.source
    updated = rescored(state, total, persona, source=source, attributes=attributes, touches=touches)
    lane = fast_lane(event.engagement, agreement)
    evaluated, facts = _evaluate(updated, total, lane, event.event_id, agreement, now, decayed=False)
    if current is None:
        return Outcome(evaluated, facts)
    return Outcome(evaluated, (_scored(updated, current, event.event_id, agreement, now), *facts))


def on_timer(
    state: LeadState, agreement: Agreement, now: datetime, timer_id: uuid.UUID, *, score_fact: bool = True
) -> Outcome:
    """The re-evaluation armed at ``next_reevaluation``: demote a decayed lead, or re-qualify a
    recycled one whose cooldown is over. Nothing is emitted when nothing changes."""
    total, persona = score_total(state.attributes, state.touches, agreement, now)
    updated = rescored(state, total, persona)
    updated, facts = _evaluate(updated, total, None, timer_id, agreement, now, decayed=True)
    if not facts:
        return Outcome(state, ())
    if not score_fact:
        return Outcome(updated, facts)
    current = score(state.attributes, state.touches, agreement, now)
    return Outcome(updated, (_scored(updated, current, timer_id, agreement, now), *facts))


def rescored(
    state: LeadState,
    score_total: float,
    persona: str | None,
    *,
    source: str | None = None,
    attributes: LeadAttributes | None = None,
    touches: tuple[Touch, ...] | None = None,
) -> LeadState:
    """``replace(state, score_total=..., persona=..., ...)`` for the one change every input makes.

    ``LeadState`` is a frozen dataclass without ``__post_init__``, so a copy of its fields with
    these set is the object ``replace`` builds, at a sixth of the cost (``replace`` walks the
    fields and runs ``__init__``: microseconds that add up over every input of a simulation).
    """
    updated = object.__new__(LeadState)
    fields = updated.__dict__
    fields.update(state.__dict__)
    fields["score_total"] = score_total
    fields["persona"] = persona
    if source is not None:
        fields["source"] = source
    if attributes is not None:
        fields["attributes"] = attributes
    if touches is not None:
        fields["touches"] = touches
    return updated


def demotable(state: LeadState, now: datetime) -> bool:
    return not state.pinned and (state.held_until is None or now >= state.held_until)


def cooling_down(state: LeadState, now: datetime) -> bool:
    return state.recycled_until is not None and now < state.recycled_until


def next_reevaluation(state: LeadState, agreement: Agreement, now: datetime) -> datetime | None:
    """When, with no new input, this lead's stage would change: the shell arms a timer there."""
    threshold = _exit_threshold(state, agreement)
    if threshold is not None:
        crossing = falls_below_at(state.attributes, state.touches, agreement, now, threshold)
        return _after_hold(state, crossing)
    if state.stage in QUALIFIABLE and state.recycled_until is not None and cooling_down(state, now):
        later = score(state.attributes, state.touches, agreement, state.recycled_until)
        return state.recycled_until if later.total >= agreement.scoring.mql.enter else None
    return None


def reevaluation_bound(state: LeadState, agreement: Agreement, now: datetime) -> datetime | None:
    """No later than ``next_reevaluation`` (None only when that is None), without searching for the
    crossing: a shell that can afford to look again at this moment computes the exact one only
    for the leads that get there without a new event (the simulator does)."""
    threshold = _exit_threshold(state, agreement)
    if threshold is None:
        return next_reevaluation(state, agreement, now)
    bound = falls_below_bound(state.attributes, state.touches, agreement, now, threshold)
    return _after_hold(state, bound)


def _exit_threshold(state: LeadState, agreement: Agreement) -> float | None:
    """The score below which a decaying lead leaves its stage, for the stages a decay can end."""
    if state.pinned:
        return None
    if state.stage is Stage.mql:
        return agreement.scoring.mql.exit
    sql = agreement.scoring.sql
    if state.stage is Stage.sql and sql is not None:
        return sql.exit
    return None


def _after_hold(state: LeadState, moment: datetime | None) -> datetime | None:
    """An MQL on hold is not demoted before the hold ends."""
    if moment is None or state.stage is not Stage.mql or state.held_until is None:
        return moment
    return max(moment, state.held_until)


def timer_id_for(state: LeadState, due_at: datetime) -> uuid.UUID:
    """Names the re-evaluation by what it re-evaluates, so replays arm (and fire) the same timer."""
    return uuid5(state.lead_id, f"reevaluate/{state.stage.value}/{due_at.isoformat()}/{len(state.touches)}")


def _evaluate(
    state: LeadState,
    total: float,
    lane: FastLane | None,
    caused_by: uuid.UUID,
    agreement: Agreement,
    now: datetime,
    *,
    decayed: bool,
) -> tuple[LeadState, tuple[Event, ...]]:
    """The hysteresis: enter at ``enter``, leave only below ``exit``; nothing in between moves."""
    mql, sql = agreement.scoring.mql, agreement.scoring.sql
    falling = " as engagement decayed" if decayed else ""
    if state.stage in QUALIFIABLE:
        enters = total >= mql.enter
        if cooling_down(state, now) or not (enters or lane is not None):
            return state, ()
        tier = priority_tier(total, lane.tier if lane else None, agreement)
        if lane is not None and not enters:
            reason = f"fast lane {lane.event.value}"
        else:
            reason = f"score {total:g} reached MQL entry {mql.enter:g}"
        qualified = replace(
            state,
            stage=transition(state.stage, Stage.mql, "qualification"),
            tier=tier,
            pinned=lane is not None and lane.hold is None,
            held_until=now + lane.hold if lane is not None and lane.hold is not None else None,
            recycled_until=None,
        )
        changed = _stage_changed(state.stage, qualified, reason, caused_by, agreement, now)
        return qualified, (changed, _qualified(qualified, tier, total, reason, caused_by, agreement, now))
    if state.stage is Stage.mql:
        held = _hold(state, lane, now)
        if demotable(held, now) and total < mql.exit:
            reason = f"score {total:g} fell below MQL exit {mql.exit:g}{falling}"
            return _move(held, DEMOTION[Stage.mql], reason, caused_by, agreement, now)
        return held, ()
    if state.stage is Stage.sal and sql is not None and total >= sql.enter:
        return _move(state, Stage.sql, f"score {total:g} reached SQL entry {sql.enter:g}", caused_by, agreement, now)
    if state.stage is Stage.sql and sql is not None and demotable(state, now) and total < sql.exit:
        reason = f"score {total:g} fell below SQL exit {sql.exit:g}{falling}"
        return _move(state, DEMOTION[Stage.sql], reason, caused_by, agreement, now)
    return state, ()


def _hold(state: LeadState, lane: FastLane | None, now: datetime) -> LeadState:
    """Another fast-lane event on an MQL renews the lane's protection against decay."""
    if lane is None or state.pinned:
        return state
    if lane.hold is None:
        return replace(state, pinned=True, held_until=None)
    until = now + lane.hold
    return replace(state, held_until=until if state.held_until is None else max(state.held_until, until))


def _move(
    state: LeadState, target: Stage, reason: str, caused_by: uuid.UUID, agreement: Agreement, now: datetime
) -> tuple[LeadState, tuple[Event, ...]]:
    moved = replace(
        state,
        stage=transition(state.stage, target, reason),
        tier=None if target is Stage.lead else state.tier,
        pinned=False,
        held_until=None,
    )
    return moved, (_stage_changed(state.stage, moved, reason, caused_by, agreement, now),)


def on_activity(state: LeadState, event: ActivityRecordedV1, agreement: Agreement, now: datetime) -> Outcome:
    """Judge a CRM activity once, against the agreement in force and the lead's stage.

    Accepted: an ``ActivityAcceptedV1`` (what every other service acts on) and the stage changes
    it makes. Refused: an ``ActivityRefusedV1`` with the reason and the state unchanged. Never
    raises for what a CRM may send. An activity never moves a lead back: a sal_accepted for an
    SQL is accepted and changes no stage.
    """
    policy = agreement.lifecycle.activities
    if event.rep_id is not None and policy.unknown_rep == "refuse" and agreement.rep(event.rep_id) is None:
        known = ", ".join(sorted(rep.id for rep in agreement.roster)[:10])
        return _refused(
            state, event, agreement, now, "unknown_rep", f"rep {event.rep_id!r} is not in the roster; known: {known}"
        )
    target = ACTIVITY_TARGET.get(event.activity)
    lifecycle = agreement.lifecycle
    cooldown = lifecycle.recycle_cooldown
    reason_code, reported = event.reason, None
    if event.activity is ActivityType.sal_rejected and lifecycle.rejection_reasons:
        known_reason = lifecycle.rejection_reason(event.reason)
        if known_reason is None and policy.unknown_reason == "fallback":
            known_reason = lifecycle.rejection_reason(policy.fallback_reason)
            reason_code, reported = policy.fallback_reason, event.reason
        if known_reason is None:
            refusal = UnknownRejectionReason(event.reason, [reason.code for reason in lifecycle.rejection_reasons])
            return _refused(state, event, agreement, now, "unknown_reason", str(refusal))
        if known_reason.outcome == "disqualify":
            target = Stage.disqualified
        elif known_reason.cooldown is not None:
            cooldown = known_reason.cooldown
    if target is None or target == state.stage or DEMOTION.get(state.stage) == target or _behind(state.stage, target):
        return Outcome(state, (_accepted(state.stage, state, event, agreement, now, reason_code, reported),))
    skipped = skipped_stages(state.stage, target)
    if skipped is None or (skipped and policy.skipped_stages == "refuse"):
        message = str(IllegalTransition(state.stage, target, f"activity {event.activity.value}"))
        if skipped:
            message += (
                f" (it would skip {', '.join(stage.value for stage in skipped)}; lifecycle.activities.skipped_stages "
                "is refuse)"
            )
        return _refused(state, event, agreement, now, "illegal_transition", message)
    reason = f"{event.activity.value}" + (f" ({reason_code})" if reason_code else "")
    facts: list[Event] = []
    walked = state
    for stage in skipped:
        moved = replace(walked, stage=transition(walked.stage, stage, f"activity {event.activity.value}"))
        kind = "stage_changed" if walked is state else f"stage_changed:{stage.value}"
        facts.append(_stage_changed(walked.stage, moved, f"{reason}, skipped", event.event_id, agreement, now, kind))
        walked = moved
    new_stage = transition(walked.stage, target, f"activity {event.activity.value}")
    if new_stage is Stage.recycled:
        updated = replace(
            walked,
            stage=new_stage,
            tier=None,
            pinned=False,
            held_until=None,
            recycled_until=now + cooldown if cooldown > timedelta(0) else None,
        )
    else:
        updated = replace(walked, stage=new_stage, pinned=True, held_until=None)
    kind = "stage_changed" if walked is state else f"stage_changed:{new_stage.value}"
    facts.append(_stage_changed(walked.stage, updated, reason, event.event_id, agreement, now, kind))
    accepted = _accepted(state.stage, updated, event, agreement, now, reason_code, reported, skipped)
    return Outcome(updated, (accepted, *facts))


def _behind(current: Stage, target: Stage) -> bool:
    """A stage the lead has already passed on the waterfall: old news, not a move back."""
    return current in WATERFALL and target in WATERFALL and WATERFALL.index(target) < WATERFALL.index(current)


def _accepted(
    before: Stage,
    state: LeadState,
    event: ActivityRecordedV1,
    agreement: Agreement,
    now: datetime,
    reason: str | None,
    reported: str | None,
    skipped: tuple[Stage, ...] = (),
) -> ActivityAcceptedV1:
    return ActivityAcceptedV1(
        **_judgement(event, "accepted", state.lead_id, agreement, now),
        reason=reason,
        reported_reason=reported,
        amount=event.amount,
        from_stage=before,
        to_stage=state.stage,
        skipped_stages=skipped,
    )


def _refused(
    state: LeadState | None,
    event: ActivityRecordedV1,
    agreement: Agreement,
    now: datetime,
    refusal: RefusalKind,
    reason: str,
) -> Outcome:
    fact = refused(event, agreement, now, refusal, reason, state.stage if state is not None else None)
    return Outcome(state if state is not None else LeadState(lead_id=event.lead_id), (fact,))


RefusalKind = Literal["illegal_transition", "unknown_reason", "unknown_rep", "unknown_lead"]


def refused(
    event: ActivityRecordedV1,
    agreement: Agreement,
    now: datetime,
    refusal: RefusalKind,
    reason: str,
    stage: Stage | None = None,
    lead_id: uuid.UUID | None = None,
) -> ActivityRefusedV1:
    return ActivityRefusedV1(
        **_judgement(event, "refused", lead_id or event.lead_id, agreement, now),
        reported_reason=event.reason,
        stage=stage,
        refusal=refusal,
        reason=reason,
    )


def _judgement(
    event: ActivityRecordedV1, verdict: str, lead_id: uuid.UUID, agreement: Agreement, now: datetime
) -> dict[str, Any]:
    """What an accepted and a refused activity both say: which input, judged when, under which agreement."""
    return {
        "event_id": fact_id(event.event_id, verdict),
        "lead_id": lead_id,
        "occurred_at": now,
        "agreement_version": agreement.version,
        "caused_by": event.event_id,
        "source": event.source,
        "activity": event.activity,
        "rep_id": event.rep_id,
    }


def unknown_lead(event: ActivityRecordedV1, agreement: Agreement, now: datetime) -> ActivityRefusedV1:
    """An activity for a lead scoring has never seen: refused, so nobody acts on it."""
    message = f"activity {event.activity.value} for lead {event.lead_id}, which scoring has never seen"
    return refused(event, agreement, now, "unknown_lead", message)


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


_PlaybookKey = tuple[str | None, Stage, Tier | None]


def _playbooks(_: Agreement) -> dict[_PlaybookKey, Playbook | None]:
    return {}


def _playbook(agreement: Agreement, persona: str | None, stage: Stage, tier: Tier | None) -> Playbook | None:
    """``playbook_for``, once per (persona, stage, tier) of an agreement: a handful of keys."""
    known = derived(agreement, _playbooks)
    key = (persona, stage, tier)
    if key not in known:
        known[key] = playbook_for(agreement, persona, stage, tier)
    return known[key]


def _qualified(
    state: LeadState, tier: Tier, total: float, reason: str, caused_by: uuid.UUID, agreement: Agreement, now: datetime
) -> LeadQualifiedV1:
    return LeadQualifiedV1(
        event_id=fact_id(caused_by, "qualified"),
        lead_id=state.lead_id,
        occurred_at=now,
        agreement_version=agreement.version,
        caused_by=caused_by,
        tier=tier,
        score=total,
        reason=reason,
        attributes=state.attributes,
        source=state.source,
        persona=state.persona,
        playbook=_playbook(agreement, state.persona, Stage.mql, state.tier),
    )


def _stage_changed(
    old: Stage,
    state: LeadState,
    reason: str,
    caused_by: uuid.UUID,
    agreement: Agreement,
    now: datetime,
    kind: str = "stage_changed",
) -> LeadStageChangedV1:
    return LeadStageChangedV1(
        event_id=fact_id(caused_by, kind),
        lead_id=state.lead_id,
        occurred_at=now,
        agreement_version=agreement.version,
        caused_by=caused_by,
        from_stage=old,
        to_stage=state.stage,
        reason=reason,
        playbook=_playbook(agreement, state.persona, state.stage, state.tier),
    )
