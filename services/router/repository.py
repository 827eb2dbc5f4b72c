"""Every SQL statement of the router: its routing locks, the state a run of decisions reads, what
the run stores, parked requests, releases and reassignments. Each function runs on the caller's
connection, so the caller's transaction decides what commits together (and holds the locks).
Rows come back as the core's types or as the records below, built by column name."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.capacity import RepLoad
from coxswain.core.routing import Rotation, RoutingDecision
from coxswain.core.routing_state import Holder, LeadOwners, RouteRequest, RoutingState, StoredAssignment
from coxswain.db import deferred
from coxswain.db.sql import clause
from schemas.events import Tier


class Loaded(NamedTuple):
    """What a run of decisions reads, and which of its decision keys are already stored."""

    state: RoutingState
    decided: set[uuid.UUID]


class NewAssignment(NamedTuple):
    """An ``assignments`` row; the field names are the insert's bind names."""

    assignment_id: uuid.UUID
    decision_key: uuid.UUID
    lead_id: uuid.UUID
    rep_id: str
    pool_id: str
    rule_id: str
    reason: str
    tier: str
    agreement_version: str
    routed_at: datetime
    decision: str  # JSON text


class Released(NamedTuple):
    """A lead's holder and its rep's counters (None: the rep has none), as a release reads them."""

    holder: Holder
    load: RepLoad | None


# Routing locks: the two-int advisory locks of services/router/locks.py (``lock_class`` is the
# first int, ``pg_locks.classid``).


async def held_locks(connection: AsyncConnection, lock_class: int) -> set[int]:
    """The keys of ``lock_class`` this transaction holds, as PostgreSQL knows them."""
    return set(
        (
            await connection.scalars(
                text(
                    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
                    "AND classid = :lock_class AND pid = pg_backend_pid() AND granted"
                ),
                {"lock_class": lock_class},
            )
        ).all()
    )


async def wait_for_locks(connection: AsyncConnection, lock_class: int, keys: Sequence[int]) -> None:
    """Take ``keys`` in the order given (ascending, for the callers), waiting for each."""
    # In order within one statement: unnest yields the array in order.
    await connection.execute(
        clause("SELECT pg_advisory_xact_lock(:lock_class, k) FROM unnest(CAST(:keys AS int[])) AS k"),
        {"lock_class": lock_class, "keys": list(keys)},
    )


async def try_locks(connection: AsyncConnection, lock_class: int, keys: Sequence[int]) -> bool:
    """Take ``keys`` without waiting; False when another transaction holds one of them."""
    taken = (
        await connection.scalars(
            clause("SELECT bool_and(pg_try_advisory_xact_lock(:lock_class, k)) FROM unnest(CAST(:keys AS int[])) AS k"),
            {"lock_class": lock_class, "keys": list(keys)},
        )
    ).one()
    return bool(taken)


# A run of decisions.


class NamedReps(NamedTuple):
    """The roster revision in force and the reps outside the pools a run names, read together."""

    roster_revision: int
    reps: set[str]


async def named_reps(
    connection: AsyncConnection, candidates: Sequence[str], domains: Mapping[str, int], leads: Sequence[uuid.UUID]
) -> NamedReps:
    """Without locks: the owners of the ``candidates`` domains, the holders of each domain's newest
    ``domains[domain]`` open leads, and the holders of ``leads``; and, in the same statement (one
    round trip fewer per batch), the roster revision in force."""
    named = (
        "named AS (SELECT owner_rep_id AS rep_id FROM accounts WHERE domain = ANY(:candidates) UNION "
        "SELECT h.rep_id FROM unnest(CAST(:domains AS text[]), CAST(:limits AS int[])) AS d(domain, n), "
        "LATERAL (SELECT rep_id FROM lead_routing WHERE open AND domain = d.domain "
        "ORDER BY opened_at DESC, lead_id DESC LIMIT d.n) AS h UNION "
        "SELECT rep_id FROM lead_routing WHERE lead_id = ANY(:leads))"
    )
    parameters = {
        "candidates": list(candidates),
        "domains": list(domains),
        "limits": list(domains.values()),
        "leads": list(leads),
    }
    # The writes deferred so far (scoring's, in its transaction) ride here, before the routing
    # locks are taken, rather than in the transaction's last statement, which runs under them:
    # a second instance waiting for the same pool waits for less.
    sql, parameters = deferred.carried_before(
        deferred.take(connection),
        [named],
        "SELECT r.revision, named.rep_id FROM effects LEFT JOIN roster_revision AS r ON r.id = 1 "
        "LEFT JOIN named ON true",
        parameters,
    )
    rows = (await connection.execute(clause(sql), parameters)).all()
    return NamedReps(
        roster_revision=int(rows[0].revision or 0) if rows else 0,
        reps={row.rep_id for row in rows if row.rep_id is not None},
    )


# The read is the function ``routing_state`` (migration 0020_routing_state), so that the routing
# locks it waits for first and the read are one round trip with two snapshots.
_LOAD_STATE = text(
    "SELECT rotations, accounts, held, previous, decided, counters FROM routing_state(:lock_class, "
    "CAST(:wait_keys AS int[]), CAST(:pools AS text[]), CAST(:candidates AS text[]), CAST(:domains AS text[]), "
    "CAST(:limits AS int[]), CAST(:leads AS uuid[]), CAST(:keys AS uuid[]), CAST(:reps AS text[]))"
)


async def load_state(
    connection: AsyncConnection,
    *,
    pools: Sequence[str],
    candidates: Sequence[str],
    domains: Mapping[str, int],
    leads: Sequence[uuid.UUID],
    decision_keys: Sequence[uuid.UUID],
    reps: Sequence[str],
    now: datetime,
    lock_class: int = 0,
    wait_keys: Sequence[int] = (),
) -> Loaded:
    """One round trip (two the first time a pool is seen): the ``pools``' rotation rows (locked,
    made when missing), the accounts owning the ``candidates`` domains, per domain its newest
    ``domains[domain]`` open leads, the ``leads``' holders (locked), which ``decision_keys`` are
    stored, and the counters of ``reps`` and of every rep the rest names. First, in the same
    round trip, it waits for the advisory locks ``wait_keys`` of ``lock_class`` (ascending, as
    given): the read sees everything their previous holders committed."""
    parameters = {
        "lock_class": lock_class,
        "wait_keys": list(wait_keys),
        "pools": list(pools),
        "candidates": list(candidates),
        "domains": list(domains),
        "limits": list(domains.values()),
        "leads": list(leads),
        "keys": list(decision_keys),
        "reps": list(reps),
    }
    row = (await connection.execute(_LOAD_STATE, parameters)).one()
    if len(row.rotations) < len(pools):
        await connection.execute(
            text(
                "INSERT INTO pool_rotation (pool_id, current, assigned, updated_at) "
                "SELECT unnest(CAST(:pool_ids AS text[])), '{}', '{}', :now ON CONFLICT DO NOTHING"
            ),
            {"pool_ids": list(pools), "now": now},
        )
        row = (await connection.execute(_LOAD_STATE, {**parameters, "wait_keys": []})).one()
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
        holders={uuid.UUID(previous[0]): _holder_of_json(*previous[1:]) for previous in row.previous},
        open_by_domain={domain: tuple(held) for domain, held in open_by_domain.items()},
    )
    return Loaded(state, {uuid.UUID(key) for key in row.decided})


def _holder_of_json(
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


def rotation_json(rotation: Rotation) -> dict[str, Any]:
    """A rotation as ``pool_rotation`` (and an assignment's decision record) keeps it."""
    return {"current": dict(rotation.current), "assigned": dict(rotation.assigned), "away": sorted(rotation.away)}


# What a run of decisions stores, as one statement (or as part of the statement that stages the
# batch's facts, when it is the batch's last run: ``store_run``): each part a data-modifying CTE over its rows as
# arrays (or one jsonb), so a part with no rows writes nothing and the text is the same for every
# run (asyncpg prepares it once per connection). At a few leads per second a run holds one lead,
# and these were five round trips of their own. The parts write different tables, each row at
# most once (the mappings are keyed by pool, lead and rep), which one statement requires; rows are
# written in the order given.
_STORE_RUN_CTES = (
    "route_assigned AS ("
    " INSERT INTO assignments (assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, reason, tier,"
    " agreement_version, routed_at, decision)"
    " SELECT assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, reason, tier, agreement_version,"
    " routed_at, decision FROM unnest(CAST(:route_assignment_ids AS uuid[]), CAST(:route_decision_keys AS uuid[]),"
    " CAST(:route_assigned_leads AS uuid[]), CAST(:route_assigned_reps AS text[]), CAST(:route_assigned_pools AS text[]),"
    " CAST(:route_rule_ids AS text[]), CAST(:route_reasons AS text[]), CAST(:route_assigned_tiers AS text[]),"
    " CAST(:route_agreement_versions AS text[]), CAST(:route_routed_at AS timestamptz[]), CAST(:route_decisions AS jsonb[]))"
    " WITH ORDINALITY AS run (assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, reason, tier,"
    " agreement_version, routed_at, decision, n)"
    " ORDER BY n ON CONFLICT (decision_key) DO NOTHING"
    "), route_rotated AS ("
    " UPDATE pool_rotation AS p SET current = v.current, assigned = v.assigned, away = v.away, updated_at = :route_now"
    " FROM jsonb_to_recordset(CAST(:route_rotations AS jsonb)) AS v(pool_id text, current jsonb, assigned jsonb,"
    " away jsonb) WHERE p.pool_id = v.pool_id"
    "), route_held AS ("
    " INSERT INTO lead_routing (lead_id, assignment_id, rep_id, pool_id, owners, domain, tier, load, open,"
    " opened_at, released_at)"
    " SELECT lead_id, assignment_id, rep_id, pool_id, owners, domain, tier, load, open, opened_at, NULL"
    " FROM unnest(CAST(:route_holder_leads AS uuid[]), CAST(:route_holder_assignments AS uuid[]), CAST(:route_holder_reps AS text[]),"
    " CAST(:route_holder_pools AS text[]), CAST(:route_holder_owners AS jsonb[]), CAST(:route_holder_domains AS text[]),"
    " CAST(:route_holder_tiers AS text[]), CAST(:route_holder_loads AS int[]), CAST(:route_holder_open AS boolean[]),"
    " CAST(:route_holder_opened_at AS timestamptz[]))"
    " WITH ORDINALITY AS run (lead_id, assignment_id, rep_id, pool_id, owners, domain, tier, load, open, opened_at, n)"
    " ORDER BY n ON CONFLICT (lead_id) DO UPDATE SET assignment_id = excluded.assignment_id,"
    " rep_id = excluded.rep_id, pool_id = excluded.pool_id, owners = excluded.owners, domain = excluded.domain,"
    " tier = excluded.tier, load = excluded.load, open = excluded.open, opened_at = excluded.opened_at,"
    " released_at = NULL"
    "), route_counted AS ("
    " INSERT INTO rep_counters (rep_id, open_load, open_leads, day, assigned_on_day, updated_at)"
    " SELECT rep_id, open_load, open_leads, day, assigned_on_day, :route_now FROM unnest(CAST(:route_counter_reps AS text[]),"
    " CAST(:route_open_loads AS int[]), CAST(:route_open_leads AS int[]), CAST(:route_days AS date[]),"
    " CAST(:route_assigned_on_day AS int[])) WITH ORDINALITY AS run (rep_id, open_load, open_leads, day, assigned_on_day, n)"
    " ORDER BY n ON CONFLICT (rep_id) DO UPDATE SET open_load = excluded.open_load,"
    " open_leads = excluded.open_leads, day = excluded.day, assigned_on_day = excluded.assigned_on_day,"
    " updated_at = excluded.updated_at"
    "), route_settled AS ("
    " DELETE FROM unassigned_leads WHERE lead_id = ANY(CAST(:route_settled_leads AS uuid[]))"
    " OR decision_key = ANY(CAST(:route_settled_keys AS uuid[]))"
    ")"
)


async def store_run(
    connection: AsyncConnection,
    *,
    assignments: Sequence[NewAssignment],
    rotations: Mapping[str, Rotation],
    holders: Mapping[uuid.UUID, Holder],
    loads: Mapping[str, RepLoad],
    settled: Collection[uuid.UUID],
    settled_keys: Collection[uuid.UUID],
    now: datetime,
    last: bool = False,
) -> None:
    """The run's assignments (a decision key stored before is left as it is), the pools' rotation
    rows (made by ``load_state``), each lead's ``lead_routing`` row (a holder written here is not
    released), the reps' counters, and the end of the parked requests of ``settled`` leads and of
    any parked under ``settled_keys``: one statement, each part in the order given.

    ``last``: nothing after this run in its transaction reads the router's tables, so the write
    may ride in the statement that stages the facts (``coxswain.db.deferred``); otherwise it runs
    now, for the runs after it to read."""
    if not (assignments or rotations or holders or loads or settled or settled_keys):
        return
    write = deferred.Write(
        _STORE_RUN_CTES,
        {
            "route_now": now,
            "route_assignment_ids": [a.assignment_id for a in assignments],
            "route_decision_keys": [a.decision_key for a in assignments],
            "route_assigned_leads": [a.lead_id for a in assignments],
            "route_assigned_reps": [a.rep_id for a in assignments],
            "route_assigned_pools": [a.pool_id for a in assignments],
            "route_rule_ids": [a.rule_id for a in assignments],
            "route_reasons": [a.reason for a in assignments],
            "route_assigned_tiers": [a.tier for a in assignments],
            "route_agreement_versions": [a.agreement_version for a in assignments],
            "route_routed_at": [a.routed_at for a in assignments],
            "route_decisions": [a.decision for a in assignments],
            "route_rotations": orjson.dumps(
                [{"pool_id": pool, **rotation_json(rotation)} for pool, rotation in rotations.items()]
            ).decode(),
            "route_holder_leads": list(holders),
            "route_holder_assignments": [h.assignment_id for h in holders.values()],
            "route_holder_reps": [h.rep_id for h in holders.values()],
            "route_holder_pools": [h.pool_id for h in holders.values()],
            "route_holder_owners": [orjson.dumps(list(h.owners)).decode() for h in holders.values()],
            "route_holder_domains": [h.domain for h in holders.values()],
            "route_holder_tiers": [h.tier.value for h in holders.values()],
            "route_holder_loads": [h.load for h in holders.values()],
            "route_holder_open": [h.open for h in holders.values()],
            "route_holder_opened_at": [h.opened_at for h in holders.values()],
            "route_counter_reps": list(loads),
            "route_open_loads": [load.open_load for load in loads.values()],
            "route_open_leads": [load.open_leads for load in loads.values()],
            "route_days": [load.day for load in loads.values()],
            "route_assigned_on_day": [load.assigned_on_day for load in loads.values()],
            "route_settled_leads": list(settled),
            "route_settled_keys": list(settled_keys),
        },
    )
    await (deferred.write(connection, write) if last else deferred.write_now(connection, write))


# Parked requests.


async def park(
    connection: AsyncConnection,
    request: RouteRequest,
    decision: RoutingDecision,
    agreement_version: str,
    now: datetime,
) -> bool:
    """Keep the request in ``unassigned_leads``; True the first time it waits under its decision key."""
    first_time = await connection.scalar(
        text(
            "INSERT INTO unassigned_leads (lead_id, decision_key, kind, request, reason, waiting_for, pool_id, "
            "rule_id, tier, agreement_version, parked_at, last_tried_at, attempts) VALUES (:lead_id, :decision_key, "
            ":kind, CAST(:request AS jsonb), :reason, :waiting_for, :pool_id, :rule_id, :tier, :agreement_version, "
            ":now, :now, 1) ON CONFLICT (lead_id) DO UPDATE SET "
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
            "lead_id": request.lead_id,
            "decision_key": request.decision_key,
            "kind": request.kind,
            "request": request.model_dump_json(),
            "reason": decision.reason,
            "waiting_for": decision.waiting_for,
            "pool_id": decision.pool_id,
            "rule_id": decision.rule_id,
            "tier": request.tier.value,
            "agreement_version": agreement_version,
            "now": now,
        },
    )
    return bool(first_time)


async def any_parked(connection: AsyncConnection) -> bool:
    return bool(await connection.scalar(text("SELECT EXISTS (SELECT 1 FROM unassigned_leads)")))


async def oldest_parked(connection: AsyncConnection, limit: int) -> list[RouteRequest]:
    """Without locks: the requests parked longest, oldest first."""
    rows = await connection.execute(
        text("SELECT request FROM unassigned_leads ORDER BY parked_at LIMIT :limit"), {"limit": limit}
    )
    return [RouteRequest.model_validate(row.request) for row in rows]


async def parked_for_update(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[RouteRequest]:
    """The requests parked for ``lead_ids`` now, oldest first, their rows locked."""
    rows = await connection.execute(
        text("SELECT request FROM unassigned_leads WHERE lead_id = ANY(:lead_ids) ORDER BY parked_at FOR UPDATE"),
        {"lead_ids": list(lead_ids)},
    )
    return [RouteRequest.model_validate(row.request) for row in rows]


# Releases.


async def holder_rep(connection: AsyncConnection, lead_id: uuid.UUID) -> str | None:
    """Without locks: the rep holding the lead, None when nobody ever did."""
    rep_id = await connection.scalar(
        text("SELECT rep_id FROM lead_routing WHERE lead_id = :lead_id"), {"lead_id": lead_id}
    )
    return None if rep_id is None else str(rep_id)


async def holder_for_release(connection: AsyncConnection, lead_id: uuid.UUID) -> Released:
    """The lead's holder (row locked) and its rep's counters; the lead must have a holder."""
    row = (
        await connection.execute(
            text(
                "SELECT h.assignment_id, h.rep_id, h.pool_id, h.domain, h.tier, h.load, h.open, h.opened_at, h.owners, "
                "c.rep_id AS counted, c.open_load, c.open_leads, c.day, c.assigned_on_day FROM lead_routing h "
                "LEFT JOIN rep_counters c ON c.rep_id = h.rep_id WHERE h.lead_id = :lead_id FOR UPDATE OF h"
            ),
            {"lead_id": lead_id},
        )
    ).one()
    holder = Holder(
        assignment_id=row.assignment_id,
        rep_id=row.rep_id,
        pool_id=row.pool_id,
        domain=row.domain,
        tier=Tier(row.tier),
        load=row.load,
        open=row.open,
        opened_at=row.opened_at,
        owners=tuple(row.owners),
    )
    load = (
        RepLoad(open_load=row.open_load, open_leads=row.open_leads, day=row.day, assigned_on_day=row.assigned_on_day)
        if row.counted is not None
        else None
    )
    return Released(holder, load)


async def close_holder(connection: AsyncConnection, lead_id: uuid.UUID, now: datetime) -> None:
    await connection.execute(
        text("UPDATE lead_routing SET open = false, released_at = :now WHERE lead_id = :lead_id"),
        {"lead_id": lead_id, "now": now},
    )


async def set_open_load(connection: AsyncConnection, rep_id: str, load: RepLoad, now: datetime) -> None:
    await connection.execute(
        text(
            "UPDATE rep_counters SET open_load = :open_load, open_leads = :open_leads, updated_at = :now "
            "WHERE rep_id = :rep_id"
        ),
        {"rep_id": rep_id, "open_load": load.open_load, "open_leads": load.open_leads, "now": now},
    )


# Reassignments.


async def stored_assignment(connection: AsyncConnection, assignment_id: uuid.UUID) -> StoredAssignment | None:
    row = (
        await connection.execute(
            text("SELECT lead_id, rep_id, decision FROM assignments WHERE assignment_id = :assignment_id"),
            {"assignment_id": assignment_id},
        )
    ).one_or_none()
    return None if row is None else StoredAssignment(lead_id=row.lead_id, rep_id=row.rep_id, decision=row.decision)


async def lead_owners_for_update(connection: AsyncConnection, lead_id: uuid.UUID) -> LeadOwners | None:
    """The lead's current assignment and owners, its ``lead_routing`` row locked; None if never routed."""
    row = (
        await connection.execute(
            text("SELECT assignment_id, owners FROM lead_routing WHERE lead_id = :lead_id FOR UPDATE"),
            {"lead_id": lead_id},
        )
    ).one_or_none()
    return None if row is None else LeadOwners(assignment_id=row.assignment_id, owners=tuple(row.owners))
