"""A HubSpot CRM v3 client for the connector: httpx against the documented REST endpoints.

Not ``hubspot-api-client``: HubSpot's official Python SDK is synchronous (urllib3 underneath),
so each call would block the asyncio loop the consumer, its offset commits and its outbox relay
share, or need a thread per call. The connector uses six endpoints; a small async client with
retries we control is simpler than wrapping the SDK (docs/integrators.md#hubspot).

Retries, backoff, ``Retry-After`` and the split between an outage (the batch comes back) and a
permanent failure (the record is dead-lettered) are the connector's, shared with Salesforce
(:mod:`services.crm_sync.retrying`); this module says how HubSpot's errors read and which
endpoints carry each write.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC
from typing import Any, Unpack

import httpx

from coxswain.core.crm_sync import CreateTask, CrmKind, SetOwner
from coxswain.runtime import metrics
from coxswain.settings import CrmSyncConfig
from schemas.events import utc_iso
from services.crm_sync.retrying import (
    CrmBusy,
    CrmDown,
    CrmGaveUp,
    CrmRejected,
    CrmUnauthorized,
    Dialect,
    Failure,
    HttpOptions,
    Keepalive,
    RetryingHttp,
    no_keepalive,
    retry_after_seconds,
)

__all__ = [
    "CRM",
    "CrmBusy",
    "CrmDown",
    "CrmGaveUp",
    "CrmRejected",
    "CrmUnauthorized",
    "HubSpotClient",
    "Keepalive",
    "retry_after_seconds",
]

log = logging.getLogger(__name__)

CRM: CrmKind = "hubspot"
# The custom task property that carries the assignment id: the task's idempotency key.
ASSIGNMENT_PROPERTY = "coxswain_assignment_id"
# HubSpot-defined association type: task -> contact.
TASK_TO_CONTACT = 204
EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")


def observe_usage(response: httpx.Response) -> None:
    """A private app's answers carry the account's daily limit and what is left of it
    (``X-HubSpot-RateLimit-Daily`` / ``-Daily-Remaining``; OAuth apps have no daily limit)."""
    limit, remaining = (
        response.headers.get(name, "").strip()
        for name in ("X-HubSpot-RateLimit-Daily", "X-HubSpot-RateLimit-Daily-Remaining")
    )
    if limit.isdigit() and remaining.isdigit():
        metrics.CRM_API_LIMIT.labels(CRM).set(int(limit))
        metrics.CRM_API_USED.labels(CRM).set(max(int(limit) - int(remaining), 0))


def _failure(response: httpx.Response) -> Failure:
    """HubSpot's error body: ``{"status": "error", "message", "correlationId", "category"}``."""
    try:
        body = response.json()
    except ValueError:
        return Failure(response.text[:500])
    if isinstance(body, dict):
        return Failure(str(body.get("message") or body.get("category") or body)[:500], str(body.get("category") or ""))
    return Failure(str(body)[:500])


class HubSpotClient:
    crm: CrmKind = CRM

    def __init__(self, config: CrmSyncConfig, token: str, **options: Unpack[HttpOptions]) -> None:
        self._http = RetryingHttp(
            Dialect(CRM, "HubSpot", _failure, observe=observe_usage), config, config.crm_base_url, token, **options
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, body: dict[str, Any], keepalive: Keepalive = no_keepalive
    ) -> dict[str, Any]:
        answer = await self._http.request(method, path, body, keepalive)
        return answer if isinstance(answer, dict) else {}

    # ----------------------------------------------------------------- the writes the connector asks for

    async def set_owner(self, write: SetOwner, keepalive: Keepalive = no_keepalive) -> str:
        """The contact's id, after finding or creating it by email and setting its owner."""
        found = await self.find_contact(write.email, keepalive)
        if found is None:
            contact_id, created = await self.create_contact(write.email, write.owner_id, keepalive)
            if created:
                metrics.CRM_WRITES.labels(CRM, "contact_created").inc()
                return contact_id
            owner = None  # created by someone else meanwhile: its owner is unknown, set it
        else:
            contact_id, owner = found
        if owner != write.owner_id:
            await self.set_contact_owner(contact_id, write.owner_id, keepalive)
            metrics.CRM_WRITES.labels(CRM, "owner_set").inc()
        return contact_id

    async def set_owner_if_found(self, email: str, owner_id: str, keepalive: Keepalive = no_keepalive) -> bool:
        """Set the owner of the contact with this email, if there is one; creates nothing."""
        found = await self.find_contact(email, keepalive)
        if found is None:
            return False
        contact_id, owner = found
        if owner != owner_id:
            await self.set_contact_owner(contact_id, owner_id, keepalive)
            metrics.CRM_WRITES.labels(CRM, "alias_owner_set").inc()
        return True

    # ----------------------------------------------------------------- the endpoints the connector uses

    async def find_contact(self, email: str, keepalive: Keepalive = no_keepalive) -> tuple[str, str | None] | None:
        """(contact id, its owner id) of the contact with this email, if any."""
        body = {
            "filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}],
            "properties": ["email", "hubspot_owner_id"],
            "limit": 1,
        }
        found = await self.request("POST", "/crm/v3/objects/contacts/search", body, keepalive)
        results = found.get("results") or []
        if not results:
            return None
        first = results[0]
        return str(first["id"]), (first.get("properties") or {}).get("hubspot_owner_id") or None

    async def create_contact(self, email: str, owner_id: str, keepalive: Keepalive = no_keepalive) -> tuple[str, bool]:
        """(contact id, created): a contact another writer created meanwhile (409) is reused, not duplicated."""
        body = {"properties": {"email": email, "hubspot_owner_id": owner_id}}
        try:
            created = await self.request("POST", "/crm/v3/objects/contacts", body, keepalive)
        except CrmRejected as exc:
            existing = EXISTING_ID.search(exc.message) if exc.status == 409 else None
            if existing is None:
                raise
            return existing.group(1), False
        return str(created["id"]), True

    async def set_contact_owner(self, contact_id: str, owner_id: str, keepalive: Keepalive = no_keepalive) -> None:
        body = {"properties": {"hubspot_owner_id": owner_id}}
        await self.request("PATCH", f"/crm/v3/objects/contacts/{contact_id}", body, keepalive)

    async def find_task(self, assignment_id: str, keepalive: Keepalive = no_keepalive) -> str | None:
        """The id of the task carrying this assignment id, if one was created."""
        body = {
            "filterGroups": [
                {"filters": [{"propertyName": ASSIGNMENT_PROPERTY, "operator": "EQ", "value": assignment_id}]}
            ],
            "properties": [ASSIGNMENT_PROPERTY, "hs_task_status", "hubspot_owner_id"],
            "limit": 1,
        }
        found = await self.request("POST", "/crm/v3/objects/tasks/search", body, keepalive)
        results = found.get("results") or []
        return str(results[0]["id"]) if results else None

    async def create_task(self, task: CreateTask, contact_id: str, keepalive: Keepalive = no_keepalive) -> str:
        body = {
            "properties": {
                "hs_task_subject": task.subject,
                "hs_task_body": task.body,
                "hs_timestamp": utc_iso(task.due_at.astimezone(UTC)),
                "hubspot_owner_id": task.owner_id,
                "hs_task_status": "NOT_STARTED",
                "hs_task_type": "TODO",
                ASSIGNMENT_PROPERTY: str(task.assignment_id),
            },
            "associations": [
                {
                    "to": {"id": contact_id},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}],
                }
            ],
        }
        created = await self.request("POST", "/crm/v3/objects/tasks", body, keepalive)
        return str(created["id"])

    async def complete_task(self, task_id: str, keepalive: Keepalive = no_keepalive) -> None:
        body = {"properties": {"hs_task_status": "COMPLETED"}}
        await self.request("PATCH", f"/crm/v3/objects/tasks/{task_id}", body, keepalive)
