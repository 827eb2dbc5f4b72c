"""Routing rules: segments, regions and other attributes, their validation, and the warnings for
rules that can never match and pools no lead reaches."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from coxswain.core.agreement import AgreementError, load_agreement, parse_agreement
from coxswain.core.routing import RoutingInput, routing_warnings, select_pool
from coxswain_app.cli import app
from schemas.events import LeadAttributes, Tier
from tests.unit.test_routing_eligibility import document

ROOT = Path(__file__).resolve().parents[2]


def with_routing(**routing: Any) -> dict[str, Any]:
    doc = copy.deepcopy(document())
    doc["routing"].update(routing)
    return doc


def pools(*ids: str) -> list[dict[str, Any]]:
    return [{"id": pool_id, "members": [{"rep": "ava"}]} for pool_id in ids]


SEGMENTED = parse_agreement(
    with_routing(
        segments=[
            {"id": "smb", "max_size": 199},
            {"id": "mid-market", "min_size": 200, "max_size": 1999},
            {"id": "enterprise", "min_size": 2000},
        ],
        regions=[
            {"id": "dach", "countries": ["DE", "AT", "CH"]},
            {"id": "us-west", "states": ["US-CA", "US-WA", "US-OR"]},
            {"id": "north-america", "countries": ["US", "CA"]},
        ],
        rules=[
            {"id": "strategic", "when": {"segment": ["enterprise"], "region": ["north-america"]}, "pool": "strategic"},
            {"id": "west", "when": {"region": ["us-west"]}, "pool": "west"},
            {"id": "dach", "when": {"region": ["dach"]}, "pool": "dach"},
            {"id": "analytics", "when": {"product_interest": ["Analytics"], "tier": ["hot"]}, "pool": "analytics"},
            {"id": "partners", "when": {"source": ["partner-portal"]}, "pool": "partners"},
            {"id": "smb", "when": {"segment": ["smb"]}, "pool": "smb"},
        ],
        pools=pools("strategic", "west", "dach", "analytics", "partners", "smb", "overflow"),
    )
)


def lead(tier: Tier = Tier.warm, source: str = "webform", **attributes: Any) -> RoutingInput:
    return RoutingInput(attributes=LeadAttributes(**attributes), tier=tier, source=source)


@pytest.mark.parametrize(
    ("request_", "rule"),
    [
        (lead(country="US", state="CA", company_size=5000), "strategic"),
        (lead(country="US", state="CA", company_size=500), "west"),
        (lead(country="US", state=" ca ", company_size=500), "west"),
        (lead(country="CA", company_size=2000), "strategic"),
        (lead(country="AT", company_size=10), "dach"),
        (lead(country="FR", product_interest="analytics", tier=Tier.hot), "analytics"),
        (lead(country="FR", product_interest="analytics", tier=Tier.warm, company_size=1999), "fallback"),
        (lead(country="FR", source="Partner-Portal"), "partners"),
        (lead(country="FR", company_size=199), "smb"),
        (lead(country="FR", company_size=200), "fallback"),
        (lead(country="US", state="NY"), "fallback"),  # no size: in no segment
    ],
)
def test_segments_regions_and_attributes_pick_the_first_matching_rule(request_: RoutingInput, rule: str) -> None:
    assert select_pool(request_, SEGMENTED)[0] == rule


def test_a_persona_rule_uses_the_persona_scoring_assigned() -> None:
    agreement = parse_agreement(
        with_routing(rules=[{"id": "execs", "when": {"persona": ["executive"]}, "pool": "na"}])
        | {"personas": [{"id": "executive", "match": {"title": {"contains_any": ["vp"]}}}]}
    )
    executive = RoutingInput(LeadAttributes(), Tier.warm, "webform", persona="executive")

    assert select_pool(executive, agreement) == ("execs", "na")
    assert select_pool(lead(), agreement) == ("fallback", "overflow")


@pytest.mark.parametrize(
    ("routing", "path", "message"),
    [
        (
            {"rules": [{"id": "big", "when": {"segment": ["huge"]}, "pool": "na"}]},
            "routing.rules.0.when.segment",
            "rule 'big' names segment 'huge', which is not defined; allowed: none (add routing.segments)",
        ),
        (
            {
                "regions": [{"id": "dach", "countries": ["DE"]}],
                "rules": [{"id": "r", "when": {"region": ["emea"]}, "pool": "na"}],
            },
            "routing.rules.0.when.region",
            "rule 'r' names region 'emea', which is not defined; allowed: dach",
        ),
        (
            {"rules": [{"id": "t", "when": {"tier": ["scorching"]}, "pool": "na"}]},
            "routing.rules.0.when.tier",
            "rule 't' names tier 'scorching', which is not defined; allowed: hot, warm, cold",
        ),
        (
            {"segments": [{"id": "a", "max_size": 500}, {"id": "b", "min_size": 400}]},
            "routing.segments.1",
            "segment 'b' overlaps segment 'a'; a size may be in one only",
        ),
        (
            {
                "pools": [
                    {"id": "account-owner", "members": [{"rep": "ava"}]},
                    {"id": "overflow", "members": [{"rep": "ava"}]},
                ],
                "rules": [],
            },
            "routing.pools.0.id",
            "'account-owner' is reserved for leads routed to an owner",
        ),
        ({"load": {"hot": 3, "warm": 2}}, "routing.load", "no load for tier(s) cold; every tier needs one"),
        (
            {"regions": [{"id": "west", "states": ["California"]}]},
            "routing.regions.0.states.0",
            "String should match pattern",
        ),
    ],
)
def test_routing_sections_are_validated_with_their_path(routing: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(AgreementError) as caught:
        parse_agreement(with_routing(**routing))

    assert any(p.path == path and message in p.message for p in caught.value.problems), caught.value.problems


def test_a_reps_time_zone_must_exist() -> None:
    doc = document()
    doc["roster"][0]["timezone"] = "America/Gotham"

    with pytest.raises(AgreementError) as caught:
        parse_agreement(doc)

    assert [str(p) for p in caught.value.problems] == [
        "roster.0.timezone: unknown time zone 'America/Gotham'; expected an IANA name such as Europe/Berlin"
    ]


# --------------------------------------------------------------------------- warnings


def warnings_of(**routing: Any) -> list[str]:
    return [str(w) for w in routing_warnings(parse_agreement(with_routing(**routing)))]


def test_a_rule_after_a_broader_one_is_shadowed() -> None:
    assert warnings_of(
        rules=[
            {"id": "na", "when": {"country": ["US", "CA"]}, "pool": "na"},
            {"id": "us-hot", "when": {"country": ["us"], "tier": ["hot"]}, "pool": "overflow"},
        ]
    ) == [
        "routing.rules.1: rule 'us-hot' never matches: every lead it matches is taken earlier by 'na'",
    ]


def test_a_rule_covered_by_several_earlier_rules_together_is_shadowed() -> None:
    assert warnings_of(
        rules=[
            {"id": "us", "when": {"country": ["US"]}, "pool": "na"},
            {"id": "ca-hot", "when": {"country": ["CA"], "tier": ["hot"]}, "pool": "na"},
            {"id": "ca-rest", "when": {"country": ["CA"], "tier": ["warm", "cold"]}, "pool": "na"},
            {"id": "north-america", "when": {"country": ["US", "CA"]}, "pool": "overflow"},
        ]
    ) == [
        "routing.rules.3: rule 'north-america' never matches: every lead it matches is taken earlier by "
        "'us', 'ca-hot', 'ca-rest'",
    ]


def test_an_earlier_rule_on_an_attribute_the_later_one_leaves_open_does_not_shadow_it() -> None:
    assert (
        warnings_of(
            rules=[
                {"id": "us-software", "when": {"country": ["US"], "industry": ["software"]}, "pool": "na"},
                {"id": "us", "when": {"country": ["US"]}, "pool": "overflow"},
            ]
        )
        == []
    )


def test_a_catch_all_rule_shadows_everything_after_it_and_strands_their_pools() -> None:
    assert warnings_of(
        rules=[
            {"id": "everyone", "when": {}, "pool": "overflow"},
            {"id": "na", "when": {"country": ["US"]}, "pool": "na"},
        ]
    ) == [
        "routing.rules.1: rule 'na' never matches: every lead it matches is taken earlier by 'everyone'",
        "routing.pools.0: pool 'na' receives no leads: no rule that can match sends leads there and it is not the "
        "fallback pool",
    ]


def test_empty_value_lists_pools_without_rules_and_reps_without_pools_are_reported() -> None:
    doc = with_routing(
        rules=[{"id": "nothing", "when": {"country": []}, "pool": "na"}],
        pools=[*pools("na", "overflow"), {"id": "apac", "members": [{"rep": "ben"}]}],
    )
    doc["roster"][2]["calendar"] = "berlin-office"  # eli: time zone UTC

    warnings = [str(w) for w in routing_warnings(parse_agreement(doc))]

    assert warnings == [
        "routing.rules.0: rule 'nothing' never matches: no accepted values for country",
        "routing.pools.0: pool 'na' receives no leads: no rule that can match sends leads there and it is not the "
        "fallback pool",
        "routing.pools.2: pool 'apac' receives no leads: no rule that can match sends leads there and it is not the "
        "fallback pool",
        "roster.2: rep 'eli' is in no pool; only ownership routes leads to them",
        "roster.2.calendar: rep 'eli' works calendar 'berlin-office' in Europe/Berlin, but the rep's time zone is "
        "UTC (daily caps count days in UTC)",
        "roster.3: rep 'queue' is in no pool; only ownership routes leads to them",
    ]


def test_the_shipped_agreements_have_no_routing_warnings() -> None:
    for path in (ROOT / "examples" / "agreement.yaml", ROOT / "tests" / "e2e" / "agreement.yaml"):
        assert routing_warnings(load_agreement(path)) == [], path


def test_agreement_validate_prints_routing_warnings(tmp_path: Path) -> None:
    doc = with_routing(
        rules=[
            {"id": "na", "when": {"country": ["US"]}, "pool": "na"},
            {"id": "again", "when": {"country": ["US"]}, "pool": "overflow"},
        ]
    )
    path = tmp_path / "agreement.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")

    result = CliRunner().invoke(app, ["agreement", "validate", str(path)])

    assert result.exit_code == 0, result.output
    assert (
        f"{path}: warning: routing.rules.1: rule 'again' never matches: every lead it matches is taken earlier by 'na'"
        in result.output
    )
