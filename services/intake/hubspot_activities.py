"""HubSpot webhook subscriptions in, ``crm.activities.v1`` out: ``POST /v1/webhooks/{source}/hubspot/crm-events``.

The request is verified with HubSpot's v3 signature, exactly as the HubSpot lead sender is (the
same verifier and the same client secret, ``COXSWAIN_SENDER_SECRETS``). Each event of the body is
read by ``coxswain.core.hubspot_activities``; the engagements and deals it names are read from
HubSpot (``services/intake/hubspot_api.py``), and each contact is resolved to its lead:

1. the contact crm-sync wrote for a lead (``crm_writes.contact_id`` of the configured connection);
2. else the contact a HubSpot lead sender sent (``lead_identities`` key
   ``source:<source>:<contact id>``);
3. else the contact's email, read from HubSpot (``lead_identities`` key ``email:<email>``).

Every HubSpot event is its own inbox entry, keyed by HubSpot's ``eventId`` (webhooks arrive at
least once, and a retried request may group events differently), so a replayed event is answered
as a duplicate and stored once. An event that reports nothing, or names a contact that is no lead,
is answered 2xx with the reason in ``ignored`` and counted: HubSpot would retry a refusal for a day
and it would not change. A body that is not HubSpot's format is 422; a failed read from HubSpot is
503 (nothing stored), and HubSpot delivers the request again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from fastapi import FastAPI, Request
from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.core.hubspot_activities import (
    ContactActivity,
    HubSpotActivityMapping,
    HubSpotEvent,
    Ignored,
    ObjectActivity,
    ReadObject,
    judge,
    parse_events,
    plan,
    reps_by_owner,
)
from coxswain.core.identity import email_key, intake_event_id, source_key
from coxswain.db.roster import crm_owner_ids
from coxswain.runtime import outages
from coxswain.runtime.outages import is_connection_error
from coxswain.runtime.telemetry import child_traceparent
from coxswain.settings import HubSpotActivitiesConfig, IntakeConfig, SendersConfig
from schemas.events import ActivityRecordedV1
from services.intake import repository
from services.intake.adapters import hubspot
from services.intake.adapters import request_uri as signed_uri
from services.intake.events import Problem
from services.intake.guards import authenticated, read_body, within_rate
from services.intake.hubspot_api import HubSpotReader, HubSpotUnavailable
from services.intake.limits import SourceRateLimiter
from services.intake.repository import Webhook
from services.intake.store import Accepted, AcceptedEvent, store_many

log = logging.getLogger(__name__)

HUBSPOT_EVENTS = Counter(
    "coxswain_hubspot_events",
    "HubSpot webhook events received on /hubspot/crm-events, by outcome: recorded (an activity), duplicate "
    "(eventId seen before), or why one was ignored (unknown_contact, unmapped, unsupported, owner_change, ...).",
    ["source", "outcome"],
)
READS_AT_ONCE = 8


class IgnoredEvent(BaseModel):
    event_id: int = Field(description="HubSpot's eventId.")
    reason: str


class HubSpotEventsAccepted(BaseModel):
    events: list[AcceptedEvent] = Field(description="The crm.activities.v1 records made of the request.")
    duplicates: list[int] = Field(default=[], description="HubSpot eventIds accepted before; nothing new stored.")
    ignored: list[IgnoredEvent] = Field(default=[], description="Events that report no activity, and why.")


def load_mapping(path: Path | None) -> HubSpotActivityMapping:
    """The mapping file (YAML or JSON), checked at start: a bad file stops intake with the reason."""
    if path is None:
        return HubSpotActivityMapping()
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the HubSpot activity mapping ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML or JSON ({exc})") from None
    try:
        return HubSpotActivityMapping.model_validate(document or {})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from None


def api_token(config: HubSpotActivitiesConfig) -> str | None:
    if config.hubspot_api_token is not None:
        return config.hubspot_api_token.get_secret_value()
    if config.hubspot_api_token_file is not None:
        try:
            return config.hubspot_api_token_file.read_text().strip() or None
        except OSError as exc:
            raise ValueError(
                f"{config.hubspot_api_token_file}: cannot read the HubSpot token ({exc.strerror})"
            ) from None
    return None


@dataclass(frozen=True)
class _Found:
    """What one HubSpot event reports, before its contacts are resolved."""

    event: HubSpotEvent
    activity: ObjectActivity


def register(
    app: FastAPI,
    intake: IntakeConfig,
    senders: SendersConfig,
    config: HubSpotActivitiesConfig,
    engine: AsyncEngine,
    clock: Callable[[], datetime],
    agreement: Callable[[], Agreement | None],
    reader: HubSpotReader | None = None,
) -> None:
    """``reader``: HubSpot's API (made from ``config`` when not given; None without a token)."""
    tokens = {source: [s.get_secret_value() for s in keys] for source, keys in senders.sender_secrets.items()}
    tolerance = timedelta(seconds=intake.webhook_tolerance_seconds)
    mapping = load_mapping(config.hubspot_activity_mapping_file)
    if reader is None and (token := api_token(config)) is not None:
        reader = HubSpotReader(config.hubspot_api_url, token, config.hubspot_api_timeout_seconds)
    limiter = SourceRateLimiter(intake.rate_limit_per_source, intake.rate_limit_burst, lambda: clock().timestamp())

    async def read_all(source: str, events: Sequence[HubSpotEvent]) -> tuple[list[_Found], list[IgnoredEvent]]:
        found: list[_Found] = []
        ignored: list[IgnoredEvent] = []
        reps: dict[str, str] = {}
        if (current := agreement()) is not None:
            async with engine.connect() as connection:
                reps = reps_by_owner(await crm_owner_ids(connection, current, "hubspot"))
        gate = asyncio.Semaphore(READS_AT_ONCE)

        async def one(event: HubSpotEvent) -> _Found | Ignored:
            decided = plan(event, mapping)
            if isinstance(decided, Ignored):
                return decided
            if isinstance(decided, ContactActivity):
                # Nobody is named: the contact's owner is credited (docs/sla.md, "credit").
                reported = decided.reported
                return _Found(event, ObjectActivity((decided.contact_id,), reported.activity, None, reported.reason))
            return await read_object(event, decided)

        async def read_object(event: HubSpotEvent, wanted: ReadObject) -> _Found | Ignored:
            if reader is None:
                raise HubSpotUnavailable(
                    "no HubSpot token (COXSWAIN_HUBSPOT_API_TOKEN): engagements and deals cannot be read"
                )
            async with gate:
                read = await reader.read(wanted.kind, wanted.object_id)
            if read is None:
                return Ignored(f"HubSpot does not know {wanted.kind} {wanted.object_id} (deleted?)", "not_found")
            judged = judge(event, read, mapping, reps)
            return judged if isinstance(judged, Ignored) else _Found(event, judged)

        for event, outcome in zip(events, await asyncio.gather(*(one(e) for e in events)), strict=True):
            if isinstance(outcome, Ignored):
                ignored.append(IgnoredEvent(event_id=event.event_id, reason=outcome.reason))
                HUBSPOT_EVENTS.labels(source, outcome.kind).inc()
            else:
                found.append(outcome)
        return found, ignored

    async def leads_of(source: str, contact_ids: set[str]) -> dict[str, uuid.UUID]:
        """Contact id -> lead id for the contacts Coxswain knows (see the module's docstring)."""
        sources = config.hubspot_lead_sources or [source]
        keys = {key: contact for contact in contact_ids for key in (source_key(s, contact) for s in sources)}
        async with engine.connect() as connection:
            leads = await repository.leads_written_for_contacts(
                connection, config.hubspot_crm_connection, sorted(contact_ids)
            )
            for key, lead_id in (await repository.identities(connection, sorted(keys))).items():
                leads.setdefault(keys[key], lead_id)
        missing = sorted(contact_ids - set(leads))
        if missing and reader is not None:
            emails = {contact: await reader.email_of(contact) for contact in missing}
            by_email = {email_key(email): contact for contact, email in emails.items() if email}
            if by_email:
                async with engine.connect() as connection:
                    for key, lead_id in (await repository.identities(connection, sorted(by_email))).items():
                        leads.setdefault(by_email[key], lead_id)
        return leads

    async def receive(request: Request, source: str) -> HubSpotEventsAccepted:
        keys = tokens.get(source)
        if not keys:
            raise Problem(
                404, f"unknown source {source!r}; a HubSpot source needs its client secret in COXSWAIN_SENDER_SECRETS"
            )
        body = await read_body(request, intake.max_body_bytes)
        now = clock()
        uri = signed_uri(request, senders.intake_public_url)
        authenticated(
            source,
            "hubspot-events",
            lambda: hubspot.verify_v3(request.headers, request.method, uri, body, keys, now, tolerance),
        )
        within_rate(limiter, source, intake.rate_limit_per_source)
        try:
            events = parse_events(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            raise Problem(422, f"body is not valid JSON: {exc}") from None
        except ValueError as exc:
            raise Problem(422, str(exc)) from None
        events = list({event.event_id: event for event in events}.values())
        try:
            found, ignored = await read_all(source, events)
            leads = await leads_of(source, {c for f in found for c in f.activity.contact_ids}) if found else {}
        except Exception as exc:
            if not isinstance(exc, HubSpotUnavailable) and not is_connection_error(exc):
                raise
            why = str(exc) if isinstance(exc, HubSpotUnavailable) else "the database is unavailable"
            log.warning("hubspot events not read: source=%s reason=%s", source, why, extra=outages.about(exc))
            raise Problem(
                503, f"{why}; nothing was stored, HubSpot will deliver the events again", headers={"Retry-After": "60"}
            ) from None
        webhooks: list[Webhook] = []
        traceparent = child_traceparent(request.headers)
        for item in found:
            webhook_id = f"hubspot-event-{item.event.event_id}"
            activity = item.activity
            records: list[ActivityRecordedV1] = []
            for lead_id in dict.fromkeys(leads[c] for c in activity.contact_ids if c in leads):
                records.append(
                    ActivityRecordedV1(
                        event_id=intake_event_id(source, webhook_id, len(records)),
                        lead_id=lead_id,
                        # When HubSpot recorded it: a call logged later with an earlier time cannot
                        # meet a deadline that had passed when it was logged.
                        occurred_at=item.event.occurred_at,
                        source=source,
                        webhook_id=webhook_id,
                        activity=activity.activity,
                        rep_id=activity.rep_id,
                        reason=activity.reason,
                        amount=activity.amount,
                    )
                )
            if not records:
                contacts = ", ".join(activity.contact_ids)
                reason = f"no contact of this event is a lead Coxswain knows (contact {contacts})"
                ignored.append(IgnoredEvent(event_id=item.event.event_id, reason=reason))
                HUBSPOT_EVENTS.labels(source, "unknown_contact").inc()
                continue
            webhooks.append(Webhook(source, webhook_id, "activity", records, now, traceparent))
        accepted: list[Accepted] = []
        if webhooks:
            try:
                async with engine.begin() as connection:
                    accepted = await store_many(connection, webhooks)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                log.warning(
                    "hubspot events not stored, database unavailable: source=%s", source, extra=outages.about(exc)
                )
                raise Problem(
                    503, "the database is unavailable and nothing was stored; retry", headers={"Retry-After": "1"}
                ) from None
        answer = HubSpotEventsAccepted(events=[], ignored=ignored)
        for webhook, stored in zip(webhooks, accepted, strict=True):
            hubspot_id = int(webhook.webhook_id.rsplit("-", 1)[1])
            if stored.duplicate:
                answer.duplicates.append(hubspot_id)
            answer.events.extend(stored.events)
            HUBSPOT_EVENTS.labels(source, "duplicate" if stored.duplicate else "recorded").inc()
        log.info(
            "hubspot events accepted: source=%s events=%s recorded=%s duplicates=%s ignored=%s",
            source,
            len(events),
            len(answer.events),
            len(answer.duplicates),
            len(answer.ignored),
        )
        return answer

    responses: dict[int | str, dict[str, Any]] = {
        400: {"description": "HubSpot signature headers missing or malformed"},
        401: {"description": "The v3 signature does not match, or the timestamp is outside the tolerance"},
        404: {"description": "Unknown source (no HubSpot client secret for it)"},
        413: {"description": "Body too large"},
        422: {"description": "Body is not a JSON array of HubSpot webhook events"},
        429: {"description": "The source is over its rate limit"},
        503: {"description": "HubSpot could not be read or the database is unavailable; nothing stored"},
    }
    body_schema = {"requestBody": {"content": {"application/json": {"schema": {"type": "array"}}}, "required": True}}

    @app.post(
        "/v1/webhooks/{source}/hubspot/crm-events",
        status_code=202,
        response_model=HubSpotEventsAccepted,
        responses=responses,
        openapi_extra=body_schema,
        tags=["crm"],
    )
    async def hubspot_crm_events(source: str, request: Request) -> HubSpotEventsAccepted:
        """HubSpot webhook subscriptions (contact property changes, calls, emails, meetings, deals) as CRM activities."""
        return await receive(request, source)
