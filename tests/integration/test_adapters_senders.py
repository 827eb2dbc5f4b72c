"""Native senders against the real PostgreSQL: a HubSpot workflow webhook (v3 signature), a
Marketo webhook (shared-secret header) and a mapped form become the same lead as the generic
endpoint; wrong credentials are refused and nothing is stored."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.runtime.telemetry import trace_id
from coxswain.settings import IntakeConfig, SendersConfig
from schemas.codec import header
from services.intake import adapters
from services.intake.adapters.hubspot import sign_v3
from services.intake.app import create_app
from services.intake.signatures import sign
from tests.support.stack import SECRET, signed

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
HUBSPOT_SECRET = "hubspot-client-secret-0123456789abcdef"
MARKETO_TOKEN = "marketo-shared-token-abcdef0123456789"
BASE = "http://intake"

SENDERS_YAML = """
sources:
  typeform:
    auth: standard_webhooks
    type: { path: form_response.definition.title, map: { "Book a demo": demo_request }, default: form_submit }
    external_id: form_response.token
    occurred_at: form_response.submitted_at
    contact:
      email: form_response.hidden.email
      title: form_response.answers.0.text
      company_size: form_response.answers.1.number
      country: form_response.hidden.country
  signup:
    auth: shared_secret
    secret_header: X-Signup-Key
    items: leads
    contact:
      email: mail
      company: org
"""


@pytest_asyncio.fixture(loop_scope="session")
async def client(engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    senders_file = tmp_path_factory.mktemp("senders") / "senders.yaml"
    senders_file.write_text(SENDERS_YAML)
    config = IntakeConfig(webhook_secrets={"webform": [SECRET], "typeform": [SECRET]})
    senders = SendersConfig(
        senders_file=Path(senders_file),
        sender_secrets={"hubspot": [HUBSPOT_SECRET], "marketo": [MARKETO_TOKEN], "signup": ["signup-key"]},
    )
    app = create_app(config, engine, lambda: NOW)
    adapters.register(app, config, senders, engine, lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        yield http


def person() -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    return {
        "email": f"Jane.{tag}@Acme-{tag}.example.com",
        "first_name": "Jane",
        "last_name": "Doe",
        "title": "VP Marketing",
        "company": "Acme",
        "company_domain": f"acme-{tag}.example.com",
        "company_size": 300,
        "industry": "software",
        "country": "US",
        "state": "NY",
        "campaign": "spring-webinar",
    }


def hubspot_record(p: dict[str, Any]) -> dict[str, Any]:
    """The whole-record shape of HubSpot's workflow webhook: properties as {"value": ...} objects."""
    values = {
        "email": p["email"],
        "firstname": p["first_name"],
        "lastname": p["last_name"],
        "jobtitle": p["title"],
        "company": p["company"],
        "hs_email_domain": p["company_domain"],
        "numemployees": "300",
        "industry": p["industry"],
        "country": "United States",
        "state": p["state"],
        "hs_analytics_first_touch_converting_campaign": p["campaign"],
    }
    return {
        "vid": 90210,
        "canonical-vid": 90210,
        "portal-id": 62515,
        "is-contact": True,
        "properties": {name: {"value": value, "versions": []} for name, value in values.items()},
        "form-submissions": [],
    }


def marketo_body(p: dict[str, Any], event: str = "form_submit") -> dict[str, Any]:
    """What the payload template of docs/senders.md renders to."""
    return {
        "id": 4711,
        "sent_at": "2026-11-23 03:30:00",
        "event": event,
        "campaign": p["campaign"],
        "email": p["email"],
        "first_name": p["first_name"],
        "last_name": p["last_name"],
        "title": p["title"],
        "company": p["company"],
        "website": f"https://www.{p['company_domain']}/about",
        "employees": 300,
        "industry": p["industry"],
        "country": "us",
        "state": p["state"],
    }


async def post_hubspot(
    client: httpx.AsyncClient, body: dict[str, Any], path: str = "/v1/webhooks/hubspot/hubspot", **headers: str
) -> httpx.Response:
    payload = orjson.dumps(body)
    signed_headers = sign_v3(HUBSPOT_SECRET, "POST", BASE + path, payload, NOW - timedelta(seconds=20))
    return await client.post(path, content=payload, headers={**signed_headers, **headers})


async def stored_event(engine: AsyncEngine, event_id: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        payload = await connection.scalar(
            text("SELECT payload FROM intake_events WHERE event_id = :e"), {"e": uuid.UUID(event_id)}
        )
    assert payload is not None
    return dict(payload)


async def count_for(engine: AsyncEngine, source: str) -> int:
    async with engine.connect() as connection:
        return int(
            await connection.scalar(text("SELECT count(*) FROM webhook_inbox WHERE source = :s"), {"s": source}) or 0
        )


async def test_hubspot_and_marketo_yield_the_same_lead_as_the_generic_endpoint(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    p = person()
    body, headers = signed({"type": "form_submit", "contact": p}, sent_at=NOW)
    generic = await client.post("/v1/webhooks/webform/events", content=body, headers=headers)
    hubspot = await post_hubspot(client, hubspot_record(p))
    marketo = await client.post(
        "/v1/webhooks/marketo/marketo",
        content=orjson.dumps(marketo_body(p)),
        headers={"X-Coxswain-Token": MARKETO_TOKEN},
    )
    assert [r.status_code for r in (generic, hubspot, marketo)] == [202, 202, 202], hubspot.text + marketo.text
    assert hubspot.json()["ignored"] == [] and marketo.json()["ignored"] == []
    lead_ids = {r.json()["events"][0]["lead_id"] for r in (generic, hubspot, marketo)}
    assert len(lead_ids) == 1

    stored = [await stored_event(engine, r.json()["events"][0]["event_id"]) for r in (generic, hubspot, marketo)]
    assert stored[0]["attributes"] == stored[1]["attributes"] == stored[2]["attributes"]
    assert stored[0]["attributes"]["email"].lower() == p["email"].lower()
    assert {s["engagement"] for s in stored} == {"form_submit"}
    assert [s["source"] for s in stored] == ["webform", "hubspot", "marketo"]
    assert stored[1]["external_id"] == "90210" and stored[2]["external_id"] == "4711"


async def test_the_customised_hubspot_body_and_the_type_parameter(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    flat = {"email": "ceo@initech.example.com", "jobtitle": "CEO", "numemployees": "1000+", "hs_object_id": "77"}
    response = await post_hubspot(client, flat, path="/v1/webhooks/hubspot/hubspot?type=demo_request")
    assert response.status_code == 202, response.text
    event = await stored_event(engine, response.json()["events"][0]["event_id"])
    assert event["engagement"] == "demo_request"
    assert event["external_id"] == "77"
    assert event["attributes"] == {
        **{k: None for k in event["attributes"]},
        "email": "ceo@initech.example.com",
        "title": "CEO",
        "company_size": 1000,
    }


async def test_a_wrong_hubspot_signature_is_refused_with_401_and_nothing_is_stored(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = await count_for(engine, "hubspot")
    payload = orjson.dumps(hubspot_record(person()))
    path = "/v1/webhooks/hubspot/hubspot"
    forged = sign_v3("not-the-client-secret", "POST", BASE + path, payload, NOW)
    response = await client.post(path, content=payload, headers=forged)
    assert response.status_code == 401
    assert "X-HubSpot-Signature-v3 does not match".lower() in response.json()["detail"].lower()

    tampered = sign_v3(HUBSPOT_SECRET, "POST", BASE + path, payload, NOW)
    response = await client.post(path, content=payload.replace(b"Jane", b"Joan"), headers=tampered)
    assert response.status_code == 401

    stale = sign_v3(HUBSPOT_SECRET, "POST", BASE + path, payload, NOW - timedelta(minutes=6))
    response = await client.post(path, content=payload, headers=stale)
    assert response.status_code == 401
    assert "older than the 300 s tolerance" in response.json()["detail"]

    response = await client.post(path, content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "x-hubspot-signature-v3" in response.json()["detail"]
    assert await count_for(engine, "hubspot") == before


async def test_a_hubspot_retry_is_one_delivery(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = hubspot_record(person())
    first = await post_hubspot(client, body)
    again = await post_hubspot(client, body)
    assert first.status_code == again.status_code == 202
    assert again.json()["duplicate"] is True
    assert again.json()["events"] == first.json()["events"]


async def test_marketo_needs_its_token(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    before = await count_for(engine, "marketo")
    body = orjson.dumps(marketo_body(person()))
    missing = await client.post("/v1/webhooks/marketo/marketo", content=body)
    wrong = await client.post("/v1/webhooks/marketo/marketo", content=body, headers={"X-Coxswain-Token": "guess"})
    assert (missing.status_code, wrong.status_code) == (400, 401)
    assert await count_for(engine, "marketo") == before


async def test_values_that_do_not_fit_are_left_out_and_reported(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = {**marketo_body(person(), event="webinar_attended"), "country": "Atlantis", "employees": "many"}
    response = await client.post(
        "/v1/webhooks/marketo/marketo", content=orjson.dumps(body), headers={"X-Coxswain-Token": MARKETO_TOKEN}
    )
    assert response.status_code == 202, response.text
    assert response.json()["ignored"] == ["company_size", "country"]
    event = await stored_event(engine, response.json()["events"][0]["event_id"])
    assert event["engagement"] == "webinar_attended"
    assert event["attributes"]["country"] is None and event["attributes"]["title"] == "VP Marketing"

    unknown = {**marketo_body(person()), "event": "carrier_pigeon"}
    response = await client.post(
        "/v1/webhooks/marketo/marketo", content=orjson.dumps(unknown), headers={"X-Coxswain-Token": MARKETO_TOKEN}
    )
    assert response.status_code == 422
    assert "carrier_pigeon" in response.json()["detail"]


async def test_a_mapped_form_with_standard_webhooks(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    email = f"{uuid.uuid4().hex[:8]}@globex.example.com"
    form = {
        "form_response": {
            "token": "tf-123",
            "submitted_at": "2026-11-23T09:29:00Z",
            "definition": {"title": "Book a demo"},
            "hidden": {"email": email, "country": "de"},
            "answers": [{"text": "Head of Sales"}, {"number": 120}],
        }
    }
    payload = orjson.dumps(form)
    response = await client.post(
        "/v1/webhooks/typeform/mapped", content=payload, headers=sign(SECRET, "msg_tf_1", NOW, payload)
    )
    assert response.status_code == 202, response.text
    event = await stored_event(engine, response.json()["events"][0]["event_id"])
    assert event["engagement"] == "demo_request"
    assert event["occurred_at"] == "2026-11-23T09:29:00Z"
    assert event["webhook_id"] == "msg_tf_1"
    assert {k: v for k, v in event["attributes"].items() if v is not None} == {
        "email": email,
        "title": "Head of Sales",
        "company_size": 120,
        "country": "DE",
    }
    generic_body, generic_headers = signed(
        {"type": "demo_request", "contact": {"email": email.upper(), "country": "DE"}}, sent_at=NOW
    )
    generic = await client.post("/v1/webhooks/webform/events", content=generic_body, headers=generic_headers)
    assert generic.json()["events"][0]["lead_id"] == response.json()["events"][0]["lead_id"]


async def test_a_mapped_batch_with_a_shared_secret(client: httpx.AsyncClient) -> None:
    batch = {"leads": [{"mail": f"a{i}-{uuid.uuid4().hex[:6]}@hooli.example.com", "org": "Hooli"} for i in range(3)]}
    response = await client.post(
        "/v1/webhooks/signup/mapped", content=orjson.dumps(batch), headers={"X-Signup-Key": "signup-key"}
    )
    assert response.status_code == 202, response.text
    assert len({e["lead_id"] for e in response.json()["events"]}) == 3
    unmapped = await client.post("/v1/webhooks/webform/mapped", content=b"{}", headers={"X-Signup-Key": "x"})
    assert unmapped.status_code == 404
    assert "no mapping for source 'webform'" in unmapped.json()["detail"]


async def test_trace_context_from_the_request_reaches_the_published_fact(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await post_hubspot(client, hubspot_record(person()), traceparent=caller)
    assert response.status_code == 202
    event_id = uuid.UUID(response.json()["events"][0]["event_id"])
    async with engine.connect() as connection:
        headers = await connection.scalar(text("SELECT headers FROM outbox WHERE event_id = :e"), {"e": event_id})
    traceparent = header(tuple((name, value.encode()) for name, value in headers), "traceparent")
    assert traceparent is not None
    assert trace_id(traceparent) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traceparent != caller, "intake continues the trace with a span of its own"

    body, plain_headers = signed({"type": "page_view", "contact": {"email": "x@y.example.com"}}, sent_at=NOW)
    response = await client.post("/v1/webhooks/webform/events", content=body, headers=plain_headers)
    async with engine.connect() as connection:
        headers = await connection.scalar(
            text("SELECT headers FROM outbox WHERE event_id = :e"),
            {"e": uuid.UUID(response.json()["events"][0]["event_id"])},
        )
    started = header(tuple((name, value.encode()) for name, value in headers), "traceparent")
    assert started is not None and trace_id(started) is not None, "a webhook without a trace starts one"
