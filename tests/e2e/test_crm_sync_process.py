"""`coxswain run crm-sync` as its own process against a local HubSpot and a local Salesforce:
SIGKILLed between the CRM's write and its own commit, then restarted, it leaves exactly one task;
started with a rep who has no HubSpot owner id, it refuses to start and names the rep.

It runs on a database of its own (no agreement activated there, so the file's agreement is in
force) and a consumer group moved to the end of the topics first, so it sees only this test's fact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import yaml
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.demo_crm import hubspot as fake_hubspot
from coxswain.demo_crm import salesforce as fake_salesforce
from coxswain.demo_crm.hubspot import TOKEN, FakeHubSpot
from coxswain.demo_crm.salesforce import TOKEN as SALESFORCE_TOKEN
from coxswain.demo_crm.salesforce import FakeSalesforce
from coxswain.runtime.kafka import connection_options
from coxswain.settings import KafkaConfig
from schemas.codec import encode
from schemas.events import Event
from services.crm_sync import service as crm_sync
from tests.support.databases import fresh_database
from tests.support.facts import routed_fact
from tests.support.infra import start_group_at_end
from tests.support.stack import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

OWNERS = {"ava": "301", "ben": "302"}
# A connection (so a consumer group) of this test's own.
CONNECTION = f"e2e-{uuid.uuid4().hex[:8]}"


def agreement_document(owners: dict[str, str | None]) -> dict[str, Any]:
    return {
        "version": f"crm-e2e-{uuid.uuid4().hex[:6]}",
        "name": "crm-sync process test",
        "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
        "roster": [
            {"id": rep, "name": rep.title(), **({"crm": {"hubspot_owner_id": owner}} if owner else {})}
            for rep, owner in owners.items()
        ],
        "routing": {"fallback_pool": "all", "pools": [{"id": "all", "members": [{"rep": rep} for rep in owners]}]},
        "sla": {"policies": {t: {"first_touch": "1h"} for t in ("hot", "warm", "cold")}},
    }


@pytest_asyncio.fixture(loop_scope="session")
async def database(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with fresh_database("crm_e2e") as engine:
        yield engine


@pytest_asyncio.fixture(loop_scope="session")
async def hubspot() -> AsyncIterator[FakeHubSpot]:
    async with fake_hubspot.serving(set(OWNERS.values())) as fake:
        yield fake


def connector(database: AsyncEngine, hubspot: FakeHubSpot, agreement: Path, log_dir: Path) -> ServiceProcess:
    env = {
        **os.environ,
        "COXSWAIN_DATABASE_URL": database.url.render_as_string(hide_password=False),
        "COXSWAIN_AGREEMENT_FILE": str(agreement),
        "COXSWAIN_CRM_BASE_URL": hubspot.url,
        "COXSWAIN_CRM_TOKEN": TOKEN,
        "COXSWAIN_CRM_CONNECTION": CONNECTION,
    }
    return ServiceProcess("crm-sync", env, log_dir)


async def insert_lead(database: AsyncEngine, lead_id: uuid.UUID, attributes: dict[str, str], now: datetime) -> None:
    async with database.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO leads (lead_id, stage, source, attributes, touches, score_total, tier, agreement_version, "
                "updated_at) VALUES (:l, 'mql', 'webform', CAST(:a AS jsonb), '[]', 80, 'hot', 'e2e', :now)"
            ),
            {"l": lead_id, "a": orjson.dumps(attributes).decode(), "now": now},
        )


async def publish(event: Event) -> None:
    record = encode(event)
    producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(record.topic, record.value, key=record.key, headers=list(record.headers))
    finally:
        await producer.stop()


async def test_killed_between_the_crm_write_and_its_commit_the_restarted_connector_leaves_one_task(
    database: AsyncEngine, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    agreement = tmp_path / "agreement.yaml"
    agreement.write_text(yaml.safe_dump(agreement_document(dict(OWNERS))))
    lead_id = uuid.uuid4()
    email = f"e2e-{lead_id.hex[:10]}@acme.example"
    now = datetime.now(UTC)
    await insert_lead(database, lead_id, {"email": email}, now)
    fact = routed_fact("ben", now, lead_id=lead_id, agreement_version="e2e")
    await start_group_at_end(crm_sync.consumer_name(CONNECTION), list(crm_sync.ACCEPTS))
    await publish(fact)

    def tasks() -> list[dict[str, Any]]:
        return [
            t
            for t in hubspot.tasks.values()
            if t["properties"].get("coxswain_assignment_id") == str(fact.assignment_id)
        ]

    async def written() -> int:
        async with database.connect() as connection:
            found = await connection.scalar(
                text("SELECT count(*) FROM crm_writes WHERE assignment_id = :a"), {"a": fact.assignment_id}
            )
        return int(found or 0)

    process = connector(database, hubspot, agreement, tmp_path)
    try:
        process.start({"COXSWAIN_CONSUMER_FAILPOINT": "before_db_commit"})
        await asyncio.to_thread(process.wait_for_log, "failpoint reached", 90)
        # The group starts at the end of the topics, so its first batch holds this test's fact
        # alone, unless another process published a routed fact meanwhile (none runs before the
        # end-to-end stack starts).
        assert len(tasks()) == 1, "HubSpot has no task at the failpoint: the first batch held another fact"
        assert await written() == 0  # HubSpot has the task, our transaction is not committed
        process.kill(signal.SIGKILL)

        process.start()
        for _ in range(900):
            if await written():
                break
            await asyncio.sleep(0.1)
    finally:
        process.stop()

    assert await written() == 1
    [task] = tasks()
    assert task["properties"]["hubspot_owner_id"] == "302"
    posts = [s for s in hubspot.writes("POST", "/crm/v3/objects/tasks") if s.path.endswith("/tasks")]
    assert [s.body["properties"]["coxswain_assignment_id"] for s in posts].count(str(fact.assignment_id)) == 1
    contact = hubspot.contact_by_email(email)
    assert contact is not None and contact["properties"]["hubspot_owner_id"] == "302"


async def test_a_rep_without_a_hubspot_owner_id_stops_the_connector_at_start(
    database: AsyncEngine, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    agreement = tmp_path / "agreement.yaml"
    agreement.write_text(yaml.safe_dump(agreement_document({"ava": "301", "ben": None})))
    process = connector(database, hubspot, agreement, tmp_path)
    process.start()
    assert process.process is not None
    try:
        code = await asyncio.to_thread(process.process.wait, 120)
    finally:
        process.stop()

    assert code != 0
    assert "crm-sync refuses to start" in process.log_text()
    assert "rep(s) ben have no hubspot owner id" in process.log_text()


USERS = {"ava": "005000000000301AAA", "ben": "005000000000302AAA"}


@pytest_asyncio.fixture(loop_scope="session")
async def salesforce() -> AsyncIterator[FakeSalesforce]:
    async with fake_salesforce.serving(set(USERS.values())) as fake:
        yield fake


async def test_salesforce_killed_between_the_crm_write_and_its_commit_the_restarted_connector_leaves_one_task(
    database: AsyncEngine, salesforce: FakeSalesforce, tmp_path: Path
) -> None:
    document = agreement_document(dict.fromkeys(USERS))
    for rep in document["roster"]:
        rep["crm"] = {"salesforce_user_id": USERS[rep["id"]]}
    agreement = tmp_path / "agreement.yaml"
    agreement.write_text(yaml.safe_dump(document))
    connection_name = f"e2e-sf-{uuid.uuid4().hex[:8]}"
    lead_id = uuid.uuid4()
    email = f"e2e-sf-{lead_id.hex[:10]}@acme.example"
    now = datetime.now(UTC)
    await insert_lead(database, lead_id, {"email": email, "last_name": "Doe"}, now)
    fact = routed_fact("ben", now, lead_id=lead_id, agreement_version="e2e")
    await start_group_at_end(crm_sync.consumer_name(connection_name), list(crm_sync.ACCEPTS))
    await publish(fact)

    def tasks() -> list[dict[str, Any]]:
        return [
            t for t in salesforce.records["Task"].values() if t["Coxswain_Assignment_Id__c"] == str(fact.assignment_id)
        ]

    async def written() -> int:
        async with database.connect() as connection:
            found = await connection.scalar(
                text("SELECT count(*) FROM crm_writes WHERE assignment_id = :a AND connection = :c"),
                {"a": fact.assignment_id, "c": connection_name},
            )
        return int(found or 0)

    async def activity_published(key: str) -> bool:
        """The activity's key recorded and its fact relayed from the outbox to Kafka."""
        async with database.connect() as connection:
            recorded = await connection.scalar(
                text(
                    "SELECT count(*) FROM crm_activity_keys k WHERE k.connection = :c AND k.key = :k "
                    "AND k.lead_id = :l AND NOT EXISTS (SELECT FROM outbox o WHERE o.event_id = k.event_id)"
                ),
                {"c": connection_name, "k": key, "l": lead_id},
            )
        return bool(recorded)

    env = {
        **os.environ,
        "COXSWAIN_DATABASE_URL": database.url.render_as_string(hide_password=False),
        "COXSWAIN_AGREEMENT_FILE": str(agreement),
        "COXSWAIN_CRM_KIND": "salesforce",
        "COXSWAIN_CRM_BASE_URL": salesforce.url,
        "COXSWAIN_CRM_TOKEN": SALESFORCE_TOKEN,
        "COXSWAIN_CRM_CONNECTION": connection_name,
    }
    process = ServiceProcess("crm-sync", env, tmp_path)
    try:
        process.start({"COXSWAIN_CONSUMER_FAILPOINT": "before_db_commit"})
        await asyncio.to_thread(process.wait_for_log, "failpoint reached", 90)
        assert len(tasks()) == 1, "Salesforce has no task at the failpoint: the first batch held another fact"
        assert await written() == 0  # Salesforce has the task, our transaction is not committed
        process.kill(signal.SIGKILL)

        process.start({"COXSWAIN_CRM_SALESFORCE_POLL_SECONDS": "0.5"})
        for _ in range(900):
            if await written():
                break
            await asyncio.sleep(0.1)
        # Ben calls the lead: the running connector's poller publishes one first touch.
        lead = salesforce.lead_by_email(email)
        assert lead is not None
        call = salesforce.insert(
            "Task", {"WhoId": lead["Id"], "OwnerId": USERS["ben"], "TaskSubtype": "Call", "Status": "Completed"}
        )
        key = f"Task/{call['Id']}/first_touch"
        for _ in range(900):
            if await activity_published(key):
                break
            await asyncio.sleep(0.1)
    finally:
        process.stop()

    assert await written() == 1
    assert await activity_published(key)
    [task] = tasks()
    assert task["OwnerId"] == USERS["ben"]
    creates = [s for s in salesforce.writes("POST", "/sobjects/Task") if s.path.endswith("/Task")]
    assert [s.body["Coxswain_Assignment_Id__c"] for s in creates].count(str(fact.assignment_id)) == 1
    lead = salesforce.lead_by_email(email)
    assert lead is not None and (lead["OwnerId"], lead["LastName"]) == (USERS["ben"], "Doe")
    assert task["WhoId"] == lead["Id"]
