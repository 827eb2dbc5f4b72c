"""A local Salesforce: the REST API resources crm-sync calls, with Salesforce's documented
request and response shapes, served over real HTTP (uvicorn) so the real client code runs against
it, in the tests (on a free port) and in ``make run`` (``coxswain demo crm salesforce``).

Served, under ``/services/data/vXX.X``:

- ``GET query?q=<SOQL>``: ``SELECT f, … FROM <object> [WHERE …] [ORDER BY f [ASC|DESC], …]
  [LIMIT n]`` with ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` on string literals (backslash
  escapes), booleans, numbers, ``null`` and datetime literals, ``AND`` / ``OR`` and parentheses;
  the answer is ``{"totalSize", "done", "records", "nextRecordsUrl"}``, paged by
  :attr:`FakeSalesforce.batch_size` (``GET query/<locator>`` for the next page); a field the
  object lacks is ``400 INVALID_FIELD``, a query it cannot parse ``400 MALFORMED_QUERY``;
- ``POST sobjects/<object>``: ``201 {"id", "success", "errors"}``; required fields (Lead:
  LastName, Company), unknown fields, unknown owners are ``400`` errors;
- ``PATCH sobjects/<object>/<id>``: ``204``; an unknown id is ``404 NOT_FOUND``;
- ``GET`` / ``PATCH sobjects/<object>/<external id field>/<value>``: a record by external id
  (``404 NOT_FOUND``), and upsert (``201`` created, ``200`` updated, ``{"id", "success",
  "errors", "created"}``);
- ``POST /services/oauth2/token``: the client-credentials flow (``{"access_token",
  "instance_url", "token_type", "issued_at", "signature"}``; ``400 invalid_client``).

Errors are lists ``[{"message", "errorCode", "fields"}]``; a request without the current Bearer
token is ``401 INVALID_SESSION_ID``. Every answer carries ``Sforce-Limit-Info: api-usage=N/M``.
Faults are injected per request (a status with headers and an errorCode, for the next n requests
matching a path), or for a stretch of time (:meth:`FakeSalesforce.down_for`). Every request is
logged with its arrival time (``time.monotonic``).

``GET /demo/records`` (no token) lists the Leads with their owner, the owners written to them by
the API and their Tasks (subject, owner, status, subtype, due date).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from coxswain.demo_crm.recording import Fault, Recorder
from coxswain.demo_crm.serving import served

TOKEN = "00Dxx0000001gPL!AQ4AQFakeAccessToken"
CLIENT_ID = "3MVG9fake.consumer.key"
CLIENT_SECRET = "fake-consumer-secret"
VERSION = "v60.0"
PREFIXES = {"Lead": "00Q", "Task": "00T", "Event": "00U", "Opportunity": "006", "Contact": "003"}
COMMON = {"Id", "OwnerId", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted"}
FIELDS: dict[str, set[str]] = {
    "Lead": COMMON | {"Email", "FirstName", "LastName", "Company", "Status", "IsConverted", "ConvertedOpportunityId"},
    "Task": COMMON
    | {
        "WhoId",
        "WhatId",
        "Subject",
        "Description",
        "ActivityDate",
        "Status",
        "Priority",
        "IsClosed",
        "IsReminderSet",
        "ReminderDateTime",
        "TaskSubtype",
        "Type",
        "CompletedDateTime",
    },
    "Event": COMMON | {"WhoId", "WhatId", "Subject", "StartDateTime", "EndDateTime", "EventSubtype", "Type"},
    "Opportunity": COMMON | {"Name", "StageName", "Amount", "CloseDate", "IsClosed", "IsWon"},
}
REQUIRED = {"Lead": ("LastName", "Company"), "Opportunity": ("Name", "StageName", "CloseDate")}
CLOSED_TASK_STATUSES = {"Completed"}
SYSTEM = {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted", "IsClosed", "IsConverted"}


def stamp(when: datetime | None = None) -> str:
    """A datetime as Salesforce writes it: ``2026-12-04T10:00:00.000+0000`` (second precision)."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _parse_stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("+0000", "+00:00").replace("Z", "+00:00"))


def errors(status: int, code: str, message: str, fields: list[str] | None = None) -> JSONResponse:
    return JSONResponse([{"message": message, "errorCode": code, "fields": fields or []}], status_code=status)


class FakeSalesforce(Recorder):
    def __init__(self, users: set[str], token: str = TOKEN) -> None:
        super().__init__()
        self.users = users
        # OwnerId values written through the API, per record id.
        self.owner_writes: dict[str, list[str]] = {}
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in FIELDS}
        # Custom fields the org has (the connector's idempotency field, external ids).
        self.custom: dict[str, set[str]] = {"Lead": {"Coxswain_Lead_Id__c"}, "Task": {"Coxswain_Assignment_Id__c"}}
        self.external_ids: dict[str, set[str]] = {"Lead": {"Coxswain_Lead_Id__c"}}
        self.token = token
        self.batch_size = 2000
        self.api_used, self.api_limit = 0, 100_000
        self._down_until = -1.0
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.app = self._build()

    # ----------------------------------------------------------------- what tests read and do

    def lead_by_email(self, email: str) -> dict[str, Any] | None:
        return next((r for r in self.records["Lead"].values() if r.get("Email") == email), None)

    def tasks_of(self, who_id: str) -> list[dict[str, Any]]:
        return [t for t in self.records["Task"].values() if t.get("WhoId") == who_id]

    def down_for(self, seconds: float) -> None:
        """Every request answers 503 for this long (an outage)."""
        self._down_until = time.monotonic() + seconds

    def insert(self, sobject: str, fields: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
        """A record made in Salesforce by someone else (a rep, an admin)."""
        record = self._new(sobject, fields, at)
        self.records[sobject][record["Id"]] = record
        return record

    def change(self, sobject: str, record_id: str, at: datetime | None = None, **fields: Any) -> dict[str, Any]:
        """A record edited in Salesforce by someone else: its SystemModstamp moves."""
        record = self.records[sobject][record_id]
        record.update(fields)
        self._derive(sobject, record)
        record["LastModifiedDate"] = record["SystemModstamp"] = stamp(at)
        return record

    # ----------------------------------------------------------------- records

    def _new_id(self, sobject: str) -> str:
        return f"{PREFIXES[sobject]}5g00000{next(self._ids):08d}AAA"

    def _new(self, sobject: str, fields: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
        now = stamp(at)
        record: dict[str, Any] = {name: None for name in FIELDS[sobject] | self.custom.get(sobject, set())}
        record.update({"Id": self._new_id(sobject), "CreatedDate": now, "LastModifiedDate": now})
        record.update({"SystemModstamp": now, "IsDeleted": False})
        if sobject == "Lead":
            record.update({"IsConverted": False, "Status": "Open - Not Contacted"})
        if sobject == "Task":
            record.update({"Status": "Not Started", "Priority": "Normal", "TaskSubtype": "Task"})
        record.update(fields)
        self._derive(sobject, record)
        return record

    @staticmethod
    def _derive(sobject: str, record: dict[str, Any]) -> None:
        if sobject == "Task":
            record["IsClosed"] = record.get("Status") in CLOSED_TASK_STATUSES

    def _known(self, sobject: str) -> set[str]:
        return FIELDS[sobject] | self.custom.get(sobject, set())

    def _invalid(self, sobject: str, fields: dict[str, Any], creating: bool) -> JSONResponse | None:
        for name in fields:
            if name not in self._known(sobject):
                return errors(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{name}' on sobject of type {sobject}",
                )
            if name in SYSTEM:
                return errors(400, "INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {name}", [name])
        if creating:
            missing = [name for name in REQUIRED.get(sobject, ()) if not fields.get(name)]
            if missing:
                return errors(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: {missing}", missing)
        owner = fields.get("OwnerId")
        if owner is not None and owner not in self.users:
            return errors(400, "INVALID_CROSS_REFERENCE_KEY", "Owner ID: id value of incorrect type", ["OwnerId"])
        who = fields.get("WhoId")
        if who is not None and who not in self.records["Lead"] and who not in self.records["Contact"]:
            return errors(400, "INVALID_CROSS_REFERENCE_KEY", "Name ID: id value of incorrect type", ["WhoId"])
        return None

    def _public(self, sobject: str, record: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "attributes": {"type": sobject, "url": f"/services/data/{VERSION}/sobjects/{sobject}/{record['Id']}"}
        }
        for name in names or sorted(record):
            shown[name] = record.get(name)
        return shown

    # ----------------------------------------------------------------- faults

    def _fault(self, path: str) -> Fault | None:
        if time.monotonic() < self._down_until:
            return Fault(503, code="SERVER_UNAVAILABLE")
        return super()._fault(path)

    # ----------------------------------------------------------------- the app

    def _build(self) -> FastAPI:
        app = FastAPI()
        base = "/services/data/{version}"

        @app.middleware("http")
        async def gate(request: Request, call_next: Any) -> Any:
            body = await request.body()
            arrived = time.monotonic()
            response: Any
            path = request.url.path
            if path.startswith("/demo/"):
                return await call_next(request)
            if (fault := self._fault(path)) is not None:
                code = fault.code or {429: "REQUEST_LIMIT_EXCEEDED", 503: "SERVER_UNAVAILABLE"}.get(
                    fault.status, "UNKNOWN_EXCEPTION"
                )
                response = errors(fault.status, code, f"injected {fault.status}")
                response.headers.update(fault.headers)
            elif path != "/services/oauth2/token" and request.headers.get("authorization") != f"Bearer {self.token}":
                response = errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
            else:
                response = await call_next(request)
            if path.startswith("/services/data"):
                self.api_used += 1
                response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_limit}"
            self._record(arrived, request.method, path, request.url.query, body, response.status_code)
            return response

        @app.post("/services/oauth2/token")
        async def token(request: Request) -> Any:
            form = {k: v[0] for k, v in urllib.parse.parse_qs((await request.body()).decode()).items()}
            if form.get("grant_type") != "client_credentials":
                return JSONResponse(
                    {"error": "unsupported_grant_type", "error_description": "grant type not supported"}, 400
                )
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return JSONResponse({"error": "invalid_client", "error_description": "invalid client credentials"}, 400)
            self.token = f"00Dxx0000001gPL!{secrets.token_hex(16)}"
            return {
                "access_token": self.token,
                "signature": secrets.token_urlsafe(24),
                "instance_url": self.url,
                "id": f"{self.url}/id/00Dxx0000001gPLEAY/005xx000001X8UzAAK",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            }

        @app.get("/demo/records")
        async def records() -> Any:
            return self.listing()

        @app.get(base + "/query")
        async def query(version: str, q: str = "") -> Any:
            try:
                parsed = parse_soql(q)
            except SoqlError as exc:
                return errors(400, "MALFORMED_QUERY", str(exc))
            sobject = parsed.sobject
            if sobject not in FIELDS:
                return errors(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
            known = self._known(sobject)
            for name in parsed.fields | parsed.where_fields | {n for n, _ in parsed.order}:
                if name not in known:
                    return errors(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.")
            rows = [r for r in self.records[sobject].values() if parsed.where(r)]
            for name, descending in reversed(parsed.order):
                rows.sort(key=_sort_key(name), reverse=descending)
            if parsed.limit is not None:
                rows = rows[: parsed.limit]
            shown = [self._public(sobject, r, parsed.select) for r in rows]
            return self._page(version, shown, 0)

        @app.get(base + "/query/{locator}")
        async def more(version: str, locator: str) -> Any:
            cursor, _, offset = locator.rpartition("-")
            if cursor not in self._cursors:
                return errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            return self._page(version, self._cursors[cursor], int(offset), cursor)

        @app.post(base + "/sobjects/{sobject}")
        async def create(version: str, sobject: str, request: Request) -> Any:
            if sobject not in FIELDS:
                return errors(404, "NOT_FOUND", "The requested resource does not exist")
            fields = await request.json()
            if (problem := self._invalid(sobject, fields, creating=True)) is not None:
                return problem
            record = self._new(sobject, fields)
            self.records[sobject][record["Id"]] = record
            self._owner_written(record["Id"], fields)
            return JSONResponse({"id": record["Id"], "success": True, "errors": []}, status_code=201)

        @app.patch(base + "/sobjects/{sobject}/{record_id}")
        async def update(version: str, sobject: str, record_id: str, request: Request) -> Any:
            record = self.records.get(sobject, {}).get(record_id)
            if record is None:
                return errors(404, "NOT_FOUND", "The requested resource does not exist")
            fields = await request.json()
            if (problem := self._invalid(sobject, fields, creating=False)) is not None:
                return problem
            self.change(sobject, record_id, **fields)
            self._owner_written(record_id, fields)
            return Response(status_code=204)

        @app.get(base + "/sobjects/{sobject}/{field_name}/{value}")
        async def by_external_id(version: str, sobject: str, field_name: str, value: str, fields: str = "") -> Any:
            if field_name not in self.external_ids.get(sobject, set()):
                return errors(
                    404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field_name}"
                )
            record = next((r for r in self.records[sobject].values() if r.get(field_name) == value), None)
            if record is None:
                return errors(404, "NOT_FOUND", "The requested resource does not exist")
            names = [n.strip() for n in fields.split(",") if n.strip()] or None
            return self._public(sobject, record, names)

        @app.patch(base + "/sobjects/{sobject}/{field_name}/{value}")
        async def upsert(version: str, sobject: str, field_name: str, value: str, request: Request) -> Any:
            if field_name not in self.external_ids.get(sobject, set()):
                return errors(
                    404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field_name}"
                )
            fields = await request.json()
            matches = [r for r in self.records[sobject].values() if r.get(field_name) == value]
            if len(matches) > 1:
                return JSONResponse([f"/services/data/{version}/sobjects/{sobject}/{r['Id']}" for r in matches], 300)
            if (problem := self._invalid(sobject, fields, creating=not matches)) is not None:
                return problem
            if matches:
                self.change(sobject, matches[0]["Id"], **fields)
                self._owner_written(matches[0]["Id"], fields)
                return JSONResponse({"id": matches[0]["Id"], "success": True, "errors": [], "created": False}, 200)
            record = self._new(sobject, {**fields, field_name: value})
            self.records[sobject][record["Id"]] = record
            self._owner_written(record["Id"], fields)
            return JSONResponse({"id": record["Id"], "success": True, "errors": [], "created": True}, 201)

        return app

    def _owner_written(self, record_id: str, fields: dict[str, Any]) -> None:
        if "OwnerId" in fields:
            self.owner_writes.setdefault(record_id, []).append(str(fields["OwnerId"]))

    def listing(self) -> dict[str, Any]:
        """What a user looks at: each Lead with its owner, the owners written to it and its Tasks."""
        leads = []
        for lead in self.records["Lead"].values():
            tasks = [
                {
                    "id": task["Id"],
                    "subject": task.get("Subject"),
                    "owner": task.get("OwnerId"),
                    "status": task.get("Status"),
                    "subtype": task.get("TaskSubtype"),
                    "due": task.get("ActivityDate"),
                }
                for task in self.tasks_of(lead["Id"])
            ]
            leads.append(
                {
                    "id": lead["Id"],
                    "email": lead.get("Email"),
                    "created": lead.get("CreatedDate"),
                    "owner": lead.get("OwnerId"),
                    "owners_written": self.owner_writes.get(lead["Id"], []),
                    "status": lead.get("Status"),
                    "tasks": tasks,
                }
            )
        leads.reverse()  # newest first
        return {"crm": "salesforce", "leads": leads}

    def _page(self, version: str, rows: list[dict[str, Any]], offset: int, cursor: str | None = None) -> Any:
        end = offset + self.batch_size
        body: dict[str, Any] = {"totalSize": len(rows), "done": end >= len(rows), "records": rows[offset:end]}
        if end < len(rows):
            cursor = cursor or f"01gxx{uuid.uuid4().hex[:10]}"
            self._cursors[cursor] = rows
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{cursor}-{end}"
        return body


def _sort_key(name: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    return lambda record: (record.get(name) is None, _key(record.get(name)))


def _key(value: Any) -> Any:
    if isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT", value):
        return _parse_stamp(value)
    return value if value is not None else ""


# --------------------------------------------------------------------------- a small SOQL


class SoqlError(ValueError):
    pass


TOKEN_RE = re.compile(
    r"\s*(?:(?P<string>'(?:\\.|[^'\\])*')|(?P<datetime>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))"
    r"|(?P<number>-?\d+(?:\.\d+)?)|(?P<op>!=|<=|>=|=|<|>|,|\(|\))|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)
UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass
class Soql:
    select: list[str]
    sobject: str
    where: Callable[[dict[str, Any]], bool]
    where_fields: set[str]
    order: list[tuple[str, bool]]
    limit: int | None

    @property
    def fields(self) -> set[str]:
        return set(self.select)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = TOKEN_RE.match(text, position)
        if match is None or match.end() == position:
            raise SoqlError(f"unexpected token at {position}: {text[position : position + 20]!r}")
        position = match.end()
        kind = match.lastgroup
        value = match.group(kind or "")
        if kind == "string":
            raw, chars, i = value[1:-1], [], 0
            while i < len(raw):
                if raw[i] == "\\":
                    if i + 1 >= len(raw):
                        raise SoqlError("dangling escape")
                    chars.append(UNESCAPE.get(raw[i + 1], raw[i + 1]))
                    i += 2
                else:
                    chars.append(raw[i])
                    i += 1
            out.append(("value", "".join(chars)))
        elif kind == "datetime":
            out.append(("value", datetime.fromisoformat(value.replace("Z", "+00:00"))))
        elif kind == "number":
            out.append(("value", float(value)))
        elif kind == "word" and value.lower() in ("true", "false"):
            out.append(("value", value.lower() == "true"))
        elif kind == "word" and value.lower() == "null":
            out.append(("value", None))
        else:
            out.append((kind or "", value))
    return out


def parse_soql(text: str) -> Soql:
    tokens = _tokens(text)
    i = 0

    def peek(word: str) -> bool:
        return i < len(tokens) and tokens[i][0] == "word" and str(tokens[i][1]).upper() == word

    def take(kind: str) -> Any:
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != kind:
            raise SoqlError(f"expected {kind} at token {i}")
        i += 1
        return tokens[i - 1][1]

    if not peek("SELECT"):
        raise SoqlError("expected SELECT")
    i += 1
    select = [take("word")]
    while i < len(tokens) and tokens[i] == ("op", ","):
        i += 1
        select.append(take("word"))
    if not peek("FROM"):
        raise SoqlError("expected FROM")
    i += 1
    sobject = take("word")
    where_fields: set[str] = set()

    def atom() -> Callable[[dict[str, Any]], bool]:
        nonlocal i
        if i < len(tokens) and tokens[i] == ("op", "("):
            i += 1
            inner = disjunction()
            if take("op") != ")":
                raise SoqlError("expected )")
            return inner
        name = take("word")
        where_fields.add(name)
        if peek("IN"):
            i += 1
            if take("op") != "(":
                raise SoqlError("expected ( after IN")
            values = [take("value")]
            while take("op") == ",":
                values.append(take("value"))
            return lambda record: record.get(name) in values
        op = take("op")
        value = take("value")
        return lambda record: _compare(record.get(name), op, value)

    def conjunction() -> Callable[[dict[str, Any]], bool]:
        nonlocal i
        parts = [atom()]
        while peek("AND"):
            i += 1
            parts.append(atom())
        return lambda record: all(p(record) for p in parts)

    def disjunction() -> Callable[[dict[str, Any]], bool]:
        nonlocal i
        parts = [conjunction()]
        while peek("OR"):
            i += 1
            parts.append(conjunction())
        return lambda record: any(p(record) for p in parts)

    where: Callable[[dict[str, Any]], bool] = lambda record: True  # noqa: E731
    if peek("WHERE"):
        i += 1
        where = disjunction()
    order: list[tuple[str, bool]] = []
    if peek("ORDER"):
        i += 1
        if not peek("BY"):
            raise SoqlError("expected BY")
        i += 1
        while True:
            name = take("word")
            descending = False
            if peek("ASC") or peek("DESC"):
                descending = peek("DESC")
                i += 1
            order.append((name, descending))
            if i < len(tokens) and tokens[i] == ("op", ","):
                i += 1
                continue
            break
    limit = None
    if peek("LIMIT"):
        i += 1
        limit = int(take("value"))
    if i != len(tokens):
        raise SoqlError(f"unexpected token {tokens[i][1]!r}")
    return Soql(select, sobject, where, where_fields, order, limit)


def _compare(have: Any, op: str, want: Any) -> bool:
    if isinstance(want, datetime):
        if have is None:
            return False
        have = _parse_stamp(have)
    elif isinstance(want, float) and have is not None:
        have = float(have)
    if op == "=":
        return bool(have == want)
    if op == "!=":
        return bool(have != want)
    if have is None or want is None:
        return False
    return bool({"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want}[op])


# --------------------------------------------------------------------------- serving


@contextlib.asynccontextmanager
async def serving(
    users: set[str], token: str = TOKEN, port: int = 0, host: str = "127.0.0.1"
) -> AsyncIterator[FakeSalesforce]:
    """A local Salesforce on ``port`` (0: a free one) for the duration of the block."""
    fake = FakeSalesforce(users, token)
    async with served(fake.app, port, host) as fake.port:
        yield fake
