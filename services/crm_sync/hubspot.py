"""A HubSpot CRM v3 client for the connector: httpx against the documented REST endpoints.

Not ``hubspot-api-client``: HubSpot's official Python SDK is synchronous (urllib3 underneath),
so each call would block the asyncio loop the consumer, its offset commits and its outbox relay
share, or need a thread per call. The connector uses six endpoints; a small async client with
retries we control is simpler than wrapping the SDK (docs/integrators.md#hubspot).

Retries, per request: a ``429`` waits out ``Retry-After`` (seconds or an HTTP date; without it,
the backoff), and no request of this client is sent before it expires, whichever record sends
it; a ``5xx`` or a connection error backs off exponentially with jitter. After
``COXSWAIN_CRM_MAX_ATTEMPTS`` tries, what happens depends on the last failure. HubSpot out of
reach (a connection error, ``429``, ``502``, ``503``, ``504``) is not the record's fault: the
request fails with :class:`CrmDown`, and the batch is rolled back and redelivered with backoff
until HubSpot is back, so an outage of any length delays writes and loses none. Any other
``5xx`` is :class:`CrmGaveUp`, a permanent error: that record goes to the dead-letter topic with
the reason, instead of holding up its partition. ``401`` / ``403`` (a wrong token or a missing
scope) and a ``Retry-After`` longer than ``COXSWAIN_CRM_MAX_WAIT_SECONDS`` are not the record's
fault either: they raise :class:`~coxswain.runtime.consumer.Unavailable` at once. Any other
``4xx`` is :class:`CrmRejected` (permanent).

Every wait and every request is preceded by ``keepalive`` (the consumer passes a ``SELECT 1`` on
its transaction's connection), so a long wait never leaves the transaction idle past
PostgreSQL's ``idle_in_transaction_session_timeout``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from coxswain.core.crm_sync import CreateTask, CrmKind
from coxswain.runtime import metrics
from coxswain.runtime.consumer import PermanentError, Unavailable
from coxswain.settings import CrmSyncConfig
from schemas.events import utc_iso

log = logging.getLogger(__name__)

CRM: CrmKind = "hubspot"
# The custom task property that carries the assignment id: the task's idempotency key.
ASSIGNMENT_PROPERTY = "coxswain_assignment_id"
# HubSpot-defined association type: task -> contact.
TASK_TO_CONTACT = 204
EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")

Keepalive = Callable[[], Awaitable[Any]]


async def _no_keepalive() -> None:
    return None


class CrmRejected(PermanentError):
    """HubSpot refused the request itself (a 4xx other than 401, 403, 429): retrying cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HubSpot answered {status}: {message}")
        self.status = status
        self.message = message


class CrmGaveUp(PermanentError):
    """Every attempt failed, the last with a 5xx that is not an outage (a 500 for this request)."""


class CrmDown(Unavailable):
    """Every attempt failed, the last because HubSpot was out of reach: the batch comes back later."""


# Failures that say HubSpot (or the way to it) is down, not that the request is bad.
OUTAGE_STATUSES = frozenset({429, 502, 503, 504})


class CrmUnauthorized(Unavailable):
    """401 / 403: the token is wrong, expired or lacks a scope; no record can be written."""


class CrmBusy(Unavailable):
    """HubSpot asked for a pause longer than a batch may wait (Retry-After)."""


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("category") or body)[:500]
    return str(body)[:500]


class HubSpotClient:
    def __init__(
        self,
        config: CrmSyncConfig,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._config = config
        self._http = httpx.AsyncClient(
            base_url=config.crm_base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=config.crm_request_timeout_seconds,
            transport=transport,
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._jitter = jitter
        # Nothing is sent before this (monotonic) moment: the last Retry-After or backoff.
        self._not_before = -math.inf

    async def aclose(self) -> None:
        await self._http.aclose()

    # ----------------------------------------------------------------- the endpoints the connector uses

    async def find_contact(self, email: str, keepalive: Keepalive = _no_keepalive) -> tuple[str, str | None] | None:
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

    async def create_contact(self, email: str, owner_id: str, keepalive: Keepalive = _no_keepalive) -> tuple[str, bool]:
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

    async def set_contact_owner(self, contact_id: str, owner_id: str, keepalive: Keepalive = _no_keepalive) -> None:
        body = {"properties": {"hubspot_owner_id": owner_id}}
        await self.request("PATCH", f"/crm/v3/objects/contacts/{contact_id}", body, keepalive)

    async def find_task(self, assignment_id: str, keepalive: Keepalive = _no_keepalive) -> str | None:
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

    async def create_task(self, task: CreateTask, contact_id: str, keepalive: Keepalive = _no_keepalive) -> str:
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

    async def complete_task(self, task_id: str, keepalive: Keepalive = _no_keepalive) -> None:
        body = {"properties": {"hs_task_status": "COMPLETED"}}
        await self.request("PATCH", f"/crm/v3/objects/tasks/{task_id}", body, keepalive)

    # ----------------------------------------------------------------- one request, with retries

    async def request(
        self, method: str, path: str, body: dict[str, Any], keepalive: Keepalive = _no_keepalive
    ) -> dict[str, Any]:
        attempts = self._config.crm_max_attempts
        last, outage = "", False
        for attempt in range(1, attempts + 1):
            await self._wait(keepalive)
            await keepalive()
            outcome = await self._send(method, path, body)
            if isinstance(outcome, str):
                reason, last, outage = "connection", outcome, True
                self._back_off(attempt)
            elif outcome.status_code < 300:
                if not outcome.content:
                    return {}
                answer = outcome.json()
                return answer if isinstance(answer, dict) else {}
            else:
                status, message = outcome.status_code, _message(outcome)
                metrics.CRM_ERRORS.labels(CRM, str(status)).inc()
                if status in (401, 403):
                    log.warning("hubspot refused the token: status=%s message=%s", status, message)
                    raise CrmUnauthorized(f"HubSpot answered {status} to {method} {path}: {message}")
                outage = status in OUTAGE_STATUSES
                if status == 429:
                    reason, last = "429", f"429 {message}"
                    delay = retry_after_seconds(outcome.headers.get("Retry-After"), self._wall_clock())
                    if delay is None:
                        self._back_off(attempt)
                    else:
                        self._not_before = max(self._not_before, self._clock() + delay)
                elif status >= 500:
                    reason, last = "5xx", f"{status} {message}"
                    self._back_off(attempt)
                else:
                    raise CrmRejected(status, message)
            if attempt < attempts:
                metrics.CRM_RETRIES.labels(CRM, reason).inc()
                log.info("hubspot request retried: %s %s reason=%s attempt=%s", method, path, reason, attempt)
        if outage:
            raise CrmDown(f"HubSpot {method} {path} failed {attempts} times; last: {last}; the batch comes back")
        raise CrmGaveUp(f"HubSpot {method} {path} failed {attempts} times; last: {last}")

    async def _send(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response | str:
        """The response, or what kept it from coming (returned, not raised: the consumer must not
        mistake a CRM connection error in the exception chain for a database outage)."""
        try:
            return await self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            metrics.CRM_ERRORS.labels(CRM, "connection").inc()
            return f"{type(exc).__name__}: {exc}"[:300]

    def _back_off(self, attempt: int) -> None:
        base = self._config.crm_backoff_seconds * 2 ** (attempt - 1)
        delay = min(base, self._config.crm_max_backoff_seconds) * (0.5 + self._jitter() / 2)
        self._not_before = max(self._not_before, self._clock() + delay)

    async def _wait(self, keepalive: Keepalive) -> None:
        """Until ``_not_before``, keeping the transaction alive; too long a wait gives the batch back."""
        remaining = self._not_before - self._clock()
        if remaining <= 0:
            return
        if remaining > self._config.crm_max_wait_seconds:
            raise CrmBusy(f"HubSpot asked for a pause of {remaining:.0f}s; the batch waits outside the transaction")
        while (remaining := self._not_before - self._clock()) > 0:
            await self._sleep(min(remaining, 1.0))
            await keepalive()
