"""HubSpot webhook events read as CRM activities (no I/O).

HubSpot's webhooks API posts a JSON array of events. Each names what changed by ids only: the
subscription type (``contact.propertyChange``, ``object.creation``, ...), the object's type
(``objectTypeId``: ``0-1`` contact, ``0-3`` deal, ``0-47`` meeting, ``0-48`` call, ``0-49``
email) and id, and for a property change the property's new value. Intake
(``services/intake/hubspot_activities.py``) asks this module what each event means:

1. :func:`plan` reads the event alone. A contact's ``lifecyclestage`` or ``hs_lead_status``
   change is an activity at once (:class:`ContactActivity`); a call, email or meeting created,
   or a deal created or moved to another stage, needs the object read from HubSpot first
   (:class:`ReadObject`: its owner, its contacts, a deal's amount); anything else is
   :class:`Ignored` with the reason.
2. :func:`judge` turns a read object into the activity it reports: a call, meeting or email by a
   rep is a ``first_touch`` (an email HubSpot's automation sent is an ``automated_email``, which
   stops no clock, unless the mapping says automated emails count); a deal is
   ``opportunity_created``, ``won`` or ``lost`` with its amount.

What counts as what is the :class:`HubSpotActivityMapping` (``COXSWAIN_HUBSPOT_ACTIVITY_MAPPING``,
docs/integrators.md "HubSpot activities"). Which lead a contact is, the shell finds out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schemas.events import ActivityType

Engagement = Literal["call", "email", "meeting"]
ObjectKind = Literal["calls", "emails", "meetings", "deals"]

CONTACT, DEAL = "0-1", "0-3"
ENGAGEMENTS: dict[str, Engagement] = {"0-47": "meeting", "0-48": "call", "0-49": "email"}
OBJECT_KINDS: dict[str, ObjectKind] = {"0-47": "meetings", "0-48": "calls", "0-49": "emails", DEAL: "deals"}
ENGAGEMENT_OF: dict[ObjectKind, Engagement] = {"calls": "call", "emails": "email", "meetings": "meeting"}
# Legacy subscription types name the object in their prefix (``contact.propertyChange``).
LEGACY_PREFIXES = {"contact": CONTACT, "company": "0-2", "deal": DEAL, "ticket": "0-5"}
# The properties an object is read with, per kind.
READ_PROPERTIES: dict[ObjectKind, tuple[str, ...]] = {
    "calls": ("hubspot_owner_id", "hs_call_direction", "hs_call_status"),
    "emails": ("hubspot_owner_id", "hs_email_direction"),
    "meetings": ("hubspot_owner_id", "hs_meeting_outcome"),
    "deals": ("hubspot_owner_id", "dealstage", "amount"),
}
MAX_EVENTS = 1000

HubSpotCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
ReasonCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Reported(BaseModel):
    """The activity a HubSpot value reports, with the reason code a SAL rejection carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activity: ActivityType
    reason: ReasonCode | None = None


def _reported(activity: ActivityType, reason: str | None = None) -> Reported:
    return Reported(activity=activity, reason=reason)


class HubSpotActivityMapping(BaseModel):
    """Which HubSpot values report which activity. Keys are HubSpot's internal values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lead_statuses: dict[HubSpotCode, Reported] = Field(
        default_factory=lambda: {
            "IN_PROGRESS": _reported(ActivityType.sal_accepted),
            "UNQUALIFIED": _reported(ActivityType.sal_rejected, "unqualified"),
            "BAD_TIMING": _reported(ActivityType.sal_rejected, "bad-timing"),
        },
        description="Contact property hs_lead_status: value -> activity (SAL accept / reject with a reason code).",
    )
    lifecycle_stages: dict[HubSpotCode, Reported] = Field(
        default_factory=lambda: {"salesqualifiedlead": _reported(ActivityType.sql_qualified)},
        description="Contact property lifecyclestage: value -> activity.",
    )
    deal_stages: dict[HubSpotCode, Reported] = Field(
        default_factory=lambda: {
            "closedwon": _reported(ActivityType.won),
            "closedlost": _reported(ActivityType.lost),
        },
        description="Deal property dealstage: value -> activity (won / lost carry the deal's amount).",
    )
    deal_created: Reported | None = Field(
        default_factory=lambda: _reported(ActivityType.opportunity_created),
        description="A deal created with a lead's contact; null: deals created report nothing.",
    )
    first_touch: frozenset[Engagement] = Field(
        default=frozenset({"call", "email", "meeting"}),
        description="Engagements a rep creates that count as a first touch.",
    )
    automated_email_is_first_touch: bool = Field(
        default=False, description="Count an email HubSpot's automation sent as a first touch (the agreement's call)."
    )
    automated_sources: frozenset[HubSpotCode] = Field(
        default=frozenset({"AUTOMATION_PLATFORM", "WORKFLOWS", "SEQUENCES"}),
        description="Webhook changeSource values that mean automation, not a person, created the engagement.",
    )


class HubSpotEvent(BaseModel):
    """One event of a HubSpot webhook request, as HubSpot documents it (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    event_id: int = Field(alias="eventId", ge=0)
    subscription_id: int = Field(alias="subscriptionId")
    portal_id: int = Field(alias="portalId")
    occurred_at_ms: int = Field(alias="occurredAt", ge=0, le=253_402_300_799_000)
    subscription_type: Annotated[str, StringConstraints(min_length=3, max_length=100)] = Field(alias="subscriptionType")
    object_id: int = Field(alias="objectId", ge=0)
    object_type_id: str | None = Field(default=None, alias="objectTypeId", max_length=32)
    property_name: str | None = Field(default=None, alias="propertyName", max_length=256)
    property_value: str | None = Field(default=None, alias="propertyValue", max_length=4096)
    change_source: str | None = Field(default=None, alias="changeSource", max_length=100)

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.occurred_at_ms / 1000, tz=UTC)

    @property
    def object_type(self) -> str | None:
        prefix, _, _ = self.subscription_type.partition(".")
        return self.object_type_id or LEGACY_PREFIXES.get(prefix)

    @property
    def action(self) -> str:
        return self.subscription_type.partition(".")[2]


def parse_events(document: Any) -> list[HubSpotEvent]:
    """The events of a request body; ValueError says what is wrong with it (answered 422)."""
    if not isinstance(document, list):
        raise ValueError("a HubSpot webhook body is a JSON array of events")
    if not document:
        raise ValueError("a HubSpot webhook body holds at least one event")
    if len(document) > MAX_EVENTS:
        raise ValueError(f"a HubSpot webhook body holds at most {MAX_EVENTS} events, got {len(document)}")
    events = []
    for index, item in enumerate(document):
        try:
            events.append(HubSpotEvent.model_validate(item))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"event [{index}]: {where}: {first['msg']}") from None
    return events


@dataclass(frozen=True)
class Ignored:
    """The event reports no activity; ``reason`` says why (returned to HubSpot, counted)."""

    reason: str
    kind: str


@dataclass(frozen=True)
class ContactActivity:
    """The contact itself reports the activity (a property change)."""

    contact_id: str
    reported: Reported


@dataclass(frozen=True)
class ReadObject:
    """The event is about an engagement or a deal: read it (owner, contacts, amount), then judge."""

    kind: ObjectKind
    object_id: str


Plan = Ignored | ContactActivity | ReadObject


def plan(event: HubSpotEvent, mapping: HubSpotActivityMapping) -> Plan:
    object_type, action = event.object_type, event.action
    if object_type == CONTACT:
        return _contact(event, mapping)
    if object_type in ENGAGEMENTS and action == "creation":
        return ReadObject(OBJECT_KINDS[object_type], str(event.object_id))
    if object_type == DEAL and action == "creation":
        if mapping.deal_created is None:
            return Ignored("deals created report nothing (deal_created is null in the mapping)", "unmapped")
        return ReadObject("deals", str(event.object_id))
    if object_type == DEAL and action == "propertyChange" and event.property_name == "dealstage":
        if (event.property_value or "") not in mapping.deal_stages:
            return Ignored(f"deal stage {event.property_value!r} is not in the mapping", "unmapped")
        return ReadObject("deals", str(event.object_id))
    return Ignored(f"{event.subscription_type} of object type {object_type or '?'} reports no activity", "unsupported")


def _contact(event: HubSpotEvent, mapping: HubSpotActivityMapping) -> Plan:
    if event.action != "propertyChange":
        return Ignored(
            f"{event.subscription_type}: only property changes of a contact report activities", "unsupported"
        )
    value = (event.property_value or "").strip()
    table = {"hs_lead_status": mapping.lead_statuses, "lifecyclestage": mapping.lifecycle_stages}.get(
        event.property_name or ""
    )
    if event.property_name == "hubspot_owner_id":
        return Ignored(
            "an owner change is not an activity: Coxswain's router owns assignments (crm-sync writes this property)",
            "owner_change",
        )
    if table is None:
        return Ignored(f"contact property {event.property_name!r} reports no activity", "unsupported")
    reported = table.get(value)
    if reported is None:
        return Ignored(f"{event.property_name} {value!r} is not in the mapping", "unmapped")
    return ContactActivity(str(event.object_id), reported)


@dataclass(frozen=True)
class HubSpotObject:
    """An engagement or a deal as read from HubSpot: its properties and associated contacts."""

    kind: ObjectKind
    object_id: str
    properties: Mapping[str, str | None]
    contact_ids: tuple[str, ...]


@dataclass(frozen=True)
class ObjectActivity:
    """What a read object reports, for each of its contacts."""

    contact_ids: tuple[str, ...]
    activity: ActivityType
    rep_id: str | None
    reason: str | None = None
    amount: Decimal | None = None


def judge(
    event: HubSpotEvent, found: HubSpotObject, mapping: HubSpotActivityMapping, reps: Mapping[str, str]
) -> ObjectActivity | Ignored:
    """``reps``: HubSpot owner id -> rep id (the roster's ``crm.hubspot_owner_id``).

    The rep is the object's owner. An owner who is no rep of the roster is still named, as
    ``hubspot-owner-<id>``: scoring judges the activity and refuses a rep it does not know, so
    the refusal is a visible fact rather than a silent drop here.
    """
    if not found.contact_ids:
        return Ignored(f"{found.kind} {found.object_id} is associated with no contact", "no_contact")
    owner = (found.properties.get("hubspot_owner_id") or "").strip() or None
    rep_id = None if owner is None else reps.get(owner, f"hubspot-owner-{owner}")
    if found.kind == "deals":
        return _deal(event, found, mapping, rep_id)
    engagement = ENGAGEMENT_OF[found.kind]
    if engagement == "email":
        direction = (found.properties.get("hs_email_direction") or "EMAIL").upper()
        if direction != "EMAIL":
            return Ignored(f"an email with direction {direction} was not sent by a rep", "not_a_touch")
        if owner is None or (event.change_source or "").upper() in mapping.automated_sources:
            activity = (
                ActivityType.first_touch if mapping.automated_email_is_first_touch else ActivityType.automated_email
            )
            return ObjectActivity(found.contact_ids, activity, rep_id)
    if engagement not in mapping.first_touch:
        return Ignored(f"a {engagement} is not a first touch in the mapping", "unmapped")
    return ObjectActivity(found.contact_ids, ActivityType.first_touch, rep_id)


def _deal(
    event: HubSpotEvent, found: HubSpotObject, mapping: HubSpotActivityMapping, rep_id: str | None
) -> ObjectActivity | Ignored:
    if event.action == "creation":
        reported = mapping.deal_created
    else:
        reported = mapping.deal_stages.get((event.property_value or "").strip())
    if reported is None:
        return Ignored(f"deal {found.object_id}: {event.subscription_type} is not in the mapping", "unmapped")
    return ObjectActivity(found.contact_ids, reported.activity, rep_id, reported.reason, _amount(found))


def _amount(found: HubSpotObject) -> Decimal | None:
    raw = (found.properties.get("amount") or "").strip()
    if not raw:
        return None
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def reps_by_owner(owner_ids: Mapping[str, str]) -> dict[str, str]:
    """HubSpot owner id -> rep id, from rep id -> owner id (``coxswain.core.crm_sync.owner_ids``)."""
    return {owner: rep for rep, owner in owner_ids.items()}
