"""A lead's follow-up across reassignments: who a response is credited to, the ladder that goes on
instead of restarting, the reassignment cap that pages instead, and on-call paged once."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.core.agreement_checks import agreement_warnings
from coxswain.core.sla import (
    FIRST_TOUCH,
    Clock,
    DeadlineStatus,
    Timer,
    TimerKind,
    carry_ladder,
    credited_rep,
    deadline_id_for,
    on_timer,
    timer_facts,
)
from schemas.events import EscalationAction, ReassignmentRequestedV1, SlaEscalatedV1, Tier

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml").read_text())
LEAD = uuid.UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")
ASSIGNMENT = uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa")
DUE = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)


def agreement(change: Any = None) -> Agreement:
    document = copy.deepcopy(EXAMPLE)
    if change is not None:
        change(document)
    return parse_agreement(document)


def clock(
    status: DeadlineStatus = DeadlineStatus.armed,
    responded: bool = False,
    reassignments: int = 0,
    paged: bool = False,
    rep: str = "ava",
) -> Clock:
    return Clock(
        deadline_id_for(ASSIGNMENT, FIRST_TOUCH),
        LEAD,
        ASSIGNMENT,
        rep,
        "north-america",
        FIRST_TOUCH,
        Tier.hot,
        DUE,
        status,
        responded,
        reassignments,
        paged,
    )


def step(action: EscalationAction, index: int, minutes: int, carried: bool = False) -> Timer:
    return Timer(
        TimerKind.escalation,
        f"escalation:{index}:{action.value}",
        DUE + timedelta(minutes=minutes),
        step=action,
        step_index=index,
        target="router" if action is EscalationAction.reassign else "oncall",
        exclude_last=1 if action is EscalationAction.reassign else None,
        carried=carried,
    )


REASSIGN = step(EscalationAction.reassign, 2, 10)
PAGE = step(EscalationAction.page_oncall, 3, 30)


# --------------------------------------------------------------------------- credit


def test_by_default_only_the_owner_meets_the_owners_clock() -> None:
    rules = agreement()

    assert credited_rep(rules, "ava", "north-america", "ava") == "ava"
    assert credited_rep(rules, "ava", "north-america", None) == "ava", "an unattributed touch is the owner's"
    assert credited_rep(rules, "ava", "north-america", "ben") is None, "a former owner's touch credits nobody"


def test_a_team_policy_credits_a_teammate_and_stop_credits_whoever_acted() -> None:
    team = agreement(lambda d: d["sla"].update(credit={"who": "team"}))
    assert credited_rep(team, "ava", "north-america", "ben") == "ben"
    assert credited_rep(team, "ava", "north-america", "chloe") is None, "chloe is in emea"

    stop = agreement(lambda d: d["sla"].update(credit={"other_rep": "stop"}))
    assert credited_rep(stop, "ava", "north-america", "chloe") == "chloe"


# --------------------------------------------------------------------------- the ladder goes on


def test_a_carried_ladder_keeps_its_times_and_aims_at_the_new_rep() -> None:
    remind = Timer(TimerKind.escalation, "escalation:0:remind_rep", DUE, step=EscalationAction.remind_rep, step_index=0)
    carried = carry_ladder([remind, PAGE], "ben", "mia", "north-america")

    assert [(t.key, t.due_at, t.carried) for t in carried] == [
        ("escalation:0:remind_rep", DUE, True),
        ("escalation:3:page_oncall", PAGE.due_at, True),
    ]
    assert [t.target for t in carried] == ["ben", "oncall"]


def test_a_carried_step_fires_on_time_while_the_new_clock_still_runs() -> None:
    own = on_timer(clock(DeadlineStatus.armed), PAGE, PAGE.due_at)
    assert own is None, "a clock's own ladder waits for its breach"

    carried = replace_carried(PAGE)
    verdict = on_timer(clock(DeadlineStatus.armed), carried, carried.due_at)
    assert verdict is not None and verdict.fire

    answered = on_timer(clock(DeadlineStatus.met, responded=True), carried, carried.due_at)
    assert answered is not None and not answered.fire, "the new rep answered: the ladder stops"


def replace_carried(timer: Timer) -> Timer:
    return carry_ladder([timer], "ben", None, "north-america")[0]


def test_a_reassign_step_within_the_cap_reassigns() -> None:
    facts = timer_facts(clock(DeadlineStatus.breached, reassignments=1), REASSIGN, REASSIGN.due_at, ["ava"], 2)

    escalated, requested = facts
    assert isinstance(escalated, SlaEscalatedV1) and escalated.step is EscalationAction.reassign
    assert isinstance(requested, ReassignmentRequestedV1)


def test_a_reassign_step_at_the_cap_pages_on_call_instead() -> None:
    facts = timer_facts(clock(DeadlineStatus.breached, reassignments=2), REASSIGN, REASSIGN.due_at, ["ava"], 2)

    (escalated,) = facts
    assert isinstance(escalated, SlaEscalatedV1)
    assert (escalated.step, escalated.target) == (EscalationAction.page_oncall, "oncall")
    assert escalated.reason is not None and "cap" in escalated.reason


@pytest.mark.parametrize("timer", [PAGE, REASSIGN])
def test_once_on_call_is_paged_no_later_step_pages_or_reassigns(timer: Timer) -> None:
    verdict = on_timer(clock(DeadlineStatus.breached, paged=True), timer, timer.due_at)

    assert verdict is not None and not verdict.fire
    assert "already paged" in verdict.reason


# --------------------------------------------------------------------------- agreement review


def ladder(*steps: tuple[str, str], cap: int = 2) -> Agreement:
    def change(document: dict[str, Any]) -> None:
        hot = document["sla"]["policies"]["hot"]
        hot["escalation"] = [{"step": name, "after": after} for name, after in steps]
        hot["max_reassignments"] = cap

    return agreement(change)


def test_validate_warns_about_ladder_steps_that_can_never_fire() -> None:
    assert not [
        w for w in agreement_warnings(ladder(("reassign", "10m"), ("page_oncall", "30m"))) if "escalation" in w.path
    ]

    twice = [str(w) for w in agreement_warnings(ladder(("page_oncall", "10m"), ("page_oncall", "30m")))]
    assert any("escalation.1" in w and "on-call is paged once" in w for w in twice)

    capped = [
        str(w)
        for w in agreement_warnings(ladder(("reassign", "5m"), ("reassign", "10m"), ("page_oncall", "30m"), cap=1))
    ]
    assert any("escalation.1" in w and "past max_reassignments (1)" in w for w in capped)
    assert any("escalation.2" in w and "can never fire" in w for w in capped)
