"""The routing decision: owner first, else the first matching rule's pool, else the fallback pool.

``route`` is the whole decision as one pure function of the lead, the agreement, the roster in
force, the loaded state (rotation credits, rep loads, account owner) and the time. The shell
loads that state under locks, calls ``route`` and stores what it returns in the same
transaction; docs/routing.md explains each step.

Smooth weighted round robin (as in nginx): every eligible rep's credit grows by its weight, the
rep with the highest credit wins and gives back the sum of the eligible weights. Over any window
the shares converge to the weights and picks interleave instead of bursting. A rep who is not
eligible (away, outside hours, at capacity) is skipped and its credit frozen, so absence earns
nothing. Re-entry: a rep eligible again after the pool skipped it gives any positive credit to
the colleagues who stayed (``min(credit, 0)``), so coming back never puts it ahead of the queue.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from coxswain.core.accounts import lead_domain
from coxswain.core.agreement import OWNER_POOL, Agreement, AgreementProblem, Pool, Routing, RoutingRule
from coxswain.core.capacity import RepLoad, after_assignment, assigned_today, over_limit_because
from coxswain.core.memo import derived
from coxswain.core.roster import Roster, effective_weight, unavailable_because
from coxswain.core.scoring import attribute_value
from schemas.events import CandidateVerdict, LeadAttributes, Tier

MatchedBy = Literal["account_owner", "open_domain_lead", "rule", "fallback", "none"]
EXCLUDED_BY_REQUEST = "excluded by the reassignment request (a recent owner)"
NOT_IN_ROSTER = "not in the roster"
_COMBINATION_LIMIT = 20_000


@dataclass(frozen=True)
class RoutingInput:
    attributes: LeadAttributes
    tier: Tier
    source: str
    persona: str | None = None


@dataclass(frozen=True)
class Rotation:
    """Per pool: each rep's smooth-WRR credit, how many leads the pool gave it, and who it skipped last."""

    current: Mapping[str, float] = field(default_factory=dict)
    assigned: Mapping[str, int] = field(default_factory=dict)
    away: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Situation:
    """Everything the shell loaded for one decision; the core reads nothing else."""

    now: datetime
    roster: Roster
    rotations: Mapping[str, Rotation] = field(default_factory=dict)
    loads: Mapping[str, RepLoad] = field(default_factory=dict)
    account_owner: str | None = None
    account_domain: str | None = None
    open_lead_owner: str | None = None
    open_lead_id: uuid.UUID | None = None  # the open lead of the same domain that ``open_lead_owner`` holds


@dataclass(frozen=True)
class RoutingDecision:
    rep_id: str | None
    pool_id: str
    rule_id: str
    reason: str
    candidates: tuple[CandidateVerdict, ...]
    rotation_after: Rotation
    matched_by: MatchedBy = "rule"
    rotations_after: Mapping[str, Rotation] = field(default_factory=dict)
    load_after: RepLoad | None = None
    waiting_for: str | None = None
    domain: str | None = None


# --------------------------------------------------------------------------- rules


def lead_values(lead: RoutingInput, attribute: str, routing: Routing | None = None) -> frozenset[str]:
    """The lead's values of an attribute, case-folded; a lead may be in several regions, or none."""
    if attribute == "tier":
        return frozenset({lead.tier.value})
    if attribute == "source":
        return frozenset({lead.source.casefold()})
    if attribute == "segment":
        size = lead.attributes.company_size
        segments = routing.segments if routing else ()
        return frozenset(
            s.id.casefold()
            for s in segments
            if size is not None and s.min_size <= size and (s.max_size is None or size <= s.max_size)
        )
    if attribute == "region":
        country, state = lead.attributes.country, lead.attributes.state
        regions = routing.regions if routing else ()
        where = f"{country}-{state.strip()}".casefold() if country and state else None
        return frozenset(
            r.id.casefold()
            for r in regions
            if (country is not None and country in r.countries) or (where in {s.casefold() for s in r.states})
        )
    value = attribute_value(lead.attributes, attribute, lead.persona)
    return frozenset() if value is None else frozenset({str(value).casefold()})


def rule_matches(rule: RoutingRule, lead: RoutingInput, routing: Routing | None = None) -> bool:
    return all(
        lead_values(lead, attribute, routing) & {option.casefold() for option in accepted}
        for attribute, accepted in rule.when.items()
    )


def select_pool(lead: RoutingInput, agreement: Agreement) -> tuple[str, str]:
    """(rule id, pool id) of the first matching rule, else the fallback pool."""
    routing = agreement.routing
    found: dict[str, frozenset[str]] = {}

    def values_of(attribute: str) -> frozenset[str]:
        if attribute not in found:
            found[attribute] = lead_values(lead, attribute, routing)
        return found[attribute]

    for rule, accepted in derived(agreement, _accepted_values):
        # rule_matches, with each rule's accepted values case-folded once per agreement and each
        # of the lead's values computed once per decision.
        if all(values_of(attribute) & values for attribute, values in accepted):
            return rule.id, rule.pool
    return "fallback", routing.fallback_pool


def _accepted_values(agreement: Agreement) -> tuple[tuple[RoutingRule, tuple[tuple[str, frozenset[str]], ...]], ...]:
    return tuple(
        (rule, tuple((attribute, frozenset(o.casefold() for o in values)) for attribute, values in rule.when.items()))
        for rule in agreement.routing.rules
    )


# --------------------------------------------------------------------------- rotation


Weighted = tuple[str, float]


def _turn(
    pool_id: str,
    members: Sequence[Weighted],
    rotation: Rotation,
    excluded: Mapping[str, str],
    absent: Collection[str],
    reentry: bool,
    explain: bool = True,
) -> tuple[str | None, tuple[CandidateVerdict, ...], Rotation]:
    reps = [rep for rep, _ in members]
    weights = dict(members)
    before = {rep: rotation.current.get(rep, 0) for rep in reps}
    after = dict(before)
    eligible = [rep for rep in reps if rep not in excluded]
    if reentry:
        returning = [rep for rep in eligible if rep in rotation.away]
        stayed = [rep for rep in eligible if rep not in rotation.away]
        surplus = sum(max(after[rep], 0) for rep in returning)
        # The credit a returning rep held is handed to the reps who covered, so the pool's total
        # is unchanged and the returning rep starts no higher than zero.
        if stayed and surplus > 0:
            for rep in returning:
                after[rep] = min(after[rep], 0)
            for rep in stayed:
                after[rep] += surplus / len(stayed)
    for rep in eligible:
        after[rep] += weights[rep]
    chosen: str | None = None
    if eligible:
        # Ties go to the rep listed first, so the order in the pool is a stable tie-break.
        chosen = max(eligible, key=lambda rep: (after[rep], -reps.index(rep)))
        after[chosen] -= sum(weights[rep] for rep in eligible)
    assigned = dict(rotation.assigned)
    verdicts = (
        tuple(
            CandidateVerdict(
                rep_id=rep,
                eligible=rep not in excluded,
                excluded_because=excluded.get(rep),
                weight=weights[rep],
                current_before=before[rep],
                current_after=after[rep],
                pool_id=pool_id,
                assigned_before=assigned.get(rep, 0),
                assigned_after=assigned.get(rep, 0) + (rep == chosen),
            )
            for rep in reps
        )
        if explain
        else ()
    )
    if chosen is not None:
        assigned[chosen] = assigned.get(chosen, 0) + 1
    away = frozenset(rep for rep in reps if rep in absent)
    return chosen, verdicts, Rotation(current={**rotation.current, **after}, assigned=assigned, away=away)


def rotate(
    pool: Pool, rotation: Rotation, excluded: Mapping[str, str]
) -> tuple[str | None, tuple[CandidateVerdict, ...], Rotation]:
    """Pick the next rep of ``pool`` by plain smooth WRR; ``excluded`` maps rep id -> why not."""
    members = [(member.rep, member.weight) for member in pool.members]
    return _turn(pool.id, members, rotation, excluded, excluded, reentry=False)


def _rotate_with_fallback(
    rule_id: str,
    pool_id: str,
    fallback: str,
    members_of: Callable[[str], Sequence[Weighted]],
    rotations: Mapping[str, Rotation],
    excluded: Mapping[str, str],
    absent: Collection[str],
    explain: bool = True,
) -> RoutingDecision:
    chosen, verdicts, after = _turn(
        pool_id,
        members_of(pool_id),
        rotations.get(pool_id, Rotation()),
        excluded,
        absent,
        reentry=True,
        explain=explain,
    )
    if chosen is not None:
        reason = f"rule {rule_id} -> pool {pool_id}, weighted rotation"
        return RoutingDecision(chosen, pool_id, rule_id, reason, verdicts, after, "rule", {pool_id: after})
    if fallback == pool_id:
        reason = f"nobody eligible in pool {pool_id}"
        return RoutingDecision(None, pool_id, rule_id, reason, verdicts, after, "none", {pool_id: after})
    chosen, fallback_verdicts, fallback_after = _turn(
        fallback,
        members_of(fallback),
        rotations.get(fallback, Rotation()),
        excluded,
        absent,
        reentry=True,
        explain=explain,
    )
    reason = f"rule {rule_id} -> pool {pool_id}: nobody eligible; fallback pool {fallback}"
    if chosen is None:
        reason += ": nobody eligible"
    return RoutingDecision(
        chosen,
        fallback,
        rule_id,
        reason,
        (*verdicts, *fallback_verdicts),
        fallback_after,
        "fallback" if chosen is not None else "none",
        {pool_id: after, fallback: fallback_after},
    )


def decide(
    lead: RoutingInput,
    agreement: Agreement,
    rotations: Mapping[str, Rotation],
    excluded: Mapping[str, str],
) -> RoutingDecision:
    """The rule and rotation part of ``route``, with the agreement's pools and given exclusions."""
    rule_id, pool_id = select_pool(lead, agreement)

    def members_of(pool: str) -> list[Weighted]:
        return [(member.rep, member.weight) for member in agreement.pool(pool).members]

    return _rotate_with_fallback(
        rule_id, pool_id, agreement.routing.fallback_pool, members_of, rotations, excluded, excluded
    )


# --------------------------------------------------------------------------- the whole decision


def route(
    lead: RoutingInput,
    agreement: Agreement,
    situation: Situation,
    exclude: Collection[str] = (),
    *,
    explain: bool = True,
) -> RoutingDecision:
    """Who gets the lead now, and why; ``exclude`` names reps a reassignment must skip.

    A decision with ``rep_id`` None means nobody may take the lead now: the shell parks it and
    retries. ``waiting_for`` is set when the agreement queues leads for an unavailable owner.
    ``explain=False`` leaves ``candidates`` empty (the simulator reads none); everything else is
    the same decision.
    """
    now, roster, routing = situation.now, situation.roster, agreement.routing
    lead_load = routing.load[lead.tier]
    skip = frozenset(exclude)

    def why_not(rep_id: str) -> str | None:
        if rep_id in skip:
            return EXCLUDED_BY_REQUEST
        profile = roster.reps.get(rep_id)
        if profile is None:
            return NOT_IN_ROSTER
        return unavailable_because(profile, now) or over_limit_because(
            profile, situation.loads.get(rep_id, RepLoad()), lead_load, now
        )

    def details(verdict: CandidateVerdict, configured: int | None) -> CandidateVerdict:
        profile = roster.reps.get(verdict.rep_id)
        load = situation.loads.get(verdict.rep_id, RepLoad())
        return verdict.model_copy(
            update={
                "configured_weight": configured,
                "open_load": load.open_load,
                "capacity": profile.capacity if profile else None,
                "assigned_today": assigned_today(load, profile, now) if profile else None,
                "daily_cap": profile.daily_cap if profile else None,
            }
        )

    def load_after(rep_id: str) -> RepLoad:
        return after_assignment(situation.loads.get(rep_id, RepLoad()), roster.reps.get(rep_id), lead_load, now)

    domain = lead_domain(lead.attributes, routing.ownership.free_mail_domains)
    notes: list[str] = []
    owner: str | None = None
    matched_by: Literal["account_owner", "open_domain_lead"] | None = None
    takes = unavailable = ""
    if situation.account_owner is not None:
        owner, matched_by = situation.account_owner, "account_owner"
        label = f"account owner {owner} ({situation.account_domain or domain})"
        takes, unavailable = f"{label} takes the lead", f"{label} is unavailable"
    elif routing.ownership.same_domain and situation.open_lead_owner is not None:
        owner, matched_by = situation.open_lead_owner, "open_domain_lead"
        # Plain words: several people from one company all reaching one rep is this rule at work.
        held = f"open lead {situation.open_lead_id}" if situation.open_lead_id else "an open lead"
        takes = f"same domain ({domain}) as {held} held by {owner}"
        unavailable = f"{owner}, who holds {held} of the same domain ({domain}), is unavailable"
    if owner is not None and matched_by is not None:
        because = why_not(owner)
        verdicts: tuple[CandidateVerdict, ...] = ()
        if explain:
            owner_verdict = CandidateVerdict(
                rep_id=owner,
                eligible=because is None,
                excluded_because=because,
                weight=0,
                current_before=0,
                current_after=0,
                pool_id=OWNER_POOL,
            )
            verdicts = (details(owner_verdict, None),)
        if because is None:
            return RoutingDecision(
                owner,
                OWNER_POOL,
                matched_by.replace("_", "-"),
                takes,
                verdicts,
                Rotation(),
                matched_by,
                {},
                load_after(owner),
                None,
                domain,
            )
        # Waiting only makes sense for an owner who can come back: not for one the request excludes
        # or one the roster does not know.
        can_return = because not in (EXCLUDED_BY_REQUEST, NOT_IN_ROSTER)
        if can_return and routing.ownership.owner_unavailable == "queue":
            return RoutingDecision(
                None,
                OWNER_POOL,
                matched_by.replace("_", "-"),
                f"{unavailable} ({because}); owner_unavailable=queue: the lead waits for the owner",
                verdicts,
                Rotation(),
                "none",
                {},
                None,
                owner,
                domain,
            )
        policy = routing.ownership.owner_unavailable
        notes.append(
            f"{unavailable} ({because}); "
            + ("owner_unavailable=rotate" if policy == "rotate" else "routed by the rules instead of waiting")
        )
        owner_verdicts = verdicts
    else:
        owner_verdicts = ()

    rule_id, pool_id = select_pool(lead, agreement)
    candidates = {m.rep for p in (pool_id, routing.fallback_pool) for m in roster.pools.get(p, ())}
    excluded = {rep: reason for rep in sorted(candidates) if (reason := why_not(rep)) is not None}
    absent = {rep for rep, reason in excluded.items() if reason != EXCLUDED_BY_REQUEST}
    configured: dict[tuple[str, str], int] = {}

    def members_of(pool: str) -> list[Weighted]:
        members = roster.pools.get(pool, ())
        if explain:
            configured.update({(pool, m.rep): m.weight for m in members})
        return [(m.rep, effective_weight(m.weight, roster.reps.get(m.rep), now)) for m in members]

    decision = _rotate_with_fallback(
        rule_id, pool_id, routing.fallback_pool, members_of, situation.rotations, excluded, absent, explain
    )
    pooled = tuple(
        details(verdict, configured.get((verdict.pool_id or "", verdict.rep_id))) for verdict in decision.candidates
    )
    return RoutingDecision(
        decision.rep_id,
        decision.pool_id,
        decision.rule_id,
        "; ".join([*notes, decision.reason]),
        (*owner_verdicts, *pooled),
        decision.rotation_after,
        decision.matched_by,
        decision.rotations_after,
        load_after(decision.rep_id) if decision.rep_id is not None else None,
        None,
        domain,
    )


# --------------------------------------------------------------------------- validation warnings


def routing_warnings(agreement: Agreement) -> list[AgreementProblem]:
    """What is valid but almost certainly a mistake: rules that can never match, pools no lead reaches."""
    routing = agreement.routing
    warnings: list[AgreementProblem] = []
    live_pools = {routing.fallback_pool}
    for j, rule in enumerate(routing.rules):
        where = f"routing.rules.{j}"
        empty = sorted(attribute for attribute, values in rule.when.items() if not values)
        if empty:
            warnings.append(
                AgreementProblem(where, f"rule {rule.id!r} never matches: no accepted values for {', '.join(empty)}")
            )
            continue
        covering = _covered_by(rule, routing.rules[:j])
        if covering:
            takers = ", ".join(repr(rule_id) for rule_id in covering)
            warnings.append(
                AgreementProblem(
                    where, f"rule {rule.id!r} never matches: every lead it matches is taken earlier by {takers}"
                )
            )
            continue
        live_pools.add(rule.pool)
    for p, pool in enumerate(routing.pools):
        if pool.id not in live_pools:
            warnings.append(
                AgreementProblem(
                    f"routing.pools.{p}",
                    f"pool {pool.id!r} receives no leads: no rule that can match sends leads there "
                    "and it is not the fallback pool",
                )
            )
    pooled = {member.rep for pool in routing.pools for member in pool.members}
    for i, rep in enumerate(agreement.roster):
        if rep.id not in pooled:
            warnings.append(
                AgreementProblem(f"roster.{i}", f"rep {rep.id!r} is in no pool; only ownership routes leads to them")
            )
        if rep.calendar is not None and rep.calendar in agreement.calendars:
            zone = agreement.calendars[rep.calendar].timezone
            if zone != rep.timezone:
                warnings.append(
                    AgreementProblem(
                        f"roster.{i}.calendar",
                        f"rep {rep.id!r} works calendar {rep.calendar!r} in {zone}, but the rep's time zone is "
                        f"{rep.timezone} (daily caps count days in {rep.timezone})",
                    )
                )
    return warnings


def _conditions(rule: RoutingRule) -> dict[str, frozenset[str]]:
    return {attribute: frozenset(v.casefold() for v in values) for attribute, values in rule.when.items()}


def _covered_by(rule: RoutingRule, earlier: Sequence[RoutingRule]) -> list[str]:
    """Ids of earlier rules that together take every lead ``rule`` matches; empty when some lead is left.

    Only provable cover counts: an earlier rule that tests an attribute this rule leaves open
    could let some lead through (tier is the exception: it has three values, so it is enumerated).
    """
    mine = _conditions(rule)
    mine.setdefault("tier", frozenset(tier.value for tier in Tier))
    relevant = [(other.id, _conditions(other)) for other in earlier]
    relevant = [(rule_id, tests) for rule_id, tests in relevant if set(tests) <= set(mine)]
    if not relevant:
        return []
    attributes = sorted(mine)
    size = 1
    for attribute in attributes:
        size *= len(mine[attribute])
    if size > _COMBINATION_LIMIT:
        return [
            rule_id
            for rule_id, tests in relevant
            if all(mine[attribute] <= accepted for attribute, accepted in tests.items())
        ][:1]
    used: set[str] = set()
    for values in itertools.product(*(sorted(mine[attribute]) for attribute in attributes)):
        lead = dict(zip(attributes, values, strict=True))
        taker = next(
            (rule_id for rule_id, tests in relevant if all(lead[a] in accepted for a, accepted in tests.items())),
            None,
        )
        if taker is None:
            return []
        used.add(taker)
    return [rule_id for rule_id, _ in relevant if rule_id in used]
