"""Scoring's one write per batch (``repository.save_batch``) against the real PostgreSQL: every
column of every part lands where it belongs, a second batch updates a lead and moves its timer,
a key or a fact recorded before is kept as it was, and a lead's timer is written once per batch.

The parts share one statement whose rows go in as parallel arrays, so a column out of place (two
timestamps or two texts swapped) would not fail on types: each column here holds a value no
other column of its row holds."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import load_agreement
from coxswain.core.lead import LeadState, on_received
from coxswain.db.leads import load
from schemas.events import EngagementType, Event, LeadAttributes, LeadReceivedV1, Stage, Tier
from services.scoring.repository import Timer, save_batch

pytestmark = pytest.mark.asyncio(loop_scope="session")

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
NOW = datetime.now(UTC).replace(microsecond=0)
LATER = NOW + timedelta(minutes=7)


def received(lead_id: uuid.UUID, n: int, at: datetime) -> LeadReceivedV1:
    return LeadReceivedV1(
        event_id=uuid.uuid5(lead_id, f"save-batch-{n}"),
        lead_id=lead_id,
        occurred_at=at,
        source=f"form-{n}",
        webhook_id=f"save-batch-{lead_id}-{n}",
        engagement=EngagementType.pricing_view,
        attributes=LeadAttributes(
            title="Sales Manager", company_size=100, industry="Software", country="US", email=f"{n}@{lead_id.hex}.io"
        ),
    )


def scored(lead_id: uuid.UUID, n: int, at: datetime) -> tuple[LeadState, tuple[Event, ...]]:
    """A state and its facts as the core leaves them, with every optional column set apart."""
    outcome = on_received(LeadState(lead_id=lead_id), received(lead_id, n, at), AGREEMENT, at)
    # The facts' optional columns are set too, to values no other column holds.
    assert any(getattr(fact, "caused_by", None) for fact in outcome.facts)
    assert any(getattr(fact, "agreement_version", None) for fact in outcome.facts)
    state = replace(
        outcome.state,
        stage=Stage.mql if n == 1 else Stage.sql,
        tier=Tier.warm if n == 1 else Tier.hot,
        persona=f"persona-{n}",
        pinned=n == 1,
        held_until=at + timedelta(days=n),
        recycled_until=at + timedelta(days=10 + n),
    )
    return state, outcome.facts


def timer(lead_id: uuid.UUID, n: int, armed_at: datetime) -> Timer:
    return Timer(
        lead_id=lead_id,
        timer_id=uuid.uuid5(lead_id, f"timer-{n}"),
        due_at=armed_at + timedelta(days=3 + n),
        stage=f"stage-{n}",
        agreement_version=f"timer-agreement-{n}",
        armed_at=armed_at,
    )


def fact_row(fact: Event, recorded_at: datetime) -> tuple[Any, ...]:
    return (
        fact.event_id,
        fact.lead_id,
        type(fact).__name__,
        fact.occurred_at,
        getattr(fact, "agreement_version", None),
        getattr(fact, "caused_by", None),
        fact.model_dump(mode="json"),
        recorded_at,
    )


async def rows(engine: AsyncEngine, sql: str, ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(sql), {"ids": ids})]


async def test_a_batch_lands_column_by_column_and_a_second_one_updates_it(engine: AsyncEngine) -> None:
    first, second, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    key, key_2 = f"email:{first.hex}", f"email:{second.hex}"
    state_1, facts_1 = scored(first, 1, NOW)
    other_state, _ = scored(other, 1, NOW)
    async with engine.begin() as connection:
        await save_batch(
            connection,
            identities={key: first},
            states=[state_1, other_state],
            # A fact twice in one batch is recorded once.
            facts=[*facts_1, facts_1[0]],
            unarmed=[],
            timers=[timer(first, 1, NOW), timer(other, 1, NOW)],
            agreement_version="agreement-1",
            now=NOW,
            wake_if_due_before=NOW,
        )
    # The same lead again: every column changes, its timer goes; another lead is armed; a key
    # and a fact recorded before keep what they had.
    state_2, _ = scored(first, 2, LATER)
    new_state, new_facts = scored(second, 2, LATER)
    async with engine.begin() as connection:
        await save_batch(
            connection,
            identities={key: second, key_2: second},
            states=[state_2, new_state],
            facts=[facts_1[0], *new_facts],
            unarmed=[first],
            timers=[timer(second, 2, LATER), timer(other, 2, LATER)],
            agreement_version="agreement-2",
            now=LATER,
            wake_if_due_before=LATER,
        )

    async with engine.connect() as connection:
        assert await load(connection, first, lock="none") == state_2
        assert await load(connection, second, lock="none") == new_state
    assert sorted(
        await rows(
            engine,
            "SELECT lead_id, agreement_version, updated_at FROM leads WHERE lead_id = ANY(:ids)",
            [first, second, other],
        )
    ) == sorted([(first, "agreement-2", LATER), (second, "agreement-2", LATER), (other, "agreement-1", NOW)])
    assert sorted(
        await rows(
            engine,
            "SELECT key, lead_id, created_at FROM lead_identities WHERE lead_id = ANY(:ids)",
            [
                first,
                second,
            ],
        )
    ) == sorted([(key, first, NOW), (key_2, second, LATER)])
    expected_facts = [fact_row(fact, NOW) for fact in facts_1] + [fact_row(fact, LATER) for fact in new_facts]
    assert sorted(
        await rows(
            engine,
            "SELECT event_id, lead_id, kind, occurred_at, agreement_version, caused_by, payload, recorded_at "
            "FROM lead_facts WHERE lead_id = ANY(:ids)",
            [first, second],
        ),
        key=str,
    ) == sorted(expected_facts, key=str)
    assert sorted(
        await rows(
            engine,
            "SELECT lead_id, timer_id, due_at, stage, agreement_version, armed_at FROM scoring_timers "
            "WHERE lead_id = ANY(:ids)",
            [first, second, other],
        )
    ) == sorted([tuple(timer(second, 2, LATER)), tuple(timer(other, 2, LATER))])


async def test_a_leads_timer_is_written_once_per_batch(engine: AsyncEngine) -> None:
    lead_id = uuid.uuid4()
    async with engine.begin() as connection:
        for unarmed, timers in (([lead_id], [timer(lead_id, 1, NOW)]), ([], [timer(lead_id, 1, NOW)] * 2)):
            with pytest.raises(ValueError, match="at most once"):
                await save_batch(
                    connection,
                    identities={},
                    states=[],
                    facts=[],
                    unarmed=unarmed,
                    timers=timers,
                    agreement_version="agreement-1",
                    now=NOW,
                    wake_if_due_before=NOW,
                )
