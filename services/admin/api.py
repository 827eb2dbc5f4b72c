"""Admin HTTP API: store and activate agreement versions, explain a lead, export or erase a
person's data, read the audit trail.

Every endpoint needs ``Authorization: Bearer <token>`` with a scope (``coxswain/access.py``):
``agreements:write`` for agreements, ``leads:read`` for a lead's data, ``privacy:erase`` for
export and erasure, ``audit:read`` for the trail. Every action is audited. A missing or malformed
header is 401; a wrong token (compared in constant time) or one without the scope is 403 naming
the missing scope; with no token configured the endpoints are disabled (403) rather than open.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
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
from coxswain.runtime.guard import scope_guard
from services.admin import privacy
from services.admin.leads import explain

log = logging.getLogger(__name__)


class StoredVersion(BaseModel):
    version: str
    sha256: str
    created_at: datetime
    activated_at: datetime | None
    created: bool = Field(default=False, description="False when this exact version was already stored.")
    warnings: list[str] = Field(default_factory=list, description="Rules that can never fire, and the like.")


class PersonQuery(BaseModel):
    """Exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, min_length=3, max_length=320)
    lead_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _one(self) -> PersonQuery:
        if (self.email is None) == (self.lead_id is None):
            raise ValueError("give exactly one of email and lead_id")
        return self


class ErasureDone(BaseModel):
    lead_id: uuid.UUID
    aliases: list[uuid.UUID]
    rows_changed: int = Field(description="Stored rows that held one of the person's values.")
    event_id: uuid.UUID = Field(description="The LeadErasedV1 fact staged for leads.erased.v1.")


class AuditEntry(BaseModel):
    at: datetime
    token: str = Field(description="The name of the token that acted; `?` for a token that matched none.")
    action: str = Field(
        description="`agreement.store`, `agreement.activate`, `lead.read`, `rep.change`, ...; `request` for a refusal."
    )
    target: str
    outcome: str = Field(description="done, unchanged, refused, not_found, conflict or invalid.")
    detail: dict[str, Any]
    event_id: uuid.UUID = Field(description="The id of the same fact on admin.audit.v1.")


def _stored(row: agreements.StoredAgreement, created: bool = False, warnings: list[str] | None = None) -> StoredVersion:
    return StoredVersion(
        version=row.version,
        sha256=row.sha256,
        created_at=row.created_at,
        activated_at=row.activated_at,
        created=created,
        warnings=warnings or [],
    )


def create_admin_router(
    engine: AsyncEngine, tokens: TokenTable, agreement: Callable[[], Agreement], clock: Callable[[], datetime]
) -> APIRouter:
    router = APIRouter()
    agreements_write = [Depends(scope_guard(tokens, "agreements:write", engine, clock))]
    leads_read = [Depends(scope_guard(tokens, "leads:read", engine, clock))]
    audit_read = [Depends(scope_guard(tokens, "audit:read", engine, clock))]
    privacy_erase = [Depends(scope_guard(tokens, "privacy:erase", engine, clock))]
    auth_responses: dict[int | str, dict[str, Any]] = {
        401: {"description": "Missing or malformed bearer token"},
        403: {"description": "Wrong token, a token without the endpoint's scope, or the admin API is disabled"},
    }

    @router.post(
        "/v1/admin/agreements",
        status_code=201,
        dependencies=agreements_write,
        response_model=StoredVersion,
        tags=["admin"],
        responses={
            **auth_responses,
            200: {"description": "This exact version was already stored"},
            409: {"description": "The version is stored with other content"},
            413: {"description": "Document too large"},
            422: {"description": "The agreement does not validate; `problems` lists each with its path"},
        },
        openapi_extra={"requestBody": {"content": {"application/yaml": {}, "application/json": {}}, "required": True}},
    )
    async def store_agreement(request: Request) -> Any:
        """Store an agreement version (YAML or JSON body). It takes effect only once activated."""
        body = await request.body()
        if len(body) > MAX_AGREEMENT_BYTES:
            raise HTTPException(413, f"an agreement is at most {MAX_AGREEMENT_BYTES} bytes")
        try:
            parsed = load_agreement_text(agreement_text(body, "request body"), source="request body")
        except AgreementError as exc:
            return JSONResponse(
                {
                    "detail": "the agreement does not validate",
                    "problems": [{"path": p.path, "message": p.message} for p in exc.problems],
                },
                status_code=422,
            )
        token = request.state.token_name
        try:
            async with engine.begin() as connection:
                row, created = await agreements.store(connection, parsed, clock())
                outcome: audit.Outcome = "done" if created else "unchanged"
                await audit.record(
                    connection, token=token, action="agreement.store", target=row.version, outcome=outcome, at=clock()
                )
        except agreements.VersionConflict as exc:
            await audit.record_alone(
                engine, token=token, action="agreement.store", target=parsed.version, outcome="conflict", at=clock()
            )
            raise HTTPException(409, str(exc)) from None
        warnings = [str(warning) for warning in agreement_warnings(parsed)]
        log.info("agreement stored: version=%s created=%s token=%s", row.version, created, request.state.token_name)
        return JSONResponse(
            _stored(row, created, warnings).model_dump(mode="json"), status_code=201 if created else 200
        )

    @router.post(
        "/v1/admin/agreements/{version}/activate",
        response_model=StoredVersion,
        dependencies=agreements_write,
        tags=["admin"],
        responses={**auth_responses, 404: {"description": "No such version"}},
    )
    async def activate_agreement(version: str, request: Request) -> StoredVersion:
        """Put a stored version in force; every service picks it up within its poll interval."""
        token = request.state.token_name
        async with engine.begin() as connection:
            row = await agreements.activate(connection, version, clock())
            outcome: audit.Outcome = "done" if row is not None else "not_found"
            await audit.record(
                connection, token=token, action="agreement.activate", target=version, outcome=outcome, at=clock()
            )
        if row is None:
            raise HTTPException(404, f"no agreement version {version!r} is stored; POST it to /v1/admin/agreements")
        log.info("agreement activated: version=%s token=%s", version, request.state.token_name)
        return _stored(row)

    @router.get(
        "/v1/admin/agreements",
        response_model=list[StoredVersion],
        tags=["admin"],
        responses=auth_responses,
        dependencies=agreements_write,
    )
    async def list_agreements() -> list[StoredVersion]:
        """Every stored version; the one with the latest activated_at is in force."""
        async with engine.connect() as connection:
            return [_stored(row) for row in await agreements.versions(connection)]

    @router.get(
        "/v1/leads/{lead_id}",
        tags=["leads"],
        dependencies=leads_read,
        responses={**auth_responses, 404: {"description": "Scoring has not seen this lead"}},
    )
    async def lead(lead_id: uuid.UUID, request: Request) -> dict[str, Any]:
        """Stage, score with every rule's decayed value, tier, owner, SLA clocks and the timeline."""
        async with engine.begin() as connection:
            found = await explain(connection, lead_id, agreement(), clock())
            # Reading a person's data is an action on it: recorded, in the same transaction.
            await audit.record(
                connection,
                token=request.state.token_name,
                action="lead.read",
                target=str(lead_id),
                outcome="done" if found is not None else "not_found",
                at=clock(),
            )
        if found is None:
            raise HTTPException(404, f"no lead {lead_id}: scoring has not seen it (yet)")
        return found

    def unknown(wanted: PersonQuery) -> HTTPException:
        return HTTPException(404, "nobody is stored under that " + ("email" if wanted.email else "lead id"))

    @router.post(
        "/v1/admin/privacy/erase",
        response_model=ErasureDone,
        tags=["privacy"],
        dependencies=privacy_erase,
        responses={**auth_responses, 404: {"description": "Nobody is stored under that email or lead id"}},
    )
    async def erase_person(wanted: PersonQuery, request: Request) -> ErasureDone:
        """Erase the person's personal data from every table and publish leads.erased.v1 (docs/operations.md)."""
        token = request.state.token_name
        async with engine.begin() as connection:
            erased = await privacy.erase_audited(
                connection, email=wanted.email, lead_id=wanted.lead_id, token=token, now=clock()
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
        dependencies=privacy_erase,
        responses={**auth_responses, 404: {"description": "Nobody is stored under that email or lead id"}},
    )
    async def export_person(wanted: PersonQuery, request: Request) -> Response:
        """Everything stored about the person, table by table, as JSON."""
        async with engine.begin() as connection:
            exported = await privacy.export_audited(
                connection, email=wanted.email, lead_id=wanted.lead_id, token=request.state.token_name, now=clock()
            )
        if exported is None:
            raise unknown(wanted)
        return Response(exported[1], media_type="application/json")

    @router.get(
        "/v1/admin/audit",
        response_model=list[AuditEntry],
        tags=["admin"],
        dependencies=audit_read,
        responses=auth_responses,
    )
    async def audit_trail(
        since: Annotated[
            datetime | None, Query(description="Entries at or after this time (ISO 8601, offset).")
        ] = None,
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
        async with engine.connect() as connection:
            found = await audit.entries(
                connection, since=since, until=until, token=token, action=action, target=target, limit=limit
            )
        return [AuditEntry(**vars(entry)) for entry in found]

    return router
