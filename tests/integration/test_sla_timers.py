"""Durable SLA timers against the real PostgreSQL: arming, firing, races, reassignment, pacing and
the alert webhook.

The tests run on a database of their own (migrated with the real migrations), so their clocks can
be set freely without touching the rows of services running elsewhere in the session.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import uvicorn
import yaml
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement, parse_agreement
from coxswain.core.sla import FIRST_TOUCH, SAL_DECISION, deadline_id_for
from coxswain.runtime.consumer import Handler
from coxswain.settings import SlaConfig
from schemas.events import (
    ActivityAcceptedV1,
    ActivityType,
    EscalationAction,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadRoutedV1,
    MqlPacingAlertV1,
    ReassignmentRequestedV1,
    SlaArmedV1,
    SlaBreachedV1,
    SlaCancelledV1,
    SlaEscalatedV1,
    SlaMetV1,
    SlaWarnedV1,
    Stage,
    Tier,
)
from services.sla_monitor import repository as sla_repository
from services.sla_monitor import service as sla_service
from services.sla_monitor.alerts import AlertWebhook
from services.sla_monitor.metrics import SlaMetrics
from services.sla_monitor.monitor import Monitor
from services.sla_monitor.pacing import check_pacing
from services.sla_monitor.service import make_handler
from services.sla_monitor.timers import RESPONSE_HOLD, fire_due, record
from tests.support.databases import fresh_database
from tests.support.stack import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml").read_text())
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday
LADDER = {
    "first_touch": "10m",
    "sal_decision": "1h",
    "warnings": [0.5],
    "escalation": [
        {"step": "remind_rep"},
        {"step": "notify_manager", "after": "5m"},
        {"step": "reassign", "after": "10m"},
        {"step": "page_oncall", "after": "30m"},
    ],
}


def make_agreement(policy: dict[str, Any], **extra: Any) -> Agreement:
    document = copy.deepcopy(EXAMPLE)
    document["sla"] = {"calendar": "24x7", "policies": {tier.value: policy for tier in Tier}}
    document.update(extra)
    return parse_agreement(document)


LADDER_AGREEMENT = make_agreement(LADDER)
PLAIN_AGREEMENT = make_agreement({"first_touch": "10m"})


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with fresh_database("sla") as database:
        yield database


def routed(
    lead_id: uuid.UUID,
    routed_at: datetime,
    *,
    due: datetime | None = None,
    rep: str = "ava",
    team: str = "general",
    tier: Tier = Tier.hot,
) -> LeadRoutedV1:
    cause = uuid.uuid4()
    return LeadRoutedV1(
        event_id=uuid.uuid5(cause, "routed"),
        lead_id=lead_id,
        occurred_at=routed_at,
        agreement_version="it-1",
        caused_by=cause,
        assignment_id=uuid.uuid5(cause, "assignment"),
        rep_id=rep,
        pool_id=team,
        rule_id="fallback",
        reason="test",
        tier=tier,
        routed_at=routed_at,
        follow_up_due_at=due or routed_at + timedelta(minutes=10),
        candidates=(),
    )


def activity(lead_id: uuid.UUID, kind: ActivityType, at: datetime, rep: str | None = "ava") -> ActivityAcceptedV1:
    """A CRM activity as scoring accepted it: what the monitor consumes."""
    return ActivityAcceptedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=at,
        agreement_version="it-1",
        caused_by=uuid.uuid4(),
        source="crm",
        activity=kind,
        rep_id=rep,
        from_stage=Stage.mql,
        to_stage=Stage.mql,
    )


async def apply(engine: AsyncEngine, handler: Handler, events: Sequence[Event], now: datetime) -> list[Event]:
    facts: list[Event] = []
    async with engine.begin() as connection:
        for event in events:
            facts += await handler(connection, event, now)
    return facts


async def fire(
    engine: AsyncEngine, now: datetime, instance: str = "it", agreement: Agreement | None = None
) -> list[Event]:
    return (await fire_due(engine, now, 1000, instance, agreement=agreement)).facts


async def status_of(engine: AsyncEngine, deadline_id: uuid.UUID) -> tuple[str, dict[str, str]]:
    async with engine.connect() as connection:
        status = await connection.scalar(
            text("SELECT status FROM deadlines WHERE deadline_id = :d"), {"d": deadline_id}
        )
        timers = await connection.execute(
            text("SELECT key, status FROM sla_timers WHERE deadline_id = :d"), {"d": deadline_id}
        )
        return str(status), {row.key: row.status for row in timers}


def of(facts: Sequence[Event], kind: type[Event], lead_id: uuid.UUID | None = None) -> list[Any]:
    return [fact for fact in facts if isinstance(fact, kind) and (lead_id is None or fact.lead_id == lead_id)]


async def test_a_routed_lead_arms_every_milestone_once(engine: AsyncEngine) -> None:
    handler = make_handler(LADDER_AGREEMENT)
    lead = uuid.uuid4()
    event = routed(lead, T0)

    facts = await apply(engine, handler, [event], T0)
    again = await apply(engine, handler, [event], T0 + timedelta(seconds=1))

    armed = of(facts, SlaArmedV1)
    assert [(fact.milestone, fact.due_at) for fact in armed] == [
        (FIRST_TOUCH, T0 + timedelta(minutes=10)),
        (SAL_DECISION, T0 + timedelta(hours=1)),
    ]
    assert again == []
    status, timers = await status_of(engine, deadline_id_for(event.assignment_id, FIRST_TOUCH))
    assert status == "armed"
    assert timers == {
        "warning:0.5": "pending",
        "breach": "pending",
        "escalation:0:remind_rep": "pending",
        "escalation:1:notify_manager": "pending",
        "escalation:2:reassign": "pending",
        "escalation:3:page_oncall": "pending",
    }


async def test_warning_breach_and_ladder_fire_in_order_until_the_response_stops_it(engine: AsyncEngine) -> None:
    handler = make_handler(LADDER_AGREEMENT)
    lead = uuid.uuid4()
    event = routed(lead, T0, rep="ben")
    await apply(engine, handler, [event], T0)
    deadline = deadline_id_for(event.assignment_id, FIRST_TOUCH)

    assert of(await fire(engine, T0 + timedelta(minutes=4)), SlaWarnedV1, lead) == []
    [warned] = of(await fire(engine, T0 + timedelta(minutes=5)), SlaWarnedV1, lead)
    assert warned.fraction == 0.5 and warned.team == "general"

    at_breach = await fire(engine, T0 + timedelta(minutes=10))
    [breach] = of(at_breach, SlaBreachedV1, lead)
    [remind] = of(at_breach, SlaEscalatedV1, lead)
    assert breach.deadline_id == deadline and breach.due_at == T0 + timedelta(minutes=10)
    assert (remind.step.value, remind.target) == ("remind_rep", "ben")
    assert at_breach.index(breach) < at_breach.index(remind)

    later = await fire(engine, T0 + timedelta(minutes=20))
    assert [fact.step.value for fact in of(later, SlaEscalatedV1, lead)] == ["notify_manager", "reassign"]
    [request] = of(later, ReassignmentRequestedV1, lead)
    assert request.assignment_id == event.assignment_id and request.exclude_reps == ("ben",)

    touch = activity(lead, ActivityType.first_touch, T0 + timedelta(minutes=21), rep="ben")
    assert of(await apply(engine, handler, [touch], T0 + timedelta(minutes=21)), SlaMetV1) == []
    assert [
        fact for fact in of(await fire(engine, T0 + timedelta(hours=2)), SlaEscalatedV1) if fact.deadline_id == deadline
    ] == []
    status, timers = await status_of(engine, deadline)
    assert status == "breached"
    assert timers["escalation:3:page_oncall"] == "cancelled"
    assert Counter(timers.values()) == {"fired": 5, "cancelled": 1}


async def test_a_former_owners_touch_does_not_credit_the_new_owner(engine: AsyncEngine) -> None:
    handler = make_handler(PLAIN_AGREEMENT)
    lead = uuid.uuid4()
    first = routed(lead, T0, rep="ava")
    second = routed(lead, T0 + timedelta(minutes=1), rep="ben").model_copy(
        update={"replaces_assignment_id": first.assignment_id}
    )
    await apply(engine, handler, [first, second], T0 + timedelta(minutes=1))
    ben_clock = deadline_id_for(second.assignment_id, FIRST_TOUCH)

    by_ava = activity(lead, ActivityType.first_touch, T0 + timedelta(minutes=2), rep="ava")
    assert await apply(engine, handler, [by_ava], T0 + timedelta(minutes=2)) == []
    assert (await status_of(engine, ben_clock))[0] == "armed", "ben's clock runs on"

    by_ben = activity(lead, ActivityType.first_touch, T0 + timedelta(minutes=3), rep="ben")
    [met] = of(await apply(engine, handler, [by_ben], T0 + timedelta(minutes=3)), SlaMetV1)
    assert (met.deadline_id, met.rep_id, met.responded_by) == (ben_clock, "ben", "ben")


async def test_under_credit_stop_another_reps_touch_stops_the_clock_and_credits_them(engine: AsyncEngine) -> None:
    stop = make_agreement({"first_touch": "10m"})
    stop = stop.model_copy(
        update={"sla": stop.sla.model_copy(update={"credit": stop.sla.credit.model_copy(update={"other_rep": "stop"})})}
    )
    handler = make_handler(stop)
    lead = uuid.uuid4()
    event = routed(lead, T0, rep="ava")
    await apply(engine, handler, [event], T0)

    [met] = of(await apply(engine, handler, [activity(lead, ActivityType.first_touch, T0, rep="ben")], T0), SlaMetV1)

    assert (met.rep_id, met.responded_by) == ("ava", "ben")
    async with engine.connect() as connection:
        credited = await connection.scalar(
            text("SELECT responded_by FROM deadlines WHERE deadline_id = :d"), {"d": met.deadline_id}
        )
    assert credited == "ben"


SPANNING = make_agreement(
    {
        "first_touch": "10m",
        "escalation": [
            {"step": "remind_rep"},
            {"step": "reassign", "after": "10m"},
            {"step": "page_oncall", "after": "30m"},
        ],
    }
)


async def reassign(
    engine: AsyncEngine, handler: Handler, facts: Sequence[Event], rep: str, now: datetime
) -> LeadRoutedV1:
    """What the router does with a reassignment request: a new assignment that replaces the old one."""
    [request] = of(facts, ReassignmentRequestedV1)
    again = routed(request.lead_id, now, rep=rep).model_copy(update={"replaces_assignment_id": request.assignment_id})
    await apply(engine, handler, [again], now)
    return again


async def pages(engine: AsyncEngine, lead: uuid.UUID) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT t.key FROM sla_timers t JOIN deadlines d USING (deadline_id) WHERE d.lead_id = :l "
                "AND t.status = 'fired' AND t.kind = 'escalation' ORDER BY t.decided_at"
            ),
            {"l": lead},
        )
        return [row.key for row in rows]


async def test_the_ladder_goes_on_across_a_reassignment_and_pages_on_call_once(engine: AsyncEngine) -> None:
    handler = make_handler(SPANNING)
    lead = uuid.uuid4()
    first = routed(lead, T0, rep="ava")
    await apply(engine, handler, [first], T0)

    await fire(engine, T0 + timedelta(minutes=10), agreement=SPANNING)  # breach, remind ava
    request_facts = await fire(engine, T0 + timedelta(minutes=20), agreement=SPANNING)
    second = await reassign(engine, handler, request_facts, "ben", T0 + timedelta(minutes=20))

    # Ben's own deadline passes: a breach for ben, but the ladder does not restart (no remind, no
    # second reassignment).
    at_bens_breach = await fire(engine, T0 + timedelta(minutes=30), agreement=SPANNING)
    assert [fact.rep_id for fact in of(at_bens_breach, SlaBreachedV1, lead)] == ["ben"]
    assert of(at_bens_breach, SlaEscalatedV1, lead) == []
    # The page comes at the time the ladder states: 30 minutes after the first breach.
    assert of(await fire(engine, T0 + timedelta(minutes=39), agreement=SPANNING), SlaEscalatedV1, lead) == []
    [page] = of(await fire(engine, T0 + timedelta(minutes=40), agreement=SPANNING), SlaEscalatedV1, lead)
    assert (page.step, page.target, page.rep_id) == (EscalationAction.page_oncall, "oncall", "ben")
    assert of(await fire(engine, T0 + timedelta(hours=5), agreement=SPANNING), SlaEscalatedV1, lead) == []

    assert await pages(engine, lead) == ["escalation:0:remind_rep", "escalation:1:reassign", "escalation:2:page_oncall"]
    async with engine.connect() as connection:
        old = (
            await connection.execute(
                text("SELECT status, superseded_by FROM deadlines WHERE deadline_id = :d"),
                {"d": deadline_id_for(first.assignment_id, FIRST_TOUCH)},
            )
        ).one()
    assert (old.status, old.superseded_by) == ("breached", second.assignment_id), "it says it was superseded"
    _, old_timers = await status_of(engine, deadline_id_for(first.assignment_id, FIRST_TOUCH))
    assert old_timers["escalation:2:page_oncall"] == "cancelled", "moved to ben's clock, not dropped"


async def test_a_reassignment_past_the_cap_pages_instead_and_on_call_is_paged_once(engine: AsyncEngine) -> None:
    capped = make_agreement(
        {
            "first_touch": "10m",
            "max_reassignments": 1,
            "escalation": [
                {"step": "reassign", "after": "5m"},
                {"step": "reassign", "after": "10m"},
                {"step": "page_oncall", "after": "30m"},
            ],
        }
    )
    handler = make_handler(capped)
    lead = uuid.uuid4()
    await apply(engine, handler, [routed(lead, T0, rep="ava")], T0)
    await fire(engine, T0 + timedelta(minutes=10), agreement=capped)
    moved = await fire(engine, T0 + timedelta(minutes=15), agreement=capped)
    await reassign(engine, handler, moved, "ben", T0 + timedelta(minutes=15))

    at_cap = await fire(engine, T0 + timedelta(minutes=20), agreement=capped)
    assert of(at_cap, ReassignmentRequestedV1, lead) == [], "not reassigned beyond the cap"
    [page] = of(at_cap, SlaEscalatedV1, lead)
    assert page.step is EscalationAction.page_oncall and page.reason is not None and "cap" in page.reason
    assert of(await fire(engine, T0 + timedelta(hours=5), agreement=capped), SlaEscalatedV1, lead) == []


async def test_a_response_in_time_is_met_and_cancels_every_timer(engine: AsyncEngine) -> None:
    handler = make_handler(LADDER_AGREEMENT)
    lead = uuid.uuid4()
    event = routed(lead, T0)
    await apply(engine, handler, [event], T0)

    automated = activity(lead, ActivityType.automated_email, T0 + timedelta(minutes=1))
    assert await apply(engine, handler, [automated], T0 + timedelta(minutes=1)) == []
    touch = activity(lead, ActivityType.first_touch, T0 + timedelta(minutes=9))
    [met] = await apply(engine, handler, [touch], T0 + timedelta(minutes=9))

    assert isinstance(met, SlaMetV1) and met.milestone == FIRST_TOUCH
    later = await fire(engine, T0 + timedelta(hours=3))
    assert {fact.milestone for fact in of(later, SlaEscalatedV1, lead)} == {SAL_DECISION}
    status, timers = await status_of(engine, deadline_id_for(event.assignment_id, FIRST_TOUCH))
    assert status == "met" and set(timers.values()) == {"cancelled"}
    # The SAL handshake is its own clock: a first touch does not stop it.
    sal_status, _ = await status_of(engine, deadline_id_for(event.assignment_id, SAL_DECISION))
    assert sal_status == "breached"


async def test_a_new_assignment_cancels_the_old_clock_and_arms_a_new_one(engine: AsyncEngine) -> None:
    handler = make_handler(PLAIN_AGREEMENT)
    lead = uuid.uuid4()
    first = routed(lead, T0, rep="ava")
    second = routed(lead, T0 + timedelta(minutes=3), rep="ben")
    await apply(engine, handler, [first], T0)

    facts = await apply(engine, handler, [second], T0 + timedelta(minutes=3))
    stale = await apply(engine, handler, [routed(lead, T0 + timedelta(minutes=1))], T0 + timedelta(minutes=4))

    [cancelled] = of(facts, SlaCancelledV1)
    [armed] = of(facts, SlaArmedV1)
    assert cancelled.assignment_id == first.assignment_id and cancelled.superseded_by == second.assignment_id
    assert armed.assignment_id == second.assignment_id and armed.rep_id == "ben"
    assert stale == []
    breaches = of(await fire(engine, T0 + timedelta(minutes=30)), SlaBreachedV1, lead)
    assert [breach.assignment_id for breach in breaches] == [second.assignment_id]
    assert (await status_of(engine, deadline_id_for(first.assignment_id, FIRST_TOUCH)))[0] == "cancelled"


async def test_concurrent_monitors_fire_each_timer_exactly_once(engine: AsyncEngine) -> None:
    handler = make_handler(PLAIN_AGREEMENT)
    base = T0 + timedelta(days=1)
    events = [routed(uuid.uuid4(), base, due=base + timedelta(milliseconds=i)) for i in range(1000)]
    await apply(engine, handler, events, base)
    now = base + timedelta(minutes=1)

    async def monitor(name: str) -> list[Event]:
        fired: list[Event] = []
        while batch := (await fire_due(engine, now, 100, name)).facts:
            fired += batch
        return fired

    results = await asyncio.gather(*(monitor(f"m{i}") for i in range(4)))

    leads = {event.lead_id for event in events}
    ids = [fact.event_id for facts in results for fact in facts if fact.lead_id in leads]
    assert len(ids) == len(set(ids)) == 1000
    async with engine.connect() as connection:
        by_instance = await connection.execute(
            text(
                "SELECT fired_by, count(*) AS n FROM sla_timers t JOIN deadlines d USING (deadline_id) "
                "WHERE d.lead_id = ANY(:l) GROUP BY fired_by"
            ),
            {"l": list(leads)},
        )
        assert sum(row.n for row in by_instance) == 1000


async def test_response_racing_the_timer_gets_exactly_one_of_met_or_breached(engine: AsyncEngine) -> None:
    """Acceptance: the row lock decides. A response that reaches the row first is judged by its own
    time (before the deadline: met); a timer that reaches it first breaches; never both."""
    handler = make_handler(PLAIN_AGREEMENT)
    due = T0 + timedelta(days=2)
    early = [routed(uuid.uuid4(), due - timedelta(minutes=10), due=due) for _ in range(100)]
    racing = [routed(uuid.uuid4(), due - timedelta(minutes=10), due=due) for _ in range(400)]
    await apply(engine, handler, [*early, *racing], due - timedelta(minutes=10))
    leads = {event.lead_id for event in [*early, *racing]}
    touched_at = due - timedelta(milliseconds=1)

    # Responses applied before the deadline: met, and the timer later finds nothing to breach.
    facts = await apply(
        engine, handler, [activity(e.lead_id, ActivityType.first_touch, touched_at) for e in early], touched_at
    )

    async def respond(chunk: Sequence[LeadRoutedV1]) -> list[Event]:
        out: list[Event] = []
        for start in range(0, len(chunk), 10):
            touches = [activity(e.lead_id, ActivityType.first_touch, touched_at) for e in chunk[start : start + 10]]
            out += await apply(engine, handler, touches, due + timedelta(milliseconds=500))
        return out

    async def time_out(name: str) -> list[Event]:
        out: list[Event] = []
        while True:
            done = await fire_due(engine, due + timedelta(seconds=1), 25, name)
            out += done.facts
            if done.claimed == 0:
                return out

    results = await asyncio.gather(*(respond(racing[i::4]) for i in range(4)), time_out("timer-a"), time_out("timer-b"))
    facts += [fact for batch in results for fact in batch]
    facts += await fire(engine, due + timedelta(minutes=5))

    mine = [fact for fact in facts if fact.lead_id in leads]
    verdicts: dict[uuid.UUID, list[str]] = {lead: [] for lead in leads}
    for fact in mine:
        if isinstance(fact, SlaMetV1 | SlaBreachedV1):
            verdicts[fact.lead_id].append(type(fact).__name__)
    assert all(len(found) == 1 for found in verdicts.values()), [v for v in verdicts.values() if len(v) != 1][:5]
    assert all(verdicts[event.lead_id] == ["SlaMetV1"] for event in early)
    assert all(fact.responded_at <= fact.due_at for fact in of(mine, SlaMetV1))
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT d.lead_id, d.status, t.status AS timer FROM deadlines d JOIN sla_timers t USING (deadline_id) "
                "WHERE d.lead_id = ANY(:l) AND t.key = 'breach'"
            ),
            {"l": list(leads)},
        )
        stored = {row.lead_id: (row.status, row.timer) for row in rows}
    for lead, found in verdicts.items():
        expected = ("met", "cancelled") if found == ["SlaMetV1"] else ("breached", "fired")
        assert stored[lead] == expected


async def test_metrics_count_what_was_decided(engine: AsyncEngine) -> None:
    registry = CollectorRegistry()
    team = f"team-{uuid.uuid4().hex[:6]}"
    monitor = Monitor(lambda: LADDER_AGREEMENT, SlaConfig(), engine, lambda: T0 + timedelta(days=3), registry, "it")
    base = T0 + timedelta(days=3)
    events = [routed(uuid.uuid4(), base - timedelta(minutes=12), team=team, tier=Tier.warm) for _ in range(3)]
    await apply(engine, monitor.handler, events, base - timedelta(minutes=12))
    await apply(engine, monitor.handler, [activity(events[0].lead_id, ActivityType.first_touch, base)], base)
    await monitor.refresh_gauges()
    assert registry.get_sample_value("coxswain_sla_open_deadlines", {"tier": "warm", "team": team}) == 5

    now = base
    done = await fire_due(engine, now, 1000, "it-metrics")
    record(monitor.metrics, done, now)
    await monitor.refresh_gauges()

    labels = {"tier": "warm", "team": team}
    assert registry.get_sample_value("coxswain_sla_breaches_total", labels) == 3  # 1 late response, 2 timers
    assert registry.get_sample_value("coxswain_sla_warnings_total", labels) == 2
    assert registry.get_sample_value("coxswain_sla_escalations_total", {**labels, "step": "remind_rep"}) == 2
    assert registry.get_sample_value("coxswain_sla_open_deadlines", labels) == 3  # the SAL clocks run on
    assert registry.get_sample_value("coxswain_sla_timer_lag_seconds_count") == len(done.fired)
    assert registry.get_sample_value("coxswain_sla_timer_lag_seconds_sum") == pytest.approx(
        sum((now - timer.due_at).total_seconds() for _, timer in done.fired)
    )


async def test_mql_pacing_alerts_once_per_period_unless_the_shortfall_grows(engine: AsyncEngine) -> None:
    target = f"t{uuid.uuid4().hex[:8]}"
    agreement = make_agreement(
        {"first_touch": "10m"},
        marketing={"mql_targets": [{"id": target, "period": "month", "count": 3000, "alert_below": 0.8}]},
    )
    handler = make_handler(agreement)
    now = datetime(2031, 5, 16, 12, tzinfo=UTC)  # ~48% of May gone: ~1450 expected
    qualified = [
        LeadQualifiedV1(
            event_id=uuid.uuid4(),
            lead_id=uuid.uuid4(),
            occurred_at=now - timedelta(days=1),
            agreement_version="it-1",
            caused_by=uuid.uuid4(),
            tier=Tier.warm,
            score=70,
            reason="test",
            attributes=LeadAttributes(),
            source="webform",
        )
        for _ in range(30)
    ]
    await apply(engine, handler, [*qualified, *qualified[:5]], now)

    def metrics() -> SlaMetrics:
        return SlaMetrics(CollectorRegistry())

    # The first check starts watching the target: nothing was seen before, nothing is expected.
    watched = datetime(2031, 5, 1, 1, tzinfo=UTC)
    early, raised_early = await check_pacing(engine, agreement, watched, metrics())
    assert raised_early == [] and early[0].expected == 0
    # A day later: behind, but less than alert_after (10%) of the period watched.
    _, raised_day_two = await check_pacing(engine, agreement, watched + timedelta(days=1), metrics())
    assert raised_day_two == []

    checks = await asyncio.gather(*(check_pacing(engine, agreement, now, metrics()) for _ in range(3)))
    again, raised_again = await check_pacing(engine, agreement, now + timedelta(days=1), metrics())

    alerts = [alert for _, raised in checks for alert in raised]
    assert len(alerts) == 1 and raised_again == [], "once per target and period, whichever monitor checks"
    [alert] = alerts
    assert isinstance(alert, MqlPacingAlertV1)
    assert (alert.target_id, alert.actual, alert.target) == (target, 30, 3000)
    assert alert.pacing < 0.8
    assert again[0].actual == 30
    # The shortfall cannot grow by a further step while pacing is already near zero: no alert for the
    # rest of the month, however often it is checked.
    for day in range(17, 31, 3):
        _, raised = await check_pacing(engine, agreement, datetime(2031, 5, day, tzinfo=UTC), metrics())
        assert raised == []
    # A new period is a new alert.
    _, june = await check_pacing(engine, agreement, datetime(2031, 6, 10, tzinfo=UTC), metrics())
    assert len(june) == 1 and june[0].period_start == datetime(2031, 6, 1, tzinfo=UTC)


async def test_a_pacing_shortfall_that_grows_by_a_step_alerts_again(engine: AsyncEngine) -> None:
    target = f"t{uuid.uuid4().hex[:8]}"
    agreement = make_agreement(
        {"first_touch": "10m"},
        marketing={"mql_targets": [{"id": target, "period": "month", "count": 300, "alert_below": 0.8}]},
    )
    handler = make_handler(agreement)
    await check_pacing(engine, agreement, datetime(2032, 3, 1, tzinfo=UTC), SlaMetrics(CollectorRegistry()))

    def mqls(count: int, at: datetime) -> list[Event]:
        return [
            LeadQualifiedV1(
                event_id=uuid.uuid4(),
                lead_id=uuid.uuid4(),
                occurred_at=at,
                agreement_version="it-1",
                caused_by=uuid.uuid4(),
                tier=Tier.warm,
                score=70,
                reason="test",
                attributes=LeadAttributes(),
                source="webform",
            )
            for _ in range(count)
        ]

    # 10 March: 96.8 expected, 75 qualified: pacing 0.77, just below 0.8.
    tenth = datetime(2032, 3, 11, tzinfo=UTC)
    await apply(engine, handler, mqls(75, tenth - timedelta(days=1)), tenth)
    _, first = await check_pacing(engine, agreement, tenth, SlaMetrics(CollectorRegistry()))
    # 16 March: 145 expected, still 75 (0.52): the shortfall grew by more than a step.
    sixteenth = datetime(2032, 3, 16, tzinfo=UTC)
    _, second = await check_pacing(engine, agreement, sixteenth, SlaMetrics(CollectorRegistry()))
    _, third = await check_pacing(engine, agreement, sixteenth + timedelta(hours=6), SlaMetrics(CollectorRegistry()))

    assert len(first) == 1 and len(second) == 1 and third == []
    assert second[0].event_id != first[0].event_id and second[0].pacing < first[0].pacing - 0.1


class Receiver:
    """A real HTTP endpoint that answers each alert with the given statuses in turn, then 200."""

    def __init__(self, statuses: Sequence[int]) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[dict[str, Any], str]] = []
        self.port = free_port()
        app = FastAPI()

        @app.post("/alerts")
        async def alerts(request: Request) -> Response:
            webhook_id = request.headers["webhook-id"]
            earlier = sum(1 for _, seen in self.calls if seen == webhook_id)
            self.calls.append((orjson.loads(await request.body()), webhook_id))
            return Response(status_code=self.statuses[earlier] if earlier < len(self.statuses) else 200)

        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning", lifespan="off"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    async def __aenter__(self) -> Receiver:
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(1000):
            if self.server.started:
                return self
            await asyncio.sleep(0.01)
        raise AssertionError("webhook receiver did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task


async def deliveries(engine: AsyncEngine, event_id: uuid.UUID) -> tuple[str, int]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT status, attempts FROM sla_alert_deliveries WHERE event_id = :e"), {"e": event_id}
            )
        ).one()
        return row.status, row.attempts


@pytest.mark.parametrize("fmt", ["json", "slack"])
async def test_alert_webhook_retries_with_backoff_until_delivered(engine: AsyncEngine, fmt: str) -> None:
    handler = make_handler(PLAIN_AGREEMENT, alert_webhook=True)
    base = T0 + timedelta(days=10 if fmt == "json" else 11)
    lead = uuid.uuid4()
    await apply(engine, handler, [routed(lead, base)], base)
    done = await fire_due(engine, base + timedelta(minutes=10), 1000, "it-webhook", alert_webhook=True)
    [breach] = of(done.facts, SlaBreachedV1, lead)

    now = base + timedelta(minutes=10)

    async def attempt(after: timedelta) -> tuple[str, int]:
        nonlocal now
        now += after
        await webhook.deliver_once(client)
        return await deliveries(engine, breach.event_id)

    async with Receiver([503, 500]) as receiver, httpx.AsyncClient() as client:
        config = SlaConfig(alert_webhook_url=receiver.url, alert_webhook_format=fmt, alert_webhook_max_attempts=5)
        metrics = SlaMetrics(CollectorRegistry())
        webhook = AlertWebhook(engine, config, lambda: now, metrics, batch=1000, backoff_base=timedelta(seconds=1))
        # 1 s after the first failure, 2 s after the second: never earlier.
        assert await attempt(timedelta(0)) == ("pending", 1)
        assert await attempt(timedelta(milliseconds=900)) == ("pending", 1)
        assert await attempt(timedelta(milliseconds=100)) == ("pending", 2)
        assert await attempt(timedelta(milliseconds=1900)) == ("pending", 2)
        assert await attempt(timedelta(milliseconds=100)) == ("delivered", 3)

    assert await deliveries(engine, breach.event_id) == ("delivered", 3)
    bodies = [body for body, webhook_id in receiver.calls if webhook_id == str(breach.event_id)]
    assert len(bodies) == 3 and bodies[0] == bodies[-1]
    if fmt == "slack":
        assert set(bodies[0]) == {"text"} and "SLA breached" in bodies[0]["text"] and str(lead) in bodies[0]["text"]
    else:
        assert bodies[0]["type"] == "io.coxswain.sla.breached.v1"
        assert bodies[0]["data"]["deadline_id"] == str(breach.deadline_id)


async def test_an_unreachable_webhook_never_holds_up_the_clock(engine: AsyncEngine) -> None:
    handler = make_handler(PLAIN_AGREEMENT, alert_webhook=True)
    base = T0 + timedelta(days=12)
    leads = [uuid.uuid4() for _ in range(20)]
    await apply(engine, handler, [routed(lead, base) for lead in leads], base)

    done = await fire_due(engine, base + timedelta(minutes=10), 1000, "it-webhook", alert_webhook=True)
    breaches = of(done.facts, SlaBreachedV1)
    config = SlaConfig(alert_webhook_url=f"http://127.0.0.1:{free_port()}/down", alert_webhook_max_attempts=2)
    now = base + timedelta(minutes=10)
    webhook = AlertWebhook(
        engine, config, lambda: now, SlaMetrics(CollectorRegistry()), batch=1000, backoff_base=timedelta(0)
    )
    async with httpx.AsyncClient() as client:
        await webhook.deliver_once(client)
        await webhook.deliver_once(client)

    assert {fact.lead_id for fact in breaches} >= set(leads)
    assert {await deliveries(engine, fact.event_id) for fact in breaches if fact.lead_id in leads} == {("failed", 2)}


async def test_a_target_first_watched_mid_period_does_not_cry_wolf(engine: AsyncEngine) -> None:
    target = f"t{uuid.uuid4().hex[:8]}"
    agreement = make_agreement(
        {"first_touch": "10m"},
        marketing={"mql_targets": [{"id": target, "period": "month", "count": 3000, "alert_below": 0.8}]},
    )
    started = datetime(2033, 7, 20, tzinfo=UTC)  # 61% of July gone, nothing seen yet

    results, raised = await check_pacing(engine, agreement, started, SlaMetrics(CollectorRegistry()))
    _, next_day = await check_pacing(engine, agreement, started + timedelta(days=1), SlaMetrics(CollectorRegistry()))

    assert raised == [] and next_day == []
    assert results[0].expected == 0 and results[0].watched_from == started


# The look for the next due timer as it was before 7 December: the response hold as NOT EXISTS.
NEXT_DUE_WITH_THE_HOLD_AS_NOT_EXISTS = (
    "SELECT t.due_at FROM sla_timers t JOIN deadlines d ON d.deadline_id = t.deadline_id "
    "WHERE t.status = 'pending' AND NOT EXISTS (SELECT 1 FROM intake_events e WHERE e.lead_id = d.lead_id "
    "AND e.kind = 'activity' AND e.received_at <= t.due_at "
    "AND e.received_at > CAST(:now AS timestamptz) - CAST(:awaiting_hold AS interval) "
    "AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.consumer = :consumer AND i.event_id = e.event_id)) "
    "ORDER BY t.due_at LIMIT 1"
)


async def intake_events_read_whole(engine: AsyncEngine, next_due: str | None) -> int:
    """Whole-partition reads of intake_events by the look for the next due timer (``next_due``, or
    the monitor's own when None), called as the timer loop calls it, from the connection's plan
    cache, with one clock armed and a month's partition of 20,000 intake events, none of them an
    activity; rolled back."""
    now = datetime.now(UTC)
    async with engine.connect() as connection:
        try:
            await make_handler(PLAIN_AGREEMENT)(connection, routed(uuid.uuid4(), now), now)
            await connection.execute(
                text(
                    "INSERT INTO intake_events (event_id, lead_id, source, webhook_id, kind, payload, received_at) "
                    "SELECT gen_random_uuid(), gen_random_uuid(), 'web', 'wh-' || g, 'lead', '{}', :now "
                    "FROM generate_series(1, 20000) AS g"
                ),
                {"now": now},
            )
            await connection.execute(text("ANALYZE intake_events"))
            parameters = {"now": now, "consumer": sla_service.CONSUMER, "awaiting_hold": RESPONSE_HOLD}

            async def look() -> datetime | None:
                if next_due is None:
                    return await sla_repository.next_due(connection, now, sla_service.CONSUMER, RESPONSE_HOLD)
                found = await connection.scalar(text(next_due), parameters)
                return found if isinstance(found, datetime) else None

            # Past the five executions after which PostgreSQL may settle on one plan for all of them.
            for _ in range(8):
                assert await look() == now + timedelta(minutes=10)
            scans = text(
                "SELECT sum(pg_stat_get_xact_numscans(inhrelid)) FROM pg_inherits "
                "WHERE inhparent = 'intake_events'::regclass"
            )
            before = int(await connection.scalar(scans) or 0)
            assert await look() == now + timedelta(minutes=10)
            return int(await connection.scalar(scans) or 0) - before
        finally:
            await connection.rollback()


async def test_the_next_due_timer_is_found_without_reading_the_months_intake_events(engine: AsyncEngine) -> None:
    """The response hold is probed per timer by the lead's own intake events; the timer loop looks
    for the next due timer on every pass, and a month's partition holds a month of every lead."""
    assert await intake_events_read_whole(engine, None) == 0


async def test_the_hold_as_not_exists_read_the_months_intake_events_whole(engine: AsyncEngine) -> None:
    """The premise: PostgreSQL turned NOT EXISTS into an anti-join against every recent activity,
    found by reading the partition whole."""
    assert await intake_events_read_whole(engine, NEXT_DUE_WITH_THE_HOLD_AS_NOT_EXISTS) >= 1
