"""Who may take a lead now: capacity, daily cap, working hours, out-of-office, pause, start date,
account ownership, reassignment exclusions, and the fallback when nobody in the pool may."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from coxswain.core.accounts import lead_domain, normalize_domain, parent_domains
from coxswain.core.agreement import OWNER_POOL, Agreement, parse_agreement
from coxswain.core.capacity import RepLoad, after_assignment, after_release
from coxswain.core.roster import (
    Absence,
    OverrideRejected,
    RepOverride,
    Roster,
    RosterOverrides,
    apply_override,
    build_roster,
    unavailable_because,
)
from coxswain.core.routing import EXCLUDED_BY_REQUEST, Rotation, RoutingDecision, RoutingInput, Situation, route
from schemas.events import LeadAttributes, Tier

# A Wednesday, 15:00 UTC: 10:00 in New York, 16:00 in Berlin.
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def document() -> dict[str, Any]:
    return {
        "version": "routing-test-1",
        "name": "Routing tests",
        "scoring": {"mql": {"enter": 60, "exit": 45}, "tiers": {"hot": 80, "warm": 60}},
        "calendars": {
            "ny-office": {"timezone": "America/New_York", "hours": {"mon-fri": ["09:00-17:00"]}},
            "berlin-office": {"timezone": "Europe/Berlin", "hours": {"mon-fri": ["09:00-17:00"]}},
        },
        "roster": [
            {"id": "ava", "name": "Ava", "timezone": "America/New_York"},
            {"id": "ben", "name": "Ben", "timezone": "Europe/Berlin"},
            {"id": "eli", "name": "Eli"},
            {"id": "queue", "name": "Overflow desk"},
        ],
        "routing": {
            "rules": [{"id": "north-america", "when": {"country": ["US", "CA"]}, "pool": "na"}],
            "fallback_pool": "overflow",
            "pools": [
                {"id": "na", "members": [{"rep": "ava", "weight": 2}, {"rep": "ben"}, {"rep": "eli"}]},
                {"id": "overflow", "members": [{"rep": "queue"}]},
            ],
        },
        "sla": {"policies": {t: {"first_touch": "1h"} for t in ("hot", "warm", "cold")}},
    }


def agreement_with(**reps: Mapping[str, Any]) -> Agreement:
    """The test agreement with some reps' settings changed, e.g. ``ava={"capacity": 5}``."""
    doc = copy.deepcopy(document())
    for rep in doc["roster"]:
        rep.update(reps.get(rep["id"], {}))
    return parse_agreement(doc)


def lead(country: str | None = "US", tier: Tier = Tier.warm, **attributes: Any) -> RoutingInput:
    return RoutingInput(attributes=LeadAttributes(country=country, **attributes), tier=tier, source="webform")


def decide_now(
    agreement: Agreement,
    request: RoutingInput | None = None,
    *,
    now: datetime = NOW,
    roster: Roster | None = None,
    loads: Mapping[str, RepLoad] | None = None,
    rotations: Mapping[str, Rotation] | None = None,
    exclude: tuple[str, ...] = (),
    **situation: Any,
) -> RoutingDecision:
    return route(
        request or lead(),
        agreement,
        Situation(
            now=now,
            roster=roster or build_roster(agreement),
            rotations=rotations or {},
            loads=loads or {},
            **situation,
        ),
        exclude=exclude,
    )


def reason_of(decision: RoutingDecision, rep: str) -> str | None:
    return next(c.excluded_because for c in decision.candidates if c.rep_id == rep and c.pool_id != OWNER_POOL)


# --------------------------------------------------------------------------- capacity and daily cap


def test_a_rep_at_capacity_is_skipped_with_the_numbers_in_the_record() -> None:
    agreement = agreement_with(ava={"capacity": 6})
    loads = {"ava": RepLoad(open_load=5, open_leads=2)}

    hot = decide_now(agreement, lead(tier=Tier.hot), loads=loads)  # hot counts 3: 5 + 3 > 6
    cold = decide_now(agreement, lead(tier=Tier.cold), loads=loads)  # cold counts 1: 5 + 1 fits

    assert hot.rep_id != "ava"
    assert reason_of(hot, "ava") == "at capacity (open load 5 + 3 would exceed 6)"
    ava = next(c for c in hot.candidates if c.rep_id == "ava")
    assert (ava.open_load, ava.capacity, ava.eligible) == (5, 6, False)
    assert cold.rep_id == "ava"


def test_the_daily_cap_counts_days_in_the_reps_time_zone() -> None:
    agreement = agreement_with(ava={"daily_cap": 3})
    # 03:00 UTC on the 26th is still the 25th in New York.
    late_evening = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    loads = {"ava": RepLoad(day=date(2026, 11, 25), assigned_on_day=3)}

    capped = decide_now(agreement, now=late_evening, loads=loads)
    next_morning = decide_now(agreement, now=late_evening + timedelta(hours=3), loads=loads)

    assert reason_of(capped, "ava") == "daily cap reached (3 of 3 today, America/New_York)"
    assert capped.rep_id != "ava"
    assert reason_of(next_morning, "ava") is None
    assert next_morning.rep_id == "ava"


def test_counters_after_an_assignment_and_a_release() -> None:
    profile = build_roster(agreement_with()).reps["ava"]
    load = after_assignment(RepLoad(), profile, 3, NOW)
    load = after_assignment(load, profile, 1, NOW)

    assert load == RepLoad(open_load=4, open_leads=2, day=date(2026, 11, 25), assigned_on_day=2)
    assert after_assignment(load, profile, 2, NOW + timedelta(days=1)).assigned_on_day == 1
    assert after_release(load, 3) == RepLoad(open_load=1, open_leads=1, day=date(2026, 11, 25), assigned_on_day=2)


# --------------------------------------------------------------------------- availability


def test_outside_working_hours_in_the_calendars_zone_nobody_gets_a_lead() -> None:
    agreement = agreement_with(ava={"calendar": "ny-office"}, ben={"calendar": "berlin-office"})

    # 15:00 UTC: New York is at 10:00 (open), Berlin at 16:00 (open).
    both_open = decide_now(agreement)
    # 17:30 UTC: New York 12:30 (open), Berlin 18:30 (closed).
    berlin_closed = decide_now(agreement, now=NOW + timedelta(hours=2, minutes=30))

    assert reason_of(both_open, "ben") is None
    assert reason_of(berlin_closed, "ben") == (
        "outside working hours (calendar berlin-office, opens 2026-11-26T09:00:00+01:00)"
    )
    assert reason_of(berlin_closed, "ava") is None


def test_working_hours_follow_daylight_saving_time() -> None:
    agreement = agreement_with(ava={"calendar": "ny-office"})
    profile = build_roster(agreement).reps["ava"]
    # 13:30 UTC is 09:30 in New York in summer (EDT) but 08:30 in winter (EST).
    summer = datetime(2026, 7, 15, 13, 30, tzinfo=UTC)
    winter = datetime(2026, 1, 14, 13, 30, tzinfo=UTC)

    assert unavailable_because(profile, summer) is None
    assert unavailable_because(profile, winter) == (
        "outside working hours (calendar ny-office, opens 2026-01-14T09:00:00-05:00)"
    )


def test_out_of_office_from_the_agreement_and_from_the_roster_api() -> None:
    agreement = agreement_with(
        ava={"out_of_office": [{"start": "2026-11-25T00:00:00Z", "end": "2026-11-26T00:00:00Z"}]}
    )
    runtime = Absence(start=NOW - timedelta(hours=1), end=NOW + timedelta(days=2), reason="parental leave")
    roster = build_roster(agreement, RosterOverrides(reps={"ben": RepOverride(absences=(runtime,))}))

    decision = decide_now(agreement, roster=roster)

    assert reason_of(decision, "ava") == "out of office until 2026-11-25T19:00:00-05:00"
    assert reason_of(decision, "ben") == "out of office until 2026-11-27T16:00:00+01:00 (parental leave)"
    assert decision.rep_id == "eli"
    later = decide_now(agreement, roster=roster, now=datetime(2026, 11, 26, 0, 0, tzinfo=UTC))
    assert reason_of(later, "ava") is None


def test_a_paused_rep_and_a_rep_who_has_not_started_get_nothing() -> None:
    agreement = agreement_with(ben={"started_on": "2026-12-01"})
    roster = build_roster(
        agreement, RosterOverrides(reps={"ava": RepOverride(paused=True, pause_reason="coaching day")})
    )

    decision = decide_now(agreement, roster=roster)

    assert reason_of(decision, "ava") == "paused: coaching day"
    assert reason_of(decision, "ben") == "starts on 2026-12-01"
    assert decision.rep_id == "eli"


# --------------------------------------------------------------------------- fallback and parking


def test_nobody_eligible_in_the_pool_goes_to_the_fallback_pool_with_every_reason() -> None:
    agreement = agreement_with(ava={"capacity": 2}, ben={"calendar": "berlin-office"})
    roster = build_roster(agreement, RosterOverrides(reps={"eli": RepOverride(paused=True)}))
    evening = NOW + timedelta(hours=3)  # Berlin 19:00

    decision = decide_now(agreement, lead(tier=Tier.hot), roster=roster, now=evening)

    assert (decision.rep_id, decision.pool_id, decision.rule_id) == ("queue", "overflow", "north-america")
    assert decision.matched_by == "fallback"
    assert decision.reason == "rule north-america -> pool na: nobody eligible; fallback pool overflow"
    assert [(c.pool_id, c.rep_id, c.eligible) for c in decision.candidates] == [
        ("na", "ava", False),
        ("na", "ben", False),
        ("na", "eli", False),
        ("overflow", "queue", True),
    ]
    assert reason_of(decision, "ava") == "at capacity (open load 0 + 3 would exceed 2)"
    assert (reason_of(decision, "ben") or "").startswith("outside working hours")
    assert reason_of(decision, "eli") == "paused"
    assert set(decision.rotations_after) == {"na", "overflow"}
    assert decision.rotations_after["na"].away == {"ava", "ben", "eli"}


def test_nobody_eligible_anywhere_leaves_the_lead_unassigned_with_the_reasons() -> None:
    agreement = agreement_with()
    paused = RepOverride(paused=True)
    roster = build_roster(agreement, RosterOverrides(reps=dict.fromkeys(("ava", "ben", "eli", "queue"), paused)))

    decision = decide_now(agreement, roster=roster)

    assert decision.rep_id is None
    assert decision.matched_by == "none"
    assert decision.reason.endswith("fallback pool overflow: nobody eligible")
    assert all(c.excluded_because == "paused" for c in decision.candidates)
    assert decision.load_after is None


# --------------------------------------------------------------------------- ownership


def test_an_owned_accounts_lead_goes_to_its_owner_outside_any_rotation() -> None:
    agreement = agreement_with()
    rotations = {"na": Rotation(current={"ava": 1, "ben": -1}, assigned={"ava": 3})}

    decision = decide_now(
        agreement, lead(email="cto@acme.com"), rotations=rotations, account_owner="ben", account_domain="acme.com"
    )

    assert (decision.rep_id, decision.pool_id, decision.rule_id) == ("ben", OWNER_POOL, "account-owner")
    assert decision.matched_by == "account_owner"
    assert decision.reason == "account owner ben (acme.com) takes the lead"
    assert decision.rotations_after == {}  # nobody's place in a rotation moves
    assert decision.load_after == RepLoad(open_load=2, open_leads=1, day=date(2026, 11, 25), assigned_on_day=1)


def test_an_unavailable_owner_means_rotation_under_the_rotate_policy() -> None:
    agreement = agreement_with(ben={"paused": True})

    decision = decide_now(agreement, lead(email="cto@acme.com"), account_owner="ben", account_domain="acme.com")

    assert decision.rep_id == "ava"
    assert decision.matched_by == "rule"
    assert decision.reason == (
        "account owner ben (acme.com) is unavailable (paused); owner_unavailable=rotate; "
        "rule north-america -> pool na, weighted rotation"
    )
    assert decision.candidates[0].pool_id == OWNER_POOL
    assert decision.candidates[0].excluded_because == "paused"


def test_an_unavailable_owner_means_waiting_under_the_queue_policy() -> None:
    doc = document()
    doc["routing"]["ownership"] = {"owner_unavailable": "queue"}
    doc["roster"][1]["calendar"] = "berlin-office"
    agreement = parse_agreement(doc)
    evening = NOW + timedelta(hours=3)

    waiting = decide_now(agreement, now=evening, account_owner="ben", account_domain="acme.com")
    morning = decide_now(agreement, now=evening + timedelta(hours=14), account_owner="ben", account_domain="acme.com")

    assert waiting.rep_id is None
    assert waiting.waiting_for == "ben"
    assert "owner_unavailable=queue: the lead waits for the owner" in waiting.reason
    assert morning.rep_id == "ben"


def test_an_owner_who_is_not_in_the_roster_is_never_waited_for() -> None:
    doc = document()
    doc["routing"]["ownership"] = {"owner_unavailable": "queue"}

    decision = decide_now(parse_agreement(doc), account_owner="sally-from-finance", account_domain="acme.com")

    assert decision.rep_id == "ava"
    assert decision.reason.startswith(
        "account owner sally-from-finance (acme.com) is unavailable (not in the roster); "
        "routed by the rules instead of waiting"
    )


OPEN_LEAD = uuid.UUID("0b6f3c1e-8a57-4d36-9d2a-3f1c2b7e9a10")


def test_a_new_lead_from_a_domain_with_an_open_lead_goes_to_that_leads_owner() -> None:
    agreement = agreement_with()

    decision = decide_now(agreement, lead(email="buyer@initech.io"), open_lead_owner="eli", open_lead_id=OPEN_LEAD)
    ignored = decide_now(
        parse_agreement({**document(), "routing": {**document()["routing"], "ownership": {"same_domain": False}}}),
        lead(email="buyer@initech.io"),
        open_lead_owner="eli",
        open_lead_id=OPEN_LEAD,
    )

    assert (decision.rep_id, decision.matched_by, decision.rule_id) == ("eli", "open_domain_lead", "open-domain-lead")
    assert ignored.matched_by == "rule"


def test_the_reason_of_a_same_domain_routing_names_the_open_lead_and_its_holder() -> None:
    """Eight people from one company all reaching one rep is domain stickiness: the reason says so."""
    decision = decide_now(
        agreement_with(), lead(email="buyer@initech.io"), open_lead_owner="eli", open_lead_id=OPEN_LEAD
    )
    from_company_domain = decide_now(
        agreement_with(),
        lead(email="buyer@gmail.com", company_domain="Initech.io"),
        open_lead_owner="eli",
        open_lead_id=OPEN_LEAD,
    )
    paused = decide_now(
        agreement_with(eli={"paused": True}),
        lead(email="buyer@initech.io"),
        open_lead_owner="eli",
        open_lead_id=OPEN_LEAD,
    )

    assert decision.reason == f"same domain (initech.io) as open lead {OPEN_LEAD} held by eli"
    assert from_company_domain.reason == decision.reason
    assert paused.rep_id != "eli"
    assert paused.reason == (
        f"eli, who holds open lead {OPEN_LEAD} of the same domain (initech.io), is unavailable (paused); "
        "owner_unavailable=rotate; rule north-america -> pool na, weighted rotation"
    )


def test_a_reassignment_never_returns_the_lead_to_an_excluded_rep() -> None:
    agreement = agreement_with()

    decision = decide_now(agreement, exclude=("ava", "ben"), account_owner="ava", account_domain="acme.com")

    assert decision.rep_id == "eli"
    assert reason_of(decision, "ava") == EXCLUDED_BY_REQUEST
    assert "account owner ava (acme.com) is unavailable" in decision.reason
    # An exclusion is not an absence: ava's credit is not forfeited when she is eligible again.
    assert decision.rotations_after["na"].away == frozenset()


@pytest.mark.parametrize(
    ("attributes", "domain"),
    [
        ({"email": "Jane@Sales.ACME.com"}, "sales.acme.com"),
        ({"email": "jane@gmail.com"}, None),
        ({"email": "jane@gmail.com", "company_domain": "https://www.initech.io/about"}, "initech.io"),
        ({"company_domain": "not a domain"}, None),
        ({}, None),
    ],
)
def test_the_domain_of_a_lead(attributes: dict[str, str], domain: str | None) -> None:
    free_mail = parse_agreement(document()).routing.ownership.free_mail_domains
    assert lead_domain(LeadAttributes(**attributes), free_mail) == domain


def test_domains_are_normalised_and_an_account_owns_its_subdomains() -> None:
    assert normalize_domain(" WWW.Acme.COM. ") == "acme.com"
    assert normalize_domain("acme") is None
    assert normalize_domain("-bad-.com") is None
    assert parent_domains("eu.sales.acme.com") == ("eu.sales.acme.com", "sales.acme.com", "acme.com")


# --------------------------------------------------------------------------- the roster in force


def test_overrides_change_weights_membership_and_add_reps() -> None:
    agreement = agreement_with()
    overrides = RosterOverrides(
        reps={"finn": RepOverride(name="Finn", timezone="Europe/Dublin")},
        members={("na", "ben"): None, ("na", "ava"): 5, ("na", "finn"): 2},
        revision=7,
    )

    roster = build_roster(agreement, overrides)

    assert [(m.rep, m.weight) for m in roster.pools["na"]] == [("ava", 5), ("eli", 1), ("finn", 2)]
    assert roster.reps["finn"].timezone == "Europe/Dublin"
    assert roster.revision == 7


def test_an_override_the_agreement_cannot_take_makes_the_rep_unavailable_not_guessed() -> None:
    agreement = agreement_with()
    roster = build_roster(agreement, RosterOverrides(reps={"ava": RepOverride(calendar="gone")}))

    because = unavailable_because(roster.reps["ava"], NOW)

    assert because is not None
    assert because.startswith("roster override does not fit agreement routing-test-1: calendar: 'gone'")


@pytest.mark.parametrize(
    ("rep_id", "override", "message"),
    [
        ("zoe", RepOverride(timezone="UTC"), "rep 'zoe' is not in agreement routing-test-1's roster and has no name"),
        ("ava", RepOverride(timezone="Mars/Olympus"), "timezone: unknown time zone 'Mars/Olympus'"),
        ("ava", RepOverride(capacity=0), "capacity: Input should be greater than or equal to 1"),
    ],
)
def test_overrides_are_checked_against_the_agreement(rep_id: str, override: RepOverride, message: str) -> None:
    with pytest.raises(OverrideRejected, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_override(agreement_with(), rep_id, override)


def test_free_mail_domains_match_whatever_their_case_and_each_list_is_its_own() -> None:
    jane = LeadAttributes(email="jane@Mailbox.io")
    assert lead_domain(jane, ("MAILBOX.io",)) is None
    assert lead_domain(jane, ["mailbox.IO"]) is None  # any collection, not only a tuple
    # Another agreement's list, asked after the first: its own answer, not the first list's.
    assert lead_domain(jane, ("other.io",)) == "mailbox.io"
    assert lead_domain(jane, ()) == "mailbox.io"
