"""Roster API: change who takes leads at runtime, sync account owners, explain assignments.

Every change is stored as an override layered over the agreement's roster and bumps
``roster_revision`` in the same transaction, so the next lead any router decides sees it.
Nothing here touches rotation state: credits are kept per rep id, so pausing a rep, changing a
weight or moving a rep between pools never resets anybody's place in the rotation.

Every endpoint needs a bearer token with scope ``roster:write`` (``coxswain/access.py``; 401
missing or malformed, 403 wrong, without that scope, or no token configured). Bad input is a 422
whose ``detail`` names each problem (``services/roster/errors.py``).

The endpoints are one module-level router; what they need (engine, tokens, agreement, clock)
reaches them as the ``Context`` dependency, which ``create_roster_router`` binds per request.
SQL lives in ``services/roster/repository.py``, bodies in ``services/roster/models.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.access import TokenTable
from coxswain.core.accounts import normalize_domain
from coxswain.core.agreement import Agreement
from coxswain.core.capacity import RepLoad, assigned_today
from coxswain.core.roster import (
    Absence,
    OverrideRejected,
    RepOverride,
    RepProfile,
    Roster,
    RosterOverrides,
    apply_override,
    build_roster,
    effective_weight,
    unavailable_because,
)
from coxswain.runtime import audit
from coxswain.runtime.guard import require_scope
from coxswain.runtime.health import add_probes, database_check
from services.roster import repository
from services.roster.errors import PreciseErrors
from services.roster.models import (
    REP_ID,
    AbsenceIn,
    AbsenceView,
    AccountIn,
    AccountsIn,
    AccountsSynced,
    LeadAssignments,
    MemberIn,
    OutOfOffice,
    PauseIn,
    PoolMemberView,
    PoolView,
    RepCreate,
    RepSettings,
    RepView,
    RosterView,
)
from services.roster.repository import AccountRecord, UnassignedRecord

log = logging.getLogger(__name__)

MAX_ABSENCES = 100
KEEP_PAST_ABSENCES = timedelta(days=30)
PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or malformed bearer token"},
    403: {"description": "Wrong token, a token without scope roster:write, or no token configured"},
    404: {"description": "No such rep, pool, account or lead"},
    422: {"description": "The request does not validate; `detail` names each problem"},
}


@dataclass(frozen=True)
class RosterContext:
    """What the endpoints need from the process; as a dependency it binds itself to the request."""

    engine: AsyncEngine
    tokens: TokenTable
    agreement: Callable[[], Agreement]
    clock: Callable[[], datetime]

    async def __call__(self, request: Request) -> None:
        request.state.roster = self


def roster_context(request: Request) -> RosterContext:
    context = getattr(request.state, "roster", None)
    if not isinstance(context, RosterContext):
        raise RuntimeError("the roster router is served through create_roster_router, which binds its context")
    return context


Context = Annotated[RosterContext, Depends(roster_context)]


async def roster_writer(request: Request, context: Context) -> str:
    """The name of the token that acts (scope roster:write), for the audit trail."""
    return await require_scope(request, "roster:write", context.tokens, context.engine, context.clock)


Writer = Annotated[str, Depends(roster_writer)]


def valid_rep_id(rep_id: str) -> str:
    if not REP_ID.match(rep_id):
        raise HTTPException(422, f"rep id {rep_id!r} is not valid: lower-case letters, digits, '_', '.', '-'")
    return rep_id


RepId = Annotated[str, Depends(valid_rep_id)]


def known_pool(pool_id: str, context: Context) -> str:
    pools = [pool.id for pool in context.agreement().routing.pools]
    if pool_id not in pools:
        raise HTTPException(
            404, f"pool {pool_id!r} is not in agreement {context.agreement().version}; pools: {', '.join(pools)}"
        )
    return pool_id


PoolId = Annotated[str, Depends(known_pool)]


def domain_name(domain: str) -> str:
    normal = normalize_domain(domain)
    if normal is None:
        raise HTTPException(422, f"{domain!r} is not a domain name")
    return normal


Domain = Annotated[str, Depends(domain_name)]

router = APIRouter(
    route_class=PreciseErrors,
    dependencies=[Depends(roster_writer)],
    tags=["roster"],
    responses=PROBLEMS,
    # A body without a Content-Type is read as JSON, as clients of this API have always sent it.
    strict_content_type=False,
)


# --------------------------------------------------------------------------- reading the roster


async def roster_now(connection: AsyncConnection, context: RosterContext) -> tuple[Roster, RosterOverrides]:
    overrides = await repository.overrides(connection)
    return build_roster(context.agreement(), overrides), overrides


def rep_view(profile: RepProfile, load: RepLoad, now: datetime, override: RepOverride | None) -> RepView:
    return RepView(
        id=profile.id,
        name=profile.name,
        timezone=profile.timezone,
        calendar=profile.calendar_name,
        capacity=profile.capacity,
        daily_cap=profile.daily_cap,
        started_on=profile.started_on,
        ramp_weeks=profile.ramp_weeks,
        paused=profile.paused,
        pause_reason=profile.pause_reason,
        out_of_office=[OutOfOffice(id=p.id, start=p.start, end=p.end, reason=p.reason) for p in profile.out_of_office],
        crm=profile.crm,
        overridden=sorted(override.model_fields_set) if override else [],
        unavailable_because=unavailable_because(profile, now),
        open_load=load.open_load,
        open_leads=load.open_leads,
        assigned_today=assigned_today(load, profile, now),
    )


def pool_view(roster: Roster, pool_id: str, now: datetime) -> PoolView:
    return PoolView(
        id=pool_id,
        members=[
            PoolMemberView(
                rep=member.rep,
                weight=member.weight,
                effective_weight=effective_weight(member.weight, roster.reps.get(member.rep), now),
            )
            for member in roster.pools[pool_id]
        ],
    )


async def current_rep(connection: AsyncConnection, context: RosterContext, rep_id: str) -> RepView:
    roster, overrides = await roster_now(connection, context)
    profile = roster.reps.get(rep_id)
    if profile is None:
        raise HTTPException(404, f"rep {rep_id!r} is not in the roster (agreement {context.agreement().version})")
    loads = await repository.loads(connection)
    return rep_view(profile, loads.get(rep_id, RepLoad()), context.clock(), overrides.reps.get(rep_id))


async def known_rep(connection: AsyncConnection, context: RosterContext, rep_id: str) -> None:
    roster, _ = await roster_now(connection, context)
    if rep_id not in roster.reps:
        raise HTTPException(
            404, f"rep {rep_id!r} is not in the roster; add them to the agreement or with POST /v1/reps"
        )


# --------------------------------------------------------------------------- changing it


async def save_override(
    connection: AsyncConnection, context: RosterContext, rep_id: str, body: dict[str, Any], now: datetime
) -> None:
    """Store the rep's override if the agreement can take it; a 422 says why not."""
    try:
        override = RepOverride.model_validate(body)
        apply_override(context.agreement(), rep_id, override)
    except (ValidationError, OverrideRejected) as exc:
        raise HTTPException(422, f"rep {rep_id!r}: {exc}") from None
    await repository.save_override(connection, rep_id, override, now)


async def audited(
    connection: AsyncConnection, context: RosterContext, token: str, action: str, target: str, **detail: str
) -> None:
    """Record a change in the transaction that makes it (coxswain/runtime/audit.py)."""
    await audit.record(
        connection, token=token, action=action, target=target, outcome="done", at=context.clock(), detail=detail
    )


async def set_paused(context: RosterContext, token: str, rep_id: str, paused: bool, reason: str | None) -> RepView:
    async with context.engine.begin() as connection:
        await repository.bump_revision(connection, context.clock())
        await known_rep(connection, context, rep_id)
        body = {**await repository.stored_override(connection, rep_id), "paused": paused, "pause_reason": reason}
        await save_override(connection, context, rep_id, body, context.clock())
        view = await current_rep(connection, context, rep_id)
        await audited(connection, context, token, "rep.pause" if paused else "rep.unpause", rep_id)
    log.info("rep %s: rep_id=%s", "paused" if paused else "unpaused", rep_id)
    return view


# --------------------------------------------------------------------------- endpoints


@router.get("/v1/roster")
async def get_roster(context: Context) -> RosterView:
    """Every rep (settings in force, availability now, load) and every pool (members, weights)."""
    async with context.engine.connect() as connection:
        roster, overrides = await roster_now(connection, context)
        loads = await repository.loads(connection)
    now = context.clock()
    return RosterView(
        agreement_version=context.agreement().version,
        revision=roster.revision,
        reps=[
            rep_view(profile, loads.get(rep_id, RepLoad()), now, overrides.reps.get(rep_id))
            for rep_id, profile in roster.reps.items()
        ],
        pools=[pool_view(roster, pool_id, now) for pool_id in roster.pools],
    )


@router.get("/v1/reps/{rep_id}")
async def get_rep(rep_id: RepId, context: Context) -> RepView:
    async with context.engine.connect() as connection:
        return await current_rep(connection, context, rep_id)


@router.post("/v1/reps", status_code=201, responses={409: {"description": "The rep is already in the roster"}})
async def create_rep(created: RepCreate, context: Context, token: Writer) -> RepView:
    """Add a rep who is not in the agreement (a new hire); put them in pools with PUT .../members."""
    async with context.engine.begin() as connection:
        await repository.bump_revision(connection, context.clock())
        roster, _ = await roster_now(connection, context)
        if created.id in roster.reps:
            raise HTTPException(409, f"rep {created.id!r} is already in the roster; change them with PATCH")
        body = created.model_dump(exclude_unset=True, exclude={"id"})
        await save_override(connection, context, created.id, body, context.clock())
        view = await current_rep(connection, context, created.id)
        await audited(connection, context, token, "rep.create", created.id)
    log.info("rep added: rep_id=%s", created.id)
    return view


@router.patch("/v1/reps/{rep_id}")
async def change_rep(rep_id: RepId, change: RepSettings, context: Context, token: Writer) -> RepView:
    """Change a rep's settings; the next lead is routed with them."""
    if not change.model_fields_set:
        raise HTTPException(422, f"nothing to change; give any of {', '.join(RepSettings.model_fields)}")
    fields = ",".join(sorted(change.model_fields_set))
    async with context.engine.begin() as connection:
        await repository.bump_revision(connection, context.clock())
        await known_rep(connection, context, rep_id)
        body = {**await repository.stored_override(connection, rep_id), **change.model_dump(exclude_unset=True)}
        await save_override(connection, context, rep_id, body, context.clock())
        view = await current_rep(connection, context, rep_id)
        await audited(connection, context, token, "rep.change", rep_id, fields=fields)
    log.info("rep changed: rep_id=%s fields=%s", rep_id, fields)
    return view


@router.post("/v1/reps/{rep_id}/pause")
async def pause(rep_id: RepId, context: Context, token: Writer, given: PauseIn | None = None) -> RepView:
    """The rep takes no new leads until unpaused; their place in every rotation is kept."""
    return await set_paused(context, token, rep_id, True, given.reason if given else None)


@router.post("/v1/reps/{rep_id}/unpause")
async def unpause(rep_id: RepId, context: Context, token: Writer) -> RepView:
    return await set_paused(context, token, rep_id, False, None)


@router.post("/v1/reps/{rep_id}/out-of-office", status_code=201)
async def add_absence(rep_id: RepId, given: AbsenceIn, context: Context, token: Writer) -> AbsenceView:
    """Add an out-of-office period; the rep gets no leads within it."""
    absence = Absence(**given.model_dump())
    now = context.clock()
    async with context.engine.begin() as connection:
        await repository.bump_revision(connection, now)
        await known_rep(connection, context, rep_id)
        body = await repository.stored_override(connection, rep_id)
        kept = [a for a in body.get("absences", []) if datetime.fromisoformat(a["end"]) > now - KEEP_PAST_ABSENCES]
        if len(kept) >= MAX_ABSENCES:
            raise HTTPException(422, f"rep {rep_id!r} has {len(kept)} out-of-office periods; delete some first")
        body["absences"] = [*kept, absence.model_dump(mode="json")]
        await save_override(connection, context, rep_id, body, now)
        await audited(connection, context, token, "rep.out_of_office.add", rep_id, absence_id=str(absence.id))
    log.info("out of office added: rep_id=%s absence_id=%s", rep_id, absence.id)
    return AbsenceView(id=absence.id, start=absence.start, end=absence.end, reason=absence.reason)


@router.delete("/v1/reps/{rep_id}/out-of-office/{absence_id}", status_code=204)
async def remove_absence(rep_id: RepId, absence_id: str, context: Context, token: Writer) -> Response:
    async with context.engine.begin() as connection:
        await repository.bump_revision(connection, context.clock())
        body = await repository.stored_override(connection, rep_id)
        absences = body.get("absences", [])
        kept = [a for a in absences if a.get("id") != absence_id]
        if len(kept) == len(absences):
            raise HTTPException(404, f"rep {rep_id!r} has no runtime out-of-office period {absence_id!r}")
        await save_override(connection, context, rep_id, {**body, "absences": kept}, context.clock())
        await audited(connection, context, token, "rep.out_of_office.remove", rep_id, absence_id=absence_id)
    return Response(status_code=204)


@router.get("/v1/pools")
async def get_pools(context: Context) -> list[PoolView]:
    async with context.engine.connect() as connection:
        roster, _ = await roster_now(connection, context)
    return [pool_view(roster, pool_id, context.clock()) for pool_id in roster.pools]


@router.get("/v1/pools/{pool_id}")
async def get_pool(pool_id: PoolId, context: Context) -> PoolView:
    async with context.engine.connect() as connection:
        roster, _ = await roster_now(connection, context)
    return pool_view(roster, pool_id, context.clock())


@router.put("/v1/pools/{pool_id}/members/{rep_id}")
async def put_member(pool_id: PoolId, rep_id: RepId, member: MemberIn, context: Context, token: Writer) -> PoolView:
    """Add the rep to the pool or change their weight; other members' credits stay as they are."""
    async with context.engine.begin() as connection:
        await repository.bump_revision(connection, context.clock())
        roster, _ = await roster_now(connection, context)
        if rep_id not in roster.reps:
            raise HTTPException(422, f"rep {rep_id!r} is not in the roster; add them first with POST /v1/reps")
        await repository.set_member(connection, pool_id, rep_id, member.weight, context.clock())
        roster, _ = await roster_now(connection, context)
        await audited(connection, context, token, "pool.member.set", pool_id, rep_id=rep_id, weight=str(member.weight))
    log.info("pool member set: pool_id=%s rep_id=%s weight=%s", pool_id, rep_id, member.weight)
    return pool_view(roster, pool_id, context.clock())


@router.delete("/v1/pools/{pool_id}/members/{rep_id}")
async def remove_member(pool_id: PoolId, rep_id: RepId, context: Context, token: Writer) -> PoolView:
    """Take the rep out of the pool; their credit is kept should they come back."""
    async with context.engine.begin() as connection:
        await repository.bump_revision(connection, context.clock())
        roster, _ = await roster_now(connection, context)
        if rep_id not in {member.rep for member in roster.pools[pool_id]}:
            raise HTTPException(404, f"rep {rep_id!r} is not a member of pool {pool_id!r}")
        await repository.set_member(connection, pool_id, rep_id, None, context.clock())
        roster, _ = await roster_now(connection, context)
        await audited(connection, context, token, "pool.member.remove", pool_id, rep_id=rep_id)
    log.info("pool member removed: pool_id=%s rep_id=%s", pool_id, rep_id)
    return pool_view(roster, pool_id, context.clock())


def checked_accounts(given: AccountsIn) -> dict[str, AccountIn]:
    """The accounts by normal domain (the last one given wins); a 422 names every bad one."""
    rows: dict[str, AccountIn] = {}
    bad = []
    for i, account in enumerate(given.accounts):
        domain = normalize_domain(account.domain)
        if domain is None:
            bad.append(f"accounts.{i}.domain: {account.domain!r} is not a domain name")
        elif account.owner_rep_id is not None and not REP_ID.match(account.owner_rep_id):
            bad.append(f"accounts.{i}.owner_rep_id: {account.owner_rep_id!r} is not a valid rep id")
        else:
            rows[domain] = account
    if bad:
        raise HTTPException(422, "; ".join(bad[:20]) + (f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""))
    return rows


@router.put("/v1/accounts")
async def upsert_accounts(given: AccountsIn, context: Context, token: Writer) -> AccountsSynced:
    """Bulk upsert from the CRM: domain -> owner. An owner of null removes the account."""
    rows = checked_accounts(given)
    owned = [(domain, a.owner_rep_id, a.external_id) for domain, a in rows.items() if a.owner_rep_id is not None]
    removed = [domain for domain, a in rows.items() if a.owner_rep_id is None]
    async with context.engine.begin() as connection:
        await repository.upsert_accounts(connection, owned, context.clock())
        await repository.remove_accounts(connection, removed)
        roster, _ = await roster_now(connection, context)
        await audited(
            connection, context, token, "accounts.sync", "accounts", upserted=str(len(owned)), removed=str(len(removed))
        )
    unknown = sorted({owner for _, owner, _ in owned if owner not in roster.reps})
    log.info("accounts synced: upserted=%s removed=%s unknown_owners=%s", len(owned), len(removed), len(unknown))
    return AccountsSynced(
        upserted=len(owned),
        removed=len(removed),
        unknown_owners=unknown,
        note="leads of accounts whose owner is not in the roster are routed as if the owner were unavailable"
        if unknown
        else None,
    )


@router.get("/v1/accounts/{domain}")
async def get_account(domain: Domain, context: Context) -> AccountRecord:
    async with context.engine.connect() as connection:
        found = await repository.account(connection, domain)
    if found is None:
        raise HTTPException(404, f"no account for domain {domain!r}")
    return found


@router.delete("/v1/accounts/{domain}", status_code=204)
async def delete_account(domain: Domain, context: Context, token: Writer) -> Response:
    async with context.engine.begin() as connection:
        deleted = await repository.delete_account(connection, domain)
        if deleted:
            await audited(connection, context, token, "account.delete", domain)
    if not deleted:
        raise HTTPException(404, f"no account for domain {domain!r}")
    return Response(status_code=204)


@router.get("/v1/assignments/{lead_id}")
async def assignments(lead_id: str, context: Context) -> LeadAssignments:
    """Every assignment of the lead with its decision record, who holds it now, and whether it waits."""
    try:
        lead = uuid.UUID(lead_id)
    except ValueError:
        raise HTTPException(422, f"lead id {lead_id!r} is not a UUID") from None
    async with context.engine.connect() as connection:
        history = await repository.assignments(connection, lead)
        holder = await repository.holder(connection, lead)
        waiting = await repository.waiting(connection, lead)
    if not history and waiting is None:
        raise HTTPException(404, f"the router has not routed lead {lead} (yet)")
    return LeadAssignments(lead_id=lead, holder=holder, assignments=history, unassigned=waiting)


@router.get("/v1/unassigned")
async def unassigned(context: Context, limit: int = 100) -> list[UnassignedRecord]:
    """Leads nobody could take yet, oldest first; the router retries them."""
    if not 1 <= limit <= 1000:
        raise HTTPException(422, f"limit must be 1..1000, got {limit}")
    async with context.engine.connect() as connection:
        return await repository.unassigned(connection, limit)


# --------------------------------------------------------------------------- factories


def create_roster_router(
    engine: AsyncEngine, tokens: TokenTable, agreement: Callable[[], Agreement], clock: Callable[[], datetime]
) -> APIRouter:
    """The roster endpoints bound to one process's engine, tokens, agreement and clock."""
    bound = APIRouter(dependencies=[Depends(RosterContext(engine, tokens, agreement, clock))])
    bound.include_router(router)
    return bound


def create_roster_app(
    engine: AsyncEngine,
    tokens: TokenTable,
    agreement: Callable[[], Agreement],
    clock: Callable[[], datetime],
    lifespan: Callable[[FastAPI], Any] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Coxswain roster API",
        version="1",
        description="Reps, pools, out-of-office, pause and account owners at runtime; why each lead went where.",
        lifespan=lifespan,
    )
    app.include_router(create_roster_router(engine, tokens, agreement, clock))
    add_probes(app, {"database": database_check(engine)})
    return app
