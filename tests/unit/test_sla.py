"""The follow-up clock: deadlines per tier, met or breached exactly once, decided deadlines stay decided."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import load_agreement
from coxswain.core.sla import DeadlineStatus, Verdict, counts_as_response, first_touch_due, on_due, on_response
from schemas.events import ActivityType, Tier

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
ROUTED = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DUE = ROUTED + timedelta(minutes=5)
SECOND = timedelta(seconds=1)
DECIDED = [DeadlineStatus.met, DeadlineStatus.breached, DeadlineStatus.cancelled]


@pytest.mark.parametrize(
    ("tier", "window"),
    [(Tier.hot, timedelta(minutes=5)), (Tier.warm, timedelta(hours=1)), (Tier.cold, timedelta(hours=4))],
)
def test_first_touch_due_per_tier(tier: Tier, window: timedelta) -> None:
    assert first_touch_due(AGREEMENT, tier, ROUTED) == ROUTED + window


def test_due_time_keeps_the_timezone_of_the_routing_time() -> None:
    due = first_touch_due(AGREEMENT, Tier.hot, ROUTED)

    assert due.tzinfo is UTC


@pytest.mark.parametrize(
    ("activity", "counts"),
    [
        (ActivityType.first_touch, True),
        (ActivityType.sal_accepted, True),
        (ActivityType.sal_rejected, True),
        (ActivityType.automated_email, False),
        (ActivityType.meeting_held, False),
        (ActivityType.won, False),
    ],
)
def test_what_counts_as_a_response(activity: ActivityType, counts: bool) -> None:
    assert all(counts_as_response(AGREEMENT, tier, activity) is counts for tier in Tier)


def test_response_before_the_deadline_is_met() -> None:
    assert on_response(DeadlineStatus.armed, DUE, DUE - SECOND) == Verdict(
        DeadlineStatus.met, "responded before the deadline"
    )


def test_response_exactly_at_the_deadline_is_met() -> None:
    verdict = on_response(DeadlineStatus.armed, DUE, DUE)

    assert verdict is not None
    assert verdict.status is DeadlineStatus.met


def test_response_after_the_deadline_is_a_breach_even_before_the_timer_fires() -> None:
    assert on_response(DeadlineStatus.armed, DUE, DUE + SECOND) == Verdict(
        DeadlineStatus.breached, "response came after the deadline"
    )


@pytest.mark.parametrize("status", DECIDED)
def test_response_to_a_decided_deadline_changes_nothing(status: DeadlineStatus) -> None:
    assert on_response(status, DUE, DUE - SECOND) is None
    assert on_response(status, DUE, DUE + SECOND) is None


def test_timer_before_the_deadline_does_nothing() -> None:
    assert on_due(DeadlineStatus.armed, DUE, DUE - SECOND) is None


@pytest.mark.parametrize("late", [timedelta(0), SECOND, timedelta(days=3)])
def test_timer_at_or_after_the_deadline_breaches_an_armed_clock(late: timedelta) -> None:
    assert on_due(DeadlineStatus.armed, DUE, DUE + late) == Verdict(
        DeadlineStatus.breached, "no response before the deadline"
    )


@pytest.mark.parametrize("status", DECIDED)
def test_timer_only_breaches_from_armed(status: DeadlineStatus) -> None:
    assert on_due(status, DUE, DUE + timedelta(hours=1)) is None


offsets = st.integers(min_value=-7200, max_value=7200).map(lambda s: DUE + timedelta(seconds=s))


@settings(max_examples=200, deadline=None)
@given(status=st.sampled_from(DECIDED), moment=offsets)
def test_a_decided_deadline_never_changes(status: DeadlineStatus, moment: datetime) -> None:
    assert on_response(status, DUE, moment) is None
    assert on_due(status, DUE, moment) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["response", "timer"]), offsets), max_size=12))
def test_any_sequence_of_responses_and_timers_decides_at_most_once(steps: list[tuple[str, datetime]]) -> None:
    status = DeadlineStatus.armed
    decisions: list[tuple[DeadlineStatus, str, datetime]] = []
    for kind, moment in steps:
        verdict = on_response(status, DUE, moment) if kind == "response" else on_due(status, DUE, moment)
        if verdict is not None:
            assert status is DeadlineStatus.armed
            status = verdict.status
            decisions.append((verdict.status, kind, moment))

    assert len(decisions) <= 1
    if decisions:
        ((decided, kind, moment),) = decisions
        first_deciding = next(
            (k, m) for k, m in steps if (k == "response") or (k == "timer" and m >= DUE)
        )  # the first step able to decide is the one that did
        assert (kind, moment) == first_deciding
        assert decided is (DeadlineStatus.met if kind == "response" and moment <= DUE else DeadlineStatus.breached)
    else:
        assert all(kind == "timer" and moment < DUE for kind, moment in steps)
