"""Webhook intake: verify, validate, store with an inbox, publish through the outbox.

A 202 is only sent after the events are committed in PostgreSQL (events, inbox row and outbox
rows in one transaction), so an acknowledged webhook survives any crash that follows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.documents import NUL_REFUSED, holds_nul
from coxswain.core.intake import (
    ActivityIn,
    LeadEventIn,
    Unacceptable,
    build_activities,
    build_lead_events,
    validation_errors,
)
from coxswain.runtime import outages
from coxswain.runtime.health import Check, add_probes, database_check
from coxswain.runtime.outages import is_connection_error
from coxswain.runtime.telemetry import child_traceparent
from coxswain.settings import IntakeConfig
from schemas.events import (
    Event,
)
from services.intake.events import ActivityBatchIn, LeadBatchIn, Problem
from services.intake.guards import authenticated, read_body, within_rate
from services.intake.limits import SourceRateLimiter
from services.intake.repository import Kind, Webhook
from services.intake.signatures import load_secrets, verify
from services.intake.store import Accepted, GroupCommit, store_many

log = logging.getLogger(__name__)


def _problem_response(problem: Problem) -> JSONResponse:
    body: dict[str, Any] = {"detail": problem.message}
    if problem.errors is not None:
        body["errors"] = problem.errors
    return JSONResponse(body, status_code=problem.status, headers=problem.headers)


async def store(
    connection: AsyncConnection,
    source: str,
    webhook_id: str,
    kind: Kind,
    events: Sequence[Event],
    now: datetime,
    traceparent: str | None = None,
) -> Accepted:
    """Store one webhook on ``connection`` (see ``store_many``)."""
    [accepted] = await store_many(connection, [Webhook(source, webhook_id, kind, events, now, traceparent)])
    return accepted


def _parse(body: bytes, single: type[BaseModel], batch: type[BaseModel], field: str) -> list[Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(422, f"body is not valid JSON: {exc}") from None
    if holds_nul(document):
        raise Problem(422, NUL_REFUSED)
    model = batch if isinstance(document, dict) and field in document else single
    try:
        parsed = model.model_validate(document)
    except ValidationError as exc:
        raise Problem(422, f"body does not match {model.__name__}", validation_errors(exc)) from None
    items: list[Any] = getattr(parsed, field) if model is batch else [parsed]
    return items


def _body_schema(single: type[BaseModel], batch: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The documented body of an endpoint that reads its raw bytes (they are signed): one item or a batch."""
    _, document = models_json_schema(
        [(single, "validation"), (batch, "validation")], ref_template="#/components/schemas/{model}"
    )
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in (single, batch)]
    body = {"content": {"application/json": {"schema": {"anyOf": refs}}}, "required": True}
    return body, document.get("$defs", {})


def _publish_schemas(app: FastAPI, schemas: dict[str, Any]) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    config: IntakeConfig,
    engine: AsyncEngine,
    clock: Callable[[], datetime],
    lifespan: Callable[[FastAPI], Any] | None = None,
    readiness_checks: Mapping[str, Check] | None = None,
) -> FastAPI:
    """``readiness_checks``: dependencies besides the database that /readyz reports (Kafka)."""
    app = FastAPI(
        title="Coxswain intake",
        version="1",
        description="Signed webhooks from marketing automation and CRMs (Standard Webhooks).",
        lifespan=lifespan,
    )
    secrets = load_secrets(config)
    tolerance = timedelta(seconds=config.webhook_tolerance_seconds)
    # Refilled on the injected clock, so a test with a fixed clock sees a bucket that never refills.
    limiter = SourceRateLimiter(config.rate_limit_per_source, config.rate_limit_burst, lambda: clock().timestamp())
    checks = {"database": database_check(engine), **(readiness_checks or {})}
    writer = GroupCommit(engine)

    @app.exception_handler(Problem)
    async def _problem(_: Request, problem: Problem) -> JSONResponse:
        return _problem_response(problem)

    @app.exception_handler(Unacceptable)
    async def _unacceptable(_: Request, refused: Unacceptable) -> JSONResponse:
        return _problem_response(Problem(422, refused.message, refused.errors))

    async def accept(request: Request, source: str, kind: Kind) -> Accepted:
        if source not in secrets:
            raise Problem(404, f"unknown source {source!r}; a source needs a configured webhook secret")
        body = await read_body(request, config.max_body_bytes)
        now = clock()
        webhook_id = authenticated(
            source, "events", lambda: verify(request.headers, body, secrets[source], now, tolerance)
        )
        assert webhook_id is not None  # Standard Webhooks deliveries carry their id
        within_rate(
            limiter, source, config.rate_limit_per_source, "; retry after Retry-After seconds with the same webhook-id"
        )
        events: Sequence[Event]
        if kind == "lead":
            events = build_lead_events(source, webhook_id, _parse(body, LeadEventIn, LeadBatchIn, "events"), now)
        else:
            events = build_activities(source, webhook_id, _parse(body, ActivityIn, ActivityBatchIn, "activities"), now)
        if len(events) > config.max_batch_events:
            raise Problem(413, f"a batch holds at most {config.max_batch_events} events, got {len(events)}")
        try:
            accepted = await writer.store(
                Webhook(source, webhook_id, kind, events, now, child_traceparent(request.headers))
            )
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            # Not acknowledged. Whether or not a commit got through before the connection went, the
            # sender's retry with the same webhook-id is answered from the inbox, never stored twice.
            log.warning(
                "webhook not stored, database unavailable: source=%s webhook_id=%s error=%s",
                source,
                webhook_id,
                type(exc).__name__,
                extra=outages.about(exc),
            )
            raise Problem(
                503,
                "the database is unavailable and the webhook is not acknowledged; retry with the same webhook-id",
                headers={"Retry-After": "1"},
            ) from None
        log.info(
            "webhook accepted: source=%s webhook_id=%s events=%s duplicate=%s",
            source,
            webhook_id,
            len(events),
            accepted.duplicate,
        )
        return accepted

    lead_body, lead_schemas = _body_schema(LeadEventIn, LeadBatchIn)
    activity_body, activity_schemas = _body_schema(ActivityIn, ActivityBatchIn)
    _publish_schemas(app, lead_schemas | activity_schemas)
    responses: dict[int | str, dict[str, Any]] = {
        400: {"description": "Signature headers missing or malformed"},
        401: {"description": "Signature does not match, or the timestamp is outside the tolerance"},
        404: {"description": "Unknown source"},
        413: {"description": "Body or batch too large"},
        422: {"description": "Body does not validate; `errors` lists each problem"},
        429: {"description": "The source is over its rate limit; `Retry-After` says when to retry"},
        503: {"description": "The database is unavailable; nothing was stored, retry after `Retry-After`"},
    }

    @app.post(
        "/v1/webhooks/{source}/events",
        status_code=202,
        response_model=Accepted,
        responses=responses,
        openapi_extra={"requestBody": lead_body},
    )
    async def lead_events(source: str, request: Request) -> Accepted:
        """One marketing-automation event, or `{"events": [...]}` for a batch."""
        return await accept(request, source, "lead")

    @app.post(
        "/v1/webhooks/{source}/activities",
        status_code=202,
        response_model=Accepted,
        responses=responses,
        openapi_extra={"requestBody": activity_body},
    )
    async def activities(source: str, request: Request) -> Accepted:
        """One CRM activity, or `{"activities": [...]}` for a batch."""
        return await accept(request, source, "activity")

    add_probes(app, checks)

    return app
