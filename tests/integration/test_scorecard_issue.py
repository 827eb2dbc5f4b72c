"""Scorecards against the real PostgreSQL and Kafka: each closed period is issued exactly once,
whichever of two racing reporting instances gets there, across a restart and after downtime, and
its figures equal counts computed directly from the stored facts of that period."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import load_agreement
from coxswain.core.scorecard import period_containing, scorecard_id
from coxswain.db.database import create_engine
from coxswain.runtime.kafka import Publisher
from coxswain.runtime.outbox import OutboxRelay
from coxswain.settings import DatabaseConfig, KafkaConfig, ReportingConfig
from schemas.events import (
    ActivityAcceptedV1,
    ActivityType,
    EngagementType,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadRoutedV1,
    ScorecardIssuedV1,
    SlaBreachedV1,
    SlaMetV1,
    Stage,
    Tier,
)
from services.reporting.consumer import make_handler
from services.reporting.scorecard import issue_due
from tests.support.topics import records_on

pytestmark = pytest.mark.asyncio(loop_scope="session")

ZONE = "America/New_York"
NEW_YORK = ZoneInfo(ZONE)
AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
CONFIG = ReportingConfig(reporting_timezone=ZONE, scorecard_cadence="week", scorecard_grace_seconds=300)
# A week no other test writes facts into: Monday 7 June 2032, local midnight in New York.
WEEK = period_containing("week", datetime(2032, 6, 9, 12, tzinfo=NEW_YORK), NEW_YORK)
AFTER_WEEK = WEEK.end + timedelta(minutes=6)


def at(hours: float) -> datetime:
    return WEEK.start + timedelta(hours=hours)


class History:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def lead(self, source: str, hours: float, rep: str | None = None, met: bool | None = None) -> uuid.UUID:
        """A lead received at ``hours``; with a rep: qualified and routed a second later, and its
        first-touch clock met or breached ten minutes after that."""
        lead_id, received = uuid.uuid4(), uuid.uuid4()
        self.events.append(
            LeadReceivedV1(
                event_id=received,
                lead_id=lead_id,
                occurred_at=at(hours),
                source=source,
                webhook_id=f"msg_{received.hex}",
                engagement=EngagementType.demo_request,
                attributes=LeadAttributes(campaign="scorecard-it"),
            )
        )
        if rep is None:
            return lead_id
        qualified, assignment = uuid.uuid4(), uuid.uuid4()
        routed_at = at(hours) + timedelta(seconds=1)
        self.events.append(
            LeadQualifiedV1(
                event_id=qualified,
                lead_id=lead_id,
                occurred_at=routed_at - timedelta(milliseconds=500),
                agreement_version=AGREEMENT.version,
                caused_by=received,
                tier=Tier.hot,
                score=90,
                reason="test",
                attributes=LeadAttributes(),
                source=source,
            )
        )
        self.events.append(
            LeadRoutedV1(
                event_id=uuid.uuid4(),
                lead_id=lead_id,
                occurred_at=routed_at,
                agreement_version=AGREEMENT.version,
                caused_by=qualified,
                assignment_id=assignment,
                rep_id=rep,
                pool_id="north-america",
                rule_id="rule",
                reason="test",
                tier=Tier.hot,
                routed_at=routed_at,
                follow_up_due_at=routed_at + timedelta(minutes=5),
                candidates=(),
            )
        )
        if met is not None:
            decided = routed_at + timedelta(minutes=10 if not met else 2)
            common: dict[str, Any] = {
                "event_id": uuid.uuid4(),
                "lead_id": lead_id,
                "occurred_at": decided,
                "deadline_id": uuid.uuid4(),
                "assignment_id": assignment,
                "rep_id": rep,
                "milestone": "first_touch",
                "tier": Tier.hot,
                "due_at": routed_at + timedelta(minutes=5),
            }
            if met:
                self.activity(lead_id, ActivityType.first_touch, decided, rep=rep)
                self.events.append(SlaMetV1(**common, responded_at=decided, response_activity_id=uuid.uuid4()))
            else:
                self.events.append(SlaBreachedV1(**common, fired_at=decided))
        return lead_id

    def activity(self, lead_id: uuid.UUID, kind: ActivityType, when: datetime, **extra: Any) -> None:
        event_id = uuid.uuid4()
        self.events.append(
            ActivityAcceptedV1(
                event_id=event_id,
                lead_id=lead_id,
                occurred_at=when,
                agreement_version="it-1",
                caused_by=uuid.uuid4(),
                source="crm",
                activity=kind,
                rep_id=extra.pop("rep", None),
                from_stage=Stage.mql,
                to_stage=Stage.mql,
                **extra,
            )
        )


def history() -> History:
    h = History()
    # In the week: ava meets 3 clocks and breaches 1, ben meets 1 and breaches 1; one lead is never
    # qualified; two leads are accepted, one rejected.
    a = h.lead("webform", 1, "ava", met=True)
    h.lead("webform", 26, "ava", met=True)
    h.lead("hubspot", 50, "ava", met=True)
    h.lead("hubspot", 70, "ava", met=False)
    b = h.lead("webform", 90, "ben", met=True)
    h.lead("webform", 100, "ben", met=False)
    h.lead("marketo", 120)
    h.activity(a, ActivityType.sal_accepted, at(3))
    h.activity(b, ActivityType.sal_accepted, at(92))
    h.activity(b, ActivityType.sal_rejected, at(93), reason="no-budget")
    # Just outside the week, on both sides: never counted.
    h.lead("webform", -0.5, "ava", met=False)
    h.lead("webform", 7 * 24 - 0.02, "ben", met=True)  # routed in the week, its clock decided after it
    return h


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseConfig())
    handle = make_handler(AGREEMENT)
    async with engine.begin() as connection:
        # Whatever week was issued before decides which weeks are due: start from none.
        await connection.execute(text("DELETE FROM scorecard_periods WHERE cadence = 'week'"))
        for event in history().events:
            assert await handle(connection, event, WEEK.end) == []
    yield engine
    # Scorecards in 2032 would hold back every later period of the live services in this session.
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM scorecard_periods WHERE period_start >= '2032-01-01'"))
    await engine.dispose()


async def periods(engine: AsyncEngine) -> list[tuple[str, uuid.UUID]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT label, event_id FROM scorecard_periods WHERE period_start >= :s ORDER BY period_start"),
            {"s": WEEK.start},
        )
        return [(row.label, row.event_id) for row in rows]


async def drain_outbox(engine: AsyncEngine, event_ids: set[uuid.UUID]) -> None:
    """Relay the outbox to Kafka until none of ``event_ids`` waits in it."""
    stop = asyncio.Event()
    publisher = Publisher(KafkaConfig())
    await publisher.start()
    relay = asyncio.create_task(OutboxRelay(engine, publisher).run(stop))
    try:
        for _ in range(600):
            async with engine.connect() as connection:
                waiting = await connection.scalar(
                    text("SELECT count(*) FROM outbox WHERE event_id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": list(event_ids)},
                )
            if not waiting:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{waiting} scorecard(s) still in the outbox")
    finally:
        stop.set()
        await relay
        await publisher.stop()


async def published_scorecards() -> list[dict[str, Any]]:
    """Every record on the scorecard topic, read from the beginning to the end of each partition."""
    records = await records_on(ScorecardIssuedV1.topic, KafkaConfig().kafka_topic_partitions)
    seen = [orjson.loads(record.value) for record in records]
    return [card for card in seen if card["period"].startswith("2032-")]


async def test_two_racing_instances_issue_the_closed_week_exactly_once(engine: AsyncEngine) -> None:
    other = create_engine(DatabaseConfig())
    try:
        first, second = await asyncio.gather(
            issue_due(engine, AGREEMENT, CONFIG, AFTER_WEEK), issue_due(other, AGREEMENT, CONFIG, AFTER_WEEK)
        )
    finally:
        await other.dispose()

    assert sorted(len(issued) for issued in (first, second)) == [0, 1], "one instance issued it, the other saw it"
    assert await periods(engine) == [(WEEK.label, scorecard_id(WEEK))]

    # A restart, later in the next week: nothing new to issue.
    assert await issue_due(engine, AGREEMENT, CONFIG, AFTER_WEEK + timedelta(days=3)) == []

    await drain_outbox(engine, {scorecard_id(WEEK)})
    cards = await published_scorecards()
    assert [card["period"] for card in cards] == [WEEK.label], "exactly one record on the topic"


async def test_periods_missed_while_down_are_issued_late_once_each(engine: AsyncEngine) -> None:
    back = WEEK.end + timedelta(days=15)  # two more weeks closed while nothing ran
    racing = await asyncio.gather(*(issue_due(engine, AGREEMENT, CONFIG, back) for _ in range(3)))

    issued = sorted(p.label for batch in racing for p in batch)
    assert issued == ["2032-W25", "2032-W26"]
    assert [label for label, _ in await periods(engine)] == [WEEK.label, "2032-W25", "2032-W26"]
    assert await issue_due(engine, AGREEMENT, CONFIG, back + timedelta(hours=1)) == []

    ids = {event_id for _, event_id in await periods(engine)}
    await drain_outbox(engine, ids)
    assert sorted(card["period"] for card in await published_scorecards()) == [WEEK.label, "2032-W25", "2032-W26"]


async def counted_from_the_database(engine: AsyncEngine) -> dict[str, Any]:
    window = {"s": WEEK.start, "e": WEEK.end}
    async with engine.connect() as connection:
        clocks = {
            row.rep: (int(row.met), int(row.breached))
            for row in await connection.execute(
                text(
                    "SELECT payload->>'rep_id' AS rep, count(*) FILTER (WHERE kind = 'SlaMetV1') AS met, "
                    "count(*) FILTER (WHERE kind = 'SlaBreachedV1') AS breached FROM report_facts "
                    "WHERE kind IN ('SlaMetV1', 'SlaBreachedV1') AND occurred_at >= :s AND occurred_at < :e GROUP BY 1"
                ),
                window,
            )
        }
        mqls = {
            row.source: int(row.n)
            for row in await connection.execute(
                text(
                    "SELECT l.source, count(DISTINCT f.lead_id) AS n FROM report_facts f JOIN report_leads l "
                    "USING (lead_id) WHERE f.kind = 'LeadQualifiedV1' AND f.occurred_at >= :s "
                    "AND f.occurred_at < :e GROUP BY 1"
                ),
                window,
            )
        }
        leads = {
            row.source: int(row.n)
            for row in await connection.execute(
                text(
                    "SELECT source, count(*) AS n FROM report_leads WHERE first_seen_at >= :s AND first_seen_at < :e "
                    "GROUP BY 1"
                ),
                window,
            )
        }
        sal = {
            row.activity: int(row.n)
            for row in await connection.execute(
                text(
                    "SELECT payload->>'activity' AS activity, count(*) AS n FROM report_facts "
                    "WHERE kind = 'ActivityAcceptedV1' AND occurred_at >= :s AND occurred_at < :e "
                    "AND payload->>'activity' IN ('sal_accepted', 'sal_rejected') GROUP BY 1"
                ),
                window,
            )
        }
        routed = await connection.scalar(
            text(
                "SELECT count(*) FROM report_facts WHERE kind = 'LeadRoutedV1' AND occurred_at >= :s AND occurred_at < :e"
            ),
            window,
        )
    return {"clocks": clocks, "mqls": mqls, "leads": leads, "sal": sal, "routed": int(routed or 0)}


async def test_the_issued_figures_equal_counts_computed_from_the_database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT scorecard FROM scorecard_periods WHERE label = :l"), {"l": WEEK.label}
        )
    card = ScorecardIssuedV1.model_validate(stored)
    expected = await counted_from_the_database(engine)

    assert {a.key: (a.met, a.breached) for a in card.sales.by_rep} == expected["clocks"]
    assert {s.source: s.mqls for s in card.marketing.by_source if s.mqls} == expected["mqls"]
    assert {s.source: s.leads for s in card.marketing.by_source if s.leads} == expected["leads"]
    assert (card.sales.sal_accepted, card.sales.sal_rejected) == (
        expected["sal"].get("sal_accepted", 0),
        expected["sal"].get("sal_rejected", 0),
    )
    assert card.sales.routed == expected["routed"]
    assert card.marketing.mqls == sum(expected["mqls"].values())
    # And the known answer of the history: the lead routed just before the week and the clock
    # decided just after it are left out.
    assert expected["clocks"] == {"ava": (3, 1), "ben": (1, 1)}
    assert card.sales.overall.attainment == pytest.approx(4 / 6, abs=1e-4)
    assert card.sales.verdict == "missed"  # 67% against the agreement's 90%
    assert [(r.reason, r.count) for r in card.sales.rejection_reasons] == [("no-budget", 1)]
    assert card.marketing.mqls == 7 and card.marketing.leads == 8 and card.sales.routed == 7
    assert card.marketing.verdict == "missed"  # 7 MQLs against 2000 a week
    assert card.period == "2032-W24" and card.timezone == ZONE
    assert card.period_start == datetime(2032, 6, 7, tzinfo=NEW_YORK).astimezone(UTC)
    # Touched two minutes after routing: the four met in the week, and the lead whose clock was met after it.
    assert card.sales.human_seconds.count == 5 and card.sales.human_seconds.p50 == pytest.approx(120.0)
    assert card.sales.untouched == 2
