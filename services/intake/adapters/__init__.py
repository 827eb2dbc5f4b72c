"""Native intake for real senders: each adapter turns a tool's own format and authentication into
the same lead events as the generic endpoint (same identity rule, same inbox by source and
delivery id, same outbox), so a lead is the same lead whichever way it arrives.

``SENDERS`` is the registry: one :class:`~services.intake.adapters.sender.Sender` per module
(``hubspot``, ``marketo``, ``mapped``). ``register`` gives each its route,
``POST /v1/webhooks/{source}/<name>``; the composition root calls it. A new sender is a new
module exporting ``SENDER``, one entry here, a section in docs/senders.md and a test.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.intake import LeadEventIn, build_lead_events
from coxswain.runtime import outages
from coxswain.runtime.outages import is_connection_error
from coxswain.runtime.telemetry import child_traceparent
from coxswain.settings import IntakeConfig, SendersConfig
from services.intake.adapters import hubspot, mapped, marketo
from services.intake.adapters.mapping import MappingError, SenderMapping, apply, load_senders, records
from services.intake.adapters.sender import Delivery, Sender
from services.intake.app import store
from services.intake.events import Problem
from services.intake.guards import authenticated, read_body, within_rate
from services.intake.limits import SourceRateLimiter
from services.intake.signatures import load_secrets
from services.intake.store import Accepted

log = logging.getLogger(__name__)

SENDERS: tuple[Sender, ...] = (hubspot.SENDER, marketo.SENDER, mapped.SENDER)


class SenderAccepted(Accepted):
    ignored: list[str] = []


def request_uri(request: Request, public_url: str | None) -> str:
    if public_url is None:
        return str(request.url)
    query = request.url.query
    return public_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")


def delivery_id(sender: Sender, body: bytes) -> str:
    """Senders without a delivery id retry with the same body, so the body names the delivery."""
    return f"{sender.name}-{hashlib.sha256(body).hexdigest()[:40]}"


def register(
    app: FastAPI,
    intake: IntakeConfig,
    senders: SendersConfig,
    engine: AsyncEngine,
    clock: Callable[[], datetime],
) -> None:
    # Standard Webhooks secrets are the generic endpoint's; HubSpot client secrets and shared
    # tokens are not in that format and are configured apart (COXSWAIN_SENDER_SECRETS).
    signing_secrets = load_secrets(intake)
    tokens = {source: [s.get_secret_value() for s in keys] for source, keys in senders.sender_secrets.items()}
    tolerance = timedelta(seconds=intake.webhook_tolerance_seconds)
    configured = load_senders(senders.senders_file)
    limiter = SourceRateLimiter(intake.rate_limit_per_source, intake.rate_limit_burst, lambda: clock().timestamp())

    def mapping_for(source: str, sender: Sender) -> SenderMapping:
        mapping = sender.mapping(configured.get(source))
        if mapping is None:
            raise Problem(404, f"no mapping for source {source!r} in the senders file (COXSWAIN_SENDERS_FILE)")
        return mapping

    def keys_for(source: str, sender: Sender, mapping: SenderMapping) -> list[str]:
        setting = sender.secrets(mapping)
        keys = (signing_secrets if setting == "COXSWAIN_WEBHOOK_SECRETS" else tokens).get(source)
        if not keys:
            raise Problem(404, f"unknown source {source!r}; a {sender.name} source needs a secret in {setting}")
        return keys

    def authenticate(
        request: Request, sender: Sender, mapping: SenderMapping, keys: list[str], body: bytes, now: datetime
    ) -> str | None:
        uri = request_uri(request, senders.intake_public_url)
        delivery = Delivery(request.headers, request.method, uri, body, keys, now, tolerance)
        return sender.authenticate(delivery, mapping)

    async def receive(request: Request, source: str, sender: Sender, event_type: str | None) -> SenderAccepted:
        mapping = mapping_for(source, sender)
        keys = keys_for(source, sender, mapping)
        body = await read_body(request, intake.max_body_bytes)
        now = clock()
        webhook_id = authenticated(
            source, sender.name, lambda: authenticate(request, sender, mapping, keys, body, now)
        ) or delivery_id(sender, body)
        within_rate(limiter, source, intake.rate_limit_per_source)
        try:
            document: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Problem(422, f"body is not valid JSON: {exc}") from None
        try:
            found = records(mapping, sender.normalise(document))
            if len(found) > intake.max_batch_events:
                raise Problem(413, f"a batch holds at most {intake.max_batch_events} events, got {len(found)}")
            mapped = [apply(mapping, record, event_type) for record in found]
        except (MappingError, ValueError) as exc:
            raise Problem(422, str(exc)) from None
        items = [
            LeadEventIn(type=m.type, occurred_at=m.occurred_at, external_id=m.external_id, contact=m.contact)
            for m in mapped
        ]
        events = build_lead_events(source, webhook_id, items, now)
        try:
            async with engine.begin() as connection:
                accepted = await store(
                    connection, source, webhook_id, "lead", events, now, child_traceparent(request.headers)
                )
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning(
                "webhook not stored, database unavailable: source=%s sender=%s",
                source,
                sender.name,
                extra=outages.about(exc),
            )
            raise Problem(
                503,
                "the database is unavailable and the webhook is not acknowledged; retry",
                headers={"Retry-After": "1"},
            ) from None
        ignored = sorted({name for m in mapped for name in m.ignored})
        log.info(
            "webhook accepted: source=%s sender=%s webhook_id=%s events=%s duplicate=%s ignored=%s",
            source,
            sender.name,
            webhook_id,
            len(events),
            accepted.duplicate,
            ",".join(ignored) or "-",
        )
        return SenderAccepted(**accepted.model_dump(), ignored=ignored)

    responses: dict[int | str, dict[str, Any]] = {
        400: {"description": "Authentication headers missing or malformed"},
        401: {"description": "Signature or shared secret does not match, or the timestamp is outside the tolerance"},
        404: {"description": "Unknown source, or no mapping for it"},
        413: {"description": "Body or batch too large"},
        422: {"description": "Body is not JSON or cannot be mapped to a lead event"},
        429: {"description": "The source is over its rate limit; `Retry-After` says when to retry"},
        503: {"description": "The database is unavailable; nothing was stored"},
    }
    body_schema = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}}
    type_query = Query(default=None, alias="type", description="Engagement type of this webhook, e.g. demo_request.")

    def route(sender: Sender) -> Callable[..., Awaitable[SenderAccepted]]:
        async def receive_from(source: str, request: Request, event_type: str | None = type_query) -> SenderAccepted:
            return await receive(request, source, sender, event_type)

        return receive_from

    for sender in SENDERS:
        app.post(
            f"/v1/webhooks/{{source}}/{sender.name}",
            status_code=202,
            response_model=SenderAccepted,
            responses=responses,
            openapi_extra=body_schema,
            tags=["senders"],
            summary=f"A webhook from {sender.name}",
            description=sender.summary,
            operation_id=f"from_{sender.name}",
        )(route(sender))
