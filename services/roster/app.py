"""Roster API: change who takes leads at runtime, sync account owners, explain assignments.

Every change is stored as an override layered over the agreement's roster and bumps
``roster_revision`` in the same transaction, so the next lead any router decides sees it.
Nothing here touches rotation state: credits are kept per rep id, so pausing a rep, changing a
weight or moving a rep between pools never resets anybody's place in the rotation.

Every endpoint needs a bearer token with scope ``roster:write`` (``coxswain/access.py``; 401
missing or malformed, 403 wrong, without that scope, or no token configured). Bad input is a 422 whose ``detail`` names each problem.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.access import TokenTable
from coxswain.core.accounts import normalize_domain
from coxswain.core.agreement import Agreement
from coxswain.core.capacity import RepLoad, assigned_today
from coxswain.core.documents import NUL_REFUSED, holds_nul
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
from coxswain.runtime.guard import scope_guard
from coxswain.runtime.health import add_probes, database_check

log = logging.getLogger(__name__)

REP_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_ACCOUNTS = 10_000
MAX_ABSENCES = 100
KEEP_PAST_ABSENCES = timedelta(days=30)
Model = TypeVar("Model", bound=BaseModel)


class RepSettings(BaseModel):
    """Any of these; a field given as null clears the setting (e.g. capacity: null = unlimited)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=128)
    timezone: str | None = Field(default=None, description="IANA time zone; daily caps count days here.")
    calendar: str | None = Field(default=None, description="A calendar of the agreement; null: always available.")
    capacity: int | None = Field(default=None, ge=1, le=100_000, description="Most open load, weighted by tier.")
    daily_cap: int | None = Field(default=None, ge=1, le=100_000)
    started_on: date | None = Field(default=None, description="First working day; the ramp counts from here.")
    ramp_weeks: int | None = Field(default=None, ge=0, le=52)


class RepCreate(RepSettings):
    id: str = Field(pattern=REP_ID.pattern)
    name: str = Field(min_length=1, max_length=128)


class PauseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=200)


class AbsenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime
    end: AwareDatetime
    reason: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> AbsenceIn:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} must be after start {self.start.isoformat()}")
        return self


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: int = Field(ge=1, le=100)


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str = Field(min_length=1, max_length=300)
    owner_rep_id: str | None = Field(description="null removes the account's owner (and the account).")
    external_id: str | None = Field(default=None, max_length=256, description="The CRM's account id.")


class AccountsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accounts: list[AccountIn] = Field(min_length=1, max_length=MAX_ACCOUNTS)


def parse_body(model: type[Model], body: bytes) -> Model:
    """Validate a JSON body; a 422 lists every problem with its path."""
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, f"body is not valid JSON: {exc}") from None
    if document is None:
        raise HTTPException(422, f"a JSON body is required ({model.__name__})")
    if holds_nul(document):
        raise HTTPException(422, NUL_REFUSED)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {str(error['msg']).removeprefix('Value error, ')}"
            for error in exc.errors(include_url=False)[:20]
        )
        raise HTTPException(422, f"body does not match {model.__name__}: {problems}") from None


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}}


def _rep_id(rep_id: str) -> str:
    if not REP_ID.match(rep_id):
        raise HTTPException(422, f"rep id {rep_id!r} is not valid: lower-case letters, digits, '_', '.', '-'")
    return rep_id


async def _bump(connection: AsyncConnection, now: datetime) -> int:
    """Serialise roster writers and tell routers the roster changed; the same transaction commits both."""
    revision = await connection.scalar(
        text("UPDATE roster_revision SET revision = revision + 1, updated_at = :now WHERE id = 1 RETURNING revision"),
        {"now": now},
    )
    return int(revision or 0)


async def _overrides(connection: AsyncConnection) -> RosterOverrides:
    revision = await connection.scalar(text("SELECT revision FROM roster_revision WHERE id = 1"))
    reps = await connection.execute(text("SELECT rep_id, body FROM rep_overrides"))
    members = await connection.execute(text("SELECT pool_id, rep_id, weight FROM pool_member_overrides"))
    return RosterOverrides(
        reps={row.rep_id: RepOverride.model_validate(row.body) for row in reps},
        members={(row.pool_id, row.rep_id): row.weight for row in members},
        revision=int(revision or 0),
    )


async def _stored_override(connection: AsyncConnection, rep_id: str) -> dict[str, Any]:
    body = await connection.scalar(text("SELECT body FROM rep_overrides WHERE rep_id = :r"), {"r": rep_id})
    return dict(body) if body else {}


async def _save_override(
    connection: AsyncConnection, agreement: Agreement, rep_id: str, body: dict[str, Any], now: datetime
) -> None:
    try:
        override = RepOverride.model_validate(body)
        apply_override(agreement, rep_id, override)
    except (ValidationError, OverrideRejected) as exc:
        raise HTTPException(422, f"rep {rep_id!r}: {exc}") from None
    await connection.execute(
        text(
            "INSERT INTO rep_overrides (rep_id, body, updated_at) VALUES (:r, CAST(:b AS jsonb), :now) "
            "ON CONFLICT (rep_id) DO UPDATE SET body = EXCLUDED.body, updated_at = EXCLUDED.updated_at"
        ),
        {"r": rep_id, "b": override.model_dump_json(exclude_unset=True), "now": now},
    )


def _rep_view(profile: RepProfile, load: RepLoad, now: datetime, override: RepOverride | None) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "timezone": profile.timezone,
        "calendar": profile.calendar_name,
        "capacity": profile.capacity,
        "daily_cap": profile.daily_cap,
        "started_on": profile.started_on.isoformat() if profile.started_on else None,
        "ramp_weeks": profile.ramp_weeks,
        "paused": profile.paused,
        "pause_reason": profile.pause_reason,
        "out_of_office": [
            {"id": p.id, "start": p.start.isoformat(), "end": p.end.isoformat(), "reason": p.reason}
            for p in profile.out_of_office
        ],
        "overridden": sorted(override.model_fields_set) if override else [],
        "unavailable_because": unavailable_because(profile, now),
        "open_load": load.open_load,
        "open_leads": load.open_leads,
        "assigned_today": assigned_today(load, profile, now),
    }


def _pool_view(roster: Roster, pool_id: str, now: datetime) -> dict[str, Any]:
    return {
        "id": pool_id,
        "members": [
            {
                "rep": member.rep,
                "weight": member.weight,
                "effective_weight": effective_weight(member.weight, roster.reps.get(member.rep), now),
            }
            for member in roster.pools[pool_id]
        ],
    }


async def _loads(connection: AsyncConnection) -> dict[str, RepLoad]:
    rows = await connection.execute(
        text("SELECT rep_id, open_load, open_leads, day, assigned_on_day FROM rep_counters")
    )
    return {row.rep_id: RepLoad(row.open_load, row.open_leads, row.day, row.assigned_on_day) for row in rows}


def create_roster_router(
    engine: AsyncEngine, tokens: TokenTable, agreement: Callable[[], Agreement], clock: Callable[[], datetime]
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(scope_guard(tokens, "roster:write", engine, clock))], tags=["roster"])
    problems: dict[int | str, dict[str, Any]] = {
        401: {"description": "Missing or malformed bearer token"},
        403: {"description": "Wrong token, a token without scope roster:write, or no token configured"},
        404: {"description": "No such rep, pool, account or lead"},
        422: {"description": "The request does not validate; `detail` names each problem"},
    }

    async def audited(connection: AsyncConnection, request: Request, action: str, target: str, **detail: str) -> None:
        """Record a change in its own transaction (coxswain/runtime/audit.py)."""
        token = request.state.token_name
        await audit.record(
            connection, token=token, action=action, target=target, outcome="done", at=clock(), detail=detail
        )

    async def roster_now(connection: AsyncConnection) -> tuple[Roster, RosterOverrides]:
        overrides = await _overrides(connection)
        return build_roster(agreement(), overrides), overrides

    async def rep_view(connection: AsyncConnection, rep_id: str) -> dict[str, Any]:
        roster, overrides = await roster_now(connection)
        profile = roster.reps.get(rep_id)
        if profile is None:
            raise HTTPException(404, f"rep {rep_id!r} is not in the roster (agreement {agreement().version})")
        loads = await _loads(connection)
        return _rep_view(profile, loads.get(rep_id, RepLoad()), clock(), overrides.reps.get(rep_id))

    async def known_rep(connection: AsyncConnection, rep_id: str) -> None:
        roster, _ = await roster_now(connection)
        if rep_id not in roster.reps:
            raise HTTPException(
                404, f"rep {rep_id!r} is not in the roster; add them to the agreement or with POST /v1/reps"
            )

    @router.get("/v1/roster", responses=problems)
    async def get_roster() -> dict[str, Any]:
        """Every rep (settings in force, availability now, load) and every pool (members, weights)."""
        async with engine.connect() as connection:
            roster, overrides = await roster_now(connection)
            loads = await _loads(connection)
        now = clock()
        return {
            "agreement_version": agreement().version,
            "revision": roster.revision,
            "reps": [
                _rep_view(profile, loads.get(rep_id, RepLoad()), now, overrides.reps.get(rep_id))
                for rep_id, profile in roster.reps.items()
            ],
            "pools": [_pool_view(roster, pool_id, now) for pool_id in roster.pools],
        }

    @router.get("/v1/reps/{rep_id}", responses=problems)
    async def get_rep(rep_id: str) -> dict[str, Any]:
        async with engine.connect() as connection:
            return await rep_view(connection, _rep_id(rep_id))

    @router.post(
        "/v1/reps",
        status_code=201,
        responses={**problems, 409: {"description": "The rep is already in the roster"}},
        openapi_extra=_body(RepCreate),
    )
    async def create_rep(request: Request) -> dict[str, Any]:
        """Add a rep who is not in the agreement (a new hire); put them in pools with PUT .../members."""
        created = parse_body(RepCreate, await request.body())
        async with engine.begin() as connection:
            await _bump(connection, clock())
            roster, _ = await roster_now(connection)
            if created.id in roster.reps:
                raise HTTPException(409, f"rep {created.id!r} is already in the roster; change them with PATCH")
            body = created.model_dump(exclude_unset=True, exclude={"id"})
            await _save_override(connection, agreement(), created.id, body, clock())
            view = await rep_view(connection, created.id)
            await audited(connection, request, "rep.create", created.id)
        log.info("rep added: rep_id=%s", created.id)
        return view

    @router.patch("/v1/reps/{rep_id}", responses=problems, openapi_extra=_body(RepSettings))
    async def change_rep(rep_id: str, request: Request) -> dict[str, Any]:
        """Change a rep's settings; the next lead is routed with them."""
        _rep_id(rep_id)
        change = parse_body(RepSettings, await request.body())
        if not change.model_fields_set:
            raise HTTPException(422, f"nothing to change; give any of {', '.join(RepSettings.model_fields)}")
        async with engine.begin() as connection:
            await _bump(connection, clock())
            await known_rep(connection, rep_id)
            body = {**await _stored_override(connection, rep_id), **change.model_dump(exclude_unset=True)}
            await _save_override(connection, agreement(), rep_id, body, clock())
            view = await rep_view(connection, rep_id)
            await audited(connection, request, "rep.change", rep_id, fields=",".join(sorted(change.model_fields_set)))
        log.info("rep changed: rep_id=%s fields=%s", rep_id, ",".join(sorted(change.model_fields_set)))
        return view

    async def set_paused(request: Request, rep_id: str, paused: bool, reason: str | None) -> dict[str, Any]:
        async with engine.begin() as connection:
            await _bump(connection, clock())
            await known_rep(connection, rep_id)
            body = {**await _stored_override(connection, rep_id), "paused": paused, "pause_reason": reason}
            await _save_override(connection, agreement(), rep_id, body, clock())
            view = await rep_view(connection, rep_id)
            await audited(connection, request, "rep.pause" if paused else "rep.unpause", rep_id)
        log.info("rep %s: rep_id=%s", "paused" if paused else "unpaused", rep_id)
        return view

    @router.post("/v1/reps/{rep_id}/pause", responses=problems, openapi_extra=_body(PauseIn))
    async def pause(rep_id: str, request: Request) -> dict[str, Any]:
        """The rep takes no new leads until unpaused; their place in every rotation is kept."""
        body = await request.body()
        given = parse_body(PauseIn, body) if body.strip() else PauseIn()
        return await set_paused(request, _rep_id(rep_id), True, given.reason)

    @router.post("/v1/reps/{rep_id}/unpause", responses=problems)
    async def unpause(rep_id: str, request: Request) -> dict[str, Any]:
        return await set_paused(request, _rep_id(rep_id), False, None)

    @router.post("/v1/reps/{rep_id}/out-of-office", status_code=201, responses=problems, openapi_extra=_body(AbsenceIn))
    async def add_absence(rep_id: str, request: Request) -> dict[str, Any]:
        """Add an out-of-office period; the rep gets no leads within it."""
        _rep_id(rep_id)
        given = parse_body(AbsenceIn, await request.body())
        absence = Absence(start=given.start, end=given.end, reason=given.reason)
        now = clock()
        async with engine.begin() as connection:
            await _bump(connection, now)
            await known_rep(connection, rep_id)
            body = await _stored_override(connection, rep_id)
            kept = [a for a in body.get("absences", []) if datetime.fromisoformat(a["end"]) > now - KEEP_PAST_ABSENCES]
            if len(kept) >= MAX_ABSENCES:
                raise HTTPException(422, f"rep {rep_id!r} has {len(kept)} out-of-office periods; delete some first")
            body["absences"] = [*kept, absence.model_dump(mode="json")]
            await _save_override(connection, agreement(), rep_id, body, now)
            await audited(connection, request, "rep.out_of_office.add", rep_id, absence_id=str(absence.id))
        log.info("out of office added: rep_id=%s absence_id=%s", rep_id, absence.id)
        return absence.model_dump(mode="json")

    @router.delete("/v1/reps/{rep_id}/out-of-office/{absence_id}", status_code=204, responses=problems)
    async def remove_absence(rep_id: str, absence_id: str, request: Request) -> Response:
        _rep_id(rep_id)
        async with engine.begin() as connection:
            await _bump(connection, clock())
            body = await _stored_override(connection, rep_id)
            absences = body.get("absences", [])
            kept = [a for a in absences if a.get("id") != absence_id]
            if len(kept) == len(absences):
                raise HTTPException(404, f"rep {rep_id!r} has no runtime out-of-office period {absence_id!r}")
            await _save_override(connection, agreement(), rep_id, {**body, "absences": kept}, clock())
            await audited(connection, request, "rep.out_of_office.remove", rep_id, absence_id=absence_id)
        return Response(status_code=204)

    @router.get("/v1/pools", responses=problems)
    async def get_pools() -> list[dict[str, Any]]:
        async with engine.connect() as connection:
            roster, _ = await roster_now(connection)
        return [_pool_view(roster, pool_id, clock()) for pool_id in roster.pools]

    def known_pool(pool_id: str) -> None:
        pools = [pool.id for pool in agreement().routing.pools]
        if pool_id not in pools:
            raise HTTPException(
                404, f"pool {pool_id!r} is not in agreement {agreement().version}; pools: {', '.join(pools)}"
            )

    @router.get("/v1/pools/{pool_id}", responses=problems)
    async def get_pool(pool_id: str) -> dict[str, Any]:
        known_pool(pool_id)
        async with engine.connect() as connection:
            roster, _ = await roster_now(connection)
        return _pool_view(roster, pool_id, clock())

    @router.put("/v1/pools/{pool_id}/members/{rep_id}", responses=problems, openapi_extra=_body(MemberIn))
    async def put_member(pool_id: str, rep_id: str, request: Request) -> dict[str, Any]:
        """Add the rep to the pool or change their weight; other members' credits stay as they are."""
        known_pool(pool_id)
        _rep_id(rep_id)
        member = parse_body(MemberIn, await request.body())
        async with engine.begin() as connection:
            await _bump(connection, clock())
            roster, _ = await roster_now(connection)
            if rep_id not in roster.reps:
                raise HTTPException(422, f"rep {rep_id!r} is not in the roster; add them first with POST /v1/reps")
            await _set_member(connection, pool_id, rep_id, member.weight, clock())
            roster, _ = await roster_now(connection)
            await audited(connection, request, "pool.member.set", pool_id, rep_id=rep_id, weight=str(member.weight))
        log.info("pool member set: pool_id=%s rep_id=%s weight=%s", pool_id, rep_id, member.weight)
        return _pool_view(roster, pool_id, clock())

    @router.delete("/v1/pools/{pool_id}/members/{rep_id}", responses=problems)
    async def remove_member(pool_id: str, rep_id: str, request: Request) -> dict[str, Any]:
        """Take the rep out of the pool; their credit is kept should they come back."""
        known_pool(pool_id)
        _rep_id(rep_id)
        async with engine.begin() as connection:
            await _bump(connection, clock())
            roster, _ = await roster_now(connection)
            if rep_id not in {member.rep for member in roster.pools[pool_id]}:
                raise HTTPException(404, f"rep {rep_id!r} is not a member of pool {pool_id!r}")
            await _set_member(connection, pool_id, rep_id, None, clock())
            roster, _ = await roster_now(connection)
            await audited(connection, request, "pool.member.remove", pool_id, rep_id=rep_id)
        log.info("pool member removed: pool_id=%s rep_id=%s", pool_id, rep_id)
        return _pool_view(roster, pool_id, clock())

    @router.put("/v1/accounts", responses=problems, openapi_extra=_body(AccountsIn))
    async def upsert_accounts(request: Request) -> dict[str, Any]:
        """Bulk upsert from the CRM: domain -> owner. An owner of null removes the account."""
        given = parse_body(AccountsIn, await request.body())
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
        owned = [(domain, a) for domain, a in rows.items() if a.owner_rep_id is not None]
        removed = [domain for domain, a in rows.items() if a.owner_rep_id is None]
        now = clock()
        async with engine.begin() as connection:
            if owned:
                await connection.execute(
                    text(
                        "INSERT INTO accounts (domain, owner_rep_id, external_id, updated_at) "
                        "SELECT d, o, e, :now FROM unnest(CAST(:d AS text[]), CAST(:o AS text[]), CAST(:e AS text[])) "
                        "AS t(d, o, e) ON CONFLICT (domain) DO UPDATE SET owner_rep_id = EXCLUDED.owner_rep_id, "
                        "external_id = EXCLUDED.external_id, updated_at = EXCLUDED.updated_at"
                    ),
                    {
                        "d": [domain for domain, _ in owned],
                        "o": [a.owner_rep_id for _, a in owned],
                        "e": [a.external_id for _, a in owned],
                        "now": now,
                    },
                )
            if removed:
                await connection.execute(text("DELETE FROM accounts WHERE domain = ANY(:d)"), {"d": removed})
            roster, _ = await roster_now(connection)
            await audited(
                connection, request, "accounts.sync", "accounts", upserted=str(len(owned)), removed=str(len(removed))
            )
        unknown = sorted({a.owner_rep_id for _, a in owned if a.owner_rep_id and a.owner_rep_id not in roster.reps})
        log.info("accounts synced: upserted=%s removed=%s unknown_owners=%s", len(owned), len(removed), len(unknown))
        return {
            "upserted": len(owned),
            "removed": len(removed),
            "unknown_owners": unknown,
            "note": "leads of accounts whose owner is not in the roster are routed as if the owner were unavailable"
            if unknown
            else None,
        }

    @router.get("/v1/accounts/{domain}", responses=problems)
    async def get_account(domain: str) -> dict[str, Any]:
        normal = normalize_domain(domain)
        if normal is None:
            raise HTTPException(422, f"{domain!r} is not a domain name")
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT domain, owner_rep_id, external_id, updated_at FROM accounts WHERE domain = :d"),
                    {"d": normal},
                )
            ).one_or_none()
        if row is None:
            raise HTTPException(404, f"no account for domain {normal!r}")
        return {**row._asdict(), "updated_at": row.updated_at.isoformat()}

    @router.delete("/v1/accounts/{domain}", status_code=204, responses=problems)
    async def delete_account(domain: str, request: Request) -> Response:
        normal = normalize_domain(domain)
        if normal is None:
            raise HTTPException(422, f"{domain!r} is not a domain name")
        async with engine.begin() as connection:
            deleted = await connection.scalar(text("DELETE FROM accounts WHERE domain = :d RETURNING 1"), {"d": normal})
            if deleted is not None:
                await audited(connection, request, "account.delete", normal)
        if deleted is None:
            raise HTTPException(404, f"no account for domain {normal!r}")
        return Response(status_code=204)

    @router.get("/v1/assignments/{lead_id}", responses=problems)
    async def assignments(lead_id: str) -> JSONResponse:
        """Every assignment of the lead with its decision record, who holds it now, and whether it waits."""
        try:
            lead = uuid.UUID(lead_id)
        except ValueError:
            raise HTTPException(422, f"lead id {lead_id!r} is not a UUID") from None
        async with engine.connect() as connection:
            made = await connection.execute(
                text(
                    "SELECT assignment_id, decision_key, rep_id, pool_id, rule_id, reason, tier, agreement_version, "
                    "routed_at, decision FROM assignments WHERE lead_id = :l ORDER BY routed_at, assignment_id"
                ),
                {"l": lead},
            )
            history = [row._asdict() for row in made]
            holder = (
                await connection.execute(
                    text(
                        "SELECT assignment_id, rep_id, pool_id, owners, open, load, opened_at, released_at "
                        "FROM lead_routing WHERE lead_id = :l"
                    ),
                    {"l": lead},
                )
            ).one_or_none()
            waiting = (
                await connection.execute(
                    text(
                        "SELECT decision_key, kind, reason, waiting_for, pool_id, rule_id, parked_at, last_tried_at, "
                        "attempts FROM unassigned_leads WHERE lead_id = :l"
                    ),
                    {"l": lead},
                )
            ).one_or_none()
        if not history and waiting is None:
            raise HTTPException(404, f"the router has not routed lead {lead} (yet)")
        body = {
            "lead_id": lead,
            "holder": holder._asdict() if holder else None,
            "assignments": history,
            "unassigned": waiting._asdict() if waiting else None,
        }
        return JSONResponse(orjson.loads(orjson.dumps(body, default=str)))

    @router.get("/v1/unassigned", responses=problems)
    async def unassigned(limit: int = 100) -> JSONResponse:
        """Leads nobody could take yet, oldest first; the router retries them."""
        if not 1 <= limit <= 1000:
            raise HTTPException(422, f"limit must be 1..1000, got {limit}")
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT lead_id, decision_key, kind, reason, waiting_for, pool_id, rule_id, tier, parked_at, "
                    "last_tried_at, attempts FROM unassigned_leads ORDER BY parked_at LIMIT :n"
                ),
                {"n": limit},
            )
            found = [row._asdict() for row in rows]
        return JSONResponse(orjson.loads(orjson.dumps(found, default=str)))

    return router


async def _set_member(
    connection: AsyncConnection, pool_id: str, rep_id: str, weight: int | None, now: datetime
) -> None:
    await connection.execute(
        text(
            "INSERT INTO pool_member_overrides (pool_id, rep_id, weight, updated_at) VALUES (:p, :r, :w, :now) "
            "ON CONFLICT (pool_id, rep_id) DO UPDATE SET weight = EXCLUDED.weight, updated_at = EXCLUDED.updated_at"
        ),
        {"p": pool_id, "r": rep_id, "w": weight, "now": now},
    )


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
