"""A Salesforce REST API client for the connector: httpx against the documented endpoints.

Not ``simple-salesforce``: it is synchronous (``requests`` underneath), so each call would block
the asyncio loop the consumer, its offset commits and its outbox relay share, or need a thread
per call; its retries are not ours either (no ``Retry-After`` across requests, no outage /
permanent split). The connector uses the query resource and three sObject resources; a small
async client over :mod:`services.crm_sync.retrying` is less code (docs/integrators.md#salesforce).

The writes:

- the Lead: upserted on an external-id field holding the Coxswain lead id when one is configured
  (``GET`` then ``PATCH /sobjects/Lead/<field>/<lead id>``), else found by ``Email`` with SOQL and
  created when none matches; ``OwnerId`` set to the rep's user id;
- the Task: looked up by the assignment id in a custom field (SOQL), created when absent with
  ``WhoId`` (the Lead), ``OwnerId``, ``ActivityDate``, ``Subject``, ``Description``, ``Status``;
  closed by setting its ``Status`` to the configured closed value.

Salesforce's dialect: errors are a list ``[{"message", "errorCode", "fields"}]``; ``403
REQUEST_LIMIT_EXCEEDED`` (the daily or the concurrent-request limit) is rate limiting like a
``429``; every response's ``Sforce-Limit-Info: api-usage=N/M`` sets the API usage gauges; a
``401 INVALID_SESSION_ID`` renews the token once when the client-credentials flow is configured.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC
from typing import Any, Unpack

import httpx

from coxswain.core.crm_sync import CreateTask, CrmKind, SetOwner
from coxswain.runtime import metrics
from coxswain.settings import CrmSyncConfig
from schemas.events import utc_iso
from services.crm_sync.retrying import (
    CrmRejected,
    CrmUnauthorized,
    Dialect,
    Failure,
    HttpOptions,
    Keepalive,
    RetryingHttp,
    no_keepalive,
)

CRM: CrmKind = "salesforce"
LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
SUBJECT_MAX = 255
DESCRIPTION_MAX = 32_000
_SOQL_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def soql_literal(value: str) -> str:
    """``value`` as a quoted SOQL string literal (backslash escapes, so a quote cannot end it)."""
    return "'" + "".join(_SOQL_ESCAPES.get(ch, ch) for ch in value) + "'"


def failure(response: httpx.Response) -> Failure:
    """Salesforce's error body: a list of ``{"message", "errorCode", "fields"}`` (the first one counts)."""
    try:
        body = response.json()
    except ValueError:
        return Failure(response.text[:500])
    if isinstance(body, list) and body and isinstance(body[0], dict):
        first = body[0]
        code = str(first.get("errorCode") or "")
        return Failure(f"{code}: {first.get('message') or ''}"[:500], code)
    if isinstance(body, dict):  # the OAuth endpoint: {"error", "error_description"}
        return Failure(
            str(body.get("error_description") or body.get("error") or body)[:500], str(body.get("error", ""))
        )
    return Failure(str(body)[:500])


def limit_exceeded(response: httpx.Response, failure: Failure) -> bool:
    """``403 REQUEST_LIMIT_EXCEEDED``: the org's daily API limit or its concurrent-request limit."""
    return response.status_code == 403 and failure.code == "REQUEST_LIMIT_EXCEEDED"


def observe_usage(response: httpx.Response) -> None:
    found = LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
    if found is not None:
        metrics.CRM_API_USED.labels(CRM).set(int(found.group(1)))
        metrics.CRM_API_LIMIT.labels(CRM).set(int(found.group(2)))


class SalesforceClient:
    crm: CrmKind = CRM

    def __init__(self, config: CrmSyncConfig, token: str | None, **options: Unpack[HttpOptions]) -> None:
        self._config = config
        self._base = f"/services/data/{config.crm_salesforce_api_version}"
        flow = config.crm_salesforce_client_id is not None and config.crm_salesforce_client_secret is not None
        self._oauth = (
            httpx.AsyncClient(timeout=config.crm_request_timeout_seconds, transport=options.get("transport"))
            if flow
            else None
        )
        dialect = Dialect(
            CRM,
            "Salesforce",
            failure,
            throttled=limit_exceeded,
            observe=observe_usage,
            renew=self.renew if flow else None,
        )
        self._http = RetryingHttp(dialect, config, config.crm_base_url, token or "", **options)
        self._task_field = config.crm_salesforce_task_assignment_field
        self._lead_field = config.crm_salesforce_lead_external_id_field

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._oauth is not None:
            await self._oauth.aclose()

    async def renew(self) -> str:
        """A token by the OAuth 2.0 client-credentials flow; the answer names the instance URL too."""
        config = self._config
        assert self._oauth is not None and config.crm_salesforce_client_secret is not None
        url = (config.crm_salesforce_login_url or config.crm_base_url).rstrip("/") + "/services/oauth2/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": config.crm_salesforce_client_id or "",
            "client_secret": config.crm_salesforce_client_secret.get_secret_value(),
        }
        try:
            answer = await self._oauth.post(url, data=form)
        except httpx.TransportError as exc:
            raise CrmUnauthorized(f"Salesforce token request failed: {type(exc).__name__}: {exc}"[:300]) from None
        if answer.status_code != 200:
            raise CrmUnauthorized(f"Salesforce refused the client credentials: {failure(answer).message}")
        body = answer.json()
        token, instance = str(body["access_token"]), str(body.get("instance_url") or config.crm_base_url)
        self._http.rebase(instance, token)
        return token

    # ----------------------------------------------------------------- resources

    async def query(self, soql: str, keepalive: Keepalive = no_keepalive) -> list[dict[str, Any]]:
        """Every record of a SOQL query, following ``nextRecordsUrl`` until ``done``."""
        page = await self._http.request("GET", f"{self._base}/query", keepalive=keepalive, params={"q": soql})
        records: list[dict[str, Any]] = list(page.get("records") or [])
        while not page.get("done", True) and page.get("nextRecordsUrl"):
            page = await self._http.request("GET", str(page["nextRecordsUrl"]), keepalive=keepalive)
            records += page.get("records") or []
        return records

    async def create(self, sobject: str, fields: dict[str, Any], keepalive: Keepalive = no_keepalive) -> str:
        created = await self._http.request("POST", f"{self._base}/sobjects/{sobject}", fields, keepalive)
        return str(created["id"])

    async def update(
        self, sobject: str, record_id: str, fields: dict[str, Any], keepalive: Keepalive = no_keepalive
    ) -> None:
        await self._http.request("PATCH", f"{self._base}/sobjects/{sobject}/{record_id}", fields, keepalive)

    # ----------------------------------------------------------------- the writes the connector asks for

    async def set_owner(self, write: SetOwner, keepalive: Keepalive = no_keepalive) -> str:
        """The Lead's id, after finding (or creating) it and setting its ``OwnerId``."""
        if self._lead_field is not None and write.lead_id is not None:
            found = await self._lead_by_external_id(write.lead_id, keepalive)
            if found is None:
                return await self._upsert_lead(write, keepalive)
        else:
            found = await self._lead_by_email(write.email, keepalive)
            if found is None:
                lead_id = await self.create("Lead", self._lead_fields(write), keepalive)
                metrics.CRM_WRITES.labels(CRM, "lead_created").inc()
                return lead_id
        if found.get("OwnerId") != write.owner_id:
            await self.update("Lead", str(found["Id"]), {"OwnerId": write.owner_id}, keepalive)
            metrics.CRM_WRITES.labels(CRM, "owner_set").inc()
        return str(found["Id"])

    async def set_owner_if_found(self, email: str, owner_id: str, keepalive: Keepalive = no_keepalive) -> bool:
        """Set the ``OwnerId`` of the open Lead with this email, if there is one; creates nothing."""
        found = await self._lead_by_email(email, keepalive)
        if found is None:
            return False
        if found.get("OwnerId") != owner_id:
            await self.update("Lead", str(found["Id"]), {"OwnerId": owner_id}, keepalive)
            metrics.CRM_WRITES.labels(CRM, "alias_owner_set").inc()
        return True

    async def _lead_by_email(self, email: str, keepalive: Keepalive) -> dict[str, Any] | None:
        soql = (
            f"SELECT Id, OwnerId FROM Lead WHERE Email = {soql_literal(email)} "
            "AND IsConverted = false ORDER BY CreatedDate, Id LIMIT 1"
        )
        records = await self.query(soql, keepalive)
        return records[0] if records else None

    async def find_task(self, assignment_id: str, keepalive: Keepalive = no_keepalive) -> str | None:
        """The id of the Task carrying this assignment id, if one was created."""
        soql = (
            f"SELECT Id FROM Task WHERE {self._task_field} = {soql_literal(assignment_id)} ORDER BY CreatedDate LIMIT 1"
        )
        records = await self.query(soql, keepalive)
        return str(records[0]["Id"]) if records else None

    async def create_task(self, task: CreateTask, lead_id: str, keepalive: Keepalive = no_keepalive) -> str:
        fields = {
            "WhoId": lead_id,
            "OwnerId": task.owner_id,
            "Subject": task.subject[:SUBJECT_MAX],
            "Description": task.body[:DESCRIPTION_MAX],
            "ActivityDate": task.due_at.date().isoformat(),
            "IsReminderSet": True,
            "ReminderDateTime": utc_iso(task.due_at.astimezone(UTC)),
            "Status": self._config.crm_salesforce_task_open_status,
            "Priority": "High",
            self._task_field: str(task.assignment_id),
        }
        return await self.create("Task", fields, keepalive)

    async def complete_task(self, task_id: str, keepalive: Keepalive = no_keepalive) -> None:
        await self.update("Task", task_id, {"Status": self._config.crm_salesforce_task_closed_status}, keepalive)

    # ----------------------------------------------------------------- the Lead by external id

    def _lead_fields(self, write: SetOwner) -> dict[str, Any]:
        return {"Email": write.email, "LastName": write.last_name, "Company": write.company, "OwnerId": write.owner_id}

    async def _lead_by_external_id(self, lead_id: uuid.UUID, keepalive: Keepalive) -> dict[str, Any] | None:
        path = f"{self._base}/sobjects/Lead/{self._lead_field}/{lead_id}"
        try:
            found = await self._http.request("GET", path, keepalive=keepalive, params={"fields": "Id,OwnerId"})
        except CrmRejected as exc:
            if exc.status == 404:
                return None
            raise
        return found if isinstance(found, dict) else None

    async def _upsert_lead(self, write: SetOwner, keepalive: Keepalive) -> str:
        """Create the Lead keyed by the Coxswain lead id; one created meanwhile is updated instead."""
        path = f"{self._base}/sobjects/Lead/{self._lead_field}/{write.lead_id}"
        answer = await self._http.request("PATCH", path, self._lead_fields(write), keepalive)
        metrics.CRM_WRITES.labels(CRM, "lead_created" if answer.get("created", True) else "owner_set").inc()
        if answer.get("id"):
            return str(answer["id"])
        assert write.lead_id is not None
        found = await self._lead_by_external_id(write.lead_id, keepalive)  # an API version answering 204
        if found is None:
            raise CrmRejected("Salesforce", 404, f"Lead {self._lead_field}={write.lead_id} not found after upsert")
        return str(found["Id"])
