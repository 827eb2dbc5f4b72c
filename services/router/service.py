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
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core import routing_state
from coxswain.core.accounts import lead_domain, parent_domains
from coxswain.core.agreement import Agreement
from coxswain.core.capacity import RepLoad
from coxswain.core.roster import Roster, build_roster
from coxswain.core.routing import RoutingDecision, select_pool
from coxswain.core.routing_state import AlreadyReplaced, ReassignmentRefused, RouteRequest, RoutingState
from coxswain.db.roster import load_overrides, roster_revision
from coxswain.runtime import outbox
from coxswain.runtime.consumer import BatchHandler, Handler, PermanentError, one_at_a_time
from coxswain.runtime.outages import about, is_connection_error
from coxswain.runtime.waiting import sleep_or_stop
from coxswain.settings import RouterConfig
from schemas.events import (
    ActivityAcceptedV1,
    Event,
    LeadQualifiedV1,
    LeadRoutedV1,
    LeadStageChangedV1,
    ReassignmentRequestedV1,
)
from services.router import locks, repository
from services.router.repository import NewAssignment, rotation_json

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


def _candidates(domains: Mapping[str, int]) -> list[str]:
    """The domains whose accounts may own the leads of ``domains``: each with its parents."""
    return sorted({candidate for domain in domains for candidate in parent_domains(domain)})


@dataclass
class Held:
    """The pools and reps whose routing locks this transaction holds for a run."""

    pools: set[str]
    reps: set[str]


@dataclass
class Named:
    """What a run of requests names, read without locks: its domains, pools and leads, the reps
    outside the pools, and the roster revision in force (read in the same statement)."""

    domains: dict[str, int]
    pools: set[str]
    leads: list[uuid.UUID]
    found: repository.NamedReps


async def _read_names(
    connection: AsyncConnection,
    requests: Sequence[RouteRequest],
    agreement: Agreement,
    also_leads: Sequence[uuid.UUID] = (),
) -> Named:
    domains = _domains(requests, agreement)
    leads = sorted({*(request.lead_id for request in requests), *also_leads})
    found = await repository.named_reps(connection, _candidates(domains), domains, leads)
    return Named(domains, _pools(requests, agreement), leads, found)


async def _lock_named(connection: AsyncConnection, named: Named, roster: Roster, with_the_read: bool = False) -> Held:
    """Lock every lead, domain, pool and rep ``named`` may read, in one ordered statement;
    ``with_the_read``: in the next read of the routing state when they are the transaction's
    first (``locks.acquire_with_the_read``), for a caller that reads nothing else under them first."""
    reps = {member.rep for pool in named.pools for member in roster.pools.get(pool, ())} | named.found.reps
    keys = locks.keys_for(named.leads, named.domains, named.pools, reps)
    if not (with_the_read and locks.acquire_with_the_read(connection, keys)):
        await locks.acquire(connection, keys)
    return Held(named.pools, reps)


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
    return await _lock_named(connection, await _read_names(connection, requests, agreement, also_leads), roster)


async def begin_run(
    connection: AsyncConnection,
    requests: Sequence[RouteRequest],
    agreement: Agreement,
    cache: RosterCache,
    also_leads: Sequence[uuid.UUID] = (),
) -> tuple[Roster, Held | None]:
    """The roster in force and, when there are ``requests``, what ``lock_for`` locks for them: the
    roster revision comes with the names, so it costs no statement of its own."""
    if not requests:
        return await cache.get(connection, agreement, await begin_routing(connection)), None
    named = await _read_names(connection, requests, agreement, also_leads)
    roster = await cache.get(connection, agreement, named.found.roster_revision)
    # A batch's handler reads nothing under these locks before its first run's read of the
    # routing state or another ``locks.acquire``: either takes them first (a round trip fewer).
    return roster, await _lock_named(connection, named, roster, with_the_read=True)


@dataclass
class Run:
    """A run of decisions: the core's state as loaded under the run's locks (``loaded``) and as the
    decisions left it (``state``), and what the shell stores besides at the end."""

    loaded: RoutingState
    state: RoutingState
    decided: set[uuid.UUID]  # decision keys already stored (a redelivery past the inbox)
    assignments: list[NewAssignment] = field(default_factory=list)
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
    """Everything a run of decisions reads, in one round trip (``repository.load_state``): the
    pools' rotation rows (locked), the accounts owning the leads' domains, the newest open leads
    of those domains, the leads' current holders (locked), which decisions are already stored, and
    the counters of every rep any of it names. The caller holds the run's locks (``lock_for``), so
    this snapshot includes everything the previous holders committed. ``pools``: the locked ones."""
    domains = _domains(requests, agreement)
    loaded = await repository.load_state(
        connection,
        pools=sorted(pools),
        candidates=_candidates(domains),
        domains=domains,
        leads=sorted({request.lead_id for request in requests}),
        decision_keys=[request.decision_key for request in requests],
        reps=sorted({member.rep for pool in pools for member in roster.pools.get(pool, ())}),
        now=now,
        lock_class=locks.ROUTING_LOCK_CLASS,
        wait_keys=locks.taken_by_the_read(connection),
    )
    return Run(loaded.state, loaded.state, loaded.decided)


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
    last: bool = False,
) -> list[tuple[RoutingDecision, list[Event]]]:
    """Decide requests in order, each seeing the ones before it, in a fixed number of statements
    (plus one per parked lead). Each lead at most once: the caller splits runs on a repeat.
    ``locked``: what the caller already locked with ``lock_for`` for these requests. ``last``:
    nothing after this run in the transaction reads the router's tables (``store``)."""
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
    await store(connection, run, now, last)
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
) -> NewAssignment:
    was = {
        "rotations": {pool: rotation_json(before.rotations[pool]) for pool in decision.rotations_after},
        "counters": {fact.rep_id: _load_json(before.loads.get(fact.rep_id, RepLoad()))},
    }
    return NewAssignment(
        assignment_id=fact.assignment_id,
        decision_key=request.decision_key,
        lead_id=request.lead_id,
        rep_id=fact.rep_id,
        pool_id=decision.pool_id,
        rule_id=decision.rule_id,
        reason=decision.reason,
        tier=request.tier.value,
        agreement_version=agreement.version,
        routed_at=fact.routed_at,
        decision=orjson.dumps(decision_record(request, decision, agreement, revision, was)).decode(),
    )


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
            "rotations": {pool: rotation_json(rotation) for pool, rotation in decision.rotations_after.items()},
            "counters": {decision.rep_id: _load_json(decision.load_after or RepLoad())},
        },
        "load": agreement.routing.load[request.tier],
        "agreement_version": agreement.version,
        "roster_revision": revision,
    }


async def store(connection: AsyncConnection, run: Run, now: datetime, last: bool = False) -> None:
    """The run's assignments, the rotations, holders and counters they left, and the end of the
    waits they settled, in one statement. What changed is what the core replaced. The last run of
    a batch applied whole stores in the statement that stages the batch's facts: a round trip
    fewer on the way of every lead routed in scoring's transaction (``repository.store_run``)."""
    loaded, state = run.loaded, run.state
    await repository.store_run(
        connection,
        assignments=run.assignments,
        rotations={
            pool: state.rotations[pool]
            for pool in sorted(
                pool for pool, rotation in state.rotations.items() if loaded.rotations.get(pool) is not rotation
            )
        },
        holders={
            lead_id: holder for lead_id, holder in state.holders.items() if loaded.holders.get(lead_id) is not holder
        },
        loads={
            rep: state.loads[rep]
            for rep in sorted(rep for rep, load in state.loads.items() if loaded.loads.get(rep) is not load)
        },
        settled=run.settled,
        settled_keys=run.settled_keys,
        now=now,
        last=last,
    )


async def park(
    connection: AsyncConnection, request: RouteRequest, decision: RoutingDecision, agreement: Agreement, now: datetime
) -> list[Event]:
    """Keep the request in the unassigned queue; the fact is published the first time only."""
    if not await repository.park(connection, request, decision, agreement.version, now):
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
    while (holder := await repository.holder_rep(connection, lead_id)) not in reps:
        if holder is None:
            return
        reps.add(holder)
        await locks.acquire(connection, locks.keys_for(leads=[lead_id], reps=[holder]))
    found = await repository.holder_for_release(connection, lead_id)
    state = RoutingState(
        loads={found.holder.rep_id: found.load} if found.load is not None else {},
        holders={lead_id: found.holder},
    )
    after, released = routing_state.release(state, lead_id, happened_at)
    if released is None:
        return
    await repository.close_holder(connection, lead_id, now)
    if (load := after.loads.get(released.rep_id)) is not None:
        await repository.set_open_load(connection, released.rep_id, load, now)
    log.info("open load released: lead_id=%s rep_id=%s load=%s", lead_id, released.rep_id, released.load)


async def reassignment_request(
    connection: AsyncConnection, event: ReassignmentRequestedV1, agreement: Agreement
) -> RouteRequest | None:
    """The request to route a reassignment (``routing_state.reassignment``), or None when the
    assignment was already replaced. The caller holds the lead's routing lock."""
    target = routing_state.reassignment_target(
        event, await repository.stored_assignment(connection, event.assignment_id)
    )
    if isinstance(target, ReassignmentRefused):
        raise PermanentError(target.reason)
    holder = await repository.lead_owners_for_update(connection, event.lead_id)
    outcome = routing_state.reassignment(event, target, holder, agreement)
    if isinstance(outcome, ReassignmentRefused):
        raise PermanentError(outcome.reason)
    if isinstance(outcome, AlreadyReplaced):
        log.info(
            "reassignment skipped, assignment already replaced: lead_id=%s assignment_id=%s current=%s",
            event.lead_id,
            event.assignment_id,
            outcome.current,
        )
        return None
    return outcome


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
        # The run's requests by lead, in the events' order: each lead is decided once per run.
        run: dict[uuid.UUID, tuple[int, RouteRequest]] = {}
        # Each qualified lead's request, made once: for the locks up front, then for its run.
        qualified = {
            index: qualified_request(event) for index, event in enumerate(events) if isinstance(event, LeadQualifiedV1)
        }
        # What every decision of the batch may read, locked in one ordered statement up front, so
        # the runs below seldom need another lock (and then never wait for it out of order).
        roster, locked = await begin_run(
            connection,
            list(qualified.values()),
            agreement,
            cache,
            also_leads=[event.lead_id for event in events if not isinstance(event, LeadQualifiedV1)],
        )

        async def flush(last: bool = False) -> None:
            if run:
                requests = [request for _, request in run.values()]
                results = await route_requests(connection, agreement, roster, requests, now, locked, last)
                for (index, _), (_, found) in zip(run.values(), results, strict=True):
                    facts[index] = found
                run.clear()

        for index, event in enumerate(events):
            if isinstance(event, LeadQualifiedV1):
                if event.lead_id in run:
                    await flush()
                run[event.lead_id] = (index, qualified[index])
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
        # Nothing reads the router's tables after the last run: its write rides with the facts.
        await flush(last=True)
        return facts

    return handle


def make_handler(agreement: Agreement) -> Handler:
    return one_at_a_time(make_batch_handler(agreement))


async def retry_parked(
    engine: AsyncEngine, agreement: Agreement, cache: RosterCache, clock: Callable[[], datetime], limit: int
) -> tuple[int, int]:
    """Try the oldest parked leads again; (tried, assigned)."""
    async with engine.connect() as connection:
        if not await repository.any_parked(connection):
            return 0, 0
    async with engine.begin() as connection:
        now = clock()
        revision = await begin_routing(connection)
        roster = await cache.get(connection, agreement, revision)
        seen = await repository.oldest_parked(connection, limit)
        # Locks first, then the rows again: a router may have parked a newer request for one of
        # these leads, or routed it, before the locks were ours.
        await lock_for(connection, seen, agreement, roster)
        requests = await repository.parked_for_update(connection, [request.lead_id for request in seen])
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


_LOAD_FIELDS = tuple(each.name for each in fields(RepLoad))


def _load_json(load: RepLoad) -> dict[str, Any]:
    # Field by field, not by dataclasses.asdict: that deep-copies each value, and this runs twice
    # for every decision (3% of scoring's CPU when it routes).
    return {name: getattr(load, name) for name in _LOAD_FIELDS} | {"day": load.day.isoformat() if load.day else None}
