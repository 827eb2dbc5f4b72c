"""Scoring against the example agreement: exact contributions, decay, caps and the decay properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import load_agreement
from coxswain.core.scoring import (
    Touch,
    decayed,
    engagement_contributions,
    falls_below_at,
    fast_lane_tier,
    score,
    tier_for,
)
from schemas.events import EngagementType, LeadAttributes, ScoreContribution, Tier

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)

VP_AT_MID_MARKET_SOFTWARE = LeadAttributes(
    email="jane@acme.io", title="VP of Marketing", company_size=250, industry="Software", country="US"
)
INTERN_ON_GMAIL = LeadAttributes(email="kid@gmail.com", title="Marketing Intern", country="DE")


def by_rule(contributions: tuple[ScoreContribution, ...]) -> dict[str, tuple[str, float, float]]:
    return {c.rule_id: (c.kind, c.points, c.value) for c in contributions}


# --------------------------------------------------------------------------- fit and negative


def test_fit_rules_of_a_decision_maker() -> None:
    result = score(VP_AT_MID_MARKET_SOFTWARE, [], AGREEMENT, T0)

    assert by_rule(result.contributions) == {
        "title-decision-maker": ("fit", 25, 25),
        "size-mid-market": ("fit", 15, 15),
        "industry-target": ("fit", 10, 10),
        "country-served": ("fit", 5, 5),
    }
    assert (result.fit, result.engagement, result.total) == (55, 0, 55)


def test_one_title_can_fire_several_rules_each_once() -> None:
    attributes = LeadAttributes(title="Head of Revenue Operations", company_size=12_000)

    result = score(attributes, [], AGREEMENT, T0)

    assert by_rule(result.contributions) == {
        "title-decision-maker": ("fit", 25, 25),
        "title-practitioner": ("fit", 10, 10),
        "size-enterprise": ("fit", 20, 20),
    }
    assert result.total == 55


def test_negative_rules_subtract_and_count_in_fit() -> None:
    result = score(INTERN_ON_GMAIL, [], AGREEMENT, T0)

    assert by_rule(result.contributions) == {
        "country-served": ("fit", 5, 5),
        "student": ("negative", -50, -50),
        "free-mail": ("negative", -15, -15),
    }
    assert result.fit == -60
    assert result.total == -60


def test_competitor_domain_is_matched_case_insensitively() -> None:
    attributes = LeadAttributes(email="Spy@Contoso-Analytics.COM", title="Director of Sales", company_size=60)

    result = score(attributes, [], AGREEMENT, T0)

    assert by_rule(result.contributions)["competitor"] == ("negative", -100, -100)
    assert result.total == 25 + 15 - 100


@pytest.mark.parametrize(
    ("size", "rule"),
    [(49, None), (50, "size-mid-market"), (5000, "size-mid-market"), (5001, "size-enterprise"), (None, None)],
)
def test_company_size_bands_are_inclusive(size: int | None, rule: str | None) -> None:
    result = score(LeadAttributes(company_size=size), [], AGREEMENT, T0)

    assert [c.rule_id for c in result.contributions] == ([rule] if rule else [])


def test_no_attributes_no_touches_scores_zero() -> None:
    result = score(LeadAttributes(), [], AGREEMENT, T0)

    assert (result.fit, result.engagement, result.total, result.contributions) == (0, 0, 0, ())


# --------------------------------------------------------------------------- engagement, decay, caps


def test_fresh_demo_request_is_worth_its_points() -> None:
    result = score(INTERN_ON_GMAIL, [Touch(EngagementType.demo_request, T0)], AGREEMENT, T0)

    assert by_rule(result.contributions)["engagement.demo_request"] == ("engagement", 40, 40)
    assert (result.fit, result.engagement, result.total) == (-60, 40, -20)


@pytest.mark.parametrize(
    ("engagement", "half_life_days", "points"),
    [
        (EngagementType.demo_request, 14, 40),
        (EngagementType.pricing_view, 7, 15),
        (EngagementType.content_download, 10, 8),
        (EngagementType.page_view, 3, 1),
    ],
)
def test_decay_halves_after_each_half_life(engagement: EngagementType, half_life_days: int, points: float) -> None:
    touches = [Touch(engagement, T0)]

    one = score(LeadAttributes(), touches, AGREEMENT, T0 + half_life_days * DAY)
    two = score(LeadAttributes(), touches, AGREEMENT, T0 + 2 * half_life_days * DAY)

    assert one.engagement == pytest.approx(points / 2, abs=1e-4)
    assert two.engagement == pytest.approx(points / 4, abs=1e-4)


def test_decayed_is_exact_for_half_lives_and_ignores_negative_age() -> None:
    assert decayed(40, timedelta(days=14), timedelta(days=14)) == 20
    assert decayed(40, timedelta(days=7), timedelta(days=14)) == pytest.approx(40 / 2**0.5)
    assert decayed(40, timedelta(0), timedelta(days=14)) == 40
    assert decayed(40, -DAY, timedelta(days=14)) == 40


def test_cap_limits_what_an_event_type_adds_but_points_record_what_fired() -> None:
    touches = [Touch(EngagementType.pricing_view, T0)] * 3

    result = score(LeadAttributes(), touches, AGREEMENT, T0)

    assert by_rule(result.contributions) == {"engagement.pricing_view": ("engagement", 45, 30)}
    assert result.total == 30


def test_capped_value_decays_below_the_cap_once_the_sum_does() -> None:
    touches = [Touch(EngagementType.pricing_view, T0)] * 3  # 45 raw, capped at 30

    assert score(LeadAttributes(), touches, AGREEMENT, T0 + 7 * DAY).engagement == pytest.approx(22.5)
    # ln(45/30)/ln 2 half-lives later the raw sum reaches the cap: still exactly 30 just before.
    assert score(LeadAttributes(), touches, AGREEMENT, T0 + 4 * DAY).engagement == 30


def test_uncapped_demo_requests_add_up() -> None:
    touches = [Touch(EngagementType.demo_request, T0), Touch(EngagementType.demo_request, T0 + 14 * DAY)]

    result = score(LeadAttributes(), touches, AGREEMENT, T0 + 14 * DAY)

    assert by_rule(result.contributions) == {"engagement.demo_request": ("engagement", 80, 60)}


def test_touches_after_now_and_types_without_a_rule_do_not_count() -> None:
    touches = [
        Touch(EngagementType.form_submit, T0 + DAY),
        Touch(EngagementType.email_open, T0),
        Touch(EngagementType.field_update, T0),
    ]

    assert engagement_contributions(touches, AGREEMENT, T0) == []
    assert score(LeadAttributes(), touches, AGREEMENT, T0).total == 0


def test_mixed_engagement_sums_each_type() -> None:
    touches = [
        Touch(EngagementType.form_submit, T0 - 14 * DAY),  # 10 -> 5
        Touch(EngagementType.email_click, T0 - 7 * DAY),  # 3 -> 1.5
        Touch(EngagementType.webinar_attended, T0),  # 15
    ]

    result = score(VP_AT_MID_MARKET_SOFTWARE, touches, AGREEMENT, T0)

    assert by_rule(result.contributions)["engagement.form_submit"] == ("engagement", 10, 5)
    assert by_rule(result.contributions)["engagement.email_click"] == ("engagement", 3, 1.5)
    assert by_rule(result.contributions)["engagement.webinar_attended"] == ("engagement", 15, 15)
    assert (result.fit, result.engagement, result.total) == (55, 21.5, 76.5)


@pytest.mark.parametrize(
    ("total", "tier"),
    [(100, Tier.hot), (80, Tier.hot), (79.9999, Tier.warm), (60, Tier.warm), (59.99, Tier.cold), (-20, Tier.cold)],
)
def test_tier_thresholds_are_inclusive(total: float, tier: Tier) -> None:
    assert tier_for(total, AGREEMENT) is tier


def test_fast_lane_only_for_demo_request() -> None:
    assert fast_lane_tier(EngagementType.demo_request, AGREEMENT) is Tier.hot
    assert all(fast_lane_tier(e, AGREEMENT) is None for e in EngagementType if e is not EngagementType.demo_request)


# --------------------------------------------------------------------------- falls_below_at


def test_falls_below_at_finds_the_exit_crossing() -> None:
    # fit 55 + fresh demo 40 = 95; below the MQL exit (45) never happens: fit alone is 55.
    touches = [Touch(EngagementType.demo_request, T0)]
    assert falls_below_at(VP_AT_MID_MARKET_SOFTWARE, touches, AGREEMENT, T0, 45) is None

    # fit 55 + demo 40 drops below 75 when the demo is worth 20: one half-life later.
    crossing = falls_below_at(VP_AT_MID_MARKET_SOFTWARE, touches, AGREEMENT, T0, 75)
    assert crossing is not None
    # Scores are rounded to 4 decimals, so 75.0000 lasts until the demo is worth < 19.99995 (~4 s later).
    assert T0 + 14 * DAY <= crossing <= T0 + 14 * DAY + timedelta(seconds=10)
    assert score(VP_AT_MID_MARKET_SOFTWARE, touches, AGREEMENT, crossing).total < 75
    assert score(VP_AT_MID_MARKET_SOFTWARE, touches, AGREEMENT, crossing - timedelta(milliseconds=200)).total >= 75


def test_falls_below_at_is_now_when_already_below() -> None:
    assert falls_below_at(INTERN_ON_GMAIL, [], AGREEMENT, T0, 0) == T0


# --------------------------------------------------------------------------- properties

TITLES = ["VP Sales", "Marketing Intern", "Head of RevOps", "Engineer", "Student", "CTO", "Operations Manager", None]
DOMAINS = ["acme.io", "gmail.com", "contoso-analytics.com", "Outlook.com", "example.org"]

attributes_strategy = st.builds(
    LeadAttributes,
    email=st.one_of(st.none(), st.sampled_from(DOMAINS).map(lambda domain: f"person@{domain}")),
    title=st.sampled_from(TITLES),
    company_size=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000_000)),
    industry=st.sampled_from(["software", "Fintech", "retail", None]),
    country=st.sampled_from(["US", "DE", "JP", "BR", None]),
)
ages = st.integers(min_value=0, max_value=120 * 86_400).map(lambda seconds: timedelta(seconds=seconds))
touches_strategy = st.lists(st.tuples(st.sampled_from(list(EngagementType)), ages), max_size=12).map(
    lambda pairs: [Touch(engagement, T0 - age) for engagement, age in pairs]
)


@settings(max_examples=100, deadline=None)
@given(attributes=attributes_strategy, touches=touches_strategy, offset=ages)
def test_score_is_deterministic(attributes: LeadAttributes, touches: list[Touch], offset: timedelta) -> None:
    now = T0 + offset
    first = score(attributes, touches, AGREEMENT, now)
    second = score(LeadAttributes.model_validate(attributes.model_dump()), list(touches), AGREEMENT, now)

    assert first == second
    assert first.total == pytest.approx(sum(c.value for c in first.contributions), abs=1e-3)
    assert first.total == pytest.approx(first.fit + first.engagement, abs=1e-3)


@settings(max_examples=100, deadline=None)
@given(attributes=attributes_strategy, touches=touches_strategy, first=ages, later=ages)
def test_decayed_engagement_never_rises_without_new_touches(
    attributes: LeadAttributes, touches: list[Touch], first: timedelta, later: timedelta
) -> None:
    t1 = T0 + first
    t2 = t1 + later

    earlier_score = score(attributes, touches, AGREEMENT, t1)
    later_score = score(attributes, touches, AGREEMENT, t2)

    assert later_score.engagement <= earlier_score.engagement
    assert later_score.total <= earlier_score.total
    assert later_score.fit == earlier_score.fit


@settings(max_examples=60, deadline=None)
@given(attributes=attributes_strategy, touches=touches_strategy, fraction=st.floats(min_value=0.0, max_value=1.5))
def test_falls_below_at_brackets_the_crossing(
    attributes: LeadAttributes, touches: list[Touch], fraction: float
) -> None:
    now = score(attributes, touches, AGREEMENT, T0)
    threshold = now.fit + fraction * now.engagement + 0.001

    crossing = falls_below_at(attributes, touches, AGREEMENT, T0, threshold)

    if crossing is None:
        assert score(attributes, touches, AGREEMENT, T0 + timedelta(days=365)).total >= threshold
        return
    assert crossing >= T0
    assert score(attributes, touches, AGREEMENT, crossing).total < threshold
    if crossing > T0:
        before = max(T0, crossing - timedelta(milliseconds=200))
        assert score(attributes, touches, AGREEMENT, before).total >= threshold
