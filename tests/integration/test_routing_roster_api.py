"""The roster API against the real PostgreSQL: bearer auth, precise 4xx answers, and changes that
the next lead sees without resetting anybody's place in the rotation."""

from __future__ import annotations

import asyncio
import traceback
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS
from schemathesis.core.result import Err
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from coxswain.access import Token, TokenTable
from coxswain.settings import DatabaseConfig
from schemas.events import Tier
from services.roster.app import create_roster_app
from tests.integration.test_routing_router import NOW, TOKEN, World, routed

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def world(engine: AsyncEngine) -> AsyncIterator[World]:
    made = World(engine)
    yield made
    await made.cleanup()


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "missing Authorization header; send 'Authorization: Bearer <token>'"),
        ({"Authorization": "Basic cm9vdDpyb290"}, 401, "Authorization must be 'Bearer <token>'"),
        ({"Authorization": "Bearer not-the-token"}, 403, "the bearer token is not valid for the admin API"),
    ],
)
async def test_every_endpoint_needs_the_admin_token(
    world: World, headers: dict[str, str], status: int, detail: str
) -> None:
    async with httpx.AsyncClient(transport=world.api._transport, base_url="http://roster") as anonymous:
        for method, path in [
            ("GET", "/v1/roster"),
            ("POST", f"/v1/reps/{world['ava']}/pause"),
            ("PUT", "/v1/accounts"),
        ]:
            response = await anonymous.request(method, path, headers=headers)
            assert (response.status_code, response.json()["detail"]) == (status, detail), path


async def test_without_a_configured_token_the_api_refuses_everyone(world: World) -> None:
    app = create_roster_app(world.engine, TokenTable.of(None), lambda: world.agreement, lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://roster") as client:
        response = await client.get("/v1/roster", headers={"Authorization": "Bearer anything"})

    assert response.status_code == 403
    assert "COXSWAIN_ADMIN_TOKEN" in response.json()["detail"]


async def test_the_roster_api_needs_scope_roster_write(world: World) -> None:
    table = TokenTable.of(
        None,
        [
            Token("revops", b"revops-token-for-agreements", frozenset({"agreements:write", "leads:read"})),
            Token("roster-bot", b"roster-bot-token-for-reps", frozenset({"roster:write"})),
        ],
    )
    app = create_roster_app(world.engine, table, lambda: world.agreement, lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://roster") as client:
        refused = await client.get("/v1/roster", headers={"Authorization": "Bearer revops-token-for-agreements"})
        allowed = await client.get("/v1/roster", headers={"Authorization": "Bearer roster-bot-token-for-reps"})

    assert (refused.status_code, refused.json()["detail"]) == (403, "token 'revops' lacks scope 'roster:write'")
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "detail"),
    [
        ("PATCH", "/v1/reps/{ava}", {"capacity": 0}, 422, "capacity: Input should be greater than or equal to 1"),
        ("PATCH", "/v1/reps/{ava}", {"weight": 3}, 422, "weight: Extra inputs are not permitted"),
        ("PATCH", "/v1/reps/{ava}", {}, 422, "nothing to change; give any of name, timezone, calendar"),
        ("PATCH", "/v1/reps/{ava}", {"timezone": "Mars/Olympus"}, 422, "unknown time zone 'Mars/Olympus'"),
        ("PATCH", "/v1/reps/{ava}", {"calendar": "moon"}, 422, "calendar: 'moon' is not a calendar of agreement"),
        ("PATCH", "/v1/reps/{ava}", {"name": None}, 422, "name: Input should be a valid string"),
        ("PATCH", "/v1/reps/nobody", {"capacity": 3}, 404, "rep 'nobody' is not in the roster"),
        ("PATCH", "/v1/reps/Bad%20Id", {"capacity": 3}, 422, "rep id 'Bad Id' is not valid"),
        (
            "POST",
            "/v1/reps/{ava}/out-of-office",
            {"start": "2026-11-26T00:00:00Z", "end": "2026-11-25T00:00:00Z"},
            422,
            "end 2026-11-25T00:00:00+00:00 must be after start 2026-11-26T00:00:00+00:00",
        ),
        (
            "POST",
            "/v1/reps/{ava}/out-of-office",
            {"start": "2026-11-26T00:00:00", "end": "2026-11-27T00:00:00Z"},
            422,
            "start: Input should have timezone info",
        ),
        ("PUT", "/v1/pools/nowhere/members/{ava}", {"weight": 2}, 404, "pool 'nowhere' is not in agreement"),
        (
            "PUT",
            "/v1/pools/{na}/members/{ava}",
            {"weight": 0},
            422,
            "weight: Input should be greater than or equal to 1",
        ),
        ("PUT", "/v1/pools/{na}/members/ghost", {"weight": 1}, 422, "rep 'ghost' is not in the roster"),
        ("DELETE", "/v1/pools/{overflow}/members/{ava}", None, 404, "is not a member of pool"),
        (
            "PUT",
            "/v1/accounts",
            {"accounts": [{"domain": "acme.com", "owner_rep_id": "{ava}"}, {"domain": "acme", "owner_rep_id": "x"}]},
            422,
            "accounts.1.domain: 'acme' is not a domain name",
        ),
        ("PUT", "/v1/accounts", {"accounts": []}, 422, "accounts: List should have at least 1 item"),
        ("GET", "/v1/assignments/not-a-uuid", None, 422, "lead id 'not-a-uuid' is not a UUID"),
        ("GET", f"/v1/assignments/{uuid.UUID(int=7)}", None, 404, "the router has not routed lead"),
        ("DELETE", "/v1/reps/{ava}/out-of-office/nope", None, 404, "has no runtime out-of-office period 'nope'"),
        ("GET", "/v1/unassigned?limit=0", None, 422, "limit must be 1..1000, got 0"),
    ],
)
async def test_bad_requests_get_a_precise_4xx_never_a_500(
    world: World, method: str, path: str, body: object, status: int, detail: str
) -> None:
    def fill(value: object) -> object:
        if isinstance(value, str):
            return value.format(**world.ids)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    response = await world.api.request(method, str(fill(path)), json=fill(body) if body is not None else None)

    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/reps", {"id": "nul-rep", "name": "N\u0000a"}),
        ("PATCH", "/v1/reps/{ava}", {"name": "Ava\u0000"}),
        ("POST", "/v1/reps/{ava}/pause", {"reason": "lunch\u0000"}),
        (
            "PUT",
            "/v1/accounts",
            {"accounts": [{"domain": "nul.example.com", "owner_rep_id": "{ava}", "external_id": "\u0000"}]},
        ),
    ],
)
async def test_a_nul_character_in_a_body_is_a_422_not_a_server_error(
    world: World, method: str, path: str, body: dict[str, Any]
) -> None:
    """PostgreSQL text and JSONB cannot hold NUL: the API refuses it before the database does."""
    raw = orjson.dumps(body).decode().replace("{ava}", world["ava"]).encode()

    response = await world.api.request(method, path.format(**world.ids), content=raw)

    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["detail"]


async def test_a_body_that_is_not_json_is_a_422(world: World) -> None:
    response = await world.api.patch(f"/v1/reps/{world['ava']}", content=b"{capacity: 3")

    assert response.status_code == 422
    assert response.json()["detail"].startswith("body is not valid JSON")


async def test_changes_take_effect_on_the_next_lead_and_never_reset_the_rotation(world: World) -> None:
    for _ in range(3):
        routed((await world.qualify())[1])
    [before] = await world.rows("SELECT current, assigned FROM pool_rotation WHERE pool_id = :p", p=world["na"])

    paused = await world.api.post(f"/v1/reps/{world['ava']}/pause", json={"reason": "pipeline review"})
    reweighted = await world.api.put(f"/v1/pools/{world['na']}/members/{world['eli']}", json={"weight": 3})

    assert paused.status_code == 200
    assert paused.json()["unavailable_because"] == "pipeline review".join(("paused: ", ""))
    assert reweighted.json()["members"][2] == {"rep": world["eli"], "weight": 3, "effective_weight": 3}
    [after] = await world.rows("SELECT current, assigned FROM pool_rotation WHERE pool_id = :p", p=world["na"])
    assert (after.current, after.assigned) == (before.current, before.assigned)
    picks = [routed((await world.qualify())[1]).rep_id for _ in range(8)]
    assert world["ava"] not in picks
    assert picks.count(world["eli"]) == 6  # weight 3 against ben's 1

    unpaused = await world.api.post(f"/v1/reps/{world['ava']}/unpause")
    assert unpaused.json()["unavailable_because"] is None
    # Back in the rotation at once, though not ahead of the reps who covered (re-entry policy).
    back = [routed((await world.qualify())[1]).rep_id for _ in range(6)]
    assert back.count(world["ava"]) == 2  # weight 2 of 2 + 1 + 3


async def test_out_of_office_periods_are_added_listed_and_removed(world: World) -> None:
    start, end = NOW - timedelta(hours=1), NOW + timedelta(days=3)
    added = await world.api.post(
        f"/v1/reps/{world['ben']}/out-of-office",
        json={"start": start.isoformat(), "end": end.isoformat(), "reason": "conference"},
    )
    assert added.status_code == 201, added.text
    absence_id = added.json()["id"]

    rep = (await world.api.get(f"/v1/reps/{world['ben']}")).json()
    assert rep["unavailable_because"] == "out of office until 2026-11-28T16:00:00+01:00 (conference)"
    assert [p["id"] for p in rep["out_of_office"]] == [absence_id]
    picks = {routed((await world.qualify())[1]).rep_id for _ in range(6)}
    assert world["ben"] not in picks

    removed = await world.api.delete(f"/v1/reps/{world['ben']}/out-of-office/{absence_id}")
    assert removed.status_code == 204
    assert (await world.api.get(f"/v1/reps/{world['ben']}")).json()["unavailable_because"] is None


async def test_a_new_hire_is_added_to_a_pool_and_ramps_up(world: World) -> None:
    new_id = f"{world['ava']}-new"
    created = await world.api.post(
        "/v1/reps", json={"id": new_id, "name": "Nia", "started_on": NOW.date().isoformat(), "ramp_weeks": 2}
    )
    duplicate = await world.api.post("/v1/reps", json={"id": new_id, "name": "Nia"})
    member = await world.api.put(f"/v1/pools/{world['na']}/members/{new_id}", json={"weight": 2})

    assert created.status_code == 201, created.text
    assert duplicate.status_code == 409
    assert member.json()["members"][-1] == {
        "rep": new_id,
        "weight": 2,
        "effective_weight": pytest.approx(2 / 14, abs=1e-3),
    }
    roster = (await world.api.get("/v1/roster")).json()
    assert new_id in [rep["id"] for rep in roster["reps"]]
    await world.api.delete(f"/v1/pools/{world['na']}/members/{new_id}")
    async with world.engine.begin() as connection:
        await connection.execute(text("DELETE FROM rep_overrides WHERE rep_id = :r"), {"r": new_id})
        await connection.execute(text("DELETE FROM pool_member_overrides WHERE rep_id = :r"), {"r": new_id})


async def test_a_reps_crm_ids_are_kept_with_the_roster_and_changed_at_runtime(world: World) -> None:
    new_id = f"{world['ava']}-crm"
    created = await world.api.post(
        "/v1/reps", json={"id": new_id, "name": "Cal", "crm": {"hubspot_owner_id": "777", "salesforce_user_id": None}}
    )
    changed = await world.api.patch(f"/v1/reps/{new_id}", json={"crm": {"salesforce_user_id": "005000000000777"}})
    refused = await world.api.patch(f"/v1/reps/{new_id}", json={"crm": {"hubspot_owner_id": "not-a-number"}})
    cleared = await world.api.patch(f"/v1/reps/{new_id}", json={"crm": None})

    assert created.status_code == 201, created.text
    assert created.json()["crm"] == {"hubspot_owner_id": "777", "salesforce_user_id": None}
    # The ids are replaced as a whole, like the agreement's.
    assert changed.json()["crm"] == {"hubspot_owner_id": None, "salesforce_user_id": "005000000000777"}
    assert refused.status_code == 422 and "hubspot_owner_id" in refused.text
    assert cleared.json()["crm"] == {"hubspot_owner_id": None, "salesforce_user_id": None}
    async with world.engine.begin() as connection:
        await connection.execute(text("DELETE FROM rep_overrides WHERE rep_id = :r"), {"r": new_id})


async def test_accounts_are_upserted_in_bulk_read_and_removed(world: World) -> None:
    domain = f"{uuid.uuid4().hex[:8]}.example.org"
    response = await world.api.put(
        "/v1/accounts",
        json={
            "accounts": [
                {"domain": domain, "owner_rep_id": world["ben"], "external_id": "0015g00000"},
                {"domain": f"other-{domain}", "owner_rep_id": "sally-from-finance"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["upserted"] == 2
    assert response.json()["unknown_owners"] == ["sally-from-finance"]
    account = (await world.api.get(f"/v1/accounts/WWW.{domain.upper()}")).json()
    assert (account["domain"], account["owner_rep_id"], account["external_id"]) == (domain, world["ben"], "0015g00000")

    changed = await world.api.put("/v1/accounts", json={"accounts": [{"domain": domain, "owner_rep_id": None}]})
    assert changed.json()["removed"] == 1
    assert (await world.api.get(f"/v1/accounts/{domain}")).status_code == 404
    assert (await world.api.delete(f"/v1/accounts/other-{domain}")).status_code == 204


async def test_the_assignments_of_a_lead_are_explained(world: World) -> None:
    event, facts = await world.qualify(tier=Tier.hot, email="ops@globex-demo.com")
    fact = routed(facts)

    response = await world.api.get(f"/v1/assignments/{event.lead_id}")

    assert response.status_code == 200
    body = response.json()
    [made] = body["assignments"]
    assert made["assignment_id"] == str(fact.assignment_id)
    assert made["decision"]["rule_id"] == "north-america"
    assert made["decision"]["agreement_version"] == world.agreement.version
    assert made["decision"]["domain"] == "globex-demo.com"
    assert {c["rep_id"] for c in made["decision"]["candidates"]} == {world["ava"], world["ben"], world["eli"]}
    assert body["holder"]["rep_id"] == fact.rep_id
    assert body["holder"]["open"] is True
    assert body["unassigned"] is None
    listed = await world.api.get("/v1/unassigned", params={"limit": 5})
    assert listed.status_code == 200


# --------------------------------------------------------------------------- generated bad input

FUZZ_CLOCK = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)  # marks every row the fuzzing writes


async def _forget_fuzzed_rows(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for table in ("rep_overrides", "pool_member_overrides", "accounts"):
            await connection.execute(text(f"DELETE FROM {table} WHERE updated_at = :t"), {"t": FUZZ_CLOCK})


async def test_no_generated_request_gets_a_server_error(world: World) -> None:
    """Schemathesis drives every operation of the OpenAPI document with a valid token: whatever
    the body, path or query, the answer is documented, below 500, and a 4xx says why."""
    # Schemathesis calls the app from its own event loop: connections must not be pooled across loops.
    own_engine = create_async_engine(DatabaseConfig().database_url, poolclass=NullPool)
    app = create_roster_app(own_engine, TokenTable.of(TOKEN), lambda: world.agreement, lambda: FUZZ_CLOCK)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [CHECKS.get_by_names([n])[0] for n in ("not_a_server_error", "status_code_conformance")]
    failures: list[str] = []

    def run() -> None:
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # the document itself did not parse
                raise result.err()
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def fuzz(case: Any) -> None:
                response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
                case.validate_response(response, checks=checks)
                if 400 <= response.status_code < 500:
                    why = f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]!r}"
                    body = orjson.loads(response.content) if response.content.startswith(b"{") else None
                    assert isinstance(body, dict) and body.get("detail"), why

            try:
                fuzz()
            except Exception as exc:
                # The whole exception, sub-exceptions included: hypothesis wraps the real one.
                failures.append(f"{operation.label}: {''.join(traceback.format_exception(exc))[-3000:]}")

    try:
        await asyncio.to_thread(run)
    finally:
        await _forget_fuzzed_rows(world.engine)
        await own_engine.dispose()
    assert failures == []
