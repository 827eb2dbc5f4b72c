"""The routing decision: first matching rule picks a pool, smooth weighted round robin picks a rep.

Smooth weighted round robin (as in nginx): every eligible rep's ``current`` grows by its weight,
the rep with the highest ``current`` wins and gives back the sum of the eligible weights. Over
any window the shares converge to the weights, picks interleave instead of bursting, and a rep
who was ineligible (away, at capacity) does not accumulate credit while away, so returning never
causes a catch-up burst. The state is a small mapping that the shell stores with the assignment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coxswain.core.agreement import Agreement, Pool, RoutingRule
from coxswain.core.scoring import attribute_value
from schemas.events import CandidateVerdict, LeadAttributes, Tier


@dataclass(frozen=True)
class RoutingInput:
    attributes: LeadAttributes
    tier: Tier
    source: str


@dataclass(frozen=True)
class Rotation:
    """Per pool: each rep's smooth-WRR credit and how many leads the pool gave it."""

    current: Mapping[str, int] = field(default_factory=dict)
    assigned: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingDecision:
    rep_id: str | None
    pool_id: str
    rule_id: str
    reason: str
    candidates: tuple[CandidateVerdict, ...]
    rotation_after: Rotation


def rule_matches(rule: RoutingRule, lead: RoutingInput) -> bool:
    for attribute, accepted in rule.when.items():
        if attribute == "tier":
            value: str | int | None = lead.tier.value
        elif attribute == "source":
            value = lead.source
        else:
            value = attribute_value(lead.attributes, attribute)
        if value is None or str(value).casefold() not in {option.casefold() for option in accepted}:
            return False
    return True


def select_pool(lead: RoutingInput, agreement: Agreement) -> tuple[str, str]:
    """(rule id, pool id) of the first matching rule, else the fallback pool."""
    for rule in agreement.routing.rules:
        if rule_matches(rule, lead):
            return rule.id, rule.pool
    return "fallback", agreement.routing.fallback_pool


def rotate(
    pool: Pool, rotation: Rotation, excluded: Mapping[str, str]
) -> tuple[str | None, tuple[CandidateVerdict, ...], Rotation]:
    """Pick the next rep of ``pool``; ``excluded`` maps rep id -> why that rep may not take a lead."""
    eligible = [member for member in pool.members if member.rep not in excluded]
    before = {member.rep: rotation.current.get(member.rep, 0) for member in pool.members}
    after = dict(before)
    for member in eligible:
        after[member.rep] += member.weight
    chosen: str | None = None
    if eligible:
        # Ties go to the rep listed first, so the order in the agreement is a stable tie-break.
        chosen = max(eligible, key=lambda member: (after[member.rep], -pool.members.index(member))).rep
        after[chosen] -= sum(member.weight for member in eligible)
    verdicts = tuple(
        CandidateVerdict(
            rep_id=member.rep,
            eligible=member.rep not in excluded,
            excluded_because=excluded.get(member.rep),
            weight=member.weight,
            current_before=before[member.rep],
            current_after=after[member.rep],
        )
        for member in pool.members
    )
    assigned = dict(rotation.assigned)
    if chosen is not None:
        assigned[chosen] = assigned.get(chosen, 0) + 1
    return chosen, verdicts, Rotation(current={**rotation.current, **after}, assigned=assigned)


def decide(
    lead: RoutingInput,
    agreement: Agreement,
    rotations: Mapping[str, Rotation],
    excluded: Mapping[str, str],
) -> RoutingDecision:
    rule_id, pool_id = select_pool(lead, agreement)
    chosen, verdicts, after = rotate(agreement.pool(pool_id), rotations.get(pool_id, Rotation()), excluded)
    if chosen is not None:
        return RoutingDecision(
            chosen, pool_id, rule_id, f"rule {rule_id} -> pool {pool_id}, weighted rotation", verdicts, after
        )
    fallback = agreement.routing.fallback_pool
    if fallback == pool_id:
        return RoutingDecision(None, pool_id, rule_id, f"nobody eligible in pool {pool_id}", verdicts, after)
    chosen, fallback_verdicts, after = rotate(agreement.pool(fallback), rotations.get(fallback, Rotation()), excluded)
    reason = f"rule {rule_id} -> pool {pool_id}: nobody eligible; fallback pool {fallback}"
    return RoutingDecision(chosen, fallback, rule_id, reason, (*verdicts, *fallback_verdicts), after)
