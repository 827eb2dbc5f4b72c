"""Reports over facts stored by the reporting consumer's own code path, against the real
PostgreSQL: a hand-made history with known answers, in a time range no other test writes to."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import Token, TokenTable
from coxswain.core.agreement import load_agreement
from coxswain.db.database import create_engine
from coxswain.settings import DatabaseConfig
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
    LeadRoutedV1,
    LeadStageChangedV1,
    SlaBreachedV1,
    SlaMetV1,
    Stage,
    Tier,
)
from services.reporting.app import create_reporting_app
from services.reporting.consumer import ACCEPTS, make_handler

pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = datetime(2031, 3, 2, 10, 0, tzinfo=UTC)
AGREEMENT = Path(__file__).resolve().parents[1] / "e2e" / "agreement.yaml"
RANGE = {"since": "2031-03-02T00:00:00Z", "until": "2031-03-03T00:00:00Z"}
VERSION = "report-test-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class History:
    """Facts as the services would publish them, for a handful of leads."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def received(self, source: str, campaign: str, seconds: float) -> tuple[uuid.UUID, uuid.UUID]:
        lead_id, event_id = uuid.uuid4(), uuid.uuid4()
        self.events.append(
            LeadReceivedV1(
                event_id=event_id,
                lead_id=lead_id,
                occurred_at=at(seconds),
                source=source,
                webhook_id=f"msg_{event_id.hex}",
                engagement=EngagementType.demo_request,
                attributes=LeadAttributes(campaign=campaign, title="VP Sales"),
            )
        )
        return lead_id, event_id

    def stage(self, lead_id: uuid.UUID, old: Stage, new: Stage, seconds: float) -> None:
        self.events.append(
            LeadStageChangedV1(
                event_id=uuid.uuid4(),
                lead_id=lead_id,
                occurred_at=at(seconds),
                agreement_version=VERSION,
                caused_by=uuid.uuid4(),
                from_stage=old,
                to_stage=new,
                reason="test",
            )
        )

    def qualified_and_routed(
        self, lead_id: uuid.UUID, received: uuid.UUID, source: str, rep: str, pool: str, seconds: float
    ) -> uuid.UUID:
        qualified, assignment = uuid.uuid4(), uuid.uuid4()
        self.events.append(
            LeadQualifiedV1(
                event_id=qualified,
                lead_id=lead_id,
                occurred_at=at(seconds - 0.5),
                agreement_version=VERSION,
                caused_by=received,
                tier=Tier.hot,
                score=90,
                reason="test",
                attributes=LeadAttributes(),
                source=source,
                persona="revenue-leader",
            )
        )
        self.stage(lead_id, Stage.lead, Stage.mql, seconds - 0.5)
        self.events.append(
            LeadRoutedV1(
                event_id=uuid.uuid4(),
                lead_id=lead_id,
                occurred_at=at(seconds),
                agreement_version=VERSION,
                caused_by=qualified,
                assignment_id=assignment,
                rep_id=rep,
                pool_id=pool,
                rule_id="rule",
                reason="test",
                tier=Tier.hot,
                routed_at=at(seconds),
                follow_up_due_at=at(seconds + 300),
                candidates=(),
            )
        )
        return assignment

    def raw(self, lead_id: uuid.UUID, kind: ActivityType, seconds: float, **extra: Any) -> ActivityRecordedV1:
        """What the CRM reported; reporting never reads it (it is not in ``ACCEPTS``)."""
        raw = ActivityRecordedV1(
            event_id=uuid.uuid4(),
            lead_id=lead_id,
            occurred_at=at(seconds),
            source="crm",
            webhook_id=f"msg_{uuid.uuid4().hex}",
            activity=kind,
            **extra,
        )
        self.events.append(raw)
        return raw

    def refused(self, lead_id: uuid.UUID, kind: ActivityType, seconds: float, **extra: Any) -> None:
        raw = self.raw(lead_id, kind, seconds, **extra)
        self.events.append(
            ActivityRefusedV1(
                event_id=uuid.uuid4(),
                lead_id=lead_id,
                occurred_at=raw.occurred_at,
                agreement_version="it-1",
                caused_by=raw.event_id,
                source="crm",
                activity=kind,
                reported_reason=raw.reason,
                refusal="illegal_transition",
                reason="the agreement does not allow it",
            )
        )

    def activity(self, lead_id: uuid.UUID, kind: ActivityType, seconds: float, **extra: Any) -> uuid.UUID:
        event_id = uuid.uuid4()
        raw = self.raw(lead_id, kind, seconds, **extra)
        self.events.append(
            ActivityAcceptedV1(
                event_id=event_id,
                lead_id=lead_id,
                occurred_at=at(seconds),
                agreement_version="it-1",
                caused_by=raw.event_id,
                source="crm",
                activity=kind,
                from_stage=Stage.mql,
                to_stage=Stage.mql,
                **extra,
            )
        )
        return event_id

    def verdict(self, lead_id: uuid.UUID, assignment: uuid.UUID, rep: str, met: bool, seconds: float) -> None:
        common: dict[str, Any] = {
            "event_id": uuid.uuid4(),
            "lead_id": lead_id,
            "occurred_at": at(seconds),
            "deadline_id": uuid.uuid4(),
            "assignment_id": assignment,
            "rep_id": rep,
            "milestone": "first_touch",
            "tier": Tier.hot,
            "due_at": at(seconds),
        }
        if met:
            self.events.append(SlaMetV1(**common, responded_at=at(seconds), response_activity_id=uuid.uuid4()))
        else:
            self.events.append(SlaBreachedV1(**common, fired_at=at(seconds)))


@pytest.fixture(scope="module")
def history() -> History:
    h = History()
    # A: webinar campaign, routed 2 s after receipt, touched a minute later: met.
    a, a_in = h.received("rt-webform", "rt-webinar", 0)
    a_job = h.qualified_and_routed(a, a_in, "rt-webform", "ava", "north-america", 2)
    h.activity(a, ActivityType.first_touch, 62)
    h.verdict(a, a_job, "ava", True, 62)
    # Refused by scoring (a won for an MQL, a reason code nobody agreed): no figure may move.
    h.refused(a, ActivityType.won, 70, amount=50000)
    h.refused(a, ActivityType.sal_rejected, 71, reason="meh-not-a-code")
    h.refused(a, ActivityType.first_touch, 5)
    # B: routed 3 s after receipt, never touched in time: breached, then rejected.
    b, b_in = h.received("rt-hubspot", "rt-paid", 10)
    b_job = h.qualified_and_routed(b, b_in, "rt-hubspot", "ben", "emea", 13)
    h.verdict(b, b_job, "ben", False, 313)
    h.activity(b, ActivityType.sal_rejected, 410, reason="no-budget")
    h.stage(b, Stage.mql, Stage.recycled, 410)
    # C: never qualified.
    h.received("rt-webform", "rt-webinar", 20)
    # D: routed 4 s after receipt, accepted 6 s later, becomes a customer.
    d, d_in = h.received("rt-webform", "rt-webinar", 30)
    d_job = h.qualified_and_routed(d, d_in, "rt-webform", "ava", "north-america", 34)
    h.activity(d, ActivityType.sal_accepted, 40)
    h.verdict(d, d_job, "ava", True, 40)
    h.stage(d, Stage.mql, Stage.sal, 40)
    h.activity(d, ActivityType.opportunity_created, 3600, amount=1000)
    h.stage(d, Stage.sal, Stage.opportunity, 3600)
    h.activity(d, ActivityType.won, 7200, amount=4500)
    h.stage(d, Stage.opportunity, Stage.customer, 7200)
    return h


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def reports(infrastructure: None, history: History) -> AsyncIterator[httpx.AsyncClient]:
    engine: AsyncEngine = create_engine(DatabaseConfig())
    agreement = load_agreement(AGREEMENT)
    handle = make_handler(agreement)
    # Topics are not ordered with each other: qualifications first, then everything, then all
    # of it again (a redelivery), as the consumer could see them.
    # The consumer hands the handler only the topics it subscribes to.
    consumed = [e for e in history.events if type(e).topic in ACCEPTS]
    ordered = [e for e in consumed if isinstance(e, LeadQualifiedV1)] + consumed + consumed
    async with engine.begin() as connection:
        for event in ordered:
            assert await handle(connection, event, T0) == []
    app = create_reporting_app(engine, lambda: agreement, lambda: T0 + timedelta(days=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reporting") as client:
        yield client
    await engine.dispose()


async def test_the_funnel_counts_leads_per_stage_with_conversion_rates(reports: httpx.AsyncClient) -> None:
    funnel = (await reports.get("/v1/reports/funnel", params=RANGE)).json()
    entered = {s["stage"]: s["entered"] for s in funnel["stages"]}
    assert entered == {"lead": 4, "mql": 3, "sal": 1, "sql": 0, "opportunity": 1, "customer": 1}
    conversion = {s["stage"]: s["conversion"] for s in funnel["stages"]}
    assert conversion["mql"] == 0.75 and conversion["sal"] == 0.3333 and conversion["customer"] == 1.0
    assert {d["stage"]: d["entered"] for d in funnel["detours"]} == {"recycled": 1, "disqualified": 0}
    in_stage = {row["stage"]: row for row in funnel["time_in_stage"]}
    assert in_stage["opportunity"]["left"] == 1 and in_stage["opportunity"]["median_hours"] == 1.0
    assert in_stage["opportunity"]["median_business_hours"] == 1.0  # the e2e agreement is 24x7

    sliced = (await reports.get("/v1/reports/funnel", params={**RANGE, "campaign": "rt-paid"})).json()
    assert {s["stage"]: s["entered"] for s in sliced["stages"]}["mql"] == 1
    by_source = (await reports.get("/v1/reports/funnel", params={**RANGE, "source": "rt-webform"})).json()
    assert {s["stage"]: s["entered"] for s in by_source["stages"]}["lead"] == 3
    persona = (await reports.get("/v1/reports/funnel", params={**RANGE, "persona": "revenue-leader"})).json()
    assert {s["stage"]: s["entered"] for s in persona["stages"]}["mql"] == 3
    other_version = (await reports.get("/v1/reports/funnel", params={**RANGE, "agreement_version": "v0"})).json()
    assert {s["stage"]: s["entered"] for s in other_version["stages"]}["mql"] == 0


async def test_speed_to_lead_splits_system_and_human_latency(reports: httpx.AsyncClient) -> None:
    speed = (await reports.get("/v1/reports/speed-to-lead", params=RANGE)).json()
    assert speed["routed"] == 3 and speed["untouched"] == 0
    assert speed["system_seconds"]["count"] == 3
    assert speed["system_seconds"]["p50"] == 3.0  # 2, 3 and 4 seconds
    assert speed["system_seconds"]["p90"] == pytest.approx(3.8)
    assert speed["human_seconds"]["p50"] == 60.0  # 6, 60 and 397 seconds
    assert speed["by_tier"]["hot"]["routed"] == 3


async def test_sla_attainment_per_rep_team_and_tier_with_the_breach_timeline(reports: httpx.AsyncClient) -> None:
    sla = (await reports.get("/v1/reports/sla", params={**RANGE, "period": "hour"})).json()
    assert sla["overall"] == {"met": 2, "breached": 1, "attainment": 0.6667}
    assert sla["by_rep"] == {
        "ava": {"met": 2, "breached": 0, "attainment": 1.0},
        "ben": {"met": 0, "breached": 1, "attainment": 0.0},
    }
    assert set(sla["by_team"]) == {"north-america", "emea"}
    assert sla["by_tier"]["hot"]["met"] == 2
    assert [b["rep"] for b in sla["breaches"]] == ["ben"]
    assert {(c["rep"], c["bucket"]) for c in sla["heatmap"]} == {
        ("ava", "2031-03-02T10:00:00"),
        ("ben", "2031-03-02T10:00:00"),
    }


async def test_rejections_closed_loop_and_pacing(reports: httpx.AsyncClient) -> None:
    rejections = (await reports.get("/v1/reports/sal-rejections", params=RANGE)).json()
    assert rejections["reasons"] == [{"reason": "no-budget", "count": 1}]
    assert rejections["accepted"] == 1 and rejections["rejection_rate"] == 0.5
    loop = (await reports.get("/v1/reports/closed-loop", params=RANGE)).json()
    assert loop["rows"] == [
        {
            "source": "rt-webform",
            "campaign": "rt-webinar",
            "opportunities": 1,
            "won": 1,
            "lost": 0,
            "won_amount": 4500.0,
        }
    ]
    pacing = (await reports.get("/v1/reports/pacing", params=RANGE)).json()
    assert pacing["mqls"] == 3
    assert pacing["daily"] == [{"day": "2031-03-02", "mqls": 3}]


async def test_the_same_range_always_gives_the_same_figures(reports: httpx.AsyncClient) -> None:
    first = (await reports.get("/v1/reports/summary", params=RANGE)).json()
    second = (await reports.get("/v1/reports/summary", params=RANGE)).json()
    assert first == second
    before = (await reports.get("/v1/reports/funnel", params={**RANGE, "until": "2031-03-02T10:00:05Z"})).json()
    assert {s["stage"]: s["entered"] for s in before["stages"]} == {
        "lead": 1,
        "mql": 1,
        "sal": 0,
        "sql": 0,
        "opportunity": 0,
        "customer": 0,
    }
    backwards = await reports.get("/v1/reports/sla", params={"since": RANGE["until"], "until": RANGE["since"]})
    assert backwards.status_code == 422
    assert "must be before" in backwards.json()["detail"]
    assert (await reports.get("/dashboard")).headers["content-type"].startswith("text/html")


async def test_with_reports_behind_a_token_each_page_needs_scope_reports_read(reports: httpx.AsyncClient) -> None:
    # (reports: the module's facts are stored, so the funnel has stages to show)
    engine: AsyncEngine = create_engine(DatabaseConfig())
    agreement = load_agreement(AGREEMENT)
    tokens = TokenTable.of(
        None,
        [
            Token("sales-lead", b"sales-lead-reads-reports", frozenset({"reports:read"})),
            Token("roster-bot", b"roster-bot-changes-reps", frozenset({"roster:write"})),
        ],
    )
    app = create_reporting_app(engine, lambda: agreement, lambda: T0 + timedelta(days=1), tokens=tokens)
    basic = "Basic " + base64.b64encode(b"anyone:sales-lead-reads-reports").decode()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reporting") as client:
            for path in ("/v1/reports/funnel", "/v1/scorecards", "/dashboard", "/scorecard/current"):
                anonymous = await client.get(path, params=RANGE if "reports" in path else None)
                assert anonymous.status_code == 401, path
                assert anonymous.headers["www-authenticate"].startswith('Basic realm="coxswain-reports"'), path
                wrong = await client.get(path, headers={"Authorization": "Bearer not-a-token"})
                assert wrong.status_code == 401, path
                lacking = await client.get(path, headers={"Authorization": "Bearer roster-bot-changes-reps"})
                assert (lacking.status_code, lacking.json()["detail"]) == (
                    403,
                    "token 'roster-bot' lacks scope 'reports:read'",
                ), path
            bearer = {"Authorization": "Bearer sales-lead-reads-reports"}
            funnel = await client.get("/v1/reports/funnel", params=RANGE, headers=bearer)
            page = await client.get("/dashboard", headers={"Authorization": basic})
            # Probes stay open: an orchestrator has no token.
            probe = await client.get("/healthz")
    finally:
        await engine.dispose()
    assert funnel.status_code == 200 and funnel.json()["stages"]
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert probe.status_code == 200
