"""One decision per input, in the running stack (every service its own process, real Kafka and
PostgreSQL): a CRM activity the agreement refuses changes no capacity, no SLA clock and no report
figure and shows as a refusal on the lead; an accepted one changes all three. SLA credit follows
the rep who acted, and a lead nobody answers is reassigned at most up to the cap and pages on-call
exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coxswain.runtime.kafka import connection_options
from coxswain.settings import DatabaseConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import ReassignmentRequestedV1, Tier
from tests.support.stack import ADMIN_TOKEN, Stack, TopicWatcher, agreement_in_force, for_lead, post_signed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

JUDGEMENT = Path(__file__).parent / "agreement_judgement.yaml"
FOLLOWERS = ("scoring", "router", "sla-monitor")
TOPICS = [
    "leads.routed.v1",
    "leads.activity_accepted.v1",
    "leads.activity_refused.v1",
    "sla.met.v1",
    "sla.breached.v1",
    "sla.escalated.v1",
    "routing.reassignment_requested.v1",
]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def judgement_agreement(stack: Stack) -> AsyncIterator[None]:
    """Activate the judgement agreement with the CLI; afterwards the stack goes back to its file."""
    async with agreement_in_force(stack, JUDGEMENT, "e2e-judge-1", FOLLOWERS):
        yield


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def reports(stack: Stack, judgement_agreement: None) -> AsyncIterator[httpx.AsyncClient]:
    url = stack.start_reporting("reporting-judgement")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client
    stack.services["reporting-judgement"].stop()


@pytest_asyncio.fixture(loop_scope="session")
async def database(judgement_agreement: None) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(DatabaseConfig().database_url)
    yield engine
    await engine.dispose()


def lead(campaign: str, hot: bool = False) -> dict[str, Any]:
    """Iceland goes to iris. A form fill by a VP of a mid-size company is a warm MQL (60), with a
    ten-minute deadline and no ladder; a demo request is hot (three seconds, then the ladder)."""
    return {
        "type": "demo_request" if hot else "form_submit",
        "contact": {
            "email": f"lead@{uuid.uuid4().hex[:12]}.example.com",
            "title": "VP Marketing",
            "company_size": 300,
            "country": "IS",
            "campaign": campaign,
        },
    }


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await post_signed(client, "/v1/webhooks/webform/events", body)
    assert response.status_code == 202, response.text
    lead_id: str = response.json()["events"][0]["lead_id"]
    return lead_id


async def report(activity: dict[str, Any], client: httpx.AsyncClient) -> None:
    response = await post_signed(client, "/v1/webhooks/crm/activities", activity)
    assert response.status_code == 202, response.text


async def one(database: AsyncEngine, sql: str, **params: Any) -> Any:
    async with database.connect() as connection:
        return (await connection.execute(text(sql), params)).one()


async def judged_by(consumer: str, event_id: str, database: AsyncEngine) -> bool:
    """Whether ``consumer`` has committed its handling of the event (its inbox holds it)."""
    async with database.connect() as connection:
        found = await connection.scalar(
            text("SELECT 1 FROM inbox WHERE consumer = :consumer AND event_id = :event_id"),
            {"consumer": consumer, "event_id": uuid.UUID(event_id)},
        )
    return found is not None


async def no_pending_timers(lead_id: str, database: AsyncEngine) -> bool:
    async with database.connect() as connection:
        pending: int | None = await connection.scalar(
            text(
                "SELECT count(*) FROM sla_timers t JOIN deadlines d USING (deadline_id) "
                "WHERE d.lead_id = :lead_id AND t.status = 'pending'"
            ),
            {"lead_id": uuid.UUID(lead_id)},
        )
    return pending == 0


async def figures(reports: httpx.AsyncClient, campaign: str) -> dict[str, Any]:
    """The report figures an activity can move, for this test's campaign only."""
    window = {"campaign": campaign, "since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    rejections = (await reports.get("/v1/reports/sal-rejections", params=window)).json()
    closed = (await reports.get("/v1/reports/closed-loop", params=window)).json()
    return {"rejected": rejections["rejected"], "won_amount": closed["won_amount"]}


async def settled(reports: httpx.AsyncClient, campaign: str, want: dict[str, Any], within: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (found := await figures(reports, campaign)) != want:
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.2)


async def test_a_refused_activity_changes_nothing_and_an_accepted_one_changes_everything(
    client: httpx.AsyncClient, reports: httpx.AsyncClient, database: AsyncEngine
) -> None:
    campaign = f"judge-{uuid.uuid4().hex[:8]}"
    async with TopicWatcher(TOPICS) as watcher:
        lead_id = await submit(client, lead(campaign))
        [routed] = await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
        rep = routed.value["rep_id"]
        assert rep == "iris"

        refused = [
            {"activity": "sal_rejected", "reason": "meh-not-a-code", "rep_id": rep},
            {"activity": "won", "amount": 50000, "rep_id": rep},  # the lead is an MQL
            {"activity": "first_touch", "rep_id": "mallory"},  # not in the roster
        ]
        for activity in refused:
            await report({"lead_id": lead_id, **activity}, client)
        refusals = await watcher.wait_for("leads.activity_refused.v1", for_lead(lead_id), count=3)
        assert sorted(r.value["refusal"] for r in refusals) == ["illegal_transition", "unknown_reason", "unknown_rep"]
        await watcher.wait_until_settled()  # whatever any service made of them is published and read

        assert watcher.matching("leads.activity_accepted.v1", for_lead(lead_id)) == []
        assert watcher.matching("sla.met.v1", for_lead(lead_id)) == []
        holding = await one(database, "SELECT open, load FROM lead_routing WHERE lead_id = :l", l=uuid.UUID(lead_id))
        assert holding.open, "a refused rejection frees no capacity"
        clock = await one(
            database,
            "SELECT status, responded_at FROM deadlines WHERE lead_id = :l AND milestone = 'first_touch'",
            l=uuid.UUID(lead_id),
        )
        assert (clock.status, clock.responded_at) == ("armed", None), "a refused activity stops no clock"
        await settled(reports, campaign, {"rejected": 0, "won_amount": 0.0})

        explained = await client.get(f"/v1/leads/{lead_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert explained.status_code == 200, explained.text
        shown = {r["refusal"]: r["reason"] for r in explained.json()["refusals"]}
        assert "reason code 'meh-not-a-code', which the agreement does not define" in shown["unknown_reason"]
        assert "allowed: no-budget, bad-timing, spam" in shown["unknown_reason"]
        assert "won asks to move the lead from mql to customer" in shown["illegal_transition"]
        assert "'mallory' is not in the roster" in shown["unknown_rep"]
        assert explained.json()["stage"] == "mql"

        await report({"lead_id": lead_id, "activity": "sal_rejected", "reason": "no-budget", "rep_id": rep}, client)
        [accepted] = await watcher.wait_for("leads.activity_accepted.v1", for_lead(lead_id))
        assert (accepted.value["from_stage"], accepted.value["to_stage"]) == ("mql", "recycled")
        [met] = await watcher.wait_for("sla.met.v1", for_lead(lead_id))
        assert met.value["responded_by"] == rep
        await settled(reports, campaign, {"rejected": 1, "won_amount": 0.0})
        for _ in range(100):
            holding = await one(database, "SELECT open FROM lead_routing WHERE lead_id = :l", l=uuid.UUID(lead_id))
            if not holding.open:
                break
            await asyncio.sleep(0.1)
        assert not holding.open, "an accepted rejection frees the rep's capacity"

    # The figures equal counts from the accepted facts, whatever the CRM sent.
    counted = await one(
        database,
        "SELECT count(*) FILTER (WHERE payload->>'activity' = 'sal_rejected') AS rejected FROM lead_facts "
        "WHERE kind = 'ActivityAcceptedV1' AND lead_id = :l",
        l=uuid.UUID(lead_id),
    )
    assert counted.rejected == 1


async def test_a_former_owners_touch_does_not_credit_the_new_owner(
    client: httpx.AsyncClient, reports: httpx.AsyncClient, database: AsyncEngine
) -> None:
    campaign = f"credit-{uuid.uuid4().hex[:8]}"
    async with TopicWatcher(TOPICS) as watcher:
        lead_id = await submit(client, lead(campaign))
        [first] = await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
        # An operator moves the lead away from iris (the request a tool or a person would publish).
        producer = AIOKafkaProducer(**connection_options(KafkaConfig()))
        await producer.start()
        try:
            record = encode(
                ReassignmentRequestedV1(
                    event_id=uuid.uuid4(),
                    lead_id=uuid.UUID(lead_id),
                    occurred_at=datetime.now(UTC),
                    assignment_id=uuid.UUID(first.value["assignment_id"]),
                    tier=Tier.warm,
                    exclude_reps=("iris",),
                    reason="operator moved it",
                    requested_by="operator",
                )
            )
            await producer.send_and_wait(record.topic, record.value, key=record.key, headers=list(record.headers))
        finally:
            await producer.stop()
        [_, second] = await watcher.wait_for("leads.routed.v1", for_lead(lead_id), count=2)
        owner = second.value["rep_id"]
        assert owner in ("ava", "ben")

        await report({"lead_id": lead_id, "activity": "first_touch", "rep_id": "iris"}, client)
        [accepted] = await watcher.wait_for("leads.activity_accepted.v1", for_lead(lead_id))
        await wait_until(lambda: judged_by("sla_monitor", accepted.value["event_id"], database), "the monitor's turn")
        await watcher.wait_until_settled()
        assert watcher.matching("sla.met.v1", for_lead(lead_id)) == [], "iris's touch stops nobody's clock"

        await report({"lead_id": lead_id, "activity": "first_touch", "rep_id": owner}, client)
        [met] = await watcher.wait_for("sla.met.v1", for_lead(lead_id))
        assert (met.value["rep_id"], met.value["responded_by"]) == (owner, owner)

    window = {"campaign": campaign, "since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    for _ in range(100):
        by_rep = (await reports.get("/v1/reports/sla", params=window)).json()["by_rep"]
        if by_rep:
            break
        await asyncio.sleep(0.2)
    assert by_rep == {owner: {"met": 1, "breached": 0, "attainment": 1.0}}


async def test_a_lead_nobody_answers_pages_on_call_once_and_is_not_reassigned_beyond_the_cap(
    client: httpx.AsyncClient, database: AsyncEngine
) -> None:
    async with TopicWatcher(TOPICS) as watcher:
        lead_id = await submit(client, lead(f"ladder-{uuid.uuid4().hex[:8]}", hot=True))
        [first] = await watcher.wait_for("leads.routed.v1", for_lead(lead_id))
        assert first.value["tier"] == "hot"
        # Breach at 3 s, reassign at 5 s, the second reassign (past the cap) pages at 7 s; the
        # page step at 11 s must not page again. Wait past all of it, and then some.
        [page] = await watcher.wait_for(
            "sla.escalated.v1", lambda s: s.key == lead_id and s.value["step"] == "page_oncall", within=30
        )
        routed_at = datetime.fromisoformat(first.value["routed_at"])
        assert datetime.fromisoformat(page.value["escalate_at"]) <= routed_at + timedelta(seconds=3 + 8)
        # Every timer of the lead's clocks decided (the page step at 11 s fired or cancelled), and
        # whatever came of them published and read.
        await wait_until(lambda: no_pending_timers(lead_id, database), "every timer of the lead decided", within=60)
        await watcher.wait_until_settled()

        pages = [s for s in watcher.matching("sla.escalated.v1", for_lead(lead_id)) if s.value["step"] == "page_oncall"]
        assert len(pages) == 1, [p.value for p in pages]
        assert len(watcher.matching("routing.reassignment_requested.v1", for_lead(lead_id))) == 1
        assert len(watcher.matching("leads.routed.v1", for_lead(lead_id))) == 2, "routed once, reassigned once"
        assert watcher.matching("sla.met.v1", for_lead(lead_id)) == []

    superseded = await one(
        database,
        "SELECT count(*) FILTER (WHERE superseded_by IS NOT NULL) AS n, max(reassignments) AS most FROM deadlines "
        "WHERE lead_id = :l",
        l=uuid.UUID(lead_id),
    )
    assert (superseded.n, superseded.most) == (1, 1)
