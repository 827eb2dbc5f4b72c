"""CRM write-back without I/O: the writes a routing fact asks for, the owner mapping in the roster,
and the HubSpot client's retries (429 + Retry-After, 5xx, connection errors, 401) against an
in-memory transport and a fake clock."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from coxswain.core.agreement import AgreementError, parse_agreement
from coxswain.core.crm_sync import (
    CloseOpenTask,
    CloseTask,
    CreateTask,
    SetAliasOwner,
    SetOwner,
    UnmappedRep,
    owner_ids,
    plan_merged,
    plan_routed,
    plan_stage_changed,
    unmapped_reps,
)
from coxswain.runtime.consumer import PermanentError, Unavailable
from coxswain.runtime.outages import is_connection_error
from coxswain.settings import CrmSyncConfig
from schemas.events import LeadMergedV1, LeadRoutedV1, LeadStageChangedV1, Playbook, PlaybookContent, Stage
from services.crm_sync.hubspot import (
    CrmBusy,
    CrmDown,
    CrmGaveUp,
    CrmRejected,
    CrmUnauthorized,
    HubSpotClient,
    retry_after_seconds,
)
from tests.support.facts import routed_fact

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml").read_text())
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
OWNERS = {"ava": "101", "ben": "102"}


def agreement_with(owners: dict[str, str]) -> Any:
    document = copy.deepcopy(EXAMPLE)
    for rep in document["roster"]:
        # The example's own ids (those of the local CRMs of `make run`) give way to the test's.
        rep.pop("crm", None)
        if rep["id"] in owners:
            rep["crm"] = {"hubspot_owner_id": owners[rep["id"]]}
    return parse_agreement(document)


PLAYBOOK = Playbook(
    id="hot-vp",
    stage=Stage.mql,
    talk_track="Ask about the migration deadline.",
    content=(PlaybookContent(title="ROI calculator", url="https://example.com/roi"),),
)


def routed(rep_id: str = "ava", replaces: uuid.UUID | None = None, playbook: bool = True) -> LeadRoutedV1:
    return routed_fact(
        rep_id,
        NOW,
        pool_id="na",
        rule_id="north-america",
        due_in=timedelta(minutes=30),
        replaces=replaces,
        playbook=PLAYBOOK if playbook else None,
        agreement_version="v1",
    )


# --------------------------------------------------------------------------- the pure core


def test_a_routed_lead_sets_the_owner_then_creates_one_task_keyed_by_the_assignment() -> None:
    fact = routed()

    writes = plan_routed(fact, OWNERS, "jane@acme.com", "hubspot")

    assert writes[0] == SetOwner("jane@acme.com", "101", lead_id=fact.lead_id)
    [task] = writes[1:]
    assert isinstance(task, CreateTask)
    assert (task.assignment_id, task.owner_id, task.due_at) == (fact.assignment_id, "101", fact.follow_up_due_at)
    assert task.subject == "Follow up: hot lead (hot-vp)"
    assert "rule north-america -> pool na" in task.body
    assert "Ask about the migration deadline." in task.body
    assert "ROI calculator: https://example.com/roi" in task.body


def test_a_reassignment_closes_the_replaced_task_first() -> None:
    replaced = uuid.uuid4()

    fact = routed("ben", replaces=replaced)
    writes = plan_routed(fact, OWNERS, "jane@acme.com", "hubspot")

    assert isinstance(writes[0], CloseTask)
    assert writes[0].assignment_id == replaced
    assert writes[0].reason.startswith("reassigned to ben")
    assert writes[1] == SetOwner("jane@acme.com", "102", lead_id=fact.lead_id)
    assert isinstance(writes[2], CreateTask) and writes[2].owner_id == "102"


def test_the_records_of_a_leads_aliases_get_its_owner_before_the_task_is_added() -> None:
    fact = routed()

    writes = plan_routed(
        fact, OWNERS, "jane@acme.com", "hubspot", alias_emails=["JANE@acme.com", "j.doe@gmail.com", "j.doe@gmail.com"]
    )

    # The lead's own email (however it is cased) is not an alias; each alias once.
    assert writes[:2] == (
        SetOwner("jane@acme.com", "101", lead_id=fact.lead_id),
        SetAliasOwner("j.doe@gmail.com", "101"),
    )
    assert isinstance(writes[2], CreateTask) and len(writes) == 3


def merged(email: str | None) -> LeadMergedV1:
    return LeadMergedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=NOW,
        caused_by=uuid.uuid4(),
        alias_lead_id=uuid.uuid4(),
        rule="source id already known",
        source="webform",
        external_id="c-1",
        email=email,
    )


def test_a_merge_into_a_lead_with_an_owner_gives_the_aliass_record_that_owner() -> None:
    assert plan_merged(merged("j.doe@gmail.com"), "101", "jane@acme.com") == (SetAliasOwner("j.doe@gmail.com", "101"),)


@pytest.mark.parametrize(
    ("email", "owner", "primary"),
    [
        ("j.doe@gmail.com", None, "jane@acme.com"),  # not written yet: the routed fact will cover it
        (None, "101", "jane@acme.com"),  # the alias came without an email (or it was erased)
        ("Jane@Acme.com", "101", "jane@acme.com"),  # the alias's email is the lead's own
    ],
)
def test_a_merge_asks_nothing_when_there_is_no_owner_or_no_other_record(
    email: str | None, owner: str | None, primary: str
) -> None:
    assert plan_merged(merged(email), owner, primary) == ()


def test_a_rep_without_an_owner_id_is_an_error_naming_the_rep() -> None:
    with pytest.raises(UnmappedRep, match="'chloe'"):
        plan_routed(routed("chloe"), OWNERS, "jane@acme.com", "hubspot")


def test_only_recycling_or_disqualifying_a_lead_closes_its_open_task() -> None:
    def changed(to: Stage) -> LeadStageChangedV1:
        return LeadStageChangedV1(
            event_id=uuid.uuid4(),
            lead_id=uuid.uuid4(),
            occurred_at=NOW,
            agreement_version="v1",
            caused_by=uuid.uuid4(),
            from_stage=Stage.mql,
            to_stage=to,
            reason="no budget",
        )

    recycled = changed(Stage.recycled)
    assert plan_stage_changed(recycled) == (CloseOpenTask(recycled.lead_id, "recycled: no budget"),)
    assert plan_stage_changed(changed(Stage.disqualified))
    assert plan_stage_changed(changed(Stage.sal)) == ()


def test_the_roster_carries_owner_ids_and_names_the_reps_without_one() -> None:
    agreement = agreement_with({"ava": "101", "ben": "102"})

    assert owner_ids(agreement, "hubspot") == {"ava": "101", "ben": "102"}
    assert unmapped_reps(agreement, "hubspot") == ["chloe", "dan", "eli"]
    everyone = agreement_with({rep["id"]: str(100 + i) for i, rep in enumerate(EXAMPLE["roster"])})
    assert unmapped_reps(everyone, "hubspot") == []


@pytest.mark.parametrize("crm", [{"hubspot_owner_id": "ava@acme.com"}, {"hubspot_owner": "101"}])
def test_a_malformed_crm_mapping_is_refused_on_load(crm: dict[str, str]) -> None:
    document = copy.deepcopy(EXAMPLE)
    document["roster"][0]["crm"] = crm
    with pytest.raises(AgreementError, match=r"roster\.0\.crm"):
        parse_agreement(document)


# --------------------------------------------------------------------------- the client's retries


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert retry_after_seconds("7", NOW) == 7
    assert retry_after_seconds("Wed, 25 Nov 2026 15:00:12 GMT", NOW) == 12
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None


Reply = Callable[[httpx.Request], httpx.Response]


class Fake:
    """An in-memory HubSpot answering from a script, on a clock only sleeping moves."""

    def __init__(self, *replies: Reply | httpx.Response | Exception) -> None:
        self.replies = list(replies)
        self.now = 0.0
        self.sent: list[tuple[float, str, str]] = []
        self.keepalives = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((self.now, request.method, request.url.path))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply(request) if callable(reply) else reply

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    async def keepalive(self) -> None:
        self.keepalives += 1

    def client(self, **settings: Any) -> HubSpotClient:
        defaults: dict[str, Any] = {"crm_base_url": "http://hubspot.test", "crm_max_attempts": 4}
        config = CrmSyncConfig(**(defaults | settings))
        return HubSpotClient(
            config,
            "pat-test",
            transport=httpx.MockTransport(self.handle),
            clock=lambda: self.now,
            wall_clock=lambda: NOW,
            sleep=self.sleep,
            jitter=lambda: 1.0,
        )


def ok(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(body))


def error(status: int, headers: dict[str, str] | None = None, message: str = "nope") -> httpx.Response:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": "X"}
    return httpx.Response(status, headers=headers or {}, content=orjson.dumps(body))


async def test_a_429_is_waited_out_for_its_retry_after_before_anything_is_sent_again() -> None:
    fake = Fake(error(429, {"Retry-After": "7"}), ok({"id": "5"}))
    client = fake.client()

    assert await client.request("POST", "/crm/v3/objects/tasks", {}, fake.keepalive) == {"id": "5"}
    assert [at for at, _, _ in fake.sent] == [0.0, 7.0]
    assert fake.keepalives >= 7  # a statement at least every second of the wait, and before each request

    # The pause belongs to the client, not to one request: the next request waits for it too.
    fake.replies = [error(429, {"Retry-After": "3"}), ok({}), ok({})]
    await client.request("GET", "/a", {})
    await client.request("GET", "/b", {})
    assert [at for at, _, _ in fake.sent[2:]] == [7.0, 10.0, 10.0]


async def test_5xx_and_connection_errors_back_off_exponentially_then_succeed() -> None:
    fake = Fake(error(503), httpx.ConnectError("refused"), error(502), ok({"id": "9"}))

    assert await fake.client(crm_backoff_seconds=0.5).request("POST", "/x", {}) == {"id": "9"}
    assert [at for at, _, _ in fake.sent] == [0.0, 0.5, 1.5, 3.5]


async def test_a_500_on_every_attempt_is_a_permanent_error_with_the_reason_and_no_connection_error_inside() -> None:
    fake = Fake(httpx.ConnectError("refused"), error(500, message="internal error"))

    with pytest.raises(CrmGaveUp, match="failed 4 times; last: 500 internal error") as raised:
        await fake.client().request("POST", "/crm/v3/objects/tasks", {})

    assert len(fake.sent) == 4
    assert isinstance(raised.value, PermanentError)
    # The consumer would take an OSError in the chain for a database outage and never dead-letter.
    assert not is_connection_error(raised.value)


@pytest.mark.parametrize("outage", [httpx.ConnectError("refused"), error(503, message="down"), error(504)])
async def test_hubspot_out_of_reach_on_every_attempt_gives_the_batch_back_instead_of_dead_lettering(
    outage: Any,
) -> None:
    fake = Fake(error(500), outage)

    with pytest.raises(CrmDown, match=r"failed 4 times; last: .*the batch comes back") as raised:
        await fake.client().request("POST", "/crm/v3/objects/tasks", {})

    assert len(fake.sent) == 4
    assert isinstance(raised.value, Unavailable) and not isinstance(raised.value, PermanentError)
    assert not is_connection_error(raised.value)


async def test_a_refused_token_is_not_the_records_fault_and_is_not_retried() -> None:
    fake = Fake(error(401, message="Authentication credentials not found"))

    with pytest.raises(CrmUnauthorized, match="401") as raised:
        await fake.client().request("POST", "/x", {})

    assert isinstance(raised.value, Unavailable) and not isinstance(raised.value, PermanentError)
    assert len(fake.sent) == 1


async def test_a_bad_request_is_rejected_at_once() -> None:
    fake = Fake(error(400, message="Property values were not valid"))

    with pytest.raises(CrmRejected, match="400: Property values were not valid"):
        await fake.client().request("POST", "/x", {})
    assert len(fake.sent) == 1


async def test_a_retry_after_longer_than_a_batch_may_wait_gives_the_batch_back_without_sending() -> None:
    fake = Fake(error(429, {"Retry-After": "3600"}), ok({}))
    client = fake.client(crm_max_wait_seconds=60)

    with pytest.raises(CrmBusy):
        await client.request("POST", "/x", {})
    with pytest.raises(CrmBusy):
        await client.request("POST", "/x", {})  # a redelivery still finds the pause running
    assert len(fake.sent) == 1

    fake.now = 3600.0
    assert await client.request("POST", "/x", {}) == {}
    assert [at for at, _, _ in fake.sent] == [0.0, 3600.0]


async def test_a_contact_created_meanwhile_is_reused_from_the_409() -> None:
    fake = Fake(error(409, message="Contact already exists. Existing ID: 4711"))

    assert await fake.client().create_contact("jane@acme.com", "101") == ("4711", False)


# --------------------------------------------------------------------------- refusing to start


def test_crm_sync_refuses_to_start_naming_every_rep_without_an_owner_id() -> None:
    from coxswain_app.wiring import require_crm_owners

    with pytest.raises(SystemExit, match=r"rep\(s\) chloe, dan, eli have no hubspot owner id"):
        require_crm_owners(agreement_with(OWNERS), "hubspot")
    require_crm_owners(agreement_with({rep["id"]: "1" for rep in EXAMPLE["roster"]}), "hubspot")


def test_the_token_comes_from_the_environment_or_a_file_and_none_refuses_to_start(tmp_path: Path) -> None:
    from coxswain_app.wiring import crm_token

    secret = tmp_path / "token"
    secret.write_text("pat-from-file\n")
    assert crm_token(CrmSyncConfig(crm_token="pat-env", crm_token_file=secret)) == "pat-env"
    assert crm_token(CrmSyncConfig(crm_token_file=secret)) == "pat-from-file"
    with pytest.raises(SystemExit, match="no CRM token"):
        crm_token(CrmSyncConfig())


def test_crm_sync_takes_small_batches_whatever_the_consumer_setting() -> None:
    from coxswain.settings import ConsumerConfig
    from coxswain_app.wiring import crm_consumer_config

    crm = CrmSyncConfig(crm_max_batch=20)
    assert crm_consumer_config(ConsumerConfig(consumer_max_batch=500), crm).consumer_max_batch == 20
    assert crm_consumer_config(ConsumerConfig(consumer_max_batch=5), crm).consumer_max_batch == 5


def test_crm_syncs_watchdog_waits_as_long_as_a_batch_may_wait_out_rate_limits() -> None:
    from coxswain.settings import ConsumerConfig
    from coxswain_app.wiring import crm_consumer_config

    crm = CrmSyncConfig(crm_max_batch=20, crm_max_wait_seconds=60.0, crm_request_timeout_seconds=10.0)
    assert crm_consumer_config(ConsumerConfig(consumer_stall_seconds=30.0), crm).consumer_stall_seconds == 1400.0
    assert crm_consumer_config(ConsumerConfig(consumer_stall_seconds=2000.0), crm).consumer_stall_seconds == 2000.0
    big = CrmSyncConfig(crm_max_batch=500, crm_max_wait_seconds=60.0)
    assert crm_consumer_config(ConsumerConfig(), big).consumer_stall_seconds == 3600.0


# --------------------------------------------------------------------------- Salesforce


def test_a_salesforce_lead_is_created_with_the_leads_name_and_company_or_salesforces_placeholder() -> None:
    fact = routed()
    users = {"ava": "005000000000001AAA"}

    [owner, _] = plan_routed(fact, users, "jane@acme.com", "salesforce", {"last_name": "Doe", "company": "Acme"})
    assert owner == SetOwner("jane@acme.com", "005000000000001AAA", fact.lead_id, "Doe", "Acme")
    [bare, _] = plan_routed(fact, users, "jane@acme.com", "salesforce", {"company": "  "})
    assert isinstance(bare, SetOwner) and (bare.last_name, bare.company) == ("[not provided]", "[not provided]")
    with pytest.raises(UnmappedRep, match=r"rep 'ava' has no salesforce user id \(roster: crm.salesforce_user_id\)"):
        plan_routed(fact, {}, "jane@acme.com", "salesforce")


def test_the_roster_carries_salesforce_user_ids_and_refuses_malformed_ones() -> None:
    from coxswain_app.wiring import require_crm_owners

    document = copy.deepcopy(EXAMPLE)
    for rep in document["roster"]:
        rep.pop("crm", None)
    document["roster"][0]["crm"] = {"salesforce_user_id": "005000000000001AAA", "hubspot_owner_id": "7"}
    agreement = parse_agreement(document)
    assert owner_ids(agreement, "salesforce") == {document["roster"][0]["id"]: "005000000000001AAA"}
    with pytest.raises(SystemExit, match=r"have no salesforce user id; set roster\[\]\.crm\.salesforce_user_id"):
        require_crm_owners(agreement, "salesforce")
    document["roster"][0]["crm"] = {"salesforce_user_id": "00Q000000000001AAA"}  # a Lead id, not a user
    with pytest.raises(AgreementError, match=r"roster\.0\.crm"):
        parse_agreement(document)


def test_a_soql_string_literal_cannot_be_ended_by_the_value() -> None:
    from services.crm_sync.salesforce import soql_literal

    assert soql_literal("jane@acme.com") == "'jane@acme.com'"
    assert soql_literal("o'brien@acme.com") == "'o\\'brien@acme.com'"
    assert soql_literal("a\\' OR Id != null") == "'a\\\\\\' OR Id != null'"


def salesforce_client(fake: Fake, **settings: Any) -> Any:
    from services.crm_sync.salesforce import SalesforceClient

    defaults: dict[str, Any] = {"crm_kind": "salesforce", "crm_base_url": "http://sf.test", "crm_max_attempts": 4}
    return SalesforceClient(
        CrmSyncConfig(**(defaults | settings)),
        "00D!token",
        transport=httpx.MockTransport(fake.handle),
        clock=lambda: fake.now,
        wall_clock=lambda: NOW,
        sleep=fake.sleep,
        jitter=lambda: 1.0,
    )


def sf_error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = [{"message": f"{code} happened", "errorCode": code, "fields": []}]
    return httpx.Response(status, headers=headers or {}, content=orjson.dumps(body))


async def test_salesforce_request_limit_exceeded_is_rate_limiting_and_other_403s_are_a_refused_token() -> None:
    usage = {"Sforce-Limit-Info": "api-usage=4990/5000"}
    fake = Fake(sf_error(403, "REQUEST_LIMIT_EXCEEDED"), httpx.Response(200, headers=usage, content=b'{"done": true}'))
    client = salesforce_client(fake, crm_backoff_seconds=2)

    assert await client.query("SELECT Id FROM Lead") == []
    assert [at for at, _, _ in fake.sent] == [0.0, 2.0]
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("coxswain_crm_api_calls_used", {"crm": "salesforce"}) == 4990
    assert REGISTRY.get_sample_value("coxswain_crm_api_calls_limit", {"crm": "salesforce"}) == 5000

    fake = Fake(sf_error(403, "REQUEST_LIMIT_EXCEEDED"))
    with pytest.raises(CrmDown, match="REQUEST_LIMIT_EXCEEDED"):
        await salesforce_client(fake).query("SELECT Id FROM Lead")
    assert len(fake.sent) == 4

    fake = Fake(sf_error(403, "INSUFFICIENT_ACCESS"))
    with pytest.raises(CrmUnauthorized):
        await salesforce_client(fake).query("SELECT Id FROM Lead")
    fake = Fake(sf_error(400, "MALFORMED_QUERY"))
    with pytest.raises(CrmRejected, match="400: MALFORMED_QUERY"):
        await salesforce_client(fake).query("SELECT Id FROM Lead")


async def test_a_salesforce_query_follows_next_records_url_until_done() -> None:
    pages = [
        {"totalSize": 3, "done": False, "records": [{"Id": "1"}, {"Id": "2"}], "nextRecordsUrl": "/q/01g-2"},
        {"totalSize": 3, "done": True, "records": [{"Id": "3"}]},
    ]
    fake = Fake(ok(pages[0]), ok(pages[1]))

    records = await salesforce_client(fake).query("SELECT Id FROM Task")

    assert [r["Id"] for r in records] == ["1", "2", "3"]
    assert [path for _, _, path in fake.sent] == ["/services/data/v60.0/query", "/q/01g-2"]


def test_a_salesforce_connector_needs_an_instance_url_and_both_client_credentials_or_a_token() -> None:
    from coxswain_app.wiring import crm_connection, crm_token

    with pytest.raises(SystemExit, match="instance URL"):
        crm_token(CrmSyncConfig(crm_kind="salesforce", crm_token="00D!x"))
    org: dict[str, Any] = {"crm_kind": "salesforce", "crm_base_url": "https://acme.my.salesforce.com"}
    assert crm_token(CrmSyncConfig(**org, crm_token="00D!x")) == "00D!x"
    assert crm_token(CrmSyncConfig(**org, crm_salesforce_client_id="k", crm_salesforce_client_secret="s")) is None
    with pytest.raises(SystemExit, match="both COXSWAIN_CRM_SALESFORCE_CLIENT_ID and"):
        crm_token(CrmSyncConfig(**org, crm_salesforce_client_id="k"))
    # The connection is named after the CRM unless named.
    assert crm_connection(CrmSyncConfig(**org)) == "salesforce"
    assert crm_connection(CrmSyncConfig()) == "hubspot"
    assert crm_connection(CrmSyncConfig(**org, crm_connection="emea")) == "emea"
