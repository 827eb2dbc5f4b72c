"""Intake against the real PostgreSQL: what is accepted is stored once, what is not is not stored."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.runtime.outbox import bucket_of
from coxswain.settings import IntakeConfig
from services.intake.app import create_app
from services.intake.signatures import sign
from tests.support.stack import SECRET, signed

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
ROTATED_SECRET = "whsec_" + "bmV3LXNlY3JldC1hZnRlci1yb3RhdGlvbi0wMDAw"


@pytest_asyncio.fixture(loop_scope="session")
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    config = IntakeConfig(
        webhook_secrets={"webform": [SECRET, ROTATED_SECRET]}, max_body_bytes=4096, max_batch_events=3
    )
    app = create_app(config, engine, lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as http:
        yield http


def lead(email: str | None = None) -> dict[str, object]:
    return {
        "type": "form_submit",
        "contact": {"email": email or f"{uuid.uuid4().hex[:10]}@example.com", "title": "VP Sales", "country": "US"},
    }


async def stored(engine: AsyncEngine, webhook_id: str) -> tuple[int, int, int]:
    async with engine.connect() as connection:
        inbox = await connection.scalar(
            text("SELECT count(*) FROM webhook_inbox WHERE webhook_id = :w"), {"w": webhook_id}
        )
        events = await connection.scalar(
            text("SELECT count(*) FROM intake_events WHERE webhook_id = :w"), {"w": webhook_id}
        )
        outbox = await connection.scalar(
            text("SELECT count(*) FROM outbox o JOIN intake_events e USING (event_id) WHERE e.webhook_id = :w"),
            {"w": webhook_id},
        )
    return int(inbox or 0), int(events or 0), int(outbox or 0)


async def test_signed_event_is_accepted_stored_and_staged_for_publishing(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body, headers = signed(lead(), webhook_id="msg_single", sent_at=NOW)
    response = await client.post("/v1/webhooks/webform/events", content=body, headers=headers)
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["duplicate"] is False
    assert len(accepted["events"]) == 1
    # Derived by intake without a lookup: leads.merged.v1 announces it if it turns out an alias.
    assert accepted["events"][0]["lead_id_provisional"] is True
    assert await stored(engine, "msg_single") == (1, 1, 1)


async def test_repeated_webhook_id_is_answered_again_and_stored_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body, headers = signed(lead(), webhook_id="msg_repeat", sent_at=NOW)
    first = await client.post("/v1/webhooks/webform/events", content=body, headers=headers)
    second = await client.post("/v1/webhooks/webform/events", content=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert second.json()["duplicate"] is True
    assert second.json()["events"] == first.json()["events"]
    assert second.json()["events"][0]["lead_id_provisional"] is True
    assert await stored(engine, "msg_repeat") == (1, 1, 1)


async def test_batch_is_accepted_with_one_id_per_event(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body, headers = signed({"events": [lead(), lead(), lead()]}, webhook_id="msg_batch", sent_at=NOW)
    response = await client.post("/v1/webhooks/webform/events", content=body, headers=headers)
    assert response.status_code == 202
    assert len({event["event_id"] for event in response.json()["events"]}) == 3
    assert await stored(engine, "msg_batch") == (1, 3, 3)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT o.key, o.bucket FROM outbox o JOIN intake_events e USING (event_id) "
                    "WHERE e.webhook_id = 'msg_batch'"
                )
            )
        ).all()
    # Each lead's bucket, as the other services stage theirs: spread over the relays, not bucket 0.
    assert [row.bucket for row in rows] == [bucket_of(bytes(row.key)) for row in rows]


async def test_same_email_joins_the_same_lead_whatever_its_case(client: httpx.AsyncClient) -> None:
    ids = []
    for email in ("Jane.Doe@Example.com", " jane.doe@example.com"):
        body, headers = signed(lead(email.strip()), sent_at=NOW)
        response = await client.post("/v1/webhooks/webform/events", content=body, headers=headers)
        ids.append(response.json()["events"][0]["lead_id"])
    assert ids[0] == ids[1]


async def test_a_rotated_secret_is_accepted_while_both_are_active(client: httpx.AsyncClient) -> None:
    payload = orjson.dumps(lead())
    headers = sign(ROTATED_SECRET, "msg_rotated", NOW, payload)
    response = await client.post("/v1/webhooks/webform/events", content=payload, headers=headers)
    assert response.status_code == 202


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key != name}


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("unsigned", 400, "missing header(s): webhook-id, webhook-timestamp, webhook-signature"),
        ("no-signature", 400, "missing header(s): webhook-signature"),
        ("bad-timestamp", 400, "webhook-timestamp must be integer seconds"),
        ("bad-signature", 401, "does not match any active secret"),
        ("malformed-signature", 401, "webhook-signature is malformed"),
        ("stale", 401, "older than the 300 s tolerance"),
        ("future", 401, "in the future"),
        ("tampered-body", 401, "does not match any active secret"),
        ("not-json", 422, "body is not valid JSON"),
        ("wrong-shape", 422, "body does not match LeadEventIn"),
        ("unknown-event-type", 422, "body does not match LeadEventIn"),
        ("no-identity", 422, "needs contact.email or external_id"),
        ("bad-email", 422, "body does not match LeadEventIn"),
        ("too-large", 413, "larger than 4096 bytes"),
        ("batch-too-large", 413, "at most 3 events"),
        ("unknown-source", 404, "unknown source 'nobody'"),
    ],
)
async def test_bad_webhooks_are_refused_with_a_reason_and_nothing_is_stored(
    client: httpx.AsyncClient, engine: AsyncEngine, case: str, status: int, message: str
) -> None:
    webhook_id = f"msg_bad_{case}"
    document: object = lead()
    path = "/v1/webhooks/webform/events"
    sent_at = NOW
    if case == "stale":
        sent_at = NOW - timedelta(minutes=6)
    elif case == "future":
        sent_at = NOW + timedelta(minutes=6)
    elif case == "wrong-shape":
        document = {"contact": "nobody"}
    elif case == "unknown-event-type":
        document = {**lead(), "type": "telepathy"}
    elif case == "no-identity":
        document = {"type": "form_submit", "contact": {"title": "CEO"}}
    elif case == "bad-email":
        document = {"type": "form_submit", "contact": {"email": "not-an-email"}}
    elif case == "too-large":
        document = {**lead(), "external_id": "x" * 250, "padding": "y" * 5000}
    elif case == "batch-too-large":
        document = {"events": [lead() for _ in range(4)]}
    elif case == "unknown-source":
        path = "/v1/webhooks/nobody/events"
    body, headers = signed(document if isinstance(document, dict) else {}, webhook_id=webhook_id, sent_at=sent_at)
    if case == "unsigned":
        headers = {"content-type": "application/json"}
    elif case == "no-signature":
        headers = _without(headers, "webhook-signature")
    elif case == "bad-timestamp":
        headers = {**headers, "webhook-timestamp": "yesterday"}
    elif case == "bad-signature":
        headers = {**headers, "webhook-signature": "v1,c2lnbmF0dXJlLXRoYXQtaXMtd3Jvbmc="}
    elif case == "malformed-signature":
        headers = {**headers, "webhook-signature": "v1,%%%not-base64"}
    elif case == "tampered-body":
        body = body.replace(b"VP Sales", b"VP Sa1es")
    elif case == "not-json":
        body = b"{broken"
        headers = sign(SECRET, webhook_id, sent_at, body)
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert await stored(engine, webhook_id) == (0, 0, 0)
