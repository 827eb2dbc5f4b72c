"""Salesforce changes decided as crm.activities.v1 facts, without I/O: which record stands for
which activity under the configured mapping, and that the key (not the poll) names it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from coxswain.core.salesforce_activities import Change, Mapping, SObject, activities_of, activity_event, parse_datetime
from schemas.events import ActivityType

LEAD = uuid.UUID("00000000-0000-0000-0000-00000000abcd")
REPS = {"005000000000001AAA": "ava"}
MAPPING = Mapping(sal_rejected_statuses={"Closed - Not Converted": "no-budget"})
STAMP = "2026-12-04T10:00:00.000+0000"


def decided(sobject: SObject, mapping: Mapping = MAPPING, **fields: Any) -> list[tuple[str, str | None, str | None]]:
    record = {"Id": "X1", "OwnerId": "005000000000001AAA", "LastModifiedDate": STAMP, "SystemModstamp": STAMP}
    found = activities_of(Change(sobject, record | fields, LEAD), mapping, REPS)
    return [(a.activity.value, a.rep_id, a.reason) for a in found]


def test_salesforce_datetimes_are_read_with_their_offset() -> None:
    assert parse_datetime(STAMP) == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert parse_datetime("2026-12-04T10:00:00Z") == datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert parse_datetime("yesterday") is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"TaskSubtype": "Call", "IsClosed": True}, [("first_touch", "ava", None)]),
        ({"TaskSubtype": "Email", "IsClosed": True}, [("first_touch", "ava", None)]),
        ({"TaskSubtype": "Call", "IsClosed": False}, []),  # an open task is not a touch yet
        ({"TaskSubtype": "Task", "IsClosed": True}, []),  # a to-do (Coxswain's own follow-up task)
        ({"TaskSubtype": "ListEmail", "IsClosed": True}, [("automated_email", "ava", None)]),
        ({"TaskSubtype": "Call", "IsClosed": True, "OwnerId": "005000000000999AAA"}, []),  # not a rep
    ],
)
def test_a_closed_call_or_email_task_by_a_rep_is_a_first_touch_and_a_mass_email_is_automated(
    fields: dict[str, Any], expected: list[tuple[str, str | None, str | None]]
) -> None:
    assert decided("Task", **fields) == expected


def test_an_automated_email_counts_as_a_first_touch_only_when_configured() -> None:
    counted = Mapping(first_touch_task_subtypes=frozenset({"Call", "Email", "ListEmail"}))
    assert decided("Task", counted, TaskSubtype="ListEmail", IsClosed=True) == [("first_touch", "ava", None)]


def test_lead_status_values_map_to_sal_accepted_or_rejected_with_the_reason() -> None:
    assert decided("Lead", Status="Working - Contacted") == [("sal_accepted", "ava", None)]
    assert decided("Lead", Status="Closed - Not Converted") == [("sal_rejected", "ava", "no-budget")]
    assert decided("Lead", Status="Open - Not Contacted") == []
    from_field = Mapping(sal_rejected_statuses={"Closed - Not Converted": "no-budget"}, rejection_reason_field="Why__c")
    assert decided("Lead", from_field, Status="Closed - Not Converted", Why__c="competitor") == [
        ("sal_rejected", "ava", "competitor")
    ]


def test_an_opportunity_is_created_then_won_or_lost_with_its_amount() -> None:
    open_one = activities_of(
        Change("Opportunity", {"Id": "006A", "Amount": 5000, "IsClosed": False, "SystemModstamp": STAMP}, LEAD),
        MAPPING,
        REPS,
    )
    assert [(a.activity, a.amount) for a in open_one] == [(ActivityType.opportunity_created, Decimal(5000))]
    lost = activities_of(
        Change(
            "Opportunity",
            {"Id": "006A", "Amount": 5000, "IsClosed": True, "IsWon": False, "SystemModstamp": STAMP},
            LEAD,
        ),
        MAPPING,
        REPS,
    )
    assert [a.activity for a in lost] == [ActivityType.opportunity_created, ActivityType.lost]
    # The same record read again gives the same keys, so the same event ids.
    assert open_one[0].key == lost[0].key == "Opportunity/006A/opportunity_created"
    assert activity_event(open_one[0], "sf").event_id == activity_event(lost[0], "sf").event_id
    assert activity_event(open_one[0], "sf").event_id != activity_event(open_one[0], "other").event_id


def test_a_meeting_booked_by_a_rep_is_a_first_touch_unless_switched_off() -> None:
    assert decided("Event", CreatedDate=STAMP) == [("first_touch", "ava", None)]
    assert decided("Event", Mapping(events_are_first_touch=False), CreatedDate=STAMP) == []
    assert decided("Event", OwnerId="005000000000999AAA") == []
