"""Webhook intake: verify, validate, store with an inbox, publish through the outbox.

A 202 is only sent after the events are committed in PostgreSQL (events, inbox row and outbox
rows in one transaction), so an acknowledged webhook survives any crash that follows.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.identity import intake_event_id, lead_id_for
from coxswain.db.models import table
from coxswain.runtime import outbox
from coxswain.settings import IntakeConfig
from schemas.events import (
    ActivityRecordedV1,
    ActivityType,
    Code,
    EngagementType,
    Event,
    LeadAttributes,
    LeadReceivedV1,
    ShortText,
)
from services.intake.signatures import SignatureRejected, verify

log = logging.getLogger(__name__)

Kind = Literal["lead", "activity"]


class LeadEventIn(BaseModel):
    """One marketing-automation event about a person."""

    model_config = ConfigDict(extra="forbid")

    type: EngagementType
    occurred_at: AwareDatetime | None = Field(default=None, description="Defaults to the time of receipt.")
    external_id: ShortText | None = Field(default=None, description="The sender's contact id.")
    contact: LeadAttributes


class ActivityIn(BaseModel):
    """One thing a rep did, reported by a CRM."""

    model_config = ConfigDict(extra="forbid")

    lead_id: uuid.UUID = Field(description="The lead id Coxswain published in leads.routed.v1.")
    activity: ActivityType
    occurred_at: AwareDatetime | None = None
    rep_id: Code | None = None
    reason: ShortText | None = None
    amount: float | None = Field(default=None, ge=0)


class LeadBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[LeadEventIn] = Field(min_length=1)


class ActivityBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    activities: list[ActivityIn] = Field(min_length=1)


class AcceptedEvent(BaseModel):
    event_id: str
    lead_id: str


class Accepted(BaseModel):
    webhook_id: str
    duplicate: bool = Field(description="True when this webhook id was already accepted; nothing new is stored.")
    events: list[AcceptedEvent]


class Problem(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def _problem_response(problem: Problem) -> JSONResponse:
    body: dict[str, Any] = {"detail": problem.message}
    if problem.errors is not None:
        body["errors"] = problem.errors
    return JSONResponse(body, status_code=problem.status)


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(part) for part in error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False)[:50]
    ]


def build_lead_events(
    source: str, webhook_id: str, batch: Sequence[LeadEventIn], now: datetime
) -> list[LeadReceivedV1]:
    events = []
    for index, item in enumerate(batch):
        try:
            lead_id = lead_id_for(item.contact.email, source, item.external_id)
        except ValueError as exc:
            raise Problem(422, f"events[{index}]: {exc}") from None
        events.append(
            LeadReceivedV1(
                event_id=intake_event_id(source, webhook_id, index),
                lead_id=lead_id,
                occurred_at=item.occurred_at or now,
                source=source,
                webhook_id=webhook_id,
                external_id=item.external_id,
                engagement=item.type,
                attributes=item.contact,
            )
        )
    return events


def build_activities(
    source: str, webhook_id: str, batch: Sequence[ActivityIn], now: datetime
) -> list[ActivityRecordedV1]:
    try:
        return [
            ActivityRecordedV1(
                event_id=intake_event_id(source, webhook_id, index),
                lead_id=item.lead_id,
                occurred_at=item.occurred_at or now,
                source=source,
                webhook_id=webhook_id,
                activity=item.activity,
                rep_id=item.rep_id,
                reason=item.reason,
                amount=item.amount,
            )
            for index, item in enumerate(batch)
        ]
    except ValidationError as exc:
        raise Problem(422, "activity does not validate", _validation_errors(exc)) from None


async def store(
    connection: AsyncConnection, source: str, webhook_id: str, kind: Kind, events: Sequence[Event], now: datetime
) -> Accepted:
    """Inbox first: if this webhook id was accepted before, answer with what was stored then."""
    inbox = table("webhook_inbox")
    inserted = await connection.scalar(
        insert(inbox)
        .values(
            source=source,
            webhook_id=webhook_id,
            kind=kind,
            event_ids=[str(e.event_id) for e in events],
            lead_ids=[str(e.lead_id) for e in events],
            received_at=now,
        )
        .on_conflict_do_nothing()
        .returning(inbox.c.webhook_id)
    )
    if inserted is None:
        row = (
            await connection.execute(
                text("SELECT event_ids, lead_ids FROM webhook_inbox WHERE source = :s AND webhook_id = :w"),
                {"s": source, "w": webhook_id},
            )
        ).one()
        return Accepted(
            webhook_id=webhook_id,
            duplicate=True,
            events=[
                AcceptedEvent(event_id=event, lead_id=lead)
                for event, lead in zip(row.event_ids, row.lead_ids, strict=True)
            ],
        )
    intake = table("intake_events")
    await connection.execute(
        insert(intake),
        [
            {
                "event_id": e.event_id,
                "lead_id": e.lead_id,
                "source": source,
                "webhook_id": webhook_id,
                "kind": kind,
                "payload": e.model_dump(mode="json"),
                "received_at": now,
            }
            for e in events
        ],
    )
    await outbox.stage(connection, events, now)
    return Accepted(
        webhook_id=webhook_id,
        duplicate=False,
        events=[AcceptedEvent(event_id=str(e.event_id), lead_id=str(e.lead_id)) for e in events],
    )


def _parse(body: bytes, single: type[BaseModel], batch: type[BaseModel], field: str) -> list[Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(422, f"body is not valid JSON: {exc}") from None
    model = batch if isinstance(document, dict) and field in document else single
    try:
        parsed = model.model_validate(document)
    except ValidationError as exc:
        raise Problem(422, f"body does not match {model.__name__}", _validation_errors(exc)) from None
    items: list[Any] = getattr(parsed, field) if model is batch else [parsed]
    return items


def create_app(
    config: IntakeConfig,
    engine: AsyncEngine,
    clock: Callable[[], datetime],
    lifespan: Callable[[FastAPI], Any] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Coxswain intake",
        version="1",
        description="Signed webhooks from marketing automation and CRMs (Standard Webhooks).",
        lifespan=lifespan,
    )
    secrets = {source: [s.get_secret_value() for s in keys] for source, keys in config.webhook_secrets.items()}
    tolerance = timedelta(seconds=config.webhook_tolerance_seconds)

    @app.exception_handler(Problem)
    async def _problem(_: Request, problem: Problem) -> JSONResponse:
        return _problem_response(problem)

    async def accept(request: Request, source: str, kind: Kind) -> Accepted:
        if source not in secrets:
            raise Problem(404, f"unknown source {source!r}; a source needs a configured webhook secret")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise Problem(413, f"body is larger than {config.max_body_bytes} bytes")
        body = await request.body()
        if len(body) > config.max_body_bytes:
            raise Problem(413, f"body is larger than {config.max_body_bytes} bytes")
        now = clock()
        try:
            webhook_id = verify(request.headers, body, secrets[source], now, tolerance)
        except SignatureRejected as rejected:
            log.info("webhook rejected: source=%s status=%s reason=%s", source, rejected.status, rejected.message)
            raise Problem(rejected.status, rejected.message) from None
        events: Sequence[Event]
        if kind == "lead":
            events = build_lead_events(source, webhook_id, _parse(body, LeadEventIn, LeadBatchIn, "events"), now)
        else:
            events = build_activities(source, webhook_id, _parse(body, ActivityIn, ActivityBatchIn, "activities"), now)
        if len(events) > config.max_batch_events:
            raise Problem(413, f"a batch holds at most {config.max_batch_events} events, got {len(events)}")
        async with engine.begin() as connection:
            accepted = await store(connection, source, webhook_id, kind, events, now)
        log.info(
            "webhook accepted: source=%s webhook_id=%s events=%s duplicate=%s",
            source,
            webhook_id,
            len(events),
            accepted.duplicate,
        )
        return accepted

    request_body = {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}
    responses: dict[int | str, dict[str, Any]] = {
        400: {"description": "Signature headers missing or malformed"},
        401: {"description": "Signature does not match, or the timestamp is outside the tolerance"},
        404: {"description": "Unknown source"},
        413: {"description": "Body or batch too large"},
        422: {"description": "Body does not validate; `errors` lists each problem"},
    }

    @app.post(
        "/v1/webhooks/{source}/events",
        status_code=202,
        response_model=Accepted,
        responses=responses,
        openapi_extra={"requestBody": request_body},
    )
    async def lead_events(source: str, request: Request) -> Accepted:
        """One marketing-automation event, or `{"events": [...]}` for a batch."""
        return await accept(request, source, "lead")

    @app.post(
        "/v1/webhooks/{source}/activities",
        status_code=202,
        response_model=Accepted,
        responses=responses,
        openapi_extra={"requestBody": request_body},
    )
    async def activities(source: str, request: Request) -> Accepted:
        """One CRM activity, or `{"activities": [...]}` for a batch."""
        return await accept(request, source, "activity")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "database": "ok"})

    return app
