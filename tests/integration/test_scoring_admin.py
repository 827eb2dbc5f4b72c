"""The admin API and CLI against the real PostgreSQL: agreement versions are stored once,
activated explicitly behind a bearer token and picked up by a running service without a
restart; a lead is explained with its score breakdown, owner, SLA clocks and timeline."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
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
from typer.testing import CliRunner

from coxswain.access import Token, TokenTable
from coxswain.core.agreement import load_agreement, parse_agreement
from coxswain.db.database import create_engine
from coxswain.runtime.agreements import AgreementSource, digest
from coxswain.settings import DatabaseConfig
from coxswain_app.cli import app as cli
from schemas.events import (
    ActivityRecordedV1,
    ActivityRefusedV1,
    ActivityType,
    EngagementType,
    LeadAttributes,
    LeadReceivedV1,
)
from services.admin.api import create_admin_router
from services.scoring.service import apply

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agreement.yaml"
FALLBACK = ROOT / "tests" / "e2e" / "agreement.yaml"
TOKEN = "admin-" + uuid.uuid4().hex
NOW = datetime.now(UTC).replace(microsecond=0)
AGREEMENT = load_agreement(EXAMPLE)


def document(version: str, **changes: Any) -> str:
    loaded = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    loaded["version"] = version
    loaded.update(changes)
    return yaml.safe_dump(loaded)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    database = create_engine(DatabaseConfig())
    yield database
    # The end-to-end stack that runs later must start from COXSWAIN_AGREEMENT_FILE.
    async with database.begin() as connection:
        await connection.execute(text("DELETE FROM agreements"))
    await database.dispose()


def client_for(
    engine: AsyncEngine, tokens: TokenTable | str | None, source: AgreementSource | None = None
) -> httpx.AsyncClient:
    """The admin API; a bare token (or None) is COXSWAIN_ADMIN_TOKEN alone."""
    table = tokens if isinstance(tokens, TokenTable) else TokenTable.of(tokens)
    api = FastAPI()
    api.include_router(create_admin_router(engine, table, lambda: source.current if source else AGREEMENT, lambda: NOW))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://admin")


@pytest_asyncio.fixture(loop_scope="session")
async def admin(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine, TOKEN) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "missing Authorization header; send 'Authorization: Bearer <token>'"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "Authorization must be 'Bearer <token>'"),
        ({"Authorization": "Bearer "}, 401, "Authorization must be 'Bearer <token>'"),
        ({"Authorization": "Bearer wrong"}, 403, "the bearer token is not valid for the admin API"),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403, "the bearer token is not valid for the admin API"),
    ],
)
async def test_every_endpoint_needs_the_bearer_token(
    engine: AsyncEngine, headers: dict[str, str], status: int, detail: str
) -> None:
    async with client_for(engine, TOKEN) as client:
        for method, path in [
            ("GET", "/v1/admin/agreements"),
            ("POST", "/v1/admin/agreements"),
            ("POST", "/v1/admin/agreements/x/activate"),
            ("GET", f"/v1/leads/{uuid.uuid4()}"),
        ]:
            response = await client.request(method, path, headers=headers)
            assert (response.status_code, response.json()["detail"]) == (status, detail), (method, path)
            if status == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.asyncio(loop_scope="session")
async def test_without_a_configured_token_the_admin_api_is_disabled(engine: AsyncEngine) -> None:
    async with client_for(engine, None) as client:
        response = await client.get("/v1/admin/agreements", headers={"Authorization": "Bearer anything"})

    assert response.status_code == 403
    assert response.json()["detail"] == "the admin API is disabled: set COXSWAIN_ADMIN_TOKEN to enable it"


@pytest.mark.asyncio(loop_scope="session")
async def test_versions_are_stored_once_and_activated_explicitly(engine: AsyncEngine, admin: httpx.AsyncClient) -> None:
    version = f"it-{uuid.uuid4().hex[:8]}"
    source = AgreementSource(engine, FALLBACK, poll_seconds=0.1)
    await source.refresh()
    assert source.current.version == "e2e-1"  # nothing activated: the file

    created = await admin.post("/v1/admin/agreements", content=document(version))
    again = await admin.post("/v1/admin/agreements", content=document(version))
    conflict = await admin.post("/v1/admin/agreements", content=document(version, name="Changed"))

    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["version"], body["created"], body["activated_at"], body["warnings"]) == (version, True, None, [])
    assert len(body["sha256"]) == 64
    assert (again.status_code, again.json()["created"], again.json()["sha256"]) == (200, False, body["sha256"])
    assert conflict.status_code == 409
    assert f"version {version!r} is already stored with different content" in conflict.json()["detail"]
    assert await source.refresh() is False  # stored is not in force

    missing = await admin.post("/v1/admin/agreements/no-such-version/activate")
    assert missing.status_code == 404
    assert (
        missing.json()["detail"] == "no agreement version 'no-such-version' is stored; POST it to /v1/admin/agreements"
    )

    activated = await admin.post(f"/v1/admin/agreements/{version}/activate")
    assert activated.status_code == 200 and activated.json()["activated_at"] is not None
    assert await source.refresh() is True
    assert source.current.version == version
    assert source.current == parse_agreement(yaml.safe_load(document(version)))
    assert await source.refresh() is False

    listed = await admin.get("/v1/admin/agreements")
    assert version in [row["version"] for row in listed.json()]

    # Going back is activating an older version again.
    older = f"{version}-old"
    await admin.post("/v1/admin/agreements", content=document(older))
    await admin.post(f"/v1/admin/agreements/{older}/activate")
    assert await source.refresh() is True and source.current.version == older
    await admin.post(f"/v1/admin/agreements/{version}/activate")
    assert await source.refresh() is True and source.current.version == version


@pytest.mark.asyncio(loop_scope="session")
async def test_a_version_stored_by_an_earlier_release_is_the_same_version_after_an_upgrade(
    engine: AsyncEngine, admin: httpx.AsyncClient
) -> None:
    """A release that adds an optional setting puts its default into every normalised document;
    the same file posted again after the upgrade is still the version stored before it."""
    version = f"it-{uuid.uuid4().hex[:8]}"
    created = await admin.post("/v1/admin/agreements", content=document(version))
    assert created.status_code == 201, created.text
    async with engine.begin() as connection:
        # What the release before sla.attainment_target stored: the document without it, and its hash.
        stored = await connection.scalar(text("SELECT document FROM agreements WHERE version = :v"), {"v": version})
        del stored["sla"]["attainment_target"]
        await connection.execute(
            text("UPDATE agreements SET document = CAST(:d AS jsonb), sha256 = :s WHERE version = :v"),
            {"d": orjson.dumps(stored).decode(), "s": digest(stored), "v": version},
        )

    again = await admin.post("/v1/admin/agreements", content=document(version))
    changed = await admin.post("/v1/admin/agreements", content=document(version, name="Changed"))

    assert (again.status_code, again.json()["created"], again.json()["sha256"]) == (200, False, digest(stored))
    assert changed.status_code == 409


@pytest.mark.asyncio(loop_scope="session")
async def test_an_invalid_agreement_is_refused_with_every_problem_located(admin: httpx.AsyncClient) -> None:
    broken = yaml.safe_load(document("it-broken"))
    broken["scoring"]["mql"] = {"enter": 40, "exit": 50}
    broken["playbooks"][0]["persona"] = "cfo"

    response = await admin.post("/v1/admin/agreements", content=yaml.safe_dump(broken))
    not_yaml = await admin.post("/v1/admin/agreements", content=b"version: [unclosed")
    too_big = await admin.post("/v1/admin/agreements", content=b"#" * 1_048_577)

    assert response.status_code == 422
    problems = {problem["path"]: problem["message"] for problem in response.json()["problems"]}
    assert "exit (50.0) must not be above enter (40.0)" in problems["scoring.mql"]
    assert not_yaml.status_code == 422
    assert not_yaml.json()["problems"][0]["message"].startswith("not valid YAML")
    assert too_big.status_code == 413


@pytest.mark.asyncio(loop_scope="session")
async def test_warnings_come_back_with_the_stored_version(admin: httpx.AsyncClient) -> None:
    loaded = yaml.safe_load(document(f"it-warn-{uuid.uuid4().hex[:6]}"))
    loaded["scoring"]["fit"][5]["match"] = {"in": ["USA"]}

    response = await admin.post("/v1/admin/agreements", content=yaml.safe_dump(loaded))

    assert response.status_code == 201
    assert response.json()["warnings"] == [
        "scoring.fit.5.match: rule 'country-served' can never fire: country is a two-letter ISO code (US, DE, ...), "
        "never 'USA'"
    ]


# --------------------------------------------------------------------------- GET /v1/leads/{id}


async def seed_lead(engine: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    """A revenue leader who requested a demo an hour ago, was routed to ava and touched in time;
    returns (lead id, an alias id a second source's webhook was answered with)."""
    run = uuid.uuid4().hex[:8]
    email = f"{run}@northwind-test.io"
    lead_id = uuid.uuid5(uuid.NAMESPACE_URL, run)
    alias = uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/alias")
    vp = LeadAttributes(
        email=email, title="VP Sales", seniority="VP", department="Sales", company_size=300, country="US"
    )
    demo = LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=NOW - timedelta(hours=1),
        source="hubspot",
        webhook_id=f"{run}-1",
        external_id=f"hs-{run}",
        engagement=EngagementType.demo_request,
        attributes=vp,
    )
    view = LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=alias,
        occurred_at=NOW - timedelta(minutes=30),
        source="hubspot",
        webhook_id=f"{run}-2",
        external_id=f"hs-{run}",
        engagement=EngagementType.pricing_view,
        attributes=LeadAttributes(),
    )
    async with engine.begin() as connection:
        for event in (demo, view):
            await connection.execute(
                text(
                    "INSERT INTO intake_events (event_id, lead_id, source, webhook_id, kind, payload, received_at) "
                    "VALUES (:e, :l, 'hubspot', :w, 'lead', CAST(:p AS jsonb), :t)"
                ),
                {
                    "e": event.event_id,
                    "l": event.lead_id,
                    "w": event.webhook_id,
                    "p": event.model_dump_json(),
                    "t": NOW,
                },
            )
            await apply(connection, event, AGREEMENT, NOW)
        assignment = uuid.uuid4()
        await connection.execute(
            text(
                "INSERT INTO assignments (assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, reason, tier, "
                "agreement_version, routed_at, decision) VALUES (:a, :k, :l, 'ava', 'north-america', 'north-america', "
                "'rule north-america -> pool north-america', 'hot', :v, :t, '{}')"
            ),
            {
                "a": assignment,
                "k": uuid.uuid4(),
                "l": lead_id,
                "v": AGREEMENT.version,
                "t": NOW - timedelta(minutes=59),
            },
        )
        await connection.execute(
            text(
                "INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, armed_at, due_at, "
                "status, decided_at) VALUES (:d, :a, :l, 'ava', 'first_touch', 'hot', :armed, :due, 'met', :met)"
            ),
            {
                "d": uuid.uuid4(),
                "a": assignment,
                "l": lead_id,
                "armed": NOW - timedelta(minutes=59),
                "due": NOW - timedelta(minutes=54),
                "met": NOW - timedelta(minutes=57),
            },
        )
    return lead_id, alias


@pytest.mark.asyncio(loop_scope="session")
async def test_a_lead_is_explained(engine: AsyncEngine, admin: httpx.AsyncClient) -> None:
    lead_id, alias = await seed_lead(engine)

    response = await admin.get(f"/v1/leads/{lead_id}")
    by_alias = await admin.get(f"/v1/leads/{alias}")

    assert response.status_code == 200, response.text
    lead = response.json()
    assert by_alias.json() == lead
    assert (lead["lead_id"], lead["aliases"]) == (str(lead_id), [str(alias)])
    assert (lead["stage"], lead["tier"], lead["persona"]) == ("mql", "hot", "revenue-leader")
    assert lead["stage_definition"]["owner"] == "marketing"
    score = lead["score"]
    assert score["agreement_version"] == AGREEMENT.version
    values = {c["rule_id"]: (c["kind"], c["points"], c["value"]) for c in score["contributions"]}
    assert values["persona-revenue-leader"] == ("fit", 10, 10)
    kind, points, value = values["engagement.demo_request"]
    assert (kind, points) == ("engagement", 40) and 39.9 < value < 40  # an hour of a 14-day half-life
    assert score["total"] == pytest.approx(sum(v[2] for v in values.values()), abs=1e-3)
    assert lead["held_until"] is not None and lead["next_reevaluation"] is None  # fit 55 never decays below 45
    assert lead["playbook"]["id"] == "mql-revenue-leader"
    assert (lead["owner"]["rep_id"], lead["owner"]["pool_id"]) == ("ava", "north-america")
    assert [(clock["milestone"], clock["status"]) for clock in lead["sla"]] == [("first_touch", "met")]
    timeline = [(entry["kind"], entry["summary"]) for entry in lead["timeline"]]
    assert timeline[0] == ("LeadReceivedV1", "demo_request from hubspot")
    assert [kind for kind, _ in timeline] == [
        "LeadReceivedV1",
        "LeadScoredV1",
        "LeadStageChangedV1",
        "LeadQualifiedV1",
        "LeadRoutedV1",
        "SlaArmed",
        "SlaDecided",
        "LeadReceivedV1",
        "LeadScoredV1",
        "LeadMergedV1",
    ]
    assert timeline[2][1] == "lead -> mql: score 95 reached MQL entry 60"
    assert timeline[4][1] == "routed to ava (pool north-america, rule north-america)"
    # The second event came under a provisional id of its own: the timeline says it is this lead.
    assert timeline[-1][1].startswith(f"provisional id {alias} is this lead (")
    assert [entry["at"] for entry in lead["timeline"]] == sorted(entry["at"] for entry in lead["timeline"])


@pytest.mark.asyncio(loop_scope="session")
async def test_an_unknown_lead_is_404_and_a_malformed_id_422(admin: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()

    missing = await admin.get(f"/v1/leads/{unknown}")
    malformed = await admin.get("/v1/leads/not-a-uuid")

    assert (missing.status_code, missing.json()["detail"]) == (404, f"no lead {unknown}: scoring has not seen it (yet)")
    assert malformed.status_code == 422


@pytest.mark.asyncio(loop_scope="session")
async def test_a_rejection_with_an_unknown_reason_code_is_refused_with_the_allowed_codes(
    engine: AsyncEngine, admin: httpx.AsyncClient
) -> None:
    lead_id, _ = await seed_lead(engine)
    before = (await admin.get(f"/v1/leads/{lead_id}")).json()
    rejection = ActivityRecordedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=NOW,
        source="salesforce",
        webhook_id="reject-1",
        activity=ActivityType.sal_rejected,
        reason="too-expensive",
    )

    async with engine.begin() as connection:
        outcome = await apply(connection, rejection, AGREEMENT, NOW)

    (refused,) = outcome.facts
    assert isinstance(refused, ActivityRefusedV1) and refused.refusal == "unknown_reason"
    explained = (await admin.get(f"/v1/leads/{lead_id}")).json()
    assert explained["stage"] == before["stage"], "a refused activity moves nothing"
    (shown,) = explained["refusals"]
    assert shown["activity_id"] == str(rejection.event_id) and shown["refusal"] == "unknown_reason"
    assert "sal_rejected carries reason code 'too-expensive'" in shown["reason"]
    assert "allowed: no-budget, bad-timing" in shown["reason"]
    assert any(entry["kind"] == "ActivityRefusedV1" for entry in explained["timeline"])


# --------------------------------------------------------------------------- command line

runner = CliRunner()


@pytest.fixture
def database_env(engine: AsyncEngine) -> Iterator[dict[str, str]]:
    yield {"COXSWAIN_DATABASE_URL": os.environ["COXSWAIN_DATABASE_URL"]}


def test_the_cli_activates_and_lists_versions(database_env: dict[str, str], tmp_path: Path) -> None:
    version = f"it-cli-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "agreement.yaml"
    path.write_text(document(version), encoding="utf-8")
    changed = tmp_path / "changed.yaml"
    changed.write_text(document(version, name="Something else"), encoding="utf-8")

    activated = runner.invoke(cli, ["agreement", "activate", str(path)], env=database_env)
    repeated = runner.invoke(cli, ["agreement", "activate", str(path)], env=database_env)
    conflict = runner.invoke(cli, ["agreement", "activate", str(changed)], env=database_env)
    listed = runner.invoke(cli, ["agreement", "list"], env=database_env)

    assert activated.exit_code == 0, activated.output
    assert f"agreement version {version} stored and activated (sha256 " in activated.output
    assert repeated.exit_code == 0 and f"agreement version {version} activated" in repeated.output
    assert conflict.exit_code == 1
    assert f"version {version!r} is already stored with different content" in conflict.output
    assert any(line.startswith(f"* {version}") for line in listed.output.splitlines()), listed.output


def test_the_cli_says_when_the_database_is_unreachable(tmp_path: Path) -> None:
    unreachable = {"COXSWAIN_DATABASE_URL": "postgresql+asyncpg://nobody:nothing@127.0.0.1:1/none"}

    result = runner.invoke(cli, ["agreement", "activate", str(EXAMPLE)], env=unreachable)

    assert result.exit_code == 1
    assert "cannot activate the agreement: the database is unreachable" in result.output
    assert "Traceback" not in result.output


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ("version: x\nname: Caf\xe9\n".encode("latin-1"), "line 2, column 10", "byte 0xe9 is not UTF-8 text"),
        (b"version: x\n\x00\x01\x02", "line 2, column 1", "a NUL byte: this is a binary file"),
        ("version: x\n".encode("utf-16"), "(document)", "is UTF-16 text"),
    ],
    ids=["latin-1", "binary", "utf-16"],
)
async def test_an_agreement_body_that_is_not_utf8_text_is_a_located_422(
    admin: httpx.AsyncClient, body: bytes, where: str, says: str
) -> None:
    refused = await admin.post("/v1/admin/agreements", content=body, headers={"Content-Type": "application/yaml"})
    assert refused.status_code == 422, refused.text
    problems = refused.json()["problems"]
    assert len(problems) == 1 and problems[0]["path"].startswith(where) and says in problems[0]["message"]


@pytest.mark.asyncio(loop_scope="session")
async def test_each_endpoint_needs_its_scope_and_says_which_is_missing(engine: AsyncEngine) -> None:
    bots = {"roster-bot": ["roster:write"], "revops": ["agreements:write"], "support": ["leads:read"]}
    table = TokenTable.of(
        None, [Token(name, f"{name}-token".encode(), frozenset(scopes)) for name, scopes in bots.items()]
    )
    version = f"it-{uuid.uuid4().hex[:8]}"
    lead = f"/v1/leads/{uuid.uuid4()}"
    async with client_for(engine, table) as api:

        async def call(token: str, method: str, path: str, content: str | None = None) -> httpx.Response:
            return await api.request(method, path, content=content, headers={"Authorization": f"Bearer {token}-token"})

        refused = await call("roster-bot", "POST", "/v1/admin/agreements", document(version))
        assert (refused.status_code, refused.json()["detail"]) == (
            403,
            "token 'roster-bot' lacks scope 'agreements:write'",
        )
        refused = await call("revops", "GET", lead)
        assert (refused.status_code, refused.json()["detail"]) == (403, "token 'revops' lacks scope 'leads:read'")
        refused = await call("support", "POST", f"/v1/admin/agreements/{version}/activate")
        assert (refused.status_code, refused.json()["detail"]) == (
            403,
            "token 'support' lacks scope 'agreements:write'",
        )

        assert (await call("revops", "POST", "/v1/admin/agreements", document(version))).status_code == 201
        assert (await call("revops", "GET", "/v1/admin/agreements")).status_code == 200
        assert (await call("support", "GET", lead)).status_code == 404  # let through: scoring has not seen it
        unknown = await api.get(lead, headers={"Authorization": "Bearer nobody-token"})
        assert (unknown.status_code, unknown.json()["detail"]) == (
            403,
            "the bearer token is not valid for the admin API",
        )
