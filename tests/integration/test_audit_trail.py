"""The audit trail against the real PostgreSQL: every admin action and every refused admin request
is a row in audit_log and a fact staged for admin.audit.v1 in the same transaction, with the name
of the token that acted; it is queryable behind its own scope."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import yaml
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import SCOPES, Token, TokenTable
from schemas.events import AUDIT_KEY, AdminActionAuditedV1
from services.admin.api import create_admin_router
from services.roster.app import create_roster_router
from tests.integration.test_routing_router import NOW, World
from tests.support.databases import engine_without_relays

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml"

TOKENS = {
    "revops": ("revops-token-" + uuid.uuid4().hex, frozenset(SCOPES) - {"audit:read"}),
    "auditor": ("auditor-token-" + uuid.uuid4().hex, frozenset({"audit:read"})),
}


@pytest_asyncio.fixture(loop_scope="session")
async def world(engine: AsyncEngine) -> AsyncIterator[World]:
    made = World(engine)
    yield made
    await made.cleanup()


def client(world: World, engine: AsyncEngine, name: str | None) -> httpx.AsyncClient:
    table = TokenTable.of(None, [Token(who, secret.encode(), scopes) for who, (secret, scopes) in TOKENS.items()])
    app = FastAPI()
    app.include_router(create_admin_router(engine, table, lambda: world.agreement, lambda: NOW))
    app.include_router(create_roster_router(engine, table, lambda: world.agreement, lambda: NOW))
    headers = {"Authorization": f"Bearer {TOKENS[name][0] if name else 'no-such-token'}"}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin", headers=headers)


async def audit(world: World, engine: AsyncEngine, **query: str) -> list[dict[str, Any]]:
    async with client(world, engine, "auditor") as auditor:
        response = await auditor.get("/v1/admin/audit", params={"limit": "1000", **query})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


async def test_every_admin_action_is_recorded_with_the_token_that_acted_and_staged_as_a_fact(
    world: World, engine: AsyncEngine
) -> None:
    ava, ben, pool = world["ava"], world["ben"], world["na"]
    domain = f"{uuid.uuid4().hex[:8]}.example.org"
    version = f"audit-{uuid.uuid4().hex[:8]}"
    document = yaml.safe_dump({**yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")), "version": version})
    lead = uuid.uuid4()
    try:
        async with engine_without_relays() as still, client(world, still, "revops") as revops:
            done = [
                await revops.post(f"/v1/reps/{ava}/pause", json={"reason": "pipeline review"}),
                await revops.post(f"/v1/reps/{ava}/unpause"),
                await revops.patch(f"/v1/reps/{ben}", json={"capacity": 30}),
                await revops.put(f"/v1/pools/{pool}/members/{ben}", json={"weight": 2}),
                await revops.put("/v1/accounts", json={"accounts": [{"domain": domain, "owner_rep_id": ben}]}),
                await revops.delete(f"/v1/accounts/{domain}"),
                await revops.post(
                    f"/v1/reps/{ben}/out-of-office",
                    json={"start": NOW.isoformat(), "end": (NOW + timedelta(days=1)).isoformat()},
                ),
                await revops.post(
                    "/v1/admin/agreements", content=document, headers={"Content-Type": "application/yaml"}
                ),
                await revops.post(f"/v1/admin/agreements/{version}/activate"),
                await revops.get(f"/v1/leads/{lead}"),
            ]
            done.append(await revops.delete(f"/v1/reps/{ben}/out-of-office/{done[6].json()['id']}"))
            statuses = [response.status_code for response in done]
            assert statuses == [200, 200, 200, 200, 200, 204, 201, 201, 200, 404, 204], [r.text for r in done]
            # A change that fails changes nothing and records nothing.
            assert (await revops.post("/v1/reps/nobody-here/pause")).status_code == 404

            entries = await audit(world, still, token="revops", since=NOW.isoformat())
            async with still.connect() as connection:
                staged = {
                    row.event_id: row
                    for row in await connection.execute(
                        text("SELECT event_id, key, value FROM outbox WHERE topic = :t"),
                        {"t": AdminActionAuditedV1.topic},
                    )
                }
    finally:
        # Later tests and the end-to-end stack start from COXSWAIN_AGREEMENT_FILE.
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM agreements WHERE version = :v"), {"v": version})

    mine = [e for e in entries if e["target"] in {ava, ben, pool, domain, version, str(lead), "accounts"}]
    assert [(e["action"], e["target"], e["outcome"]) for e in reversed(mine)] == [
        ("rep.pause", ava, "done"),
        ("rep.unpause", ava, "done"),
        ("rep.change", ben, "done"),
        ("pool.member.set", pool, "done"),
        ("accounts.sync", "accounts", "done"),
        ("account.delete", domain, "done"),
        ("rep.out_of_office.add", ben, "done"),
        ("agreement.store", version, "done"),
        ("agreement.activate", version, "done"),
        ("lead.read", str(lead), "not_found"),
        ("rep.out_of_office.remove", ben, "done"),
    ]
    assert [e["detail"] for e in mine if e["action"] == "rep.change"] == [{"fields": "capacity"}]
    assert not [e for e in entries if e["target"] == "nobody-here"]
    # Each entry is a fact waiting in the outbox, committed with the change.
    for entry in mine:
        row = staged[uuid.UUID(entry["event_id"])]
        fact = AdminActionAuditedV1.model_validate(orjson.loads(row.value))
        assert (fact.token, fact.action, fact.target, fact.outcome) == (
            "revops",
            entry["action"],
            entry["target"],
            entry["outcome"],
        )
        assert bytes(row.key) == str(AUDIT_KEY).encode()


async def test_refused_requests_are_recorded_and_the_trail_needs_its_own_scope(
    world: World, engine: AsyncEngine
) -> None:
    async with client(world, engine, None) as stranger, client(world, engine, "auditor") as auditor:
        assert (await stranger.post(f"/v1/reps/{world['ava']}/pause")).status_code == 403
        refused = await auditor.post(f"/v1/reps/{world['ava']}/pause")
        assert (refused.status_code, refused.json()["detail"]) == (403, "token 'auditor' lacks scope 'roster:write'")
    async with client(world, engine, "revops") as revops:
        refused = await revops.get("/v1/admin/audit")
        assert (refused.status_code, refused.json()["detail"]) == (403, "token 'revops' lacks scope 'audit:read'")

    entries = await audit(world, engine, action="request", since=NOW.isoformat())
    path = f"POST /v1/reps/{world['ava']}/pause"
    assert [(e["token"], e["outcome"], e["detail"]) for e in entries if e["target"] == path][:2] == [
        ("auditor", "refused", {"scope": "roster:write", "reason": "missing_scope"}),
        ("?", "refused", {"scope": "roster:write", "reason": "wrong_token"}),
    ]
    assert ("revops", {"scope": "audit:read", "reason": "missing_scope"}) in [
        (e["token"], e["detail"]) for e in entries if e["target"] == "GET /v1/admin/audit"
    ]


async def test_the_trail_is_filtered_and_a_time_without_offset_is_a_422(world: World, engine: AsyncEngine) -> None:
    async with client(world, engine, "auditor") as auditor:
        naive = await auditor.get("/v1/admin/audit", params={"since": "2026-12-04T09:00:00"})
        too_many = await auditor.get("/v1/admin/audit", params={"limit": "5000"})
        future = await auditor.get("/v1/admin/audit", params={"since": (NOW + timedelta(days=3650)).isoformat()})
    assert (naive.status_code, naive.json()["detail"]) == (422, "since needs a UTC offset, e.g. 2026-12-04T09:00:00Z")
    assert too_many.status_code == 422
    assert (future.status_code, future.json()) == (200, [])
