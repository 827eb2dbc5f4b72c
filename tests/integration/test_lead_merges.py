"""leads.merged.v1 through the scoring consumer (real Kafka and PostgreSQL): a provisional lead id
that identity resolution folds into a known lead is announced once, whatever is replayed."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.identity import lead_id_for
from schemas.events import EngagementType, LeadAttributes, LeadMergedV1, LeadReceivedV1
from tests.integration.test_scoring_replay import T0, consume, forget, produce

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def merges(engine: AsyncEngine, lead_id: uuid.UUID) -> list[LeadMergedV1]:
    """The leads.merged.v1 records staged in the outbox for ``lead_id``."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT value FROM outbox WHERE topic = :t AND key = :k ORDER BY id"),
                {"t": LeadMergedV1.topic, "k": str(lead_id).encode()},
            )
        ).all()
    return [LeadMergedV1.model_validate_json(bytes(row.value)) for row in rows]


def received(run: str, n: int, email: str | None) -> LeadReceivedV1:
    lead_id = lead_id_for(email, "hubspot", f"hs-{run}")
    return LeadReceivedV1(
        event_id=uuid.uuid5(lead_id, f"{run}/{n}"),
        lead_id=lead_id,
        occurred_at=T0 + timedelta(hours=n),
        source="hubspot",
        webhook_id=f"{run}-{n}",
        external_id=f"hs-{run}",
        engagement=EngagementType.form_submit,
        attributes=LeadAttributes(email=email, title="Director"),
    )


async def test_a_known_source_key_with_a_new_email_announces_one_merge_however_often_it_is_replayed(
    engine: AsyncEngine,
) -> None:
    run = uuid.uuid4().hex[:8]
    email = f"{run}@northwind-test.io"
    first = received(run, 0, None)  # known by its HubSpot contact id only
    second = received(run, 1, email)  # the same contact, now with an email: a new provisional id
    third = received(run, 2, email)  # the same provisional id again: the alias is known already
    canonical, alias = first.lead_id, second.lead_id
    assert canonical != alias

    # One after the other: the two ids are two Kafka keys, which Kafka does not order.
    group = f"merges-{run}"
    await produce([first])
    await consume(engine, group, [canonical, alias], applied(engine, group, [first]))
    await produce([second, third])
    await consume(engine, group, [canonical, alias], applied(engine, group, [second, third]))
    announced = await merges(engine, canonical)

    assert [(m.alias_lead_id, m.lead_id) for m in announced] == [(alias, canonical)]
    [merge] = announced
    assert merge.caused_by == second.event_id
    assert merge.rule == "source id already known"
    assert (merge.source, merge.external_id, merge.email) == ("hubspot", f"hs-{run}", email)
    assert merge.occurred_at == second.occurred_at

    # The same records again (a redelivery and a new consumer group replaying the topic) and a
    # fourth event naming the alias: the alias is known, nothing more is announced.
    fourth = received(run, 3, email)
    await produce([first, second, third, fourth])
    again = f"merges-replay-{run}"
    await consume(engine, again, [canonical, alias], applied(engine, again, [first, second, third, fourth]))

    assert [m.event_id for m in await merges(engine, canonical)] == [merge.event_id]
    async with engine.connect() as connection:
        timeline = await connection.scalar(
            text("SELECT count(*) FROM lead_facts WHERE lead_id = :l AND kind = 'LeadMergedV1'"), {"l": canonical}
        )
    assert timeline == 1
    await forget(engine, [canonical])


async def test_a_lead_first_known_by_its_email_is_never_announced_as_merged(engine: AsyncEngine) -> None:
    run = uuid.uuid4().hex[:8]
    email = f"{run}@northwind-test.io"
    first, second = received(run, 0, email), received(run, 1, email)

    await produce([first, second])
    group = f"no-merge-{run}"
    await consume(engine, group, [first.lead_id], applied(engine, group, [first, second]))

    assert await merges(engine, first.lead_id) == []
    await forget(engine, [first.lead_id])


def applied(engine: AsyncEngine, group: str, events: Sequence[LeadReceivedV1]) -> Callable[[], Awaitable[bool]]:
    """Ready once ``group`` has applied every one of ``events`` (its inbox holds them)."""

    async def ready() -> bool:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM inbox WHERE consumer = :c AND event_id = ANY(:ids)"),
                {"c": group, "ids": [event.event_id for event in events]},
            )
        return bool(count == len({event.event_id for event in events}))

    return ready
