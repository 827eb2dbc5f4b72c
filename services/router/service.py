"""Router shell: load what the decision needs under a lock, ask the core, store the outcome and
the new rotation and counters in the same transaction, return the facts.

Routing decisions are serialised across router instances by one transaction-scoped advisory
lock: a decision reads several pools and reps (owner, matched pool, fallback pool, their loads)
and a batch transaction makes several decisions, so row locks alone could be taken in opposite
orders by two instances and deadlock. The lock is released by the commit (or by PostgreSQL when
a killed process's connection drops), so a crash never leaves it held.

Nobody eligible is not an error: the lead waits in ``unassigned_leads`` (with a
``leads.unassigned.v1`` fact) and ``run_retry`` routes it once someone becomes eligible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import date, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.accounts import lead_domain, parent_domains
from coxswain.core.agreement import Agreement
from coxswain.core.capacity import RepLoad
from coxswain.core.roster import RepOverride, Roster, RosterOverrides, build_roster
from coxswain.core.routing import Rotation, RoutingDecision, RoutingInput, Situation, route, select_pool
from coxswain.core.sla import first_touch_due
from coxswain.runtime import outbox
from coxswain.runtime.consumer import Handler, PermanentError, is_connection_error
from coxswain.settings import RouterConfig
from schemas.events import (
    ActivityRecordedV1,
    ActivityType,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadRoutedV1,
    LeadStageChangedV1,
    LeadUnassignedV1,
    Playbook,
    ReassignmentRequestedV1,
    Stage,
    Tier,
)

log = logging.getLogger(__name__)

ROUTING_LOCK = 0x726F757465  # advisory lock key: "route"

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadQualifiedV1.topic: (LeadQualifiedV1,),
    ReassignmentRequestedV1.topic: (ReassignmentRequestedV1,),
    ActivityRecordedV1.topic: (ActivityRecordedV1,),
    LeadStageChangedV1.topic: (LeadStageChangedV1,),
}

# A lead stops counting against its rep's capacity once sales has acted on it.
RELEASING_ACTIVITIES = frozenset({ActivityType.sal_accepted, ActivityType.sal_rejected, ActivityType.disqualified})
RELEASING_STAGES = frozenset(
    {Stage.sal, Stage.sql, Stage.opportunity, Stage.customer, Stage.recycled, Stage.disqualified}
)


class RouteRequest(BaseModel):
    """What a decision is asked for; stored with a parked lead so a retry asks the same question."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["qualified", "reassignment"]
    decision_key: uuid.UUID
    lead_id: uuid.UUID
    attributes: LeadAttributes
    tier: Tier
    source: str
    persona: str | None = None
    playbook: Playbook | None = None
    exclude: tuple[str, ...] = ()
    replaces_assignment_id: uuid.UUID | None = None

    def routing_input(self) -> RoutingInput:
        return RoutingInput(attributes=self.attributes, tier=self.tier, source=self.source, persona=self.persona)


class RosterCache:
    """The roster in force, rebuilt only when the agreement or ``roster_revision`` (bumped by every
    roster change, in its transaction) moved."""

    def __init__(self) -> None:
        self._built: tuple[Agreement, Roster] | None = None

    async def get(self, connection: AsyncConnection, agreement: Agreement, revision: int) -> Roster:
        if self._built is None or self._built[0] is not agreement or self._built[1].revision != revision:
            overrides = await load_overrides(connection, revision)
            self._built = (agreement, build_roster(agreement, overrides))
        return self._built[1]


async def load_overrides(connection: AsyncConnection, revision: int) -> RosterOverrides:
    reps = await connection.execute(text("SELECT rep_id, body FROM rep_overrides"))
    members = await connection.execute(text("SELECT pool_id, rep_id, weight FROM pool_member_overrides"))
    return RosterOverrides(
        reps={row.rep_id: RepOverride.model_validate(row.body) for row in reps},
        members={(row.pool_id, row.rep_id): row.weight for row in members},
        revision=revision,
    )


async def begin_routing(connection: AsyncConnection) -> int:
    """Take the routing lock for the rest of the transaction; return the roster revision."""
    # Each later statement takes a fresh snapshot, so it sees whatever the previous holder committed.
    row = (
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:k), (SELECT revision FROM roster_revision WHERE id = 1) AS revision"),
            {"k": ROUTING_LOCK},
        )
    ).one()
    return int(row.revision or 0)


async def load_situation(
    connection: AsyncConnection,
    pool_ids: Iterable[str],
    rep_ids: Iterable[str],
    domain: str | None,
    lead_id: uuid.UUID,
    now: datetime,
) -> tuple[dict[str, Rotation], dict[str, RepLoad], str | None, str | None, str | None]:
    """One round trip for what a decision reads: the pools' rotation rows (locked), the account
    owning the domain or a parent domain, the holder of another open lead from the domain, and the
    counters of every rep that may be chosen. The caller already holds the routing lock, so this
    statement's snapshot includes everything the previous decision committed."""
    pools = sorted(set(pool_ids))
    query = text(
        "WITH rot AS MATERIALIZED (SELECT pool_id, current, assigned, away FROM pool_rotation "
        "WHERE pool_id = ANY(:pools) ORDER BY pool_id FOR UPDATE), "
        "acct AS (SELECT owner_rep_id, domain FROM accounts WHERE domain = ANY(:candidates) "
        "ORDER BY length(domain) DESC LIMIT 1), "
        "held AS (SELECT rep_id FROM lead_routing WHERE open AND domain = :d AND lead_id <> :l "
        "ORDER BY opened_at DESC LIMIT 1) "
        "SELECT (SELECT COALESCE(jsonb_agg(jsonb_build_array(pool_id, current, assigned, away)), '[]') FROM rot) "
        "AS rotations, (SELECT owner_rep_id FROM acct) AS account_owner, (SELECT domain FROM acct) AS account_domain, "
        "(SELECT rep_id FROM held) AS open_owner, (SELECT COALESCE(jsonb_agg(jsonb_build_array(rep_id, open_load, "
        "open_leads, day, assigned_on_day)), '[]') FROM rep_counters WHERE rep_id = ANY(:reps) "
        "OR rep_id IN (SELECT owner_rep_id FROM acct) OR rep_id IN (SELECT rep_id FROM held)) AS counters"
    )
    parameters = {
        "pools": pools,
        "reps": sorted(set(rep_ids)),
        "candidates": list(parent_domains(domain)) if domain else [],
        "d": domain,
        "l": lead_id,
    }
    row = (await connection.execute(query, parameters)).one()
    if len(row.rotations) < len(pools):
        await connection.execute(
            text(
                "INSERT INTO pool_rotation (pool_id, current, assigned, updated_at) "
                "SELECT unnest(CAST(:ids AS text[])), '{}', '{}', :now ON CONFLICT DO NOTHING"
            ),
            {"ids": pools, "now": now},
        )
        row = (await connection.execute(query, parameters)).one()
    rotations = {
        pool_id: Rotation(current=current, assigned=assigned, away=frozenset(away))
        for pool_id, current, assigned, away in row.rotations
    }
    loads = {
        rep_id: RepLoad(open_load, open_leads, date.fromisoformat(day) if day else None, on_day)
        for rep_id, open_load, open_leads, day, on_day in row.counters
    }
    return rotations, loads, row.account_owner, row.account_domain, row.open_owner


async def route_request(
    connection: AsyncConnection, agreement: Agreement, roster: Roster, request: RouteRequest, now: datetime
) -> tuple[RoutingDecision, list[Event]]:
    """Decide, and store the assignment or park the lead; the caller holds the routing lock."""
    lead = request.routing_input()
    domain = lead_domain(request.attributes, agreement.routing.ownership.free_mail_domains)
    _, pool_id = select_pool(lead, agreement)
    pools = {pool_id, agreement.routing.fallback_pool}
    reps = {member.rep for pool in pools for member in roster.pools.get(pool, ())}
    rotations, loads, account_owner, account_domain, open_owner = await load_situation(
        connection, pools, reps, domain, request.lead_id, now
    )
    situation = Situation(now, roster, rotations, loads, account_owner, account_domain, open_owner)
    decision = route(lead, agreement, situation, exclude=request.exclude)
    if decision.rep_id is None:
        return decision, await park(connection, request, decision, agreement, now)
    before = {"rotations": {pool: _rotation_json(rotations[pool]) for pool in decision.rotations_after}}
    before["counters"] = {decision.rep_id: _load_json(loads.get(decision.rep_id, RepLoad()))}
    if not await record(connection, request, decision, agreement, roster.revision, before, now):
        return decision, []
    assignment_id = uuid.uuid5(request.decision_key, "assignment")
    routed = LeadRoutedV1(
        event_id=uuid.uuid5(request.decision_key, "routed"),
        lead_id=request.lead_id,
        occurred_at=now,
        agreement_version=agreement.version,
        caused_by=request.decision_key,
        assignment_id=assignment_id,
        rep_id=decision.rep_id,
        pool_id=decision.pool_id,
        rule_id=decision.rule_id,
        reason=decision.reason,
        tier=request.tier,
        routed_at=now,
        follow_up_due_at=first_touch_due(agreement, request.tier, now, rep_id=decision.rep_id),
        candidates=decision.candidates,
        playbook=request.playbook,
        matched_by=None if decision.matched_by == "none" else decision.matched_by,
        replaces_assignment_id=request.replaces_assignment_id,
    )
    log.info(
        "lead routed: lead_id=%s assignment_id=%s rep_id=%s pool_id=%s rule_id=%s matched_by=%s",
        request.lead_id,
        assignment_id,
        decision.rep_id,
        decision.pool_id,
        decision.rule_id,
        decision.matched_by,
    )
    return decision, [routed]


async def record(
    connection: AsyncConnection,
    request: RouteRequest,
    decision: RoutingDecision,
    agreement: Agreement,
    revision: int,
    before: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Store the assignment with its rotation and counters; false if this decision was already made."""
    assert decision.rep_id is not None
    assignment_id = uuid.uuid5(request.decision_key, "assignment")
    lead_load = agreement.routing.load[request.tier]
    record_json = {
        "input": request.model_dump(mode="json", include={"attributes", "tier", "source", "persona"}),
        "request": request.model_dump(mode="json", include={"kind", "exclude", "replaces_assignment_id"}),
        "matched_by": decision.matched_by,
        "rule_id": decision.rule_id,
        "pool_id": decision.pool_id,
        "reason": decision.reason,
        "domain": decision.domain,
        "candidates": [candidate.model_dump(mode="json") for candidate in decision.candidates],
        "before": before,
        "after": {
            "rotations": {pool: _rotation_json(rotation) for pool, rotation in decision.rotations_after.items()},
            "counters": {decision.rep_id: _load_json(decision.load_after or RepLoad())},
        },
        "load": lead_load,
        "agreement_version": agreement.version,
        "roster_revision": revision,
    }
    rotations = [
        {"pool_id": pool_id, **_rotation_json(rotation)} for pool_id, rotation in decision.rotations_after.items()
    ]
    day = decision.load_after.day if decision.load_after is not None else now.date()
    # One statement: the assignment and, only if it is new, the rotation, the lead's holder, the
    # rep's counters and the end of any wait in the unassigned queue. Every part sees the same
    # snapshot, so ``previous`` is the holder before this assignment.
    row = (
        await connection.execute(
            text(
                "WITH ins AS (INSERT INTO assignments (assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, "
                "reason, tier, agreement_version, routed_at, decision) VALUES (:a, :k, :l, :r, :p, :rule, :reason, "
                ":tier, :v, :now, CAST(:d AS jsonb)) ON CONFLICT (decision_key) DO NOTHING RETURNING 1), "
                "rot AS (UPDATE pool_rotation AS p SET current = v.current, assigned = v.assigned, away = v.away, "
                "updated_at = :now FROM jsonb_to_recordset(CAST(:rot AS jsonb)) "
                "AS v(pool_id text, current jsonb, assigned jsonb, away jsonb) "
                "WHERE p.pool_id = v.pool_id AND EXISTS (SELECT 1 FROM ins)), "
                "previous AS (SELECT rep_id, load, open FROM lead_routing WHERE lead_id = :l FOR UPDATE), "
                "held AS (INSERT INTO lead_routing (lead_id, assignment_id, rep_id, pool_id, owners, domain, tier, "
                "load, open, opened_at, released_at) SELECT :l, :a, :r, :p, jsonb_build_array(CAST(:r AS text)), "
                ":domain, :tier, :load, true, :now, NULL FROM ins ON CONFLICT (lead_id) DO UPDATE SET "
                "assignment_id = EXCLUDED.assignment_id, rep_id = EXCLUDED.rep_id, pool_id = EXCLUDED.pool_id, "
                "owners = lead_routing.owners || EXCLUDED.owners, domain = EXCLUDED.domain, tier = EXCLUDED.tier, "
                "load = EXCLUDED.load, open = true, opened_at = EXCLUDED.opened_at, released_at = NULL), "
                "counted AS (INSERT INTO rep_counters (rep_id, open_load, open_leads, day, assigned_on_day, "
                "updated_at) SELECT :r, :load, 1, :day, 1, :now FROM ins ON CONFLICT (rep_id) DO UPDATE SET "
                "open_load = rep_counters.open_load + EXCLUDED.open_load, open_leads = rep_counters.open_leads + 1, "
                "assigned_on_day = CASE WHEN rep_counters.day = EXCLUDED.day "
                "THEN rep_counters.assigned_on_day + 1 ELSE 1 END, day = EXCLUDED.day, updated_at = EXCLUDED.updated_at), "
                "gone AS (DELETE FROM unassigned_leads WHERE lead_id = :l AND EXISTS (SELECT 1 FROM ins)) "
                "SELECT EXISTS (SELECT 1 FROM ins) AS inserted, previous.rep_id, previous.load, previous.open "
                "FROM (SELECT 1) AS one LEFT JOIN previous ON true"
            ),
            {
                "a": assignment_id,
                "k": request.decision_key,
                "l": request.lead_id,
                "r": decision.rep_id,
                "p": decision.pool_id,
                "rule": decision.rule_id,
                "reason": decision.reason,
                "tier": request.tier.value,
                "v": agreement.version,
                "now": now,
                "d": orjson.dumps(record_json).decode(),
                "rot": orjson.dumps(rotations).decode(),
                "domain": decision.domain,
                "load": lead_load,
                "day": day,
            },
        )
    ).one()
    if not row.inserted:
        # Already decided (a redelivery past the inbox): nothing may wait for it any longer.
        await connection.execute(
            text("DELETE FROM unassigned_leads WHERE decision_key = :k"), {"k": request.decision_key}
        )
        return False
    if row.open:
        # Qualified again while still open: the load moves from the previous holder to the new one.
        await _release_load(connection, row.rep_id, row.load, now)
    return True


async def park(
    connection: AsyncConnection, request: RouteRequest, decision: RoutingDecision, agreement: Agreement, now: datetime
) -> list[Event]:
    """Keep the request in the unassigned queue; the fact is published the first time only."""
    first_time = await connection.scalar(
        text(
            "INSERT INTO unassigned_leads (lead_id, decision_key, kind, request, reason, waiting_for, pool_id, "
            "rule_id, tier, agreement_version, parked_at, last_tried_at, attempts) VALUES (:l, :k, :kind, "
            "CAST(:req AS jsonb), :reason, :w, :p, :rule, :t, :v, :now, :now, 1) ON CONFLICT (lead_id) DO UPDATE SET "
            "decision_key = EXCLUDED.decision_key, kind = EXCLUDED.kind, request = EXCLUDED.request, "
            "reason = EXCLUDED.reason, waiting_for = EXCLUDED.waiting_for, pool_id = EXCLUDED.pool_id, "
            "rule_id = EXCLUDED.rule_id, tier = EXCLUDED.tier, agreement_version = EXCLUDED.agreement_version, "
            "parked_at = CASE WHEN unassigned_leads.decision_key = EXCLUDED.decision_key "
            "THEN unassigned_leads.parked_at ELSE EXCLUDED.parked_at END, last_tried_at = EXCLUDED.last_tried_at, "
            "attempts = CASE WHEN unassigned_leads.decision_key = EXCLUDED.decision_key "
            "THEN unassigned_leads.attempts + 1 ELSE 1 END "
            "RETURNING (xmax = 0) OR attempts = 1"
        ),
        {
            "l": request.lead_id,
            "k": request.decision_key,
            "kind": request.kind,
            "req": request.model_dump_json(),
            "reason": decision.reason,
            "w": decision.waiting_for,
            "p": decision.pool_id,
            "rule": decision.rule_id,
            "t": request.tier.value,
            "v": agreement.version,
            "now": now,
        },
    )
    if not first_time:
        return []
    log.warning(
        "lead parked, nobody eligible: lead_id=%s decision_key=%s pool_id=%s waiting_for=%s",
        request.lead_id,
        request.decision_key,
        decision.pool_id,
        decision.waiting_for,
    )
    return [
        LeadUnassignedV1(
            event_id=uuid.uuid5(request.decision_key, "unassigned"),
            lead_id=request.lead_id,
            occurred_at=now,
            agreement_version=agreement.version,
            caused_by=request.decision_key,
            tier=request.tier,
            pool_id=decision.pool_id,
            rule_id=decision.rule_id,
            reason=decision.reason,
            waiting_for_rep=decision.waiting_for,
            candidates=decision.candidates,
        )
    ]


async def _release_load(connection: AsyncConnection, rep_id: str, load: int, now: datetime) -> None:
    await connection.execute(
        text(
            "UPDATE rep_counters SET open_load = GREATEST(open_load - :load, 0), "
            "open_leads = GREATEST(open_leads - 1, 0), updated_at = :now WHERE rep_id = :r"
        ),
        {"r": rep_id, "load": load, "now": now},
    )


async def release(connection: AsyncConnection, lead_id: uuid.UUID, happened_at: datetime, now: datetime) -> None:
    """The lead no longer counts against its rep; an older fact cannot release a newer assignment."""
    await begin_routing(connection)
    row = (
        await connection.execute(
            text(
                "UPDATE lead_routing SET open = false, released_at = :now "
                "WHERE lead_id = :l AND open AND opened_at <= :at RETURNING rep_id, load"
            ),
            {"l": lead_id, "at": happened_at, "now": now},
        )
    ).one_or_none()
    if row is not None:
        await _release_load(connection, row.rep_id, row.load, now)
        log.info("open load released: lead_id=%s rep_id=%s load=%s", lead_id, row.rep_id, row.load)


async def reassignment_request(
    connection: AsyncConnection, event: ReassignmentRequestedV1, k: int
) -> RouteRequest | None:
    """The request to route a reassignment, or None when the assignment was already replaced."""
    row = (
        await connection.execute(
            text("SELECT lead_id, rep_id, decision FROM assignments WHERE assignment_id = :a"),
            {"a": event.assignment_id},
        )
    ).one_or_none()
    if row is None or row.lead_id != event.lead_id:
        raise PermanentError(
            f"reassignment of assignment {event.assignment_id} for lead {event.lead_id}: no such assignment"
        )
    holder = (
        await connection.execute(
            text("SELECT assignment_id, owners FROM lead_routing WHERE lead_id = :l FOR UPDATE"), {"l": event.lead_id}
        )
    ).one_or_none()
    if holder is not None and holder.assignment_id != event.assignment_id:
        log.info(
            "reassignment skipped, assignment already replaced: lead_id=%s assignment_id=%s current=%s",
            event.lead_id,
            event.assignment_id,
            holder.assignment_id,
        )
        return None
    given = row.decision.get("input")
    if not isinstance(given, dict):
        raise PermanentError(f"assignment {event.assignment_id} has no routing input to route again from")
    owners: list[str] = list(holder.owners) if holder is not None else [row.rep_id]
    recent = owners[-k:] if k else []
    return RouteRequest(
        kind="reassignment",
        decision_key=event.event_id,
        lead_id=event.lead_id,
        attributes=LeadAttributes.model_validate(given["attributes"]),
        tier=event.tier,
        source=given["source"],
        persona=given.get("persona"),
        exclude=tuple(sorted({*event.exclude_reps, *recent})),
        replaces_assignment_id=event.assignment_id,
    )


def qualified_request(event: LeadQualifiedV1) -> RouteRequest:
    return RouteRequest(
        kind="qualified",
        decision_key=event.event_id,
        lead_id=event.lead_id,
        attributes=event.attributes,
        tier=event.tier,
        source=event.source,
        persona=event.persona,
        playbook=event.playbook,
    )


def make_handler(agreement: Agreement) -> Handler:
    cache = RosterCache()

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        if isinstance(event, ActivityRecordedV1):
            if event.activity in RELEASING_ACTIVITIES:
                await release(connection, event.lead_id, event.occurred_at, now)
            return []
        if isinstance(event, LeadStageChangedV1):
            if event.to_stage in RELEASING_STAGES:
                await release(connection, event.lead_id, event.occurred_at, now)
            return []
        if not isinstance(event, (LeadQualifiedV1, ReassignmentRequestedV1)):
            raise PermanentError(f"router does not handle {type(event).__name__}")
        revision = await begin_routing(connection)
        if isinstance(event, LeadQualifiedV1):
            request: RouteRequest | None = qualified_request(event)
        else:
            request = await reassignment_request(connection, event, agreement.routing.reassign_exclude_last)
        if request is None:
            return []
        roster = await cache.get(connection, agreement, revision)
        _, facts = await route_request(connection, agreement, roster, request, now)
        return facts

    return handle


async def retry_parked(
    engine: AsyncEngine, agreement: Agreement, cache: RosterCache, clock: Callable[[], datetime], limit: int
) -> tuple[int, int]:
    """Try the oldest parked leads again; (tried, assigned)."""
    async with engine.connect() as connection:
        if not await connection.scalar(text("SELECT EXISTS (SELECT 1 FROM unassigned_leads)")):
            return 0, 0
    async with engine.begin() as connection:
        now = clock()
        revision = await begin_routing(connection)
        rows = await connection.execute(
            text("SELECT request FROM unassigned_leads ORDER BY parked_at LIMIT :n FOR UPDATE SKIP LOCKED"),
            {"n": limit},
        )
        requests = [RouteRequest.model_validate(row.request) for row in rows]
        roster = await cache.get(connection, agreement, revision)
        facts: list[Event] = []
        for request in requests:
            _, found = await route_request(connection, agreement, roster, request, now)
            facts += found
        await outbox.stage(connection, facts, now)
    assigned = sum(isinstance(fact, LeadRoutedV1) for fact in facts)
    if assigned:
        log.info("parked leads routed: tried=%s assigned=%s", len(requests), assigned)
    return len(requests), assigned


async def run_retry(
    engine: AsyncEngine,
    agreement: Callable[[], Agreement],
    config: RouterConfig,
    clock: Callable[[], datetime],
    stop: asyncio.Event,
) -> None:
    """Route parked leads as reps come back (working hours, out-of-office ends, load released)."""
    cache = RosterCache()
    while not stop.is_set():
        try:
            tried, assigned = await retry_parked(engine, agreement(), cache, clock, config.router_retry_batch)
        except Exception as exc:
            log.warning(
                "retrying parked leads failed: error=%s", type(exc).__name__, exc_info=not is_connection_error(exc)
            )
            tried, assigned = 0, 0
        if tried and assigned == tried:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=config.router_retry_seconds)


def _rotation_json(rotation: Rotation) -> dict[str, Any]:
    return {"current": dict(rotation.current), "assigned": dict(rotation.assigned), "away": sorted(rotation.away)}


def _load_json(load: RepLoad) -> dict[str, Any]:
    return {**asdict(load), "day": load.day.isoformat() if load.day else None}
