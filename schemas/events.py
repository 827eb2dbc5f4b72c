"""Event contracts: every fact Coxswain accepts or publishes.

Each event is a past-tense fact with a version in its name. On Kafka the record key is the
lead id (so one lead's facts stay ordered within a partition), the value is the JSON of the
model, and the CloudEvents attributes travel as ``ce_*`` headers (binary content mode).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=256)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Event(BaseModel):
    """Base of every fact: an id that consumers dedupe on and the time it happened."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: ClassVar[str]
    ce_type: ClassVar[str]
    ce_source: ClassVar[str]

    event_id: uuid.UUID = Field(description="Unique id of this fact; consumers dedupe on it.")
    lead_id: uuid.UUID = Field(description="The lead the fact is about; also the Kafka key.")
    occurred_at: AwareDatetime = Field(description="When the fact happened (UTC).")


class EngagementType(StrEnum):
    form_submit = "form_submit"
    email_click = "email_click"
    email_open = "email_open"
    page_view = "page_view"
    webinar_attended = "webinar_attended"
    content_download = "content_download"
    demo_request = "demo_request"
    pricing_view = "pricing_view"
    field_update = "field_update"


class ActivityType(StrEnum):
    first_touch = "first_touch"
    automated_email = "automated_email"
    sal_accepted = "sal_accepted"
    sal_rejected = "sal_rejected"
    meeting_held = "meeting_held"
    sql_qualified = "sql_qualified"
    opportunity_created = "opportunity_created"
    won = "won"
    lost = "lost"
    disqualified = "disqualified"


class LeadAttributes(BaseModel):
    """What marketing automation knows about the person and the company."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: EmailStr | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    title: ShortText | None = None
    seniority: ShortText | None = None
    department: ShortText | None = None
    company: ShortText | None = None
    company_domain: ShortText | None = None
    company_size: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    industry: ShortText | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = Field(
        default=None, description="ISO 3166-1 alpha-2 country code, upper case."
    )
    state: ShortText | None = None
    campaign: ShortText | None = None
    product_interest: ShortText | None = None


class LeadReceivedV1(Event):
    """Intake accepted a marketing-automation event about a lead."""

    topic: ClassVar[str] = "leads.received.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.received.v1"
    ce_source: ClassVar[str] = "/coxswain/intake"

    source: Code = Field(description="Sending system, e.g. hubspot, marketo, webform.")
    webhook_id: ShortText = Field(description="The webhook-id header the event arrived with.")
    external_id: ShortText | None = Field(default=None, description="The sender's id of the contact.")
    engagement: EngagementType
    attributes: LeadAttributes


class ActivityRecordedV1(Event):
    """A CRM reported what a rep did with a lead."""

    topic: ClassVar[str] = "crm.activities.v1"
    ce_type: ClassVar[str] = "io.coxswain.crm.activity.recorded.v1"
    ce_source: ClassVar[str] = "/coxswain/intake"

    source: Code
    webhook_id: ShortText
    activity: ActivityType
    rep_id: Code | None = None
    reason: ShortText | None = Field(default=None, description="Reason code, e.g. for a SAL rejection.")
    amount: Decimal | None = Field(default=None, ge=0, description="Deal amount for won / opportunity.")


class Stage(StrEnum):
    lead = "lead"
    mql = "mql"
    sal = "sal"
    sql = "sql"
    opportunity = "opportunity"
    customer = "customer"
    recycled = "recycled"
    disqualified = "disqualified"


class Tier(StrEnum):
    hot = "hot"
    warm = "warm"
    cold = "cold"


class ScoreContribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule_id: str
    kind: Literal["fit", "engagement", "negative"]
    points: float = Field(description="Points the rule awarded when it fired.")
    value: float = Field(description="What the rule is worth now, after decay and caps.")


class LeadScoredV1(Event):
    """Scoring recomputed a lead's score; the contributions add up to the total."""

    topic: ClassVar[str] = "leads.scored.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.scored.v1"
    ce_source: ClassVar[str] = "/coxswain/scoring"

    agreement_version: str
    caused_by: uuid.UUID = Field(description="Event id of the input that triggered the score.")
    fit: float
    engagement: float
    total: float
    contributions: tuple[ScoreContribution, ...]


class LeadStageChangedV1(Event):
    """A lead moved along the lifecycle."""

    topic: ClassVar[str] = "leads.stage_changed.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.stage_changed.v1"
    ce_source: ClassVar[str] = "/coxswain/scoring"

    agreement_version: str
    caused_by: uuid.UUID
    from_stage: Stage
    to_stage: Stage
    reason: str


class LeadQualifiedV1(Event):
    """A lead met the MQL criteria and is ready to be routed."""

    topic: ClassVar[str] = "leads.qualified.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.qualified.v1"
    ce_source: ClassVar[str] = "/coxswain/scoring"

    agreement_version: str
    caused_by: uuid.UUID
    tier: Tier
    score: float
    reason: str
    attributes: LeadAttributes
    source: Code


class CandidateVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rep_id: str
    eligible: bool
    excluded_because: str | None = None
    weight: int
    current_before: int
    current_after: int


class LeadRoutedV1(Event):
    """The router assigned a lead to a rep; CRM integrations write the owner from this."""

    topic: ClassVar[str] = "leads.routed.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.routed.v1"
    ce_source: ClassVar[str] = "/coxswain/router"

    agreement_version: str
    caused_by: uuid.UUID
    assignment_id: uuid.UUID
    rep_id: str
    pool_id: str
    rule_id: str
    reason: str
    tier: Tier
    routed_at: AwareDatetime
    follow_up_due_at: AwareDatetime = Field(description="Deadline for the first touch (SLA).")
    candidates: tuple[CandidateVerdict, ...]


class SlaArmedV1(Event):
    """A follow-up deadline started for an assignment."""

    topic: ClassVar[str] = "sla.armed.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.armed.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    deadline_id: uuid.UUID
    assignment_id: uuid.UUID
    rep_id: str
    milestone: str
    tier: Tier
    due_at: AwareDatetime


class SlaBreachedV1(Event):
    """A deadline passed without the response it waited for. On-call watches this topic."""

    topic: ClassVar[str] = "sla.breached.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.breached.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    deadline_id: uuid.UUID
    assignment_id: uuid.UUID
    rep_id: str
    milestone: str
    tier: Tier
    due_at: AwareDatetime
    fired_at: AwareDatetime


class SlaMetV1(Event):
    """The response arrived before the deadline; the clock stopped."""

    topic: ClassVar[str] = "sla.met.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.met.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    deadline_id: uuid.UUID
    assignment_id: uuid.UUID
    rep_id: str
    milestone: str
    tier: Tier
    due_at: AwareDatetime
    responded_at: AwareDatetime
    response_activity_id: uuid.UUID


class ReassignmentRequestedV1(Event):
    """Someone asked the router to give a lead to another rep (SLA escalation, SAL rejection)."""

    topic: ClassVar[str] = "routing.reassignment_requested.v1"
    ce_type: ClassVar[str] = "io.coxswain.routing.reassignment_requested.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    assignment_id: uuid.UUID = Field(description="The assignment being replaced.")
    tier: Tier
    exclude_reps: tuple[str, ...] = Field(description="Reps who must not get the lead again (the last k owners).")
    reason: str
    requested_by: Literal["sla_escalation", "sal_rejection", "operator"]


ALL_EVENTS: tuple[type[Event], ...] = (
    LeadReceivedV1,
    ActivityRecordedV1,
    LeadScoredV1,
    LeadStageChangedV1,
    LeadQualifiedV1,
    LeadRoutedV1,
    SlaArmedV1,
    SlaBreachedV1,
    SlaMetV1,
    ReassignmentRequestedV1,
)

EVENTS_BY_TOPIC: dict[str, type[Event]] = {event.topic: event for event in ALL_EVENTS}
EVENTS_BY_CE_TYPE: dict[str, type[Event]] = {event.ce_type: event for event in ALL_EVENTS}


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def utc_iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
