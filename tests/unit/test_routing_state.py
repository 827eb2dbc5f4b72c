"""Routing state transitions (coxswain/core/routing_state.py): assign, release, the routed fact."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from coxswain.core.agreement import Agreement, load_agreement
from coxswain.core.capacity import RepLoad
from coxswain.core.roster import Roster, build_roster
from coxswain.core.routing_state import (
    AlreadyReplaced,
    Holder,
    LeadOwners,
    ReassignmentRefused,
    RouteRequest,
    RoutingState,
    StoredAssignment,
    assign,
    decide,
    reassignment,
    reassignment_excludes,
    reassignment_target,
    release,
    releases,
    unassigned,
)
from coxswain.core.sla import first_touch_due
from schemas.events import (
    ActivityAcceptedV1,
    ActivityType,
    LeadAttributes,
    LeadRoutedV1,
    LeadStageChangedV1,
    ReassignmentRequestedV1,
    Stage,
    Tier,
)

# Four reps: sim-di alone in sim-europe; sim-ann (weight 2), sim-bo and sim-cy in sim-general.
AGREEMENT: Agreement = load_agreement(Path(__file__).resolve().parents[1] / "e2e" / "agreement_simulation.yaml")
ROSTER: Roster = build_roster(AGREEMENT)
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def request(
    email: str,
    *,
    lead_id: uuid.UUID | None = None,
    country: str = "US",
    tier: Tier = Tier.hot,
    exclude: tuple[str, ...] = (),
    replaces: uuid.UUID | None = None,
) -> RouteRequest:
    return RouteRequest(
        kind="qualified" if replaces is None else "reassignment",
        decision_key=uuid.uuid4(),
        lead_id=lead_id or uuid.uuid4(),
        attributes=LeadAttributes(email=email, country=country),
        tier=tier,
        source="webform",
        exclude=exclude,
        replaces_assignment_id=replaces,
    )


def routed(state: RoutingState, asked: RouteRequest, at: datetime = T0) -> tuple[RoutingState, LeadRoutedV1]:
    decision = decide(state, asked, AGREEMENT, ROSTER, at)
    return assign(state, asked, decision, AGREEMENT, at)


def test_assign_applies_the_decision_and_publishes_its_fact() -> None:
    asked = request("a@one.example.com")
    decision = decide(RoutingState(), asked, AGREEMENT, ROSTER, T0)
    state, fact = assign(RoutingState(), asked, decision, AGREEMENT, T0)

    assert decision.rep_id == "sim-ann" and decision.pool_id == "sim-general"
    assert fact.rep_id == "sim-ann" and fact.lead_id == asked.lead_id and fact.routed_at == T0
    assert fact.assignment_id == uuid.uuid5(asked.decision_key, "assignment")
    assert fact.event_id == uuid.uuid5(asked.decision_key, "routed")
    assert fact.caused_by == asked.decision_key
    assert fact.follow_up_due_at == first_touch_due(AGREEMENT, Tier.hot, T0, rep_id="sim-ann")
    assert fact.agreement_version == AGREEMENT.version
    assert dict(state.rotations) == dict(decision.rotations_after)
    load = AGREEMENT.routing.load[Tier.hot]
    assert state.loads["sim-ann"] == RepLoad(load, 1, T0.date(), 1)
    holder = state.holders[asked.lead_id]
    assert (holder.rep_id, holder.pool_id, holder.open, holder.load, holder.owners) == (
        "sim-ann",
        "sim-general",
        True,
        load,
        ("sim-ann",),
    )
    assert state.open_by_domain["one.example.com"] == ((asked.lead_id, "sim-ann", T0),)


def test_assign_leaves_the_state_it_was_given_unchanged() -> None:
    before = RoutingState()
    routed(before, request("a@one.example.com"))
    assert before == RoutingState()


def test_the_rotation_carries_on_from_one_decision_to_the_next() -> None:
    state = RoutingState()
    reps = []
    for n in range(4):
        state, fact = routed(state, request(f"p{n}@c{n}.example.com"))
        reps.append(fact.rep_id)
    # Smooth weighted round robin over ann 2, bo 1, cy 1: ann twice in four, never twice in a row.
    assert sorted(reps) == ["sim-ann", "sim-ann", "sim-bo", "sim-cy"]
    assert all(a != b for a, b in itertools.pairwise(reps))


def test_a_second_lead_of_an_open_domain_goes_to_the_holder_of_the_newest() -> None:
    first = request("first@acme.example.com")
    state, held = routed(RoutingState(), first)
    second = request("second@acme.example.com")
    state, fact = routed(state, second, T0 + timedelta(minutes=1))

    assert fact.rep_id == held.rep_id
    assert fact.matched_by == "open_domain_lead"
    assert fact.reason == f"same domain (acme.example.com) as open lead {first.lead_id} held by {held.rep_id}"
    # Newest first.
    assert [lead for lead, _, _ in state.open_by_domain["acme.example.com"]] == [second.lead_id, first.lead_id]


@pytest.mark.parametrize("low_first", [True, False])
def test_leads_opened_at_one_instant_are_ordered_by_the_higher_id_first(low_first: bool) -> None:
    low, high = sorted([uuid.uuid4(), uuid.uuid4()])
    state = RoutingState()
    for lead in (low, high) if low_first else (high, low):
        state, _ = routed(state, request(f"{lead.hex}@same.example.com", lead_id=lead))
    assert [lead for lead, _, _ in state.open_by_domain["same.example.com"]] == [high, low]


def test_many_leads_of_one_domain_are_kept_newest_first_then_by_the_higher_id() -> None:
    # Decided in no particular order, at three instants: where each goes is found by a search
    # that relies on the order the ones before it were kept in.
    shuffled = random.Random(14)
    opened = [
        (uuid.UUID(int=shuffled.getrandbits(128)), T0 + timedelta(minutes=shuffled.randrange(3))) for _ in range(60)
    ]
    state = RoutingState()
    for lead, at in opened:
        state, _ = routed(state, request(f"{lead.hex}@many.example.com", lead_id=lead), at)
    kept = [(lead, at) for lead, _, at in state.open_by_domain["many.example.com"]]
    assert kept == sorted(opened, key=lambda entry: (entry[1], entry[0]), reverse=True)


def test_a_lead_routed_again_from_another_domain_leaves_the_first_domains_open_leads() -> None:
    asked = request("a@one.example.com")
    state, first = routed(RoutingState(), asked)
    moved = request("a@two.example.com", lead_id=asked.lead_id, replaces=first.assignment_id)
    state, second = routed(state, moved, T0 + timedelta(hours=1))

    assert state.open_by_domain["one.example.com"] == ()
    assert state.open_by_domain["two.example.com"] == ((asked.lead_id, second.rep_id, T0 + timedelta(hours=1)),)


def test_an_account_owner_takes_the_lead_of_a_subdomain() -> None:
    state = RoutingState(accounts={"example.com": "sim-cy"})
    _, fact = routed(state, request("x@eu.example.com"))
    assert (fact.rep_id, fact.matched_by) == ("sim-cy", "account_owner")


def test_routing_again_while_open_moves_the_load_to_the_new_holder() -> None:
    asked = request("a@one.example.com")
    state, first = routed(RoutingState(), asked)
    again = request("a@one.example.com", lead_id=asked.lead_id, exclude=(first.rep_id,), replaces=first.assignment_id)
    state, second = routed(state, again, T0 + timedelta(hours=3))

    assert second.rep_id != first.rep_id
    assert second.replaces_assignment_id == first.assignment_id
    assert state.loads[first.rep_id].open_load == 0 and state.loads[first.rep_id].open_leads == 0
    assert state.loads[second.rep_id].open_leads == 1
    holder = state.holders[asked.lead_id]
    assert holder.owners == (first.rep_id, second.rep_id) and holder.rep_id == second.rep_id
    assert state.open_by_domain["one.example.com"] == ((asked.lead_id, second.rep_id, T0 + timedelta(hours=3)),)


def test_assign_refuses_a_decision_without_a_rep() -> None:
    asked = request("a@one.example.com")
    nobody = decide(
        RoutingState(),
        asked.model_copy(update={"exclude": ("sim-ann", "sim-bo", "sim-cy", "sim-di")}),
        AGREEMENT,
        ROSTER,
        T0,
    )
    assert nobody.rep_id is None
    with pytest.raises(ValueError, match="names no rep"):
        assign(RoutingState(), asked, nobody, AGREEMENT, T0)


def test_release_closes_the_holder_frees_the_load_and_leaves_the_domain() -> None:
    asked = request("a@one.example.com")
    state, fact = routed(RoutingState(), asked)
    after, released = release(state, asked.lead_id, T0 + timedelta(minutes=5))

    assert released is not None and released.rep_id == fact.rep_id and not released.open
    assert after.holders[asked.lead_id] == released
    assert after.loads[fact.rep_id].open_load == 0 and after.loads[fact.rep_id].open_leads == 0
    # The daily count stays: a released lead was still assigned today.
    assert after.loads[fact.rep_id].assigned_on_day == 1
    assert after.open_by_domain["one.example.com"] == ()


def test_an_older_fact_cannot_release_a_newer_assignment() -> None:
    asked = request("a@one.example.com")
    state, _ = routed(RoutingState(), asked, T0)
    after, released = release(state, asked.lead_id, T0 - timedelta(seconds=1))
    assert released is None and after is state


def test_releasing_twice_or_an_unknown_lead_changes_nothing() -> None:
    asked = request("a@one.example.com")
    state, _ = routed(RoutingState(), asked)
    once, _ = release(state, asked.lead_id, T0)
    twice, again = release(once, asked.lead_id, T0)
    assert again is None and twice is once
    unknown, nobody = release(once, uuid.uuid4(), T0)
    assert nobody is None and unknown is once


def test_a_holder_whose_rep_has_no_counters_is_released_without_inventing_them() -> None:
    lead = uuid.uuid4()
    holder = Holder(uuid.uuid4(), "sim-bo", "sim-general", None, Tier.warm, 2, True, T0, ("sim-bo",))
    after, released = release(RoutingState(holders={lead: holder}), lead, T0)
    assert released is not None and dict(after.loads) == {}


@pytest.mark.parametrize(
    ("activity", "frees"),
    [
        (ActivityType.sal_accepted, True),
        (ActivityType.sal_rejected, True),
        (ActivityType.disqualified, True),
        (ActivityType.first_touch, False),
        (ActivityType.won, False),
    ],
)
def test_which_judged_activities_release(activity: ActivityType, frees: bool) -> None:
    event = ActivityAcceptedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=T0,
        caused_by=uuid.uuid4(),
        activity=activity,
        agreement_version="test",
        source="crm",
        from_stage=Stage.mql,
        to_stage=Stage.mql,
    )
    assert releases(event) is frees


@pytest.mark.parametrize(
    ("stage", "frees"),
    [
        (Stage.sal, True),
        (Stage.sql, True),
        (Stage.opportunity, True),
        (Stage.customer, True),
        (Stage.recycled, True),
        (Stage.disqualified, True),
        (Stage.mql, False),
        (Stage.lead, False),
    ],
)
def test_which_stage_changes_release(stage: Stage, frees: bool) -> None:
    event = LeadStageChangedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=T0,
        caused_by=uuid.uuid4(),
        from_stage=Stage.mql,
        to_stage=stage,
        agreement_version="test",
        reason="test",
    )
    assert releases(event) is frees


def test_a_reassignment_skips_the_reps_it_names_and_the_last_owners() -> None:
    k = AGREEMENT.routing.reassign_exclude_last
    owners = ["sim-ann", "sim-bo", "sim-cy", "sim-ann"]
    excluded = reassignment_excludes(owners, ["sim-di"], AGREEMENT)
    assert excluded == tuple(sorted({"sim-di", *owners[-k:]}))
    assert k >= 1 and "sim-ann" in excluded
    no_history = AGREEMENT.model_copy(
        update={"routing": AGREEMENT.routing.model_copy(update={"reassign_exclude_last": 0})}
    )
    assert reassignment_excludes(owners, ["sim-di"], no_history) == ("sim-di",)


def reassignment_of(stored: StoredAssignment, assignment_id: uuid.UUID) -> ReassignmentRequestedV1:
    return ReassignmentRequestedV1(
        event_id=uuid.uuid4(),
        lead_id=stored.lead_id,
        occurred_at=T0,
        assignment_id=assignment_id,
        tier=Tier.warm,
        exclude_reps=("sim-di",),
        reason="first touch missed",
        requested_by="sla_escalation",
    )


def stored_routing_of(asked: RouteRequest, rep_id: str) -> StoredAssignment:
    given = asked.model_dump(mode="json", include={"attributes", "tier", "source", "persona"})
    return StoredAssignment(lead_id=asked.lead_id, rep_id=rep_id, decision={"input": given})


def test_a_reassignment_routes_the_lead_again_from_its_stored_input_skipping_its_last_owners() -> None:
    asked = request("a@one.example.com", country="DE")
    stored = stored_routing_of(asked, "sim-ann")
    assignment_id = uuid.uuid4()
    event = reassignment_of(stored, assignment_id)
    owners = ("sim-bo", "sim-cy", "sim-ann")

    again = reassignment(event, stored, LeadOwners(assignment_id, owners), AGREEMENT)

    assert isinstance(again, RouteRequest)
    assert (again.kind, again.decision_key, again.lead_id, again.replaces_assignment_id) == (
        "reassignment",
        event.event_id,
        asked.lead_id,
        assignment_id,
    )
    assert (again.attributes, again.source, again.persona) == (asked.attributes, asked.source, asked.persona)
    assert again.tier == Tier.warm  # the event's tier, not the stored one
    assert again.exclude == reassignment_excludes(owners, ["sim-di"], AGREEMENT)


def test_a_reassignment_of_a_lead_without_a_holder_skips_the_assignments_rep() -> None:
    asked = request("a@one.example.com")
    stored = stored_routing_of(asked, "sim-bo")
    event = reassignment_of(stored, uuid.uuid4())

    again = reassignment(event, stored, None, AGREEMENT)

    assert isinstance(again, RouteRequest)
    assert again.exclude == ("sim-bo", "sim-di")


def test_a_reassignment_of_an_assignment_replaced_since_is_nothing_to_do() -> None:
    asked = request("a@one.example.com")
    stored = stored_routing_of(asked, "sim-ann")
    event = reassignment_of(stored, uuid.uuid4())
    current = uuid.uuid4()

    assert reassignment(event, stored, LeadOwners(current, ("sim-ann", "sim-bo")), AGREEMENT) == AlreadyReplaced(
        current
    )


def test_a_reassignment_of_an_unknown_assignment_or_of_another_leads_is_refused() -> None:
    asked = request("a@one.example.com")
    stored = stored_routing_of(asked, "sim-ann")
    event = reassignment_of(stored, uuid.uuid4())
    someone_elses = StoredAssignment(lead_id=uuid.uuid4(), rep_id="sim-ann", decision=stored.decision)

    for found in (None, someone_elses):
        refused = reassignment_target(event, found)
        assert isinstance(refused, ReassignmentRefused)
        assert str(event.assignment_id) in refused.reason and "no such assignment" in refused.reason
        assert reassignment(event, found, None, AGREEMENT) == refused
    assert reassignment_target(event, stored) is stored


def test_a_reassignment_of_an_assignment_stored_without_its_input_is_refused() -> None:
    asked = request("a@one.example.com")
    for decision in ({"matched_by": "rule"}, {"input": "a@one.example.com"}):
        stored = StoredAssignment(lead_id=asked.lead_id, rep_id="sim-ann", decision=decision)
        event = reassignment_of(stored, uuid.uuid4())

        refused = reassignment(event, stored, None, AGREEMENT)

        assert isinstance(refused, ReassignmentRefused)
        assert "no routing input" in refused.reason


def test_a_lead_nobody_can_take_gets_one_unassigned_fact_per_decision_key() -> None:
    asked = request("a@one.example.com").model_copy(update={"exclude": ("sim-ann", "sim-bo", "sim-cy", "sim-di")})
    nobody = decide(RoutingState(), asked, AGREEMENT, ROSTER, T0)
    fact = unassigned(asked, nobody, AGREEMENT, T0)
    again = unassigned(asked, nobody, AGREEMENT, T0 + timedelta(minutes=1))
    assert fact.event_id == again.event_id == uuid.uuid5(asked.decision_key, "unassigned")
    assert (fact.lead_id, fact.caused_by, fact.pool_id, fact.reason) == (
        asked.lead_id,
        asked.decision_key,
        nobody.pool_id,
        nobody.reason,
    )
    assert fact.candidates == nobody.candidates and fact.candidates
