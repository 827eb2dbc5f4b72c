"""Admin HTTP API: store and activate agreement versions, explain a lead, export or erase a
person's data, read the audit trail.

Every endpoint needs ``Authorization: Bearer <token>`` with a scope (``coxswain/access.py``):
``agreements:write`` for agreements, ``leads:read`` for a lead's data, ``privacy:erase`` for
export and erasure, ``audit:read`` for the trail. Every action is audited. A missing or malformed
header is 401; a wrong token (compared in constant time) or one without the scope is 403 naming
the missing scope; with no token configured the endpoints are disabled (403) rather than open.

The endpoints are one module-level router; what they need (engine, tokens, agreement, clock)
reaches them as the ``Context`` dependency, which ``create_admin_router`` binds per request.
Bodies are in ``services/admin/models.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import TokenTable
from coxswain.core.agreement import (
    MAX_AGREEMENT_BYTES,
    Agreement,
    AgreementError,
    agreement_text,
    load_agreement_text,
)
from coxswain.core.agreement_checks import agreement_warnings
from coxswain.runtime import agreements, audit
from coxswain.runtime.guard import require_scope
from services.admin import privacy
from services.admin.leads import explain
from services.admin.models import (
    AgreementInvalid,
    AuditEntry,
    ErasureDone,
    LeadExplained,
    PersonExport,
    PersonQuery,
    Problem,
    StoredVersion,
    agreement_outline,
)

log = logging.getLogger(__name__)

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or malformed bearer token"},
    403: {"description": "Wrong token, a token without the endpoint's scope, or the admin API is disabled"},
}


@dataclass(frozen=True)
class AdminContext:
    """What the endpoints need from the process; as a dependency it binds itself to the request."""

    engine: AsyncEngine
    tokens: TokenTable
    agreement: Callable[[], Agreement]
    clock: Callable[[], datetime]

    async def __call__(self, request: Request) -> None:
        request.state.admin = self


def admin_context(request: Request) -> AdminContext:
    context = getattr(request.state, "admin", None)
    if not isinstance(context, AdminContext):
        raise RuntimeError("the admin router is served through create_admin_router, which binds its context")
    return context


Context = Annotated[AdminContext, Depends(admin_context)]


async def _holder(request: Request, context: AdminContext, scope: str) -> str:
    return await require_scope(request, scope, context.tokens, context.engine, context.clock)


async def agreements_writer(request: Request, context: Context) -> str:
    return await _holder(request, context, "agreements:write")


async def leads_reader(request: Request, context: Context) -> str:
    return await _holder(request, context, "leads:read")


async def privacy_eraser(request: Request, context: Context) -> str:
    return await _holder(request, context, "privacy:erase")


async def audit_reader(request: Request, context: Context) -> str:
    return await _holder(request, context, "audit:read")


AgreementsWriter = Annotated[str, Depends(agreements_writer)]
LeadsReader = Annotated[str, Depends(leads_reader)]
PrivacyEraser = Annotated[str, Depends(privacy_eraser)]
AuditReader = Annotated[str, Depends(audit_reader)]

router = APIRouter(responses=AUTH_RESPONSES)


def _stored(row: agreements.StoredAgreement, created: bool = False, warnings: list[str] | None = None) -> StoredVersion:
    return StoredVersion(
        version=row.version,
        sha256=row.sha256,
        created_at=row.created_at,
        activated_at=row.activated_at,
        created=created,
        warnings=warnings or [],
    )


@router.post(
    "/v1/admin/agreements",
    status_code=201,
    response_model=StoredVersion,
    tags=["admin"],
    responses={
        200: {"model": StoredVersion, "description": "This exact version was already stored"},
        409: {"description": "The version is stored with other content"},
        413: {"description": "Document too large"},
        422: {"model": AgreementInvalid, "description": "The agreement does not validate"},
    },
    # YAML is what people write, so the body is read here rather than by a model.
    openapi_extra={
        "requestBody": {
            "content": {
                "application/yaml": {"schema": {"type": "string", "description": "The agreement as YAML."}},
                "application/json": {"schema": agreement_outline()},
            },
            "required": True,
        }
    },
)
async def store_agreement(request: Request, context: Context, token: AgreementsWriter) -> Any:
    """Store an agreement version (YAML or JSON body). It takes effect only once activated."""
    body = await request.body()
    if len(body) > MAX_AGREEMENT_BYTES:
        raise HTTPException(413, f"an agreement is at most {MAX_AGREEMENT_BYTES} bytes")
    try:
        parsed = load_agreement_text(agreement_text(body, "request body"), source="request body")
    except AgreementError as exc:
        invalid = AgreementInvalid(
            detail="the agreement does not validate",
            problems=[Problem(path=p.path, message=p.message) for p in exc.problems],
        )
        return JSONResponse(invalid.model_dump(mode="json"), status_code=422)
    try:
        async with context.engine.begin() as connection:
            row, created = await agreements.store(connection, parsed, context.clock())
            outcome: audit.Outcome = "done" if created else "unchanged"
            await audit.record(
                connection,
                token=token,
                action="agreement.store",
                target=row.version,
                outcome=outcome,
                at=context.clock(),
            )
    except agreements.VersionConflict as exc:
        await audit.record_alone(
            context.engine,
            token=token,
            action="agreement.store",
            target=parsed.version,
            outcome="conflict",
            at=context.clock(),
        )
        raise HTTPException(409, str(exc)) from None
    warnings = [str(warning) for warning in agreement_warnings(parsed)]
    log.info("agreement stored: version=%s created=%s token=%s", row.version, created, token)
    return JSONResponse(_stored(row, created, warnings).model_dump(mode="json"), status_code=201 if created else 200)


@router.post(
    "/v1/admin/agreements/{version}/activate",
    tags=["admin"],
    responses={404: {"description": "No such version"}},
)
async def activate_agreement(version: str, context: Context, token: AgreementsWriter) -> StoredVersion:
    """Put a stored version in force; every service picks it up within its poll interval."""
    async with context.engine.begin() as connection:
        row = await agreements.activate(connection, version, context.clock())
        outcome: audit.Outcome = "done" if row is not None else "not_found"
        await audit.record(
            connection, token=token, action="agreement.activate", target=version, outcome=outcome, at=context.clock()
        )
    if row is None:
        raise HTTPException(404, f"no agreement version {version!r} is stored; POST it to /v1/admin/agreements")
    log.info("agreement activated: version=%s token=%s", version, token)
    return _stored(row)


@router.get("/v1/admin/agreements", tags=["admin"], dependencies=[Depends(agreements_writer)])
async def list_agreements(context: Context) -> list[StoredVersion]:
    """Every stored version; the one with the latest activated_at is in force."""
    async with context.engine.connect() as connection:
        return [_stored(row) for row in await agreements.versions(connection)]


@router.get("/v1/leads/{lead_id}", tags=["leads"], responses={404: {"description": "Scoring has not seen this lead"}})
async def lead(lead_id: uuid.UUID, context: Context, token: LeadsReader) -> LeadExplained:
    """Stage, score with every rule's decayed value, tier, owner, SLA clocks and the timeline."""
    async with context.engine.begin() as connection:
        found = await explain(connection, lead_id, context.agreement(), context.clock())
        # Reading a person's data is an action on it: recorded, in the same transaction.
        await audit.record(
            connection,
            token=token,
            action="lead.read",
            target=str(lead_id),
            outcome="done" if found is not None else "not_found",
            at=context.clock(),
        )
    if found is None:
        raise HTTPException(404, f"no lead {lead_id}: scoring has not seen it (yet)")
    return found


def unknown(wanted: PersonQuery) -> HTTPException:
    return HTTPException(404, "nobody is stored under that " + ("email" if wanted.email else "lead id"))


@router.post(
    "/v1/admin/privacy/erase",
    tags=["privacy"],
    responses={404: {"description": "Nobody is stored under that email or lead id"}},
)
async def erase_person(wanted: PersonQuery, context: Context, token: PrivacyEraser) -> ErasureDone:
    """Erase the person's personal data from every table and publish leads.erased.v1 (docs/operations.md)."""
    async with context.engine.begin() as connection:
        erased = await privacy.erase_audited(
            connection, email=wanted.email, lead_id=wanted.lead_id, token=token, now=context.clock()
        )
    if erased is None:
        raise unknown(wanted)
    log.info("lead erased: lead_id=%s token=%s", erased.found.lead_id, token)
    return ErasureDone(
        lead_id=erased.found.lead_id,
        aliases=list(erased.found.aliases),
        rows_changed=erased.rows_changed,
        event_id=erased.fact.event_id,
    )


@router.post(
    "/v1/admin/privacy/export",
    tags=["privacy"],
    responses={
        200: {"model": PersonExport, "description": "Everything stored about the person"},
        404: {"description": "Nobody is stored under that email or lead id"},
    },
)
async def export_person(wanted: PersonQuery, context: Context, token: PrivacyEraser) -> Response:
    """Everything stored about the person, table by table, as JSON."""
    async with context.engine.begin() as connection:
        exported = await privacy.export_audited(
            connection, email=wanted.email, lead_id=wanted.lead_id, token=token, now=context.clock()
        )
    if exported is None:
        raise unknown(wanted)
    # The rows as stored, written by privacy.as_json: a PersonExport, without a copy through pydantic.
    return Response(exported[1], media_type="application/json")


@router.get("/v1/admin/audit", tags=["admin"], dependencies=[Depends(audit_reader)])
async def audit_trail(
    context: Context,
    since: Annotated[datetime | None, Query(description="Entries at or after this time (ISO 8601, offset).")] = None,
    until: Annotated[datetime | None, Query(description="Entries before this time.")] = None,
    token: Annotated[str | None, Query(max_length=64, description="Only this token's (`?`: unknown ones).")] = None,
    action: Annotated[str | None, Query(max_length=64, description="Only this action, e.g. `rep.pause`.")] = None,
    target: Annotated[str | None, Query(max_length=256, description="Only actions on this target.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntry]:
    """Admin actions and refused admin requests, newest first."""
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(422, f"{name} needs a UTC offset, e.g. 2026-12-04T09:00:00Z")
    async with context.engine.connect() as connection:
        found = await audit.entries(
            connection, since=since, until=until, token=token, action=action, target=target, limit=limit
        )
    return [AuditEntry(**vars(entry)) for entry in found]


def create_admin_router(
    engine: AsyncEngine, tokens: TokenTable, agreement: Callable[[], Agreement], clock: Callable[[], datetime]
) -> APIRouter:
    """The admin endpoints bound to one process's engine, tokens, agreement and clock."""
    bound = APIRouter(dependencies=[Depends(AdminContext(engine, tokens, agreement, clock))])
    bound.include_router(router)
    return bound
