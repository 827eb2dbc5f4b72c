"""What a routing decision changes: rotations, rep counters, the lead's holder, the domain's open leads.

``route`` (``coxswain.core.routing``) picks a rep; the functions here are the state transitions
around it, each of the form ``state, input -> new state, facts``:

- ``decide``: the ``Situation`` a request meets in a state, and ``route``'s decision in it;
- ``assign``: a decision applied (rotations, counters, holder, the domain's open leads, the load
  moved off a previous holder still open) and its ``leads.routed.v1`` fact;
- ``release``: the lead stops counting against its rep (an older fact cannot release a newer
  assignment); ``releases`` says which judged activities and stage changes release;
- ``reassignment``: the request a reassignment routes (or why none: the assignment is unknown,
  or replaced since), skipping whom ``reassignment_excludes`` names; ``unassigned``: the fact of
  a lead nobody can take yet.

The router shell loads the state a run of decisions reads under its locks, calls these, and
stores the new state with the facts; the simulator keeps the same state in memory and calls the
same functions, so both decide alike. ``RoutingState`` is a view: it holds what the decisions at
hand read (the shell loads no more than that), and a transition returns a new view whose changed
entries the caller writes back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from coxswain.core.accounts import lead_domain, parent_domains
from coxswain.core.agreement import Agreement
from coxswain.core.capacity import RepLoad, after_release
from coxswain.core.roster import Roster
from coxswain.core.routing import Rotation, RoutingDecision, RoutingInput, Situation, route
from coxswain.core.sla import first_touch_due
from schemas.events import (
    ActivityAcceptedV1,
    ActivityType,
    LeadAttributes,
    LeadRoutedV1,
    LeadStageChangedV1,
    LeadUnassignedV1,
    Playbook,
    ReassignmentRequestedV1,
    Stage,
    Tier,
)

# A lead stops counting against its rep's capacity once sales has acted on it, as scoring judged
# the activity: a refused one (``leads.activity_refused.v1``) frees nothing, so nothing here reads
# the raw crm.activities.v1 record.
RELEASING_ACTIVITIES = frozenset({ActivityType.sal_accepted, ActivityType.sal_rejected, ActivityType.disqualified})
RELEASING_STAGES = frozenset(
    {Stage.sal, Stage.sql, Stage.opportunity, Stage.customer, Stage.recycled, Stage.disqualified}
)

# Newest first, ties (leads opened at one instant) by the higher lead id: (lead, rep, opened at).
DomainLeads = tuple[tuple[uuid.UUID, str, datetime], ...]


class RouteRequest(BaseModel):
    """What a decision is asked for; the router stores it with a parked lead so a retry asks the
    same question."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["qualified", "reassignment"]
    decision_key: uuid.UUID
    lead_id: uuid.UUID
    attributes: LeadAttributes
    tier: Tier
    source: str
    persona: str | None = None
    playbook: Playbook | None = None
    exclude: tuple[str, ...] = ()
    replaces_assignment_id: uuid.UUID | None = None

    def routing_input(self) -> RoutingInput:
        return RoutingInput(attributes=self.attributes, tier=self.tier, source=self.source, persona=self.persona)


@dataclass(frozen=True)
class Holder:
    """A lead's current holder (the router's ``lead_routing`` row)."""

    assignment_id: uuid.UUID
    rep_id: str
    pool_id: str
    domain: str | None
    tier: Tier
    load: int
    open: bool
    opened_at: datetime
    owners: tuple[str, ...]  # every rep the lead was assigned to, oldest first


@dataclass(frozen=True)
class RoutingState:
    """What the decisions at hand read: pool rotations, rep counters (a rep without a counter has
    never been assigned a lead), the accounts owning the leads' domains, the leads' holders, and
    per domain its open leads, newest first (``DomainLeads``)."""

    rotations: Mapping[str, Rotation] = field(default_factory=dict)
    loads: Mapping[str, RepLoad] = field(default_factory=dict)
    accounts: Mapping[str, str] = field(default_factory=dict)  # domain -> owning rep
    holders: Mapping[uuid.UUID, Holder] = field(default_factory=dict)
    open_by_domain: Mapping[str, DomainLeads] = field(default_factory=dict)


def releases(event: ActivityAcceptedV1 | LeadStageChangedV1) -> bool:
    """Whether the judged activity or the stage change ends the lead's hold on its rep's capacity."""
    if isinstance(event, ActivityAcceptedV1):
        return event.activity in RELEASING_ACTIVITIES
    return event.to_stage in RELEASING_STAGES


def reassignment_excludes(owners: Sequence[str], requested: Iterable[str], agreement: Agreement) -> tuple[str, ...]:
    """Whom a reassignment may not go to: the reps the request names and the lead's last
    ``routing.reassign_exclude_last`` owners (``owners`` oldest first)."""
    k = agreement.routing.reassign_exclude_last
    recent = owners[-k:] if k else ()
    return tuple(sorted({*requested, *recent}))


@dataclass(frozen=True)
class StoredAssignment:
    """An assignment as the router stored it: its lead, its rep, and its decision record
    (``assignments.decision``, whose ``input`` is what the lead was routed from)."""

    lead_id: uuid.UUID
    rep_id: str
    decision: Mapping[str, Any]


@dataclass(frozen=True)
class LeadOwners:
    """A lead's current assignment and every rep it was assigned to, oldest first."""

    assignment_id: uuid.UUID
    owners: tuple[str, ...]


@dataclass(frozen=True)
class ReassignmentRefused:
    """A reassignment that can never be routed, and why."""

    reason: str


@dataclass(frozen=True)
class AlreadyReplaced:
    """The assignment a reassignment names was replaced since (by ``current``): nothing to do."""

    current: uuid.UUID


def reassignment_target(
    event: ReassignmentRequestedV1, stored: StoredAssignment | None
) -> StoredAssignment | ReassignmentRefused:
    """The assignment a reassignment names, which must exist and be its lead's."""
    if stored is None or stored.lead_id != event.lead_id:
        return ReassignmentRefused(
            f"reassignment of assignment {event.assignment_id} for lead {event.lead_id}: no such assignment"
        )
    return stored


def reassignment(
    event: ReassignmentRequestedV1, stored: StoredAssignment | None, holder: LeadOwners | None, agreement: Agreement
) -> RouteRequest | AlreadyReplaced | ReassignmentRefused:
    """The request to route a reassignment again from the assignment's own input, skipping the
    reps it names and the lead's last owners; nothing when the lead's holder (``holder``, None if
    it has none) holds it under another assignment by now."""
    target = reassignment_target(event, stored)
    if isinstance(target, ReassignmentRefused):
        return target
    if holder is not None and holder.assignment_id != event.assignment_id:
        return AlreadyReplaced(holder.assignment_id)
    given = target.decision.get("input")
    if not isinstance(given, dict):
        return ReassignmentRefused(f"assignment {event.assignment_id} has no routing input to route again from")
    owners = list(holder.owners) if holder is not None else [target.rep_id]
    return RouteRequest(
        kind="reassignment",
        decision_key=event.event_id,
        lead_id=event.lead_id,
        attributes=LeadAttributes.model_validate(given["attributes"]),
        tier=event.tier,
        source=given["source"],
        persona=given.get("persona"),
        exclude=reassignment_excludes(owners, event.exclude_reps, agreement),
        replaces_assignment_id=event.assignment_id,
    )


def unassigned(
    request: RouteRequest, decision: RoutingDecision, agreement: Agreement, now: datetime
) -> LeadUnassignedV1:
    """The fact of a lead nobody eligible can take yet; its id comes from the decision key, so it is
    the same however often the request is tried."""
    return LeadUnassignedV1(
        event_id=uuid.uuid5(request.decision_key, "unassigned"),
        lead_id=request.lead_id,
        occurred_at=now,
        agreement_version=agreement.version,
        caused_by=request.decision_key,
        tier=request.tier,
        pool_id=decision.pool_id,
        rule_id=decision.rule_id,
        reason=decision.reason,
        waiting_for_rep=decision.waiting_for,
        candidates=decision.candidates,
    )


def situation(state: RoutingState, now: datetime, roster: Roster, lead_id: uuid.UUID, domain: str | None) -> Situation:
    """The state as one lead's decision sees it: the account owning its domain (the longest match)
    and the newest other open lead of its domain."""
    owner_domain = (
        next((d for d in parent_domains(domain) if d in state.accounts), None) if domain and state.accounts else None
    )
    held = next(((lead, rep) for lead, rep, _ in state.open_by_domain.get(domain or "", ()) if lead != lead_id), None)
    return Situation(
        now,
        roster,
        state.rotations,
        state.loads,
        state.accounts.get(owner_domain) if owner_domain else None,
        owner_domain,
        held[1] if held else None,
        held[0] if held else None,
    )


def decide(
    state: RoutingState,
    request: RouteRequest,
    agreement: Agreement,
    roster: Roster,
    now: datetime,
    explain: bool = True,
) -> RoutingDecision:
    """``route``'s decision for the request in this state."""
    domain = lead_domain(request.attributes, agreement.routing.ownership.free_mail_domains)
    seen = situation(state, now, roster, request.lead_id, domain)
    return route(request.routing_input(), agreement, seen, exclude=request.exclude, explain=explain)


def assign(
    state: RoutingState, request: RouteRequest, decision: RoutingDecision, agreement: Agreement, now: datetime
) -> tuple[RoutingState, LeadRoutedV1]:
    """A decision that named a rep, applied; and its fact. The assignment id and the fact's id come
    from the decision key, so deciding the same request again yields the same ids."""
    rep_id = decision.rep_id
    if rep_id is None:
        raise ValueError(f"decision for lead {request.lead_id} names no rep: nothing to assign")
    lead_id = request.lead_id
    assignment_id = uuid.uuid5(request.decision_key, "assignment")
    loads = {**state.loads, rep_id: decision.load_after or RepLoad()}
    previous = state.holders.get(lead_id)
    if previous is not None and previous.open and previous.rep_id in loads:
        # Qualified again while still open: the load moves from the previous holder to the new one.
        loads[previous.rep_id] = after_release(loads[previous.rep_id], previous.load)
    owners = (*(previous.owners if previous is not None else ()), rep_id)
    holder = Holder(
        assignment_id=assignment_id,
        rep_id=rep_id,
        pool_id=decision.pool_id,
        domain=decision.domain,
        tier=request.tier,
        load=agreement.routing.load[request.tier],
        open=True,
        opened_at=now,
        owners=owners,
    )
    open_by_domain = dict(state.open_by_domain)
    # A lead is among the open leads of its holder's domain and of no other domain's, so only a
    # lead with a holder has an entry to drop. Looking for one in the domain of every new lead
    # made a run of leads from one domain quadratic in its length.
    if previous is not None and previous.domain in open_by_domain:
        open_by_domain[previous.domain] = _without(open_by_domain[previous.domain], lead_id)
    if decision.domain:
        held = open_by_domain.get(decision.domain, ())
        at = _newer_than(held, now, lead_id)
        open_by_domain[decision.domain] = (*held[:at], (lead_id, rep_id, now), *held[at:])
    new_state = RoutingState(
        rotations={**state.rotations, **decision.rotations_after},
        loads=loads,
        accounts=state.accounts,
        holders={**state.holders, lead_id: holder},
        open_by_domain=open_by_domain,
    )
    fact = LeadRoutedV1(
        event_id=uuid.uuid5(request.decision_key, "routed"),
        lead_id=lead_id,
        occurred_at=now,
        agreement_version=agreement.version,
        caused_by=request.decision_key,
        assignment_id=assignment_id,
        rep_id=rep_id,
        pool_id=decision.pool_id,
        rule_id=decision.rule_id,
        reason=decision.reason,
        tier=request.tier,
        routed_at=now,
        follow_up_due_at=first_touch_due(agreement, request.tier, now, rep_id=rep_id),
        candidates=decision.candidates,
        playbook=request.playbook,
        matched_by=None if decision.matched_by == "none" else decision.matched_by,
        replaces_assignment_id=request.replaces_assignment_id,
    )
    return new_state, fact


def release(state: RoutingState, lead_id: uuid.UUID, happened_at: datetime) -> tuple[RoutingState, Holder | None]:
    """The lead stops counting against its rep: its holder closes, the rep's counters drop its
    load, and it leaves its domain's open leads. Returns the holder released, or None (and the
    state unchanged) when there is none open, or it was assigned after ``happened_at``: an older
    fact cannot release a newer assignment."""
    holder = state.holders.get(lead_id)
    if holder is None or not holder.open or holder.opened_at > happened_at:
        return state, None
    closed = replace(holder, open=False)
    loads = dict(state.loads)
    if holder.rep_id in loads:
        loads[holder.rep_id] = after_release(loads[holder.rep_id], holder.load)
    open_by_domain = dict(state.open_by_domain)
    if holder.domain in open_by_domain:
        open_by_domain[holder.domain] = _without(open_by_domain[holder.domain], lead_id)
    new_state = replace(state, loads=loads, holders={**state.holders, lead_id: closed}, open_by_domain=open_by_domain)
    return new_state, closed


def _without(held: DomainLeads, lead_id: uuid.UUID) -> DomainLeads:
    return tuple(entry for entry in held if entry[0] != lead_id)


def _newer_than(held: DomainLeads, opened_at: datetime, lead_id: uuid.UUID) -> int:
    """How many of ``held`` come before a lead opened at ``opened_at``: newest first, ties by the
    higher lead id (after the leads opened at the same instant with a higher id, so decisions made
    in one run and one at a time agree). A binary search, as ``held`` is in that order: every
    decision of a run inserts into its domain's open leads, which grow with the run."""
    low, high = 0, len(held)
    while low < high:
        middle = (low + high) // 2
        lead, _, opened = held[middle]
        if (opened, lead) < (opened_at, lead_id):
            high = middle
        else:
            low = middle + 1
    return low
