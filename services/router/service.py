"""Router shell: load what a run of decisions needs under its locks, ask the core for each
decision in order against that state in memory, store the outcomes and the new rotations and
counters in the same transaction (one statement each, whatever the run's length), return the facts.

Routing decisions are serialised only where they conflict: a run takes a transaction-scoped
advisory lock on every lead, domain, pool and rep it may read (``services/router/locks.py`` says
which and why no deadlock), so routers deciding for different pools and reps do not wait for each
other. The locks are released by the commit (or by PostgreSQL when a killed process's connection
drops), so a crash never leaves one held.

Nobody eligible is not an error: the lead waits in ``unassigned_leads`` (with a
``leads.unassigned.v1`` fact) and ``run_retry`` routes it once someone becomes eligible.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core import routing_state
from coxswain.core.accounts import lead_domain, parent_domains
from coxswain.core.agreement import Agreement
from coxswain.core.capacity import RepLoad
from coxswain.core.roster import Roster, build_roster
from coxswain.core.routing import Rotation, RoutingDecision, select_pool
from coxswain.core.routing_state import Holder, RouteRequest, RoutingState
from coxswain.db.models import table
from coxswain.db.roster import load_overrides, roster_revision
from coxswain.runtime import outbox
from coxswain.runtime.consumer import BatchHandler, Handler, PermanentError, one_at_a_time
from coxswain.runtime.outages import about, is_connection_error
from coxswain.runtime.waiting import sleep_or_stop
from coxswain.settings import RouterConfig
from schemas.events import (
    ActivityAcceptedV1,
    Event,
    LeadAttributes,
    LeadQualifiedV1,
    LeadRoutedV1,
    LeadStageChangedV1,
    ReassignmentRequestedV1,
    Tier,
)
from services.router import locks

log = logging.getLogger(__name__)

ACCEPTS: dict[str, tuple[type[Event], ...]] = {
    LeadQualifiedV1.topic: (LeadQualifiedV1,),
    ReassignmentRequestedV1.topic: (ReassignmentRequestedV1,),
    ActivityAcceptedV1.topic: (ActivityAcceptedV1,),
    LeadStageChangedV1.topic: (LeadStageChangedV1,),
}


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


async def begin_routing(connection: AsyncConnection) -> int:
    """The roster revision in force; the locks are taken per run by ``lock_for``."""
    return await roster_revision(connection)


def _domains(requests: Sequence[RouteRequest], agreement: Agreement) -> dict[str, int]:
    """Per domain of the run, how many of its newest open leads a decision may look at: as many as
    the run has leads from it, plus one (a lead never counts as its own domain's holder)."""
    free_mail = agreement.routing.ownership.free_mail_domains
    domains: dict[str, int] = {}
    for request in requests:
        domain = lead_domain(request.attributes, free_mail)
        if domain:
            domains[domain] = domains.get(domain, 1) + 1
    return domains


def _pools(requests: Sequence[RouteRequest], agreement: Agreement) -> set[str]:
    """The pools the requests' rules match. Not the fallback pool: a decision reads it only when
    nobody in its own pool is eligible, and locking it every time would serialise every decision
    again; ``route_requests`` locks it when a decision turns out to need it."""
    return {select_pool(request.routing_input(), agreement)[1] for request in requests}


@dataclass
class Held:
    """The pools and reps whose routing locks this transaction holds for a run."""

    pools: set[str]
    reps: set[str]


async def lock_for(
    connection: AsyncConnection,
    requests: Sequence[RouteRequest],
    agreement: Agreement,
    roster: Roster,
    also_leads: Sequence[uuid.UUID] = (),
) -> Held:
    """Lock every lead, domain, pool and rep the requests (and releases of ``also_leads``) may
    read; return the reps locked. Reps outside the pools (account owners, open-domain holders,
    current holders) are found by a read without locks first; ``load_state`` checks afterwards
    that the state it read names no other."""
    domains = _domains(requests, agreement)
    pools = _pools(requests, agreement)
    leads = sorted({*(request.lead_id for request in requests), *also_leads})
    found = await connection.execute(
        text(
            "SELECT owner_rep_id AS rep_id FROM accounts WHERE domain = ANY(:candidates) UNION "
            "SELECT h.rep_id FROM unnest(CAST(:domains AS text[]), CAST(:limits AS int[])) AS d(domain, n), "
            "LATERAL (SELECT rep_id FROM lead_routing WHERE open AND domain = d.domain "
            "ORDER BY opened_at DESC, lead_id DESC LIMIT d.n) AS h UNION "
            "SELECT rep_id FROM lead_routing WHERE lead_id = ANY(:leads)"
        ),
        {
            "candidates": sorted({candidate for domain in domains for candidate in parent_domains(domain)}),
            "domains": list(domains),
            "limits": list(domains.values()),
            "leads": leads,
        },
    )
    reps = {member.rep for pool in pools for member in roster.pools.get(pool, ())} | {row.rep_id for row in found}
    await locks.acquire(connection, locks.keys_for(leads, domains, pools, reps))
    return Held(pools, reps)


@dataclass
class Run:
    """A run of decisions: the core's state as loaded under the run's locks (``loaded``) and as the
    decisions left it (``state``), and what the shell stores besides at the end."""

    loaded: RoutingState
    state: RoutingState
    decided: set[uuid.UUID]  # decision keys already stored (a redelivery past the inbox)
    assignments: list[dict[str, Any]] = field(default_factory=list)
    settled: list[uuid.UUID] = field(default_factory=list)  # leads whose wait in unassigned_leads ends
    settled_keys: list[uuid.UUID] = field(default_factory=list)  # decisions whose wait ends

    def named_reps(self) -> set[str]:
        """Reps outside the pools whose counters this state read: owners, domain holders, holders."""
        state = self.loaded
        return (
            set(state.accounts.values())
            | {rep for held in state.open_by_domain.values() for _, rep, _ in held}
            | {holder.rep_id for holder in state.holders.values()}
        )


async def load_state(
    connection: AsyncConnection,
    requests: Sequence[RouteRequest],
    agreement: Agreement,
    roster: Roster,
    now: datetime,
    pools: set[str],
) -> Run:
    """One round trip (two the first time a pool is seen) for everything a run of decisions reads:
    the pools' rotation rows (locked), the accounts owning the leads' domains, the newest open leads
    of those domains, the leads' current holders (locked), which decisions are already stored, and
    the counters of every rep any of it names. The caller holds the run's locks (``lock_for``), so
    this snapshot includes everything the previous holders committed. ``pools``: the locked ones."""
    domains = _domains(requests, agreement)
    reps = {member.rep for pool in pools for member in roster.pools.get(pool, ())}
    query = text(
        "WITH rot AS MATERIALIZED (SELECT pool_id, current, assigned, away FROM pool_rotation "
        "WHERE pool_id = ANY(:pools) ORDER BY pool_id FOR UPDATE), "
        "acct AS (SELECT domain, owner_rep_id FROM accounts WHERE domain = ANY(:candidates)), "
        # Per domain, as many of its newest open leads as the run has leads from it, plus one: a
        # lead never counts as its own domain's holder, so each decision still finds the newest other.
        "held AS (SELECT d.domain, h.lead_id, h.rep_id, h.opened_at FROM unnest(CAST(:domains AS text[]), "
        "CAST(:limits AS int[])) AS d(domain, n), LATERAL (SELECT lead_id, rep_id, opened_at FROM lead_routing "
        "WHERE open AND domain = d.domain ORDER BY opened_at DESC, lead_id DESC LIMIT d.n) AS h), "
        "prev AS MATERIALIZED (SELECT lead_id, assignment_id, rep_id, pool_id, domain, tier, load, open, "
        "opened_at, owners FROM lead_routing WHERE lead_id = ANY(:leads) ORDER BY lead_id FOR UPDATE) "
        "SELECT (SELECT COALESCE(jsonb_agg(jsonb_build_array(pool_id, current, assigned, away)), '[]') FROM rot) "
        "AS rotations, (SELECT COALESCE(jsonb_agg(jsonb_build_array(domain, owner_rep_id)), '[]') FROM acct) "
        "AS accounts, (SELECT COALESCE(jsonb_agg(jsonb_build_array(domain, lead_id, rep_id, opened_at) "
        "ORDER BY domain, opened_at DESC, lead_id DESC), '[]') FROM held) AS held, "
        "(SELECT COALESCE(jsonb_agg(jsonb_build_array(lead_id, assignment_id, rep_id, pool_id, domain, tier, load, "
        "open, opened_at, owners)), '[]') FROM prev) AS previous, "
        "(SELECT COALESCE(jsonb_agg(decision_key), '[]') FROM assignments WHERE decision_key = ANY(:keys)) AS decided, "
        "(SELECT COALESCE(jsonb_agg(jsonb_build_array(rep_id, open_load, open_leads, day, assigned_on_day)), '[]') "
        "FROM rep_counters WHERE rep_id = ANY(:reps) OR rep_id IN (SELECT owner_rep_id FROM acct) "
        "OR rep_id IN (SELECT rep_id FROM held) OR rep_id IN (SELECT rep_id FROM prev)) AS counters"
    )
    parameters = {
        "pools": sorted(pools),
        "candidates": sorted({candidate for domain in domains for candidate in parent_domains(domain)}),
        "domains": list(domains),
        "limits": list(domains.values()),
        "leads": sorted({request.lead_id for request in requests}),
        "keys": [request.decision_key for request in requests],
        "reps": sorted(reps),
    }
    row = (await connection.execute(query, parameters)).one()
    if len(row.rotations) < len(pools):
        await connection.execute(
            text(
                "INSERT INTO pool_rotation (pool_id, current, assigned, updated_at) "
                "SELECT unnest(CAST(:ids AS text[])), '{}', '{}', :now ON CONFLICT DO NOTHING"
            ),
            {"ids": sorted(pools), "now": now},
        )
        row = (await connection.execute(query, parameters)).one()
    open_by_domain: dict[str, list[tuple[uuid.UUID, str, datetime]]] = {}
    for domain, lead_id, rep_id, opened_at in row.held:
        open_by_domain.setdefault(domain, []).append((uuid.UUID(lead_id), rep_id, datetime.fromisoformat(opened_at)))
    state = RoutingState(
        rotations={
            pool_id: Rotation(current=current, assigned=assigned, away=frozenset(away))
            for pool_id, current, assigned, away in row.rotations
        },
        loads={
            rep_id: RepLoad(open_load, open_leads, date.fromisoformat(day) if day else None, on_day)
            for rep_id, open_load, open_leads, day, on_day in row.counters
        },
        accounts=dict(row.accounts),
        holders={uuid.UUID(previous[0]): _holder(*previous[1:]) for previous in row.previous},
        open_by_domain={domain: tuple(held) for domain, held in open_by_domain.items()},
    )
    return Run(state, state, {uuid.UUID(key) for key in row.decided})


def _holder(
    assignment_id: str,
    rep_id: str,
    pool_id: str,
    domain: str | None,
    tier: str,
    load: int,
    is_open: bool,
    opened_at: str,
    owners: list[str],
) -> Holder:
    return Holder(
        uuid.UUID(assignment_id),
        rep_id,
        pool_id,
        domain,
        Tier(tier),
        load,
        is_open,
        datetime.fromisoformat(opened_at),
        tuple(owners),
    )


async def route_request(
    connection: AsyncConnection, agreement: Agreement, roster: Roster, request: RouteRequest, now: datetime
) -> tuple[RoutingDecision, list[Event]]:
    """Decide one request, and store the assignment or park the lead; the caller holds the routing lock."""
    (decision, facts), *_ = await route_requests(connection, agreement, roster, [request], now)
    return decision, facts


async def route_requests(
    connection: AsyncConnection,
    agreement: Agreement,
    roster: Roster,
    requests: Sequence[RouteRequest],
    now: datetime,
    locked: Held | None = None,
) -> list[tuple[RoutingDecision, list[Event]]]:
    """Decide requests in order, each seeing the ones before it, in a fixed number of statements
    (plus one per parked lead). Each lead at most once: the caller splits runs on a repeat.
    ``locked``: what the caller already locked with ``lock_for`` for these requests."""
    assert len({request.lead_id for request in requests}) == len(requests), "a lead twice in one run"
    if not requests:
        return []
    held = locked or await lock_for(connection, requests, agreement, roster)
    held = Held(set(held.pools), set(held.reps))
    while True:
        run = await load_state(connection, requests, agreement, roster, now, held.pools)
        if unlocked := run.named_reps() - held.reps:
            # The world moved between lock_for's look and the locks (an account changed owner, a
            # holder's lead was released): lock those reps too, then read their counters again.
            await locks.acquire(connection, locks.keys_for(reps=unlocked))
            held.reps |= unlocked
            continue
        results, needed = decide_run(run, requests, agreement, roster, now, held.pools)
        if not needed:
            break
        # A decision fell through to a pool not locked (the fallback): lock it and its reps, and
        # decide the run again from a fresh read; nothing was written yet.
        reps = {member.rep for pool in needed for member in roster.pools.get(pool, ())}
        await locks.acquire(connection, locks.keys_for(pools=needed, reps=reps))
        held.pools |= needed
        held.reps |= reps
    for index, (decision, facts) in enumerate(results):
        if decision.rep_id is None:
            results[index] = (decision, await park(connection, requests[index], decision, agreement, now))
        for fact in facts:
            if isinstance(fact, LeadRoutedV1):
                log.info(
                    "lead routed: lead_id=%s assignment_id=%s rep_id=%s pool_id=%s rule_id=%s matched_by=%s",
                    fact.lead_id,
                    fact.assignment_id,
                    fact.rep_id,
                    fact.pool_id,
                    fact.rule_id,
                    decision.matched_by,
                )
    await store(connection, run, now)
    return results


def decide_run(
    run: Run,
    requests: Sequence[RouteRequest],
    agreement: Agreement,
    roster: Roster,
    now: datetime,
    pools: set[str],
) -> tuple[list[tuple[RoutingDecision, list[Event]]], set[str]]:
    """Every decision of the run in memory, each applied to ``run.state`` by the core before the
    next; a parked lead's facts come from ``park``, once the run's locks are known to cover what
    it read. Stops at the first decision that read a pool outside ``pools`` and returns those pools."""
    results: list[tuple[RoutingDecision, list[Event]]] = []
    for request in requests:
        before = run.state
        decision = routing_state.decide(before, request, agreement, roster, now)
        if needed := set(decision.rotations_after) - pools:
            return results, needed
        if decision.rep_id is None:
            results.append((decision, []))
        elif request.decision_key in run.decided:
            # Already decided (a redelivery past the inbox): nothing may wait for it any longer.
            run.settled_keys.append(request.decision_key)
            results.append((decision, []))
        else:
            run.state, fact = routing_state.assign(before, request, decision, agreement, now)
            run.settled.append(request.lead_id)
            run.assignments.append(_assignment_row(request, decision, fact, agreement, roster.revision, before))
            results.append((decision, [fact]))
    return results, set()


def _assignment_row(
    request: RouteRequest,
    decision: RoutingDecision,
    fact: LeadRoutedV1,
    agreement: Agreement,
    revision: int,
    before: RoutingState,
) -> dict[str, Any]:
    was = {
        "rotations": {pool: _rotation_json(before.rotations[pool]) for pool in decision.rotations_after},
        "counters": {fact.rep_id: _load_json(before.loads.get(fact.rep_id, RepLoad()))},
    }
    return {
        "a": fact.assignment_id,
        "k": request.decision_key,
        "l": request.lead_id,
        "r": fact.rep_id,
        "p": decision.pool_id,
        "rule": decision.rule_id,
        "reason": decision.reason,
        "tier": request.tier.value,
        "v": agreement.version,
        "now": fact.routed_at,
        "d": orjson.dumps(decision_record(request, decision, agreement, revision, was)).decode(),
    }


def decision_record(
    request: RouteRequest,
    decision: RoutingDecision,
    agreement: Agreement,
    revision: int,
    before: Mapping[str, Any],
) -> dict[str, Any]:
    """What ``assignments.decision`` keeps: enough to explain and to replay the decision."""
    assert decision.rep_id is not None
    return {
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
        "load": agreement.routing.load[request.tier],
        "agreement_version": agreement.version,
        "roster_revision": revision,
    }


async def store(connection: AsyncConnection, run: Run, now: datetime) -> None:
    """The run's assignments, the rotations, holders and counters they left, and the end of the
    waits they settled: one statement each. What changed is what the core replaced."""
    loaded, state = run.loaded, run.state
    if run.assignments:
        await connection.execute(
            text(
                "INSERT INTO assignments (assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, reason, "
                "tier, agreement_version, routed_at, decision) VALUES (:a, :k, :l, :r, :p, :rule, :reason, :tier, "
                ":v, :now, CAST(:d AS jsonb)) ON CONFLICT (decision_key) DO NOTHING"
            ),
            run.assignments,
        )
    changed_pools = sorted(
        pool for pool, rotation in state.rotations.items() if loaded.rotations.get(pool) is not rotation
    )
    if changed_pools:
        rotations = [{"pool_id": pool, **_rotation_json(state.rotations[pool])} for pool in changed_pools]
        await connection.execute(
            text(
                "UPDATE pool_rotation AS p SET current = v.current, assigned = v.assigned, away = v.away, "
                "updated_at = :now FROM jsonb_to_recordset(CAST(:rot AS jsonb)) "
                "AS v(pool_id text, current jsonb, assigned jsonb, away jsonb) WHERE p.pool_id = v.pool_id"
            ),
            {"rot": orjson.dumps(rotations).decode(), "now": now},
        )
    holders = [
        _holder_row(lead_id, holder)
        for lead_id, holder in state.holders.items()
        if loaded.holders.get(lead_id) is not holder
    ]
    if holders:
        await connection.execute(_holder_upsert(), holders)
    changed_reps = sorted(rep for rep, load in state.loads.items() if loaded.loads.get(rep) is not load)
    if changed_reps:
        await connection.execute(
            text(
                "INSERT INTO rep_counters (rep_id, open_load, open_leads, day, assigned_on_day, updated_at) "
                "VALUES (:r, :load, :leads, :day, :on_day, :now) ON CONFLICT (rep_id) DO UPDATE SET "
                "open_load = EXCLUDED.open_load, open_leads = EXCLUDED.open_leads, day = EXCLUDED.day, "
                "assigned_on_day = EXCLUDED.assigned_on_day, updated_at = EXCLUDED.updated_at"
            ),
            [
                {
                    "r": rep_id,
                    "load": state.loads[rep_id].open_load,
                    "leads": state.loads[rep_id].open_leads,
                    "day": state.loads[rep_id].day,
                    "on_day": state.loads[rep_id].assigned_on_day,
                    "now": now,
                }
                for rep_id in changed_reps
            ],
        )
    if run.settled or run.settled_keys:
        await connection.execute(
            text("DELETE FROM unassigned_leads WHERE lead_id = ANY(:leads) OR decision_key = ANY(:keys)"),
            {"leads": run.settled, "keys": run.settled_keys},
        )


def _holder_row(lead_id: uuid.UUID, holder: Holder) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "assignment_id": holder.assignment_id,
        "rep_id": holder.rep_id,
        "pool_id": holder.pool_id,
        "owners": list(holder.owners),
        "domain": holder.domain,
        "tier": holder.tier.value,
        "load": holder.load,
        "open": holder.open,
        "opened_at": holder.opened_at,
        "released_at": None,
    }


@functools.cache
def _holder_upsert() -> Insert:
    statement = insert(table("lead_routing"))
    columns = ("assignment_id", "rep_id", "pool_id", "owners", "domain", "tier", "load", "open", "opened_at")
    return statement.on_conflict_do_update(
        index_elements=["lead_id"],
        set_={**{column: statement.excluded[column] for column in columns}, "released_at": None},
    )


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
    return [routing_state.unassigned(request, decision, agreement, now)]


async def release(connection: AsyncConnection, lead_id: uuid.UUID, happened_at: datetime, now: datetime) -> None:
    """The lead no longer counts against its rep, as the core decides (an older fact cannot release
    a newer assignment): its holder row and its rep's counters, read and written under their locks."""
    # The lead's lock keeps its holder from changing, the holder's lock orders this against
    # decisions reading that rep's counters. The first look is without locks, so look again.
    reps: set[str] = set()
    while (
        holder := await connection.scalar(text("SELECT rep_id FROM lead_routing WHERE lead_id = :l"), {"l": lead_id})
    ) not in reps:
        if holder is None:
            return
        reps.add(holder)
        await locks.acquire(connection, locks.keys_for(leads=[lead_id], reps=[holder]))
    row = (
        await connection.execute(
            text(
                "SELECT h.assignment_id, h.rep_id, h.pool_id, h.domain, h.tier, h.load, h.open, h.opened_at, h.owners, "
                "c.rep_id AS counted, c.open_load, c.open_leads, c.day, c.assigned_on_day FROM lead_routing h "
                "LEFT JOIN rep_counters c ON c.rep_id = h.rep_id WHERE h.lead_id = :l FOR UPDATE OF h"
            ),
            {"l": lead_id},
        )
    ).one()
    state = RoutingState(
        loads={row.rep_id: RepLoad(row.open_load, row.open_leads, row.day, row.assigned_on_day)}
        if row.counted is not None
        else {},
        holders={
            lead_id: Holder(
                row.assignment_id,
                row.rep_id,
                row.pool_id,
                row.domain,
                Tier(row.tier),
                row.load,
                row.open,
                row.opened_at,
                tuple(row.owners),
            )
        },
    )
    after, released = routing_state.release(state, lead_id, happened_at)
    if released is None:
        return
    await connection.execute(
        text("UPDATE lead_routing SET open = false, released_at = :now WHERE lead_id = :l"), {"l": lead_id, "now": now}
    )
    if (load := after.loads.get(released.rep_id)) is not None:
        await connection.execute(
            text("UPDATE rep_counters SET open_load = :load, open_leads = :leads, updated_at = :now WHERE rep_id = :r"),
            {"r": released.rep_id, "load": load.open_load, "leads": load.open_leads, "now": now},
        )
    log.info("open load released: lead_id=%s rep_id=%s load=%s", lead_id, released.rep_id, released.load)


async def reassignment_request(
    connection: AsyncConnection, event: ReassignmentRequestedV1, agreement: Agreement
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
    return RouteRequest(
        kind="reassignment",
        decision_key=event.event_id,
        lead_id=event.lead_id,
        attributes=LeadAttributes.model_validate(given["attributes"]),
        tier=event.tier,
        source=given["source"],
        persona=given.get("persona"),
        exclude=routing_state.reassignment_excludes(owners, event.exclude_reps, agreement),
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


def make_batch_handler(agreement: Agreement) -> BatchHandler:
    cache = RosterCache()

    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> list[list[Event]]:
        """Consecutive qualified leads are decided as one run (each lead once per run); a release
        or a reassignment is applied on its own between runs, so every decision sees the state
        left by the events before it."""
        facts: list[list[Event]] = [[] for _ in events]
        run: list[tuple[int, RouteRequest]] = []
        revision = await begin_routing(connection)
        roster = await cache.get(connection, agreement, revision)
        qualified = [qualified_request(event) for event in events if isinstance(event, LeadQualifiedV1)]
        # What every decision of the batch may read, locked in one ordered statement up front, so
        # the runs below seldom need another lock (and then never wait for it out of order).
        locked = (
            await lock_for(
                connection,
                qualified,
                agreement,
                roster,
                also_leads=[event.lead_id for event in events if not isinstance(event, LeadQualifiedV1)],
            )
            if qualified
            else None
        )

        async def flush() -> None:
            if run:
                requests = [request for _, request in run]
                results = await route_requests(connection, agreement, roster, requests, now, locked)
                for (index, _), (_, found) in zip(run, results, strict=True):
                    facts[index] = found
                run.clear()

        for index, event in enumerate(events):
            if isinstance(event, LeadQualifiedV1):
                if any(request.lead_id == event.lead_id for _, request in run):
                    await flush()
                run.append((index, qualified_request(event)))
                continue
            if isinstance(event, (ActivityAcceptedV1, LeadStageChangedV1)):
                if routing_state.releases(event):
                    await flush()
                    await release(connection, event.lead_id, event.occurred_at, now)
                continue
            if not isinstance(event, ReassignmentRequestedV1):
                raise PermanentError(f"router does not handle {type(event).__name__}")
            await flush()
            # Its lead first: reassignment_request locks the lead's row, and row locks are only
            # taken under the routing lock of what they protect.
            await locks.acquire(connection, locks.keys_for(leads=[event.lead_id]))
            request = await reassignment_request(connection, event, agreement)
            if request is not None:
                _, facts[index] = await route_request(connection, agreement, roster, request, now)
        await flush()
        return facts

    return handle


def make_handler(agreement: Agreement) -> Handler:
    return one_at_a_time(make_batch_handler(agreement))


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
        roster = await cache.get(connection, agreement, revision)
        page = await connection.execute(
            text("SELECT request FROM unassigned_leads ORDER BY parked_at LIMIT :n"), {"n": limit}
        )
        seen = [RouteRequest.model_validate(row.request) for row in page]
        # Locks first, then the rows again: a router may have parked a newer request for one of
        # these leads, or routed it, before the locks were ours.
        await lock_for(connection, seen, agreement, roster)
        rows = await connection.execute(
            text("SELECT request FROM unassigned_leads WHERE lead_id = ANY(:leads) ORDER BY parked_at FOR UPDATE"),
            {"leads": [request.lead_id for request in seen]},
        )
        requests = [RouteRequest.model_validate(row.request) for row in rows]
        # unassigned_leads holds one request per lead, so the whole page is one run.
        results = await route_requests(connection, agreement, roster, requests, now)
        facts = [fact for _, found in results for fact in found]
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
                "retrying parked leads failed: error=%s",
                type(exc).__name__,
                exc_info=not is_connection_error(exc),
                extra=about(exc),
            )
            tried, assigned = 0, 0
        if tried and assigned == tried:
            continue
        await sleep_or_stop(stop, config.router_retry_seconds)


def _rotation_json(rotation: Rotation) -> dict[str, Any]:
    return {"current": dict(rotation.current), "assigned": dict(rotation.assigned), "away": sorted(rotation.away)}


def _load_json(load: RepLoad) -> dict[str, Any]:
    return {**asdict(load), "day": load.day.isoformat() if load.day else None}
