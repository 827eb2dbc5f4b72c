"""SLA clocks on business calendars: deadlines, the timers around them, and what each one emits."""

from __future__ import annotations

import copy
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import Agreement, AgreementError, parse_agreement
from coxswain.core.sla import (
    FIRST_TOUCH,
    SAL_DECISION,
    Clock,
    DeadlineStatus,
    Timer,
    TimerKind,
    alert_id,
    calendar_for,
    counts_as_response,
    deadline_id_for,
    first_touch_due,
    on_response,
    on_timer,
    plan,
    timer_facts,
)
from schemas.events import (
    ActivityType,
    EscalationAction,
    ReassignmentRequestedV1,
    SlaBreachedV1,
    SlaEscalatedV1,
    SlaWarnedV1,
    Tier,
)

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml").read_text())
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = {"mon-fri": ["09:00-17:00"]}


def agreement(policy: dict[str, Any], calendars: dict[str, Any] | None = None, **rep_fields: Any) -> Agreement:
    document = copy.deepcopy(EXAMPLE)
    document["calendars"] = calendars or {"office": {"timezone": "America/New_York", "hours": OFFICE}}
    document["sla"] = {"calendar": "office", "policies": {tier.value: policy for tier in Tier}}
    document["roster"][0].update(rep_fields)
    return parse_agreement(document)


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


REP = EXAMPLE["roster"][0]["id"]


def test_two_hour_sla_started_friday_1630_falls_due_monday_1030() -> None:
    office = agreement({"first_touch": "2h"})

    due = first_touch_due(office, Tier.hot, ny(2026, 11, 20, 16, 30))

    assert due == ny(2026, 11, 23, 10, 30)
    assert due.tzinfo is UTC


@pytest.mark.parametrize(
    ("zone", "started", "within", "due"),
    [
        # New York springs forward on Sunday 8 March 2026, falls back on Sunday 1 November.
        ("America/New_York", ny(2026, 3, 6, 16, 30), "2h", ny(2026, 3, 9, 10, 30)),
        ("America/New_York", ny(2026, 10, 30, 13, 0), "8h", ny(2026, 11, 2, 13, 0)),
        # Berlin springs forward on Sunday 29 March 2026, falls back on Sunday 25 October.
        ("Europe/Berlin", berlin(2026, 3, 27, 13, 0), "8h", berlin(2026, 3, 30, 13, 0)),
        ("Europe/Berlin", berlin(2026, 10, 23, 16, 0), "3h", berlin(2026, 10, 26, 11, 0)),
    ],
)
def test_office_hour_deadlines_keep_local_time_across_dst(
    zone: str, started: datetime, within: str, due: datetime
) -> None:
    office = agreement({"first_touch": within}, {"office": {"timezone": zone, "hours": OFFICE}})

    result = first_touch_due(office, Tier.hot, started)

    assert result == due
    assert result.astimezone(ZoneInfo(zone)).utcoffset() != started.utcoffset()


@pytest.mark.parametrize(
    ("zone", "started", "expected_local"),
    [
        # Round the clock in local time: three real hours across the jump read as 2 or 4 on the wall.
        ("America/New_York", ny(2026, 3, 8, 0, 30), ny(2026, 3, 8, 4, 30)),
        ("America/New_York", ny(2026, 11, 1, 0, 30), ny(2026, 11, 1, 2, 30)),
        ("Europe/Berlin", berlin(2026, 3, 29, 1, 0), berlin(2026, 3, 29, 5, 0)),
        ("Europe/Berlin", berlin(2026, 10, 25, 1, 0), berlin(2026, 10, 25, 3, 0)),
    ],
)
def test_round_the_clock_deadline_is_real_elapsed_time_across_dst(
    zone: str, started: datetime, expected_local: datetime
) -> None:
    always = agreement({"first_touch": "3h"}, {"office": {"timezone": zone, "hours": {"mon-sun": ["00:00-24:00"]}}})

    due = first_touch_due(always, Tier.hot, started)

    assert due - started == timedelta(hours=3)
    assert due.astimezone(ZoneInfo(zone)).replace(tzinfo=None) == expected_local.replace(tzinfo=None)


def test_public_holidays_and_closed_dates_stop_the_clock() -> None:
    calendars = {
        "office": {
            "timezone": "America/New_York",
            "hours": OFFICE,
            "holidays": {"country": "US"},
            "closed_dates": ["2026-11-27"],
        }
    }
    office = agreement({"first_touch": "2h"}, calendars)

    # Wednesday 16:00 before Thanksgiving (Thursday), Friday closed by the agreement.
    assert first_touch_due(office, Tier.hot, ny(2026, 11, 25, 16, 0)) == ny(2026, 11, 30, 10, 0)


def test_rep_calendar_with_out_of_office_moves_the_deadline() -> None:
    calendars = {
        "office": {"timezone": "America/New_York", "hours": OFFICE},
        "berlin": {"timezone": "Europe/Berlin", "hours": OFFICE},
    }
    away = [{"start": "2026-11-23T00:00:00+01:00", "end": "2026-11-24T00:00:00+01:00"}]
    office = agreement({"first_touch": "2h", "calendar": "rep"}, calendars, calendar="berlin", out_of_office=away)

    started = berlin(2026, 11, 20, 16, 30)
    assert first_touch_due(office, Tier.hot, started, rep_id=REP) == berlin(2026, 11, 24, 10, 30)
    # Someone without a calendar of their own falls back to the agreement's default.
    other = EXAMPLE["roster"][1]["id"]
    assert first_touch_due(office, Tier.hot, started, rep_id=other) == ny(2026, 11, 20, 12, 30)
    assert calendar_for(office, Tier.hot, None).name == "office"


def test_sal_decision_milestone_counts_only_accept_or_reject() -> None:
    office = agreement({"first_touch": "2h", "sal_decision": "4h"})

    assert counts_as_response(office, Tier.hot, ActivityType.first_touch, FIRST_TOUCH)
    assert not counts_as_response(office, Tier.hot, ActivityType.first_touch, SAL_DECISION)
    assert counts_as_response(office, Tier.hot, ActivityType.sal_rejected, SAL_DECISION)
    assert not counts_as_response(office, Tier.hot, ActivityType.automated_email, FIRST_TOUCH)
    plans = plan(office, Tier.hot, REP, "general", ny(2026, 11, 20, 16, 30))
    assert [(p.milestone, p.due_at) for p in plans] == [
        (FIRST_TOUCH, ny(2026, 11, 23, 10, 30)),
        (SAL_DECISION, ny(2026, 11, 23, 12, 30)),
    ]


LADDER = {
    "first_touch": "2h",
    "warnings": [0.5, 0.8],
    "escalation": [
        {"step": "remind_rep"},
        {"step": "notify_manager", "after": "30m"},
        {"step": "reassign", "after": "1h", "exclude_last": 2},
        {"step": "page_oncall", "after": "8h"},
    ],
}


def test_plan_places_warnings_breach_and_ladder_in_business_time() -> None:
    office = agreement(LADDER, manager="maria")

    [first_touch] = plan(office, Tier.hot, REP, "general", ny(2026, 11, 20, 16, 30))

    assert [(t.key, t.due_at) for t in first_touch.timers] == [
        ("warning:0.5", ny(2026, 11, 23, 9, 30)),
        ("warning:0.8", ny(2026, 11, 23, 10, 6)),
        ("breach", ny(2026, 11, 23, 10, 30)),
        ("escalation:0:remind_rep", ny(2026, 11, 23, 10, 30)),
        ("escalation:1:notify_manager", ny(2026, 11, 23, 11, 0)),
        ("escalation:2:reassign", ny(2026, 11, 23, 11, 30)),
        ("escalation:3:page_oncall", ny(2026, 11, 24, 10, 30)),
    ]
    assert [t.target for t in first_touch.timers if t.kind is TimerKind.escalation] == [
        REP,
        "maria",
        "router",
        "oncall",
    ]


def test_the_router_promise_is_the_first_touch_deadline() -> None:
    office = agreement(LADDER)
    promised = ny(2026, 11, 23, 11, 0)

    [first_touch] = plan(office, Tier.hot, REP, "general", ny(2026, 11, 20, 16, 30), promised)

    assert first_touch.due_at == promised
    assert [t.due_at for t in first_touch.timers if t.kind is TimerKind.breach] == [promised]


NY_OFFICE = agreement(LADDER).calendar("office")
starts = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)).map(
    lambda moment: moment.astimezone(UTC)
)


@settings(max_examples=150, deadline=None)
@given(started=starts, minutes=st.integers(min_value=1, max_value=60 * 24 * 5))
def test_every_timer_is_in_order_and_never_in_closed_time(started: datetime, minutes: int) -> None:
    policy = {**LADDER, "first_touch": f"{minutes}m"}
    [clock] = plan(agreement(policy), Tier.hot, REP, "general", started)
    moments = [timer.due_at for timer in clock.timers]

    assert moments == sorted(moments)
    assert all(timer.due_at < clock.due_at for timer in clock.timers if timer.kind is TimerKind.warning)
    for timer in clock.timers:
        # At most the very end of a window (a deadline used up exactly at 17:00), never later.
        assert NY_OFFICE.is_open(timer.due_at) or NY_OFFICE.is_open(timer.due_at - timedelta(microseconds=1))
    allowed = NY_OFFICE.diff(started, clock.due_at)
    assert allowed == timedelta(minutes=minutes)
    for timer in clock.timers:
        if timer.fraction is not None:
            assert abs(NY_OFFICE.diff(started, timer.due_at) - allowed * timer.fraction) <= timedelta(microseconds=1)


LEAD = uuid.UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")
ASSIGNMENT = uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa")
DEADLINE = deadline_id_for(ASSIGNMENT, FIRST_TOUCH)
DUE = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)


def clock(status: DeadlineStatus = DeadlineStatus.armed, responded: bool = False) -> Clock:
    return Clock(DEADLINE, LEAD, ASSIGNMENT, "ava", "general", FIRST_TOUCH, Tier.hot, DUE, status, responded)


WARNING = Timer(TimerKind.warning, "warning:0.8", DUE - timedelta(minutes=24), fraction=0.8)
BREACH = Timer(TimerKind.breach, "breach", DUE)
REASSIGN = Timer(
    TimerKind.escalation,
    "escalation:2:reassign",
    DUE + timedelta(hours=1),
    step=EscalationAction.reassign,
    step_index=2,
    target="router",
    exclude_last=2,
)
PAGE = Timer(TimerKind.escalation, "escalation:3:page_oncall", DUE, step=EscalationAction.page_oncall, step_index=3)


@pytest.mark.parametrize("timer", [WARNING, BREACH, REASSIGN])
def test_no_timer_acts_before_its_time(timer: Timer) -> None:
    assert on_timer(clock(), timer, timer.due_at - timedelta(microseconds=1)) is None


def test_warning_fires_only_while_the_clock_runs() -> None:
    assert on_timer(clock(), WARNING, WARNING.due_at) == on_timer(clock(), WARNING, DUE + timedelta(days=1))
    verdict = on_timer(clock(), WARNING, WARNING.due_at)
    assert verdict is not None and verdict.fire and verdict.status is DeadlineStatus.armed
    for status in (DeadlineStatus.met, DeadlineStatus.breached, DeadlineStatus.cancelled):
        decided = on_timer(clock(status), WARNING, DUE)
        assert decided is not None and not decided.fire


def test_breach_timer_breaches_only_an_armed_clock() -> None:
    verdict = on_timer(clock(), BREACH, DUE)
    assert verdict is not None and verdict.fire and verdict.status is DeadlineStatus.breached
    late_met = on_timer(clock(DeadlineStatus.met), BREACH, DUE + timedelta(hours=1))
    assert late_met is not None and not late_met.fire and late_met.status is DeadlineStatus.met


def test_ladder_waits_for_the_breach_and_stops_at_a_response() -> None:
    assert on_timer(clock(), PAGE, DUE) is None
    running = on_timer(clock(DeadlineStatus.breached), PAGE, DUE)
    assert running is not None and running.fire
    stopped = on_timer(clock(DeadlineStatus.breached, responded=True), PAGE, DUE)
    assert stopped is not None and not stopped.fire
    for status in (DeadlineStatus.met, DeadlineStatus.cancelled):
        retired = on_timer(clock(status), PAGE, DUE)
        assert retired is not None and not retired.fire


def test_alert_ids_are_deterministic_per_lead_milestone_and_step() -> None:
    [warned] = timer_facts(clock(), WARNING, WARNING.due_at)
    [again] = timer_facts(clock(), WARNING, WARNING.due_at + timedelta(seconds=3))
    [breach] = timer_facts(clock(), BREACH, DUE)

    assert isinstance(warned, SlaWarnedV1) and warned.fraction == 0.8 and warned.team == "general"
    assert warned.event_id == again.event_id == alert_id(DEADLINE, "warning:0.8")
    assert isinstance(breach, SlaBreachedV1) and breach.event_id == uuid.uuid5(DEADLINE, "breached")
    assert deadline_id_for(ASSIGNMENT, SAL_DECISION) != DEADLINE
    assert len({warned.event_id, breach.event_id, alert_id(DEADLINE, REASSIGN.key)}) == 3


def test_reassign_step_asks_the_router_excluding_the_last_owners() -> None:
    escalated, request = timer_facts(clock(DeadlineStatus.breached), REASSIGN, REASSIGN.due_at, ["ben", "ava", "eli"])

    assert isinstance(escalated, SlaEscalatedV1)
    assert (escalated.step, escalated.step_index, escalated.target) == (EscalationAction.reassign, 2, "router")
    assert isinstance(request, ReassignmentRequestedV1)
    assert request.assignment_id == ASSIGNMENT
    assert request.exclude_reps == ("ava", "ben")
    assert request.requested_by == "sla_escalation"
    assert request.event_id != escalated.event_id


moments = st.integers(min_value=-3600, max_value=3 * 3600).map(lambda s: DUE + timedelta(seconds=s))
steps = st.lists(
    st.tuples(st.sampled_from(["response", "warning", "breach", "page"]), moments), min_size=1, max_size=12
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_any_interleaving_decides_once_and_escalates_only_between_breach_and_response(
    sequence: list[tuple[str, datetime]],
) -> None:
    state = clock()
    log: list[str] = []  # what happened, in order: responses and every fact emitted
    timers = {"warning": WARNING, "breach": BREACH, "page": PAGE}
    for kind, moment in sequence:
        if kind == "response":
            verdict = on_response(state.status, DUE, moment)
            log.append("response")
            if verdict is not None:
                log.append(verdict.status.value)
            state = replace(state, status=verdict.status if verdict else state.status, responded=True)
            continue
        outcome = on_timer(state, timers[kind], moment)
        if outcome is not None and outcome.fire:
            log.append(kind)
            state = replace(state, status=outcome.status)

    verdicts = [entry for entry in log if entry in ("met", "breached", "breach")]
    assert len(verdicts) <= 1
    for position, entry in enumerate(log):
        before = log[:position]
        if entry == "warning":
            assert not verdicts or verdicts[0] not in before
        if entry == "page":
            assert before.count("breach") + before.count("breached") == 1
            assert "response" not in before


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"sla": {"calendar": "nowhere"}}, "sla.calendar", "unknown calendar 'nowhere'"),
        ({"policy": {"calendar": "nowhere"}}, "sla.policies.hot.calendar", "unknown calendar 'nowhere'"),
        ({"sla": {"calendar": "rep"}}, "sla.calendar", "unknown calendar 'rep'"),
        ({"rep": {"calendar": "nowhere"}}, "roster.0.calendar", "unknown calendar 'nowhere'"),
        ({"calendars": {"24x7": {"hours": OFFICE}}}, "calendars.24x7", "reserved calendar name"),
        ({"calendars": {"x": {"hours": {"mon-fri": ["17:00-09:00"]}}}}, "calendars.x", "end must be after start"),
        ({"calendars": {"x": {"hours": OFFICE, "timezone": "Mars/Olympus"}}}, "calendars.x", "unknown time zone"),
        ({"calendars": {"x": {"hours": OFFICE, "holidays": {"country": "ZZ"}}}}, "calendars.x", "holiday country"),
        ({"policy": {"warnings": [0.8, 0.5]}}, "sla.policies.hot", "ascending fractions"),
        ({"policy": {"warnings": [1.0]}}, "sla.policies.hot", "between 0 and 1"),
        (
            {"policy": {"escalation": [{"step": "page_oncall", "after": "1h"}, {"step": "remind_rep"}]}},
            "sla.policies.hot",
            "order they fire",
        ),
        ({"policy": {"escalation": [{"step": "call_mum"}]}}, "sla.policies.hot.escalation.0.step", "remind_rep"),
        ({"policy": {"responses": ["automated_email"]}}, "sla.policies.hot", "automated_email cannot count"),
        (
            {"rep": {"out_of_office": [{"start": "2026-11-24T00:00:00Z", "end": "2026-11-23T00:00:00Z"}]}},
            "roster.0.out_of_office.0",
            "must be after start",
        ),
    ],
)
def test_sla_sections_are_validated_with_paths(change: dict[str, Any], path: str, message: str) -> None:
    document = copy.deepcopy(EXAMPLE)
    document["calendars"] = {"office": {"hours": OFFICE}, **change.get("calendars", {})}
    document["sla"] = {
        "calendar": "office",
        "policies": {tier.value: {"first_touch": "5m"} for tier in Tier},
        **change.get("sla", {}),
    }
    document["sla"]["policies"]["hot"] = {"first_touch": "5m", **change.get("policy", {})}
    document["roster"][0].update(change.get("rep", {}))

    with pytest.raises(AgreementError) as raised:
        parse_agreement(document)

    assert any(p.path == path and message in p.message for p in raised.value.problems), raised.value.problems


def test_the_walking_skeleton_sla_form_still_loads_with_defaults() -> None:
    document = copy.deepcopy(EXAMPLE)
    document.pop("calendars", None)
    document.pop("marketing", None)
    document["sla"] = {
        "calendar": "24x7",
        "policies": {"hot": {"first_touch": "5m"}, "warm": {"first_touch": "1h"}, "cold": {"first_touch": "4h"}},
    }

    loaded = parse_agreement(document)

    started = datetime(2026, 11, 21, 23, 58, tzinfo=UTC)
    assert first_touch_due(loaded, Tier.hot, started) == started + timedelta(minutes=5)
    [clock_plan] = plan(loaded, Tier.hot, REP, None, started)
    assert [t.kind for t in clock_plan.timers] == [TimerKind.breach]
    assert loaded.marketing.mql_targets == ()
