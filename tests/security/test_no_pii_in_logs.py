"""No email, name or phone number of a lead ever reaches a service log.

Every service runs as its own process; the traffic carries known personal data through every path
that logs: accepted leads and touches, refused webhooks, a record dead-lettered by the consumer,
routing and an SLA breach. Then every line of every service log is searched for that data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from coxswain.runtime.kafka import connection_options
from coxswain.settings import KafkaConfig
from tests.support.stack import Stack, TopicWatcher, for_lead, post_signed

pytestmark = pytest.mark.asyncio(loop_scope="session")

AGREEMENT = Path(__file__).parents[1] / "e2e" / "agreement.yaml"
MARK = uuid.uuid4().hex[:8]
EMAIL = f"ines.quintana.{MARK}@pii-check.example.com"
FIRST_NAME = f"Inesfirst{MARK}"
LAST_NAME = f"Quintanalast{MARK}"
PHONE = "+1 555 0199 4242"
PII = (EMAIL, FIRST_NAME, LAST_NAME, PHONE, PHONE.replace(" ", ""))


@pytest_asyncio.fixture(loop_scope="session")
async def stack(infrastructure: None, tmp_path: Path) -> AsyncIterator[Stack]:
    running = Stack(agreement=AGREEMENT, log_dir=tmp_path)
    try:
        await asyncio.to_thread(running.start)
        yield running
    finally:
        await asyncio.to_thread(running.stop)


def contact(**extra: object) -> dict[str, object]:
    return {"email": EMAIL, "first_name": FIRST_NAME, "last_name": LAST_NAME, "title": "VP Marketing", **extra}


async def test_personal_data_in_traffic_never_reaches_a_service_log(stack: Stack) -> None:
    async with (
        httpx.AsyncClient(base_url=stack.url, timeout=10) as client,
        TopicWatcher(["leads.routed.v1", "sla.breached.v1", "leads.received.v1.dlq"]) as watcher,
    ):
        accepted = await post_signed(
            client,
            "/v1/webhooks/webform/events",
            {"type": "demo_request", "contact": contact(company_size=300, country="IS")},
        )
        assert accepted.status_code == 202, accepted.text
        lead_id = accepted.json()["events"][0]["lead_id"]
        refusals = [
            ({"type": "demo_request", "contact": contact(phone=PHONE)}, 422),  # unknown field
            ({"type": "demo_request", "contact": {**contact(), "email": f"not an email {EMAIL}"}}, 422),
            ({"type": f"call {PHONE}", "contact": contact()}, 422),
        ]
        for body, status in refusals:
            refused = await post_signed(client, "/v1/webhooks/webform/events", body)
            assert refused.status_code == status, refused.text
        tampered = await client.post(
            "/v1/webhooks/webform/events",
            content=f'{{"contact": {{"email": "{EMAIL}"}}}}',
            headers={"webhook-id": "msg_x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
        )
        assert tampered.status_code == 401

        producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all")
        await producer.start()
        try:
            poison = f'{{"lead_id": "x", "attributes": {{"email": "{EMAIL}", "last_name": "{LAST_NAME}"}}}}'
            await producer.send_and_wait(
                "leads.received.v1",
                poison.encode(),
                key=f"pii-{MARK}".encode(),
                headers=[("ce_type", b"io.coxswain.lead.received.v1")],
            )
        finally:
            await producer.stop()

        [routed] = await watcher.wait_for("leads.routed.v1", for_lead(lead_id), within=60)
        touch = {"lead_id": lead_id, "activity": "first_touch", "rep_id": routed.value["rep_id"], "reason": PHONE}
        assert (await post_signed(client, "/v1/webhooks/crm/activities", touch)).status_code == 202
        await watcher.wait_for("leads.received.v1.dlq", lambda seen: seen.key == f"pii-{MARK}", within=60)

    await asyncio.to_thread(stack.stop)
    logs = {path.name: path.read_text(errors="replace") for path in sorted(stack.log_dir.glob("*.log"))}
    assert {"intake.1.log", "scoring.1.log", "router.1.log", "sla-monitor.1.log"} <= set(logs)
    assert "webhook accepted" in logs["intake.1.log"]
    assert "dead-letter" in logs["scoring.1.log"]
    leaks = [
        f"{name}: {line.strip()[:200]}"
        for name, text in logs.items()
        for line in text.splitlines()
        if any(value in line for value in PII)
    ]
    assert leaks == []
