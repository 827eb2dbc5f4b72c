"""Routing: first matching rule, fallback pool, and smooth weighted round robin with exclusions."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import Pool, PoolMember, parse_agreement
from coxswain.core.routing import Rotation, RoutingInput, decide, rotate, rule_matches, select_pool
from schemas.events import LeadAttributes, Tier

EXAMPLE_DOC: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml").read_text(encoding="utf-8")
)
AGREEMENT = parse_agreement(EXAMPLE_DOC)
NORTH_AMERICA = AGREEMENT.pool("north-america")  # ava 2, ben 1, eli 1
AWAY = "out of office until 2026-11-20"


def lead(country: str | None = None, tier: Tier = Tier.warm, source: str = "hubspot", **more: Any) -> RoutingInput:
    return RoutingInput(attributes=LeadAttributes(country=country, **more), tier=tier, source=source)


def picks(pool: Pool, n: int, excluded: Mapping[str, str], rotation: Rotation) -> tuple[list[str | None], Rotation]:
    chosen = []
    for _ in range(n):
        rep, _, rotation = rotate(pool, rotation, excluded)
        chosen.append(rep)
    return chosen, rotation


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("country", "rule", "pool"),
    [
        ("GB", "emea", "emea"),
        ("NL", "emea", "emea"),
        ("US", "north-america", "north-america"),
        ("CA", "north-america", "north-america"),
        ("JP", "fallback", "inbound-queue"),
        (None, "fallback", "inbound-queue"),
    ],
)
def test_first_matching_rule_picks_the_pool(country: str | None, rule: str, pool: str) -> None:
    assert select_pool(lead(country), AGREEMENT) == (rule, pool)


def test_rules_are_tried_in_order_and_the_first_match_wins() -> None:
    document = copy.deepcopy(EXAMPLE_DOC)
    document["routing"]["rules"].insert(0, {"id": "hot-to-emea", "when": {"tier": ["hot"]}, "pool": "emea"})
    agreement = parse_agreement(document)

    assert select_pool(lead("US", Tier.hot), agreement) == ("hot-to-emea", "emea")
    assert select_pool(lead("US", Tier.warm), agreement) == ("north-america", "north-america")


def test_rule_with_several_attributes_needs_all_of_them_and_ignores_case() -> None:
    document = copy.deepcopy(EXAMPLE_DOC)
    document["routing"]["rules"] = [
        {"id": "webform-software", "when": {"source": ["WebForm"], "industry": ["software"]}, "pool": "emea"}
    ]
    agreement = parse_agreement(document)
    rule = agreement.routing.rules[0]

    assert rule_matches(rule, lead(source="webform", industry="Software"))
    assert not rule_matches(rule, lead(source="webform", industry="retail"))
    assert not rule_matches(rule, lead(source="hubspot", industry="Software"))
    assert not rule_matches(rule, lead(source="webform"))  # a missing attribute never matches


def test_rule_on_email_domain_uses_the_derived_attribute() -> None:
    document = copy.deepcopy(EXAMPLE_DOC)
    document["routing"]["rules"] = [{"id": "big-logo", "when": {"email_domain": ["acme.io"]}, "pool": "emea"}]
    agreement = parse_agreement(document)

    assert select_pool(lead(email="Jane@ACME.io"), agreement) == ("big-logo", "emea")
    assert select_pool(lead(email="jane@other.io"), agreement) == ("fallback", "inbound-queue")


def test_decision_names_rule_pool_and_rep() -> None:
    decision = decide(lead("DE"), AGREEMENT, {}, {})

    assert (decision.rep_id, decision.pool_id, decision.rule_id) == ("chloe", "emea", "emea")
    assert decision.reason == "rule emea -> pool emea, weighted rotation"
    assert [(c.rep_id, c.eligible, c.current_before, c.current_after) for c in decision.candidates] == [
        ("chloe", True, 0, -1),
        ("dan", True, 0, 1),
    ]
    assert decision.rotation_after == Rotation(current={"chloe": -1, "dan": 1}, assigned={"chloe": 1})


def test_fallback_rule_routes_to_the_fallback_pool() -> None:
    decision = decide(lead("JP"), AGREEMENT, {}, {})

    assert (decision.rep_id, decision.pool_id, decision.rule_id) == ("eli", "inbound-queue", "fallback")


# --------------------------------------------------------------------------- exclusions and fallback


def test_excluded_rep_never_receives_a_lead_and_the_verdict_says_why() -> None:
    rotations: dict[str, Rotation] = {}
    for _ in range(50):
        decision = decide(lead("US"), AGREEMENT, rotations, {"ava": AWAY})
        rotations[decision.pool_id] = decision.rotation_after

        assert decision.rep_id in {"ben", "eli"}
        ava = next(c for c in decision.candidates if c.rep_id == "ava")
        assert not ava.eligible
        assert ava.excluded_because == AWAY
        assert ava.current_before == ava.current_after  # no credit while away
        assert all(c.eligible and c.excluded_because is None for c in decision.candidates if c.rep_id != "ava")

    assert rotations["north-america"].assigned == {"ben": 25, "eli": 25}


def test_nobody_eligible_in_the_matched_pool_goes_to_the_fallback_pool() -> None:
    excluded = {"chloe": AWAY, "dan": "at capacity (25 open leads)"}

    decision = decide(lead("FR"), AGREEMENT, {}, excluded)

    assert decision.rep_id == "eli"
    assert decision.pool_id == "inbound-queue"
    assert decision.rule_id == "emea"
    assert decision.reason == "rule emea -> pool emea: nobody eligible; fallback pool inbound-queue"
    assert [(c.rep_id, c.eligible, c.excluded_because) for c in decision.candidates] == [
        ("chloe", False, AWAY),
        ("dan", False, "at capacity (25 open leads)"),
        ("eli", True, None),
    ]
    assert decision.rotation_after.assigned == {"eli": 1}


def test_nobody_eligible_anywhere_assigns_nobody() -> None:
    excluded = {"chloe": AWAY, "dan": AWAY, "eli": AWAY}

    decision = decide(lead("FR"), AGREEMENT, {}, excluded)

    assert decision.rep_id is None
    assert decision.pool_id == "inbound-queue"
    assert "nobody eligible" in decision.reason
    assert all(not c.eligible and c.excluded_because == AWAY for c in decision.candidates)
    assert decision.rotation_after.assigned == {}


def test_nobody_eligible_in_the_fallback_pool_itself() -> None:
    decision = decide(lead("JP"), AGREEMENT, {}, {"eli": AWAY})

    assert decision.rep_id is None
    assert decision.reason == "nobody eligible in pool inbound-queue"
    assert [(c.rep_id, c.excluded_because) for c in decision.candidates] == [("eli", AWAY)]


# --------------------------------------------------------------------------- smooth weighted round robin


def test_first_picks_interleave_by_weight_with_ties_to_the_first_listed() -> None:
    chosen, _ = picks(NORTH_AMERICA, 8, {}, Rotation())

    assert chosen == ["ava", "ben", "eli", "ava"] * 2


def test_ten_thousand_leads_split_by_weight() -> None:
    rotation = Rotation()
    for _ in range(10_000):
        decision = decide(lead("US"), AGREEMENT, {"north-america": rotation}, {})
        rotation = decision.rotation_after

    shares = {rep: count / 10_000 for rep, count in rotation.assigned.items()}
    assert shares == pytest.approx({"ava": 0.50, "ben": 0.25, "eli": 0.25}, abs=0.01)
    assert sum(rotation.assigned.values()) == 10_000


@pytest.mark.parametrize("away", ["ava", "ben", "eli"])
@pytest.mark.parametrize("warm_up", [0, 1, 2, 3, 5])
def test_returning_rep_gets_no_catch_up_burst(away: str, warm_up: int) -> None:
    _, rotation = picks(NORTH_AMERICA, warm_up, {}, Rotation())
    while_away, rotation = picks(NORTH_AMERICA, 100, {away: AWAY}, rotation)
    assert away not in while_away

    after, _ = picks(NORTH_AMERICA, 100, {}, rotation)

    weight = next(m.weight for m in NORTH_AMERICA.members if m.rep == away)
    normal_share = 100 * weight // 4
    assert after.count(away) <= normal_share + 1
    assert after.count(away) >= normal_share - 1  # and it is not starved either


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    weights = draw(st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=6))
    return Pool(id="pool", members=tuple(PoolMember(rep=f"rep-{i}", weight=w) for i, w in enumerate(weights)))


@settings(max_examples=150, deadline=None)
@given(pool=pools(), data=st.data())
def test_chosen_rep_is_always_eligible_and_counters_add_up(pool: Pool, data: st.DataObject) -> None:
    reps = [m.rep for m in pool.members]
    pattern = data.draw(st.lists(st.sets(st.sampled_from(reps)), min_size=1, max_size=60), label="exclusions")
    rotation = Rotation()
    given_out = 0
    for away in pattern:
        excluded = dict.fromkeys(away, AWAY)
        rep, verdicts, rotation = rotate(pool, rotation, excluded)
        if rep is None:
            assert set(away) == set(reps)
        else:
            given_out += 1
            assert rep not in excluded
        assert [v.rep_id for v in verdicts] == reps
        assert all(v.eligible == (v.rep_id not in excluded) for v in verdicts)
        assert all(v.current_before == v.current_after for v in verdicts if not v.eligible)
        assert sum(rotation.current.values()) == 0  # credit is conserved: no rep can build a backlog

    assert sum(rotation.assigned.values()) == given_out
    assert set(rotation.assigned) <= set(reps)


@settings(max_examples=100, deadline=None)
@given(pool=pools(), rounds=st.integers(min_value=1, max_value=5))
def test_without_exclusions_every_rep_gets_exactly_its_weight_per_round(pool: Pool, rounds: int) -> None:
    total = sum(m.weight for m in pool.members)

    chosen, rotation = picks(pool, total * rounds, {}, Rotation())

    assert Counter(chosen) == {m.rep: m.weight * rounds for m in pool.members}
    assert rotation.assigned == {m.rep: m.weight * rounds for m in pool.members}
    assert all(value == 0 for value in rotation.current.values())  # a full round returns to the start
