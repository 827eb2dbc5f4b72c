"""Every way into the intake, against the real PostgreSQL: signatures, replays, limits, outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.db.database import create_engine
from coxswain.settings import DatabaseConfig, IntakeConfig
from services.intake.app import create_app
from services.intake.signatures import sign
from tests.support.stack import SECRET, signed

pytestmark = pytest.mark.asyncio(loop_scope="session")

OLD_SECRET = "whsec_" + "b2xkLXNlY3JldC1iZWZvcmUtcm90YXRpb24tMDAw"
EVENTS = "/v1/webhooks/webform/events"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    database = create_engine(DatabaseConfig())
    yield database
    await database.dispose()


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake")


def lead() -> dict[str, object]:
    return {"type": "form_submit", "contact": {"email": f"{uuid.uuid4().hex[:12]}@example.com", "country": "US"}}


async def stored(engine: AsyncEngine, webhook_id: str) -> tuple[int, int]:
    async with engine.connect() as connection:
        inbox = await connection.scalar(
            text("SELECT count(*) FROM webhook_inbox WHERE webhook_id = :w"), {"w": webhook_id}
        )
        events = await connection.scalar(
            text("SELECT count(*) FROM intake_events WHERE webhook_id = :w"), {"w": webhook_id}
        )
    return int(inbox or 0), int(events or 0)


async def stored_payload(engine: AsyncEngine, webhook_id: str) -> dict[str, object]:
    async with engine.connect() as connection:
        payload = await connection.scalar(
            text("SELECT payload FROM intake_events WHERE webhook_id = :w"), {"w": webhook_id}
        )
    assert isinstance(payload, dict)
    return payload


@pytest.fixture
def make_client(engine: AsyncEngine) -> Callable[..., httpx.AsyncClient]:
    def build(clock: Clock | None = None, **settings: object) -> httpx.AsyncClient:
        config = IntakeConfig.model_validate({"webhook_secrets": {"webform": [SECRET], "crm": [SECRET]}} | settings)
        return client_for(create_app(config, engine, clock or Clock()))

    return build


async def test_a_replayed_webhook_id_is_never_processed_twice_even_with_another_valid_body(
    make_client: Callable[..., httpx.AsyncClient], engine: AsyncEngine
) -> None:
    clock = Clock()
    webhook_id = f"msg_replay_{uuid.uuid4().hex}"
    async with make_client(clock) as client:
        first_body, first_headers = signed(lead(), webhook_id=webhook_id, sent_at=clock.now)
        first = await client.post(EVENTS, content=first_body, headers=first_headers)
        # The same id, re-signed a minute later over a different body: authentic, fresh, and still a replay.
        clock.now += timedelta(minutes=1)
        other = {"type": "demo_request", "contact": {"email": "someone-else@example.com"}}
        second_body, second_headers = signed(other, webhook_id=webhook_id, sent_at=clock.now)
        second = await client.post(EVENTS, content=second_body, headers=second_headers)
    assert first.status_code == second.status_code == 202
    assert second.json() == {**first.json(), "duplicate": True}
    assert await stored(engine, webhook_id) == (1, 1)
    attributes = (await stored_payload(engine, webhook_id))["attributes"]
    assert isinstance(attributes, dict)
    assert attributes["email"] != "someone-else@example.com"


async def test_concurrent_deliveries_of_one_webhook_store_it_once(
    make_client: Callable[..., httpx.AsyncClient], engine: AsyncEngine
) -> None:
    clock = Clock()
    webhook_id = f"msg_concurrent_{uuid.uuid4().hex}"
    body, headers = signed(lead(), webhook_id=webhook_id, sent_at=clock.now)
    async with make_client(clock) as client:
        answers = await asyncio.gather(*(client.post(EVENTS, content=body, headers=headers) for _ in range(8)))
    assert {answer.status_code for answer in answers} == {202}
    assert sorted(answer.json()["duplicate"] for answer in answers) == [False] + [True] * 7
    assert await stored(engine, webhook_id) == (1, 1)


async def test_a_captured_request_replayed_after_the_tolerance_is_refused(
    make_client: Callable[..., httpx.AsyncClient], engine: AsyncEngine
) -> None:
    clock = Clock()
    webhook_id = f"msg_late_replay_{uuid.uuid4().hex}"
    body, headers = signed(lead(), webhook_id=webhook_id, sent_at=clock.now)
    async with make_client(clock) as client:
        assert (await client.post(EVENTS, content=body, headers=headers)).status_code == 202
        clock.now += timedelta(minutes=5, seconds=1)
        replay = await client.post(EVENTS, content=body, headers=headers)
    assert replay.status_code == 401
    assert "older than the 300 s tolerance" in replay.json()["detail"]
    assert await stored(engine, webhook_id) == (1, 1)


async def test_after_rotation_the_retired_secret_is_refused_and_the_new_one_accepted(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    during = IntakeConfig(webhook_secrets={"webform": [OLD_SECRET, SECRET]})
    after = IntakeConfig(webhook_secrets={"webform": [SECRET]})
    payload = orjson.dumps(lead())
    async with client_for(create_app(during, engine, clock)) as client:
        old = await client.post(
            EVENTS, content=payload, headers=sign(OLD_SECRET, f"msg_{uuid.uuid4().hex}", clock.now, payload)
        )
        new = await client.post(
            EVENTS, content=payload, headers=sign(SECRET, f"msg_{uuid.uuid4().hex}", clock.now, payload)
        )
    assert old.status_code == new.status_code == 202
    async with client_for(create_app(after, engine, clock)) as client:
        retired = await client.post(
            EVENTS, content=payload, headers=sign(OLD_SECRET, f"msg_{uuid.uuid4().hex}", clock.now, payload)
        )
    assert retired.status_code == 401
    assert "does not match any active secret" in retired.json()["detail"]


async def test_a_source_over_its_rate_limit_gets_429_with_retry_after_and_others_are_unaffected(
    make_client: Callable[..., httpx.AsyncClient], engine: AsyncEngine
) -> None:
    clock = Clock()
    async with make_client(clock, rate_limit_per_source=2, rate_limit_burst=3) as client:

        async def post(path: str = EVENTS, body: dict[str, object] | None = None) -> httpx.Response:
            payload, headers = signed(body or lead(), webhook_id=f"msg_rate_{uuid.uuid4().hex}", sent_at=clock.now)
            return await client.post(path, content=payload, headers=headers)

        burst = [await post() for _ in range(3)]
        limited = await post()
        touch: dict[str, object] = {"lead_id": str(uuid.uuid4()), "activity": "first_touch"}
        other_source = await post("/v1/webhooks/crm/activities", touch)
        clock.now += timedelta(seconds=1)
        refilled = [await post() for _ in range(2)]
        again = await post()
    assert [response.status_code for response in burst] == [202, 202, 202]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert "over its limit of 2 webhooks per second" in limited.json()["detail"]
    assert await stored(engine, limited.request.headers["webhook-id"]) == (0, 0)
    assert other_source.status_code == 202
    assert [response.status_code for response in refilled] == [202, 202]
    assert again.status_code == 429


async def test_an_unsigned_flood_does_not_use_up_the_senders_budget(
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    clock = Clock()
    async with make_client(clock, rate_limit_per_source=1, rate_limit_burst=1) as client:
        for _ in range(5):
            unsigned = await client.post(
                EVENTS, content=orjson.dumps(lead()), headers={"content-type": "application/json"}
            )
            assert unsigned.status_code == 400
        payload, headers = signed(lead(), sent_at=clock.now)
        assert (await client.post(EVENTS, content=payload, headers=headers)).status_code == 202


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("declared-too-large", 413, "larger than 2048 bytes"),
        ("streamed-too-large", 413, "larger than 2048 bytes"),
        ("nul-character", 422, "NUL character"),
        ("webhook-id-too-long", 400, "at most 256 printable characters"),
        ("webhook-id-not-printable", 400, "at most 256 printable characters"),
    ],
)
async def test_oversized_and_unstorable_input_is_refused_before_the_database(
    make_client: Callable[..., httpx.AsyncClient], engine: AsyncEngine, case: str, status: int, message: str
) -> None:
    clock = Clock()
    webhook_id = f"msg_{case}_{uuid.uuid4().hex}"
    document: dict[str, object] = lead()
    if case.endswith("too-large"):
        document["padding"] = "x" * 4000
    if case == "nul-character":
        document["contact"] = {"email": "nul@example.com", "title": "VP\u0000Sales"}
    if case == "webhook-id-too-long":
        webhook_id = "m" * 257
    if case == "webhook-id-not-printable":
        webhook_id = "msg\tid"
    payload, headers = signed(document, webhook_id=webhook_id, sent_at=clock.now)
    async with make_client(clock, max_body_bytes=2048) as client:
        if case == "streamed-too-large":

            async def chunks() -> AsyncIterator[bytes]:
                yield payload

            response = await client.post(EVENTS, content=chunks(), headers=headers)
        else:
            response = await client.post(EVENTS, content=payload, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert await stored(engine, webhook_id) == (0, 0)


async def test_without_a_database_the_intake_answers_503_with_retry_after_and_acknowledges_nothing(
    infrastructure: None,
) -> None:
    unreachable = create_engine(
        DatabaseConfig(database_url="postgresql+asyncpg://coxswain:coxswain@127.0.0.1:9/coxswain")
    )
    config = IntakeConfig(webhook_secrets={"webform": [SECRET]})
    clock = Clock()
    try:
        async with client_for(create_app(config, unreachable, clock)) as client:
            payload, headers = signed(lead(), sent_at=clock.now)
            response = await client.post(EVENTS, content=payload, headers=headers)
            ready = await client.get("/readyz")
    finally:
        await unreachable.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "retry with the same webhook-id" in response.json()["detail"]
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["database"] != "ok"


async def test_readyz_names_each_dependency_and_fails_when_kafka_does_not_answer(engine: AsyncEngine) -> None:
    async def kafka_down() -> None:
        raise ConnectionRefusedError("broker away")

    async def kafka_up() -> None:
        return None

    config = IntakeConfig(webhook_secrets={"webform": [SECRET]})
    async with client_for(create_app(config, engine, Clock(), readiness_checks={"kafka": kafka_down})) as client:
        down = await client.get("/readyz")
        alive = await client.get("/healthz")
    async with client_for(create_app(config, engine, Clock(), readiness_checks={"kafka": kafka_up})) as client:
        up = await client.get("/readyz")
    assert down.status_code == 503
    assert down.json() == {"status": "unavailable", "database": "ok", "kafka": "ConnectionRefusedError"}
    assert alive.status_code == 200
    assert up.status_code == 200
    assert up.json() == {"status": "ready", "database": "ok", "kafka": "ok"}
