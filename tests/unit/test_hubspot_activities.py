"""HubSpot webhook events read as CRM activities: the pure mapping (coxswain/core/hubspot_activities.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from coxswain.core.hubspot_activities import (
    ContactActivity,
    HubSpotActivityMapping,
    HubSpotEvent,
    HubSpotObject,
    Ignored,
    ObjectActivity,
    ObjectKind,
    ReadObject,
    Reported,
    judge,
    parse_events,
    plan,
    reps_by_owner,
)
from schemas.events import ActivityType

MAPPING = HubSpotActivityMapping()
REPS = {"51234567": "ava"}
AT_MS = 1_764_842_400_000  # 2025-12-04T10:00:00Z


def event(subscription: str, **fields: Any) -> HubSpotEvent:
    return HubSpotEvent.model_validate(
        {
            "eventId": 1001,
            "subscriptionId": 77,
            "portalId": 62515,
            "appId": 4411,
            "occurredAt": AT_MS,
            "subscriptionType": subscription,
            "attemptNumber": 0,
            "objectId": 901,
            "changeSource": "CRM_UI",
            **fields,
        }
    )


def found(kind: ObjectKind, contacts: tuple[str, ...] = ("701",), **properties: str | None) -> HubSpotObject:
    return HubSpotObject(kind=kind, object_id="901", properties=properties, contact_ids=contacts)


def test_events_are_read_with_hubspots_field_names_and_time_in_milliseconds() -> None:
    [parsed] = parse_events([{**event("contact.creation").model_dump(by_alias=True), "changeFlag": "NEW"}])

    assert (parsed.event_id, parsed.object_id, parsed.subscription_type) == (1001, 901, "contact.creation")
    assert parsed.occurred_at == datetime(2025, 12, 4, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"eventId": 1}, "JSON array"),
        ([], "at least one"),
        ([{"eventId": 1}], r"event \[0\]: subscriptionId"),
        ([{**event("contact.creation").model_dump(by_alias=True), "occurredAt": "soon"}], "occurredAt"),
    ],
)
def test_a_body_that_is_not_hubspots_format_says_what_is_wrong(document: Any, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_events(document)


@pytest.mark.parametrize(
    ("subscription", "extra"),
    [
        ("contact.propertyChange", {}),
        ("object.propertyChange", {"objectTypeId": "0-1"}),
    ],
)
def test_a_lead_status_in_the_mapping_is_a_sal_verdict_about_the_contact(
    subscription: str, extra: dict[str, str]
) -> None:
    accepted = plan(event(subscription, propertyName="hs_lead_status", propertyValue="IN_PROGRESS", **extra), MAPPING)
    rejected = plan(event(subscription, propertyName="hs_lead_status", propertyValue="BAD_TIMING", **extra), MAPPING)

    assert accepted == ContactActivity("901", Reported(activity=ActivityType.sal_accepted))
    assert rejected == ContactActivity("901", Reported(activity=ActivityType.sal_rejected, reason="bad-timing"))


def test_a_lifecycle_stage_is_mapped_and_a_value_outside_the_mapping_is_ignored_with_the_reason() -> None:
    sql = plan(
        event("contact.propertyChange", propertyName="lifecyclestage", propertyValue="salesqualifiedlead"), MAPPING
    )
    other = plan(event("contact.propertyChange", propertyName="lifecyclestage", propertyValue="evangelist"), MAPPING)

    assert sql == ContactActivity("901", Reported(activity=ActivityType.sql_qualified))
    assert other == Ignored("lifecyclestage 'evangelist' is not in the mapping", "unmapped")


def test_the_mapping_is_the_configured_one() -> None:
    mapping = HubSpotActivityMapping.model_validate(
        {"lead_statuses": {"NOT_A_FIT": {"activity": "sal_rejected", "reason": "wrong-person"}}}
    )

    assert plan(event("contact.propertyChange", propertyName="hs_lead_status", propertyValue="NOT_A_FIT"), mapping) == (
        ContactActivity("901", Reported(activity=ActivityType.sal_rejected, reason="wrong-person"))
    )
    assert isinstance(
        plan(event("contact.propertyChange", propertyName="hs_lead_status", propertyValue="IN_PROGRESS"), mapping),
        Ignored,
    )


def test_owner_changes_and_new_contacts_report_no_activity() -> None:
    owner = plan(event("contact.propertyChange", propertyName="hubspot_owner_id", propertyValue="51234567"), MAPPING)
    created = plan(event("contact.creation"), MAPPING)

    assert isinstance(owner, Ignored) and owner.kind == "owner_change"
    assert isinstance(created, Ignored) and created.kind == "unsupported"


@pytest.mark.parametrize(("type_id", "kind"), [("0-48", "calls"), ("0-49", "emails"), ("0-47", "meetings")])
def test_an_engagement_created_is_read_before_it_is_judged(type_id: str, kind: ObjectKind) -> None:
    assert plan(event("object.creation", objectTypeId=type_id), MAPPING) == ReadObject(kind, "901")


def test_deals_are_read_when_created_or_moved_to_a_mapped_stage() -> None:
    assert plan(event("deal.creation"), MAPPING) == ReadObject("deals", "901")
    won = event("object.propertyChange", objectTypeId="0-3", propertyName="dealstage", propertyValue="closedwon")
    assert plan(won, MAPPING) == ReadObject("deals", "901")
    moved = event("deal.propertyChange", propertyName="dealstage", propertyValue="presentationscheduled")
    assert isinstance(plan(moved, MAPPING), Ignored)
    assert isinstance(plan(event("deal.creation"), HubSpotActivityMapping(deal_created=None)), Ignored)


def test_a_call_by_the_owner_is_a_first_touch_by_that_rep() -> None:
    call = found("calls", hubspot_owner_id="51234567", hs_call_direction="OUTBOUND")

    assert judge(event("object.creation", objectTypeId="0-48"), call, MAPPING, REPS) == ObjectActivity(
        ("701",), ActivityType.first_touch, "ava"
    )


def test_an_owner_who_is_no_rep_is_still_named_so_scoring_can_refuse_it() -> None:
    call = found("calls", hubspot_owner_id="999")

    judged = judge(event("object.creation", objectTypeId="0-48"), call, MAPPING, REPS)

    assert isinstance(judged, ObjectActivity) and judged.rep_id == "hubspot-owner-999"


def test_automated_emails_are_not_a_first_touch_unless_the_mapping_says_so() -> None:
    by_rep = found("emails", hubspot_owner_id="51234567", hs_email_direction="EMAIL")
    created = event("object.creation", objectTypeId="0-49")
    automated = event("object.creation", objectTypeId="0-49", changeSource="AUTOMATION_PLATFORM")
    counts = HubSpotActivityMapping(automated_email_is_first_touch=True)

    assert judge(created, by_rep, MAPPING, REPS) == ObjectActivity(("701",), ActivityType.first_touch, "ava")
    assert judge(automated, by_rep, MAPPING, REPS) == ObjectActivity(("701",), ActivityType.automated_email, "ava")
    assert judge(created, found("emails", hs_email_direction="EMAIL"), MAPPING, REPS) == ObjectActivity(
        ("701",), ActivityType.automated_email, None
    )
    assert judge(automated, by_rep, counts, REPS) == ObjectActivity(("701",), ActivityType.first_touch, "ava")


def test_an_email_the_lead_sent_is_no_touch() -> None:
    incoming = found("emails", hubspot_owner_id="51234567", hs_email_direction="INCOMING_EMAIL")

    judged = judge(event("object.creation", objectTypeId="0-49"), incoming, MAPPING, REPS)

    assert isinstance(judged, Ignored) and judged.kind == "not_a_touch"


def test_an_engagement_outside_first_touch_or_without_a_contact_is_ignored() -> None:
    meetings_only = HubSpotActivityMapping(first_touch=frozenset({"meeting"}))
    call = found("calls", hubspot_owner_id="51234567")

    assert isinstance(judge(event("object.creation", objectTypeId="0-48"), call, meetings_only, REPS), Ignored)
    lonely = judge(event("object.creation", objectTypeId="0-48"), found("calls", ()), MAPPING, REPS)
    assert isinstance(lonely, Ignored) and lonely.kind == "no_contact"


def test_a_deal_reports_its_stage_with_the_amount() -> None:
    deal = found("deals", ("701", "702"), hubspot_owner_id="51234567", amount="12000.50", dealstage="closedwon")
    won = event("deal.propertyChange", propertyName="dealstage", propertyValue="closedwon")

    assert judge(won, deal, MAPPING, REPS) == ObjectActivity(
        ("701", "702"), ActivityType.won, "ava", None, Decimal("12000.50")
    )
    created = judge(event("deal.creation"), found("deals", amount="not a number"), MAPPING, REPS)
    assert created == ObjectActivity(("701",), ActivityType.opportunity_created, None, None, None)


def test_reps_by_owner_inverts_the_rosters_owner_ids() -> None:
    assert reps_by_owner({"ava": "51234567", "ben": "51234568"}) == {"51234567": "ava", "51234568": "ben"}
