"""A local HubSpot: the CRM v3 endpoints crm-sync and intake call, with HubSpot's documented
request and response shapes, served over real HTTP (uvicorn) so the real client code runs
against it, in the tests (on a free port) and in ``make run`` (``coxswain demo crm hubspot``).

Served: ``POST /crm/v3/objects/{contacts,tasks}/search`` (``filterGroups`` of ``EQ`` filters,
``limit`` and ``after`` paging, ``{"total", "results", "paging"}``), ``POST`` and ``PATCH`` of
contacts and tasks (``{"id", "properties", "createdAt", "updatedAt", "archived"}``), Bearer
tokens (``401`` ``INVALID_AUTHENTICATION``), a contact's email being unique (``409`` with
``Existing ID``), unknown owners and undefined properties (``400``), unknown ids (``404``).
``GET /crm/v3/objects/{kind}/{id}`` reads a contact, task, call, email, meeting or deal by id
(``properties`` and ``associations=contacts`` query parameters; the answer's ``associations``
holds ``{"contacts": {"results": [{"id", "type"}]}}`` and is left out when there are none), for
intake's reading of HubSpot webhook events; tests log engagements and deals with ``log``, as a rep
would in HubSpot, and ``POST /crm/v3/objects/calls`` logs a call through the API (``hs_timestamp``
required, associated to a contact with association type 194) as a dialer integration does.

With a webhook subscription (:class:`Subscription`: the target URL, the app's client secret), a
logged call is delivered as HubSpot delivers it: a JSON array of one ``object.creation`` event
(``objectTypeId`` ``0-48``) POSTed to the target URL with the v3 signature headers
(``X-HubSpot-Signature-v3``: base64 HMAC-SHA256 with the client secret of method, URI, body and
``X-HubSpot-Request-Timestamp``), retried a few times on a failure or a non-2xx answer.

``GET /demo/records`` (no token) lists the contacts with their owner and the owners written to
them, their tasks with status and due time, and the calls logged. Faults are injected per request: a status with headers (``429`` with ``Retry-After``, ``5xx``),
for the next n requests matching a path.

Every request is logged with its arrival time (``time.monotonic``), so a test can show that
nothing arrived before a ``Retry-After`` expired.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from coxswain.demo_crm.recording import Recorder
from coxswain.demo_crm.serving import served

log = logging.getLogger(__name__)

TOKEN = "pat-na1-test-token"
DAILY_LIMIT = 250_000
TASK_PROPERTIES = frozenset(
    {
        "hs_task_subject",
        "hs_task_body",
        "hs_timestamp",
        "hubspot_owner_id",
        "hs_task_status",
        "hs_task_type",
        "hs_task_priority",
    }
)
CONTACT_PROPERTIES = frozenset({"email", "firstname", "lastname", "hubspot_owner_id", "lifecyclestage"})
CALL_PROPERTIES = frozenset(
    {"hs_timestamp", "hubspot_owner_id", "hs_call_direction", "hs_call_status", "hs_call_title", "hs_call_body"}
)
CALL_TO_CONTACT = 194
TASK_TO_CONTACT = 204
CALL_OBJECT_TYPE = "0-48"
WEBHOOK_ATTEMPTS = 5


@dataclass(frozen=True)
class Subscription:
    """A public app's webhook subscription to call creation: where HubSpot posts, signed with what."""

    url: str
    client_secret: str
    app_id: int = 4411
    portal_id: int = 62515
    subscription_id: int = 3301


def sign(client_secret: str, method: str, uri: str, body: bytes, timestamp_ms: int) -> dict[str, str]:
    """HubSpot's v3 request signature headers."""
    message = f"{method}{uri}".encode() + body + str(timestamp_ms).encode()
    digest = hmac.new(client_secret.encode(), message, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": str(timestamp_ms),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, message: str, category: str) -> JSONResponse:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}
    return JSONResponse(body, status_code=status)


class FakeHubSpot(Recorder):
    def __init__(self, owners: set[str], token: str = TOKEN, subscription: Subscription | None = None) -> None:
        super().__init__()
        self.owners = owners
        self.token = token
        self.subscription = subscription
        self.deliveries: set[asyncio.Task[None]] = set()
        self.delivered: list[dict[str, Any]] = []
        self._event_ids = itertools.count(int(time.time()) * 1000)
        self.contacts: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        # Engagements and deals, created by tests (``log``) as a rep would in HubSpot.
        self.logged: dict[str, dict[str, dict[str, Any]]] = {"calls": {}, "emails": {}, "meetings": {}, "deals": {}}
        # The connector's idempotency property exists until a test removes it.
        self.task_properties = set(TASK_PROPERTIES | {"coxswain_assignment_id"})
        self._ids = itertools.count(1001)
        # HubSpot's search index lags its writes by seconds: while on, created objects stay out of
        # search results until ``index()`` (reads and updates by id see them at once).
        self.index_lag = False
        self.unindexed: set[str] = set()
        self.app = self._build()

    # ----------------------------------------------------------------- what tests read

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        return next((c for c in self.contacts.values() if c["properties"].get("email") == email), None)

    def tasks_of(self, contact_id: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks.values() if contact_id in t["contacts"]]

    def index(self) -> None:
        self.unindexed.clear()

    def log(self, kind: str, properties: dict[str, str], contacts: list[str]) -> str:
        """A call, email, meeting or deal as HubSpot stores it once a rep logs it; returns its id."""
        item: dict[str, Any] = {
            "id": str(next(self._ids)),
            "properties": dict(properties),
            "createdAt": _now(),
            "updatedAt": _now(),
            "archived": False,
            "contacts": list(contacts),
        }
        self.logged[kind][item["id"]] = item
        return str(item["id"])

    def add_contact(self, email: str | None, owner_id: str | None = None, contact_id: str | None = None) -> str:
        """A contact someone else made (a form, marketing automation); returns its id."""
        properties = ({"email": email} if email else {}) | ({"hubspot_owner_id": owner_id} if owner_id else {})
        item: dict[str, Any] = {
            "id": contact_id or str(next(self._ids)),
            "properties": properties,
            "createdAt": _now(),
            "updatedAt": _now(),
            "archived": False,
            "contacts": [],
        }
        self.contacts[item["id"]] = item
        return str(item["id"])

    # ----------------------------------------------------------------- the app

    def _build(self) -> FastAPI:
        app = FastAPI()
        objects = {"contacts": self.contacts, "tasks": self.tasks}

        @app.middleware("http")
        async def gate(request: Request, call_next: Any) -> Any:
            body = await request.body()
            arrived = time.monotonic()
            response: Any
            if request.url.path.startswith("/demo/"):
                return await call_next(request)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                response = _error(
                    401,
                    "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
                    "INVALID_AUTHENTICATION",
                )
            elif (fault := self._fault(request.url.path)) is not None:
                category = "RATE_LIMITS" if fault.status == 429 else "INTERNAL_ERROR"
                response = _error(fault.status, f"injected {fault.status}", category)
                response.headers.update(fault.headers)
            else:
                response = await call_next(request)
            self._record(arrived, request.method, request.url.path, request.url.query, body, response.status_code)
            if response.status_code != 401:
                # A private app's answers: the account's daily limit and what is left of it.
                response.headers["X-HubSpot-RateLimit-Daily"] = str(DAILY_LIMIT)
                response.headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(DAILY_LIMIT - len(self.seen), 0))
            return response

        @app.post("/crm/v3/objects/{kind}/search")
        async def search(kind: str, request: Request) -> Any:
            if kind not in objects:
                return _error(404, f"unknown object type {kind}", "OBJECT_NOT_FOUND")
            query = await request.json()
            known = CONTACT_PROPERTIES if kind == "contacts" else self.task_properties
            groups = query.get("filterGroups") or []
            for group in groups:
                for f in group["filters"]:
                    if f["propertyName"] not in known:
                        return _error(
                            400, f"There was a problem with the request: {f['propertyName']}", "VALIDATION_ERROR"
                        )
                    if f.get("operator") != "EQ":
                        return _error(400, "only EQ is served by the fake", "VALIDATION_ERROR")

            def matches(item: dict[str, Any]) -> bool:
                if not groups:
                    return True
                return any(
                    all(str(item["properties"].get(f["propertyName"])) == str(f["value"]) for f in group["filters"])
                    for group in groups
                )

            found = [item for item in objects[kind].values() if item["id"] not in self.unindexed and matches(item)]
            limit, after = int(query.get("limit") or 10), int(query.get("after") or 0)
            page = found[after : after + limit]
            body: dict[str, Any] = {"total": len(found), "results": [_public(item) for item in page]}
            if after + limit < len(found):
                body["paging"] = {"next": {"after": str(after + limit), "link": f"?after={after + limit}"}}
            return body

        @app.post("/crm/v3/objects/calls", status_code=201)
        async def log_call(request: Request) -> Any:
            payload = await request.json()
            properties = {k: str(v) for k, v in (payload.get("properties") or {}).items()}
            unknown = sorted(set(properties) - CALL_PROPERTIES)
            if unknown:
                return _error(400, f"Property values were not valid: {unknown[0]} does not exist", "VALIDATION_ERROR")
            if "hs_timestamp" not in properties:
                return _error(400, "Property values were not valid: hs_timestamp is required", "VALIDATION_ERROR")
            owner = properties.get("hubspot_owner_id")
            if owner is not None and owner not in self.owners:
                return _error(
                    400, f"Property values were not valid: {owner} is not a valid owner id", "VALIDATION_ERROR"
                )
            contacts = _associated(payload, self.contacts, CALL_TO_CONTACT)
            if isinstance(contacts, JSONResponse):
                return contacts
            call_id = self.log("calls", properties, contacts)
            if self.subscription is not None:
                delivery = asyncio.create_task(self._deliver(self.subscription, int(call_id)))
                self.deliveries.add(delivery)
                delivery.add_done_callback(self.deliveries.discard)
            return _public(self.logged["calls"][call_id])

        @app.get("/demo/records")
        async def records() -> Any:
            return self.listing()

        @app.post("/crm/v3/objects/{kind}", status_code=201)
        async def create(kind: str, request: Request) -> Any:
            if kind not in objects:
                return _error(404, f"unknown object type {kind}", "OBJECT_NOT_FOUND")
            payload = await request.json()
            properties = {k: str(v) for k, v in (payload.get("properties") or {}).items()}
            if (problem := self._invalid(kind, properties)) is not None:
                return problem
            if kind == "contacts" and (existing := self.contact_by_email(properties.get("email", ""))) is not None:
                return _error(409, f"Contact already exists. Existing ID: {existing['id']}", "CONFLICT")
            if kind == "tasks" and "hs_timestamp" not in properties:
                return _error(400, "Property values were not valid: hs_timestamp is required", "VALIDATION_ERROR")
            contacts = _associated(payload, self.contacts, TASK_TO_CONTACT)
            if isinstance(contacts, JSONResponse):
                return contacts
            item: dict[str, Any] = {
                "id": str(next(self._ids)),
                "properties": properties,
                "createdAt": _now(),
                "updatedAt": _now(),
                "archived": False,
                "contacts": contacts,
            }
            objects[kind][item["id"]] = item
            if kind == "contacts" and "hubspot_owner_id" in properties:
                item["owners_written"] = [properties["hubspot_owner_id"]]
            if self.index_lag:
                self.unindexed.add(item["id"])
            return _public(item)

        @app.get("/crm/v3/objects/{kind}/{object_id}")
        async def read(kind: str, object_id: str, request: Request) -> Any:
            item = (objects.get(kind) or self.logged.get(kind) or {}).get(object_id)
            if item is None:
                return _error(404, "resource not found", "OBJECT_NOT_FOUND")
            wanted = [name for name in request.query_params.get("properties", "").split(",") if name]
            # HubSpot answers a few default properties whatever was asked, and only the asked ones that exist.
            properties = {"hs_object_id": item["id"], "hs_createdate": item["createdAt"]}
            properties |= {name: item["properties"][name] for name in wanted if name in item["properties"]}
            body = _public(item) | {"properties": properties}
            if "contacts" in request.query_params.get("associations", "").split(",") and item["contacts"]:
                singular = kind[:-1] if kind != "contacts" else "contact"
                results = [{"id": contact, "type": f"{singular}_to_contact"} for contact in item["contacts"]]
                body["associations"] = {"contacts": {"results": results}}
            return body

        @app.patch("/crm/v3/objects/{kind}/{object_id}")
        async def update(kind: str, object_id: str, request: Request) -> Any:
            item = objects.get(kind, {}).get(object_id)
            if item is None:
                return _error(404, "resource not found", "OBJECT_NOT_FOUND")
            properties = {k: str(v) for k, v in ((await request.json()).get("properties") or {}).items()}
            if (problem := self._invalid(kind, properties)) is not None:
                return problem
            item["properties"].update(properties)
            item["updatedAt"] = _now()
            if kind == "contacts" and "hubspot_owner_id" in properties:
                item.setdefault("owners_written", []).append(properties["hubspot_owner_id"])
            return _public(item)

        return app

    def _invalid(self, kind: str, properties: dict[str, str]) -> JSONResponse | None:
        known = CONTACT_PROPERTIES if kind == "contacts" else self.task_properties
        unknown = sorted(set(properties) - known)
        if unknown:
            return _error(400, f"Property values were not valid: {unknown[0]} does not exist", "VALIDATION_ERROR")
        owner = properties.get("hubspot_owner_id")
        if owner is not None and owner not in self.owners:
            return _error(400, f"Property values were not valid: {owner} is not a valid owner id", "VALIDATION_ERROR")
        return None

    def listing(self) -> dict[str, Any]:
        """What a user looks at: each contact with its owner, the owners written to it and its tasks."""
        contacts = []
        for contact in self.contacts.values():
            properties = contact["properties"]
            tasks = [
                {
                    "id": task["id"],
                    "subject": task["properties"].get("hs_task_subject"),
                    "owner": task["properties"].get("hubspot_owner_id"),
                    "status": task["properties"].get("hs_task_status"),
                    "due": task["properties"].get("hs_timestamp"),
                }
                for task in self.tasks_of(contact["id"])
            ]
            calls = [
                {"id": call["id"], "owner": call["properties"].get("hubspot_owner_id"), "at": call["createdAt"]}
                for call in self.logged["calls"].values()
                if contact["id"] in call["contacts"]
            ]
            contacts.append(
                {
                    "id": contact["id"],
                    "email": properties.get("email"),
                    "created": contact["createdAt"],
                    "owner": properties.get("hubspot_owner_id"),
                    "owners_written": contact.get("owners_written", []),
                    "tasks": tasks,
                    "calls": calls,
                }
            )
        contacts.reverse()  # newest first
        return {"crm": "hubspot", "contacts": contacts, "webhooks_delivered": len(self.delivered)}

    async def _deliver(self, subscription: Subscription, call_id: int) -> None:
        now_ms = int(time.time() * 1000)
        event = {
            "eventId": next(self._event_ids),
            "subscriptionId": subscription.subscription_id,
            "portalId": subscription.portal_id,
            "appId": subscription.app_id,
            "occurredAt": now_ms,
            "subscriptionType": "object.creation",
            "objectTypeId": CALL_OBJECT_TYPE,
            "attemptNumber": 0,
            "objectId": call_id,
            "changeSource": "INTEGRATION",
        }
        async with httpx.AsyncClient(timeout=10) as client:
            for attempt in range(WEBHOOK_ATTEMPTS):
                event["attemptNumber"] = attempt
                body = orjson.dumps([event])
                headers = sign(subscription.client_secret, "POST", subscription.url, body, int(time.time() * 1000))
                try:
                    response = await client.post(subscription.url, content=body, headers=headers)
                    if response.status_code < 300:
                        self.delivered.append(event)
                        return
                    log.warning("webhook refused: status=%s body=%s", response.status_code, response.text[:200])
                except httpx.HTTPError as exc:
                    log.warning("webhook not delivered: attempt=%s error=%s", attempt, exc)
                await asyncio.sleep(2**attempt)


def _associated(payload: dict[str, Any], contacts: dict[str, Any], type_id: int) -> list[str] | JSONResponse:
    found: list[str] = []
    for association in payload.get("associations") or []:
        target = str(association["to"]["id"])
        types = association.get("types") or []
        if target not in contacts or not any(t.get("associationTypeId") == type_id for t in types):
            return _error(400, f"invalid association to {target}", "VALIDATION_ERROR")
        found.append(target)
    return found


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("contacts", "owners_written")}


@contextlib.asynccontextmanager
async def serving(
    owners: set[str],
    token: str = TOKEN,
    subscription: Subscription | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
) -> AsyncIterator[FakeHubSpot]:
    """A local HubSpot on ``port`` (0: a free one) for the duration of the block."""
    fake = FakeHubSpot(owners, token, subscription)
    async with served(fake.app, port, host) as fake.port:
        try:
            yield fake
        finally:
            for delivery in list(fake.deliveries):
                delivery.cancel()
