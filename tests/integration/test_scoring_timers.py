"""Re-evaluation timers against the real PostgreSQL: a due timer demotes its lead exactly once,
with the explanation, even with several timer loops; a lead a consumer holds is skipped, not
waited for; a new event moves the timer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import load_agreement
from schemas.events import EngagementType, LeadAttributes, LeadReceivedV1
from services.scoring.repository import TIMER_CHANNEL
from services.scoring.service import apply
from services.scoring.timers import fire_due

pytestmark = pytest.mark.asyncio(loop_scope="session")

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
NOW = datetime.now(UTC).replace(microsecond=0)
# Sales Manager 10 + mid-market 15 + software 10 + US 5 = 40; two pricing views (30) make a 70 MQL
# whose score falls below the exit (45) about 18.1 days later.
FIT_40 = LeadAttributes(title="Sales Manager", company_size=100, industry="Software", country="US")


def pricing_view(lead_id: uuid.UUID, n: int, at: datetime) -> LeadReceivedV1:
    return LeadReceivedV1(
        event_id=uuid.uuid5(lead_id, f"pricing-{n}"),
        lead_id=lead_id,
        occurred_at=at,
        source="webform",
        webhook_id=f"timers-{lead_id}-{n}",
        engagement=EngagementType.pricing_view,
        attributes=FIT_40.model_copy(update={"email": f"{lead_id.hex[:12]}@northwind-test.io"}),
    )


async def decaying_mql(engine: AsyncEngine, qualified_at: datetime) -> uuid.UUID:
    """An MQL qualified at ``qualified_at`` by score alone, its timer armed by the real shell."""
    lead_id = uuid.uuid4()
    async with engine.begin() as connection:
        for n in range(2):
            await apply(connection, pricing_view(lead_id, n, qualified_at), AGREEMENT, NOW)
    return lead_id


async def timer_of(engine: AsyncEngine, lead_id: uuid.UUID) -> datetime | None:
    async with engine.connect() as connection:
        due = await connection.scalar(text("SELECT due_at FROM scoring_timers WHERE lead_id = :l"), {"l": lead_id})
    return due if isinstance(due, datetime) else None


async def stage_changes(engine: AsyncEngine, lead_id: uuid.UUID) -> list[tuple[str, str, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT payload FROM lead_facts WHERE lead_id = :l AND kind = 'LeadStageChangedV1' ORDER BY occurred_at"
            ),
            {"l": lead_id},
        )
        return [(row.payload["from_stage"], row.payload["to_stage"], row.payload["reason"]) for row in rows]


async def test_a_due_timer_demotes_once_with_the_explanation(engine: AsyncEngine) -> None:
    lead_id = await decaying_mql(engine, NOW - timedelta(days=30))
    due = await timer_of(engine, lead_id)
    assert due is not None and NOW - timedelta(days=12) < due < NOW - timedelta(days=11)

    fired, _ = await fire_due(engine, AGREEMENT, NOW, 1000)
    again, _ = await fire_due(engine, AGREEMENT, NOW, 1000)

    assert fired >= 1 and again == 0
    changes = await stage_changes(engine, lead_id)
    assert len(changes) == 2
    assert changes[0][:2] == ("lead", "mql")
    assert changes[1][:2] == ("mql", "lead")
    assert changes[1][2].startswith("score 44.9") and changes[1][2].endswith(
        "fell below MQL exit 45 as engagement decayed"
    )
    async with engine.connect() as connection:
        stage = await connection.scalar(text("SELECT stage FROM leads WHERE lead_id = :l"), {"l": lead_id})
        demotion = (
            await connection.execute(
                text(
                    "SELECT f.occurred_at, f.caused_by, f.recorded_at, s.payload AS scored FROM lead_facts f "
                    "JOIN lead_facts s ON s.caused_by = f.caused_by AND s.kind = 'LeadScoredV1' "
                    "WHERE f.lead_id = :l AND f.kind = 'LeadStageChangedV1' AND f.payload->>'to_stage' = 'lead'"
                ),
                {"l": lead_id},
            )
        ).one()
        published = await connection.scalar(
            text(
                "SELECT count(*) FROM outbox WHERE event_id IN (SELECT event_id FROM lead_facts WHERE caused_by = :c)"
            ),
            {"c": demotion.caused_by},
        )
    assert stage == "lead"
    assert demotion.occurred_at == due  # dated at the computed time, whenever the loop got to it
    pricing = next(c for c in demotion.scored["contributions"] if c["rule_id"] == "engagement.pricing_view")
    assert pricing["points"] == 30 and pricing["value"] < 5
    assert published == 2  # LeadScoredV1 and LeadStageChangedV1, staged with the state change
    assert await timer_of(engine, lead_id) is None


async def test_concurrent_timer_loops_fire_each_lead_once(engine: AsyncEngine) -> None:
    leads = [await decaying_mql(engine, NOW - timedelta(days=25)) for _ in range(12)]

    await asyncio.gather(*(fire_due(engine, AGREEMENT, NOW, 1000) for _ in range(4)))

    for lead_id in leads:
        demotions = [change for change in await stage_changes(engine, lead_id) if change[1] == "lead"]
        assert len(demotions) == 1, lead_id


async def test_a_lead_a_consumer_holds_is_skipped_then_fired(engine: AsyncEngine) -> None:
    lead_id = await decaying_mql(engine, NOW - timedelta(days=40))
    async with engine.connect() as holder:
        await holder.execute(text("SELECT 1 FROM leads WHERE lead_id = :l FOR UPDATE"), {"l": lead_id})

        await asyncio.wait_for(fire_due(engine, AGREEMENT, NOW, 1000), timeout=30)

        assert await timer_of(engine, lead_id) is not None
        await holder.rollback()
    await fire_due(engine, AGREEMENT, NOW, 1000)
    assert await timer_of(engine, lead_id) is None
    assert [change[1] for change in await stage_changes(engine, lead_id)] == ["mql", "lead"]


async def test_new_engagement_moves_the_timer_later(engine: AsyncEngine) -> None:
    lead_id = await decaying_mql(engine, NOW - timedelta(days=1))
    first = await timer_of(engine, lead_id)

    async with engine.begin() as connection:
        await apply(connection, pricing_view(lead_id, 7, NOW), AGREEMENT, NOW)

    second = await timer_of(engine, lead_id)
    assert first is not None and second is not None and second > first
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM scoring_timers WHERE lead_id = :l"), {"l": lead_id})


async def test_a_timer_due_before_its_lead_changes_is_armed_again_for_the_true_time(engine: AsyncEngine) -> None:
    lead_id = await decaying_mql(engine, NOW - timedelta(days=5))
    true_due = await timer_of(engine, lead_id)
    assert true_due is not None and true_due > NOW
    # A timer left from an older state (an agreement that decayed faster) comes due now: firing it
    # changes nothing yet, and the lead's one timer moves to when its score really falls.
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE scoring_timers SET due_at = :due WHERE lead_id = :l"),
            {"due": NOW - timedelta(minutes=1), "l": lead_id},
        )

    fired, _ = await fire_due(engine, AGREEMENT, NOW, 1000)

    assert fired >= 1
    rearmed = await timer_of(engine, lead_id)
    # The same instant, computed again from another evaluation time (to within float rounding).
    assert rearmed is not None and abs(rearmed - true_due) < timedelta(seconds=1)
    assert [change[1] for change in await stage_changes(engine, lead_id)] == ["mql"]
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM scoring_timers WHERE lead_id = :l"), {"l": lead_id})


async def test_only_a_timer_due_before_the_loops_look_again_wakes_them(engine: AsyncEngine) -> None:
    heard: list[str] = []

    def woken(*_: object) -> None:
        heard.append("woken")

    async with engine.connect() as listening:
        raw: Any = (await listening.get_raw_connection()).driver_connection
        await raw.add_listener(TIMER_CHANNEL, woken)

        async def wakes_after(qualified_at: datetime) -> bool:
            heard.clear()
            await decaying_mql(engine, qualified_at)
            # A notification committed before this round trip arrives before its answer.
            await raw.fetchval("SELECT 1")
            await asyncio.sleep(0)
            return bool(heard)

        assert not await wakes_after(NOW), "a timer 18 days away waits for the loops' next look"
        assert await wakes_after(NOW - timedelta(days=30)), "a timer already due wakes them"
        await raw.remove_listener(TIMER_CHANNEL, woken)
