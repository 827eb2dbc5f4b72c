"""Event contracts: every fact Coxswain accepts or publishes.

Each event is a past-tense fact with a version in its name. On Kafka the record key is the
lead id (so one lead's facts stay ordered within a partition), the value is the JSON of the
model, and the CloudEvents attributes travel as ``ce_*`` headers (binary content mode).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

import email_validator
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema
from pydantic.networks import validate_email

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=256)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]

# The form nearly every address takes: a dot-atom before the @-sign, and after it a lower-case
# ASCII host name of two labels or more whose last one ends in a letter (email_validator's rules
# for a globally deliverable domain, RFC 5322 and 1035). Such an address, within the lengths and
# outside the names ``_plainly_valid`` also checks, is one pydantic's ``EmailStr`` accepts and
# returns unchanged.
_ATEXT = r"a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_ADDRESS = re.compile(
    rf"(?P<local>[{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@(?P<domain>(?:{_LABEL}\.)+(?:[a-z0-9][a-z0-9-]{{0,61}})?[a-z])"
)


def _plainly_valid(address: str) -> bool:
    plain = _PLAIN_ADDRESS.fullmatch(address)
    if plain is None or len(address) > 254:
        return False
    local, domain = plain["local"], plain["domain"]
    return (
        len(local) <= 64
        and len(domain) <= 253
        # Only Punycode may have two dashes in a label; email_validator turns it into Unicode.
        and "--" not in domain
        and not any(domain == name or domain.endswith("." + name) for name in email_validator.SPECIAL_USE_DOMAIN_NAMES)
        # Names like postmaster are lower-cased.
        and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
    )


def _email(address: str) -> str:
    """What ``EmailStr`` makes of ``address`` (its normalised form, or its error), with the
    full validation spared for the plain form: every consumer validates each lead's address
    again when it decodes a fact, and in scoring's batches that took an eighth of its CPU (py-spy,
    docs/benchmarks-history.md, 6 December, night)."""
    return address if _plainly_valid(address) else validate_email(address)[1]


# An email address, accepted and normalised as pydantic's ``EmailStr`` does, described alike.
Email = Annotated[str, AfterValidator(_email), WithJsonSchema({"type": "string", "format": "email"})]


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

    email: Email | None = None
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


class PlaybookContent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    url: str


class Playbook(BaseModel):
    """What the rep should send and say: the agreement's playbook for the lead's persona, stage and tier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    persona: str | None = Field(default=None, description="The persona the playbook is for; null: any.")
    stage: Stage
    tier: Tier | None = Field(default=None, description="The tier the playbook is for; null: any.")
    talk_track: str
    content: tuple[PlaybookContent, ...] = ()


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
    playbook: Playbook | None = Field(default=None, description="The agreement's playbook for the new stage.")


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
    persona: str | None = Field(default=None, description="The buyer persona the agreement assigns the lead.")
    playbook: Playbook | None = Field(default=None, description="What the rep should send and say.")


class ActivityAcceptedV1(Event):
    """Scoring judged a CRM activity against the agreement in force and the lead's stage, and
    accepted it. The router, the SLA monitor and reporting act on this fact, never on the raw
    ``crm.activities.v1`` record: one input, one judgement, the same everywhere."""

    topic: ClassVar[str] = "leads.activity_accepted.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.activity_accepted.v1"
    ce_source: ClassVar[str] = "/coxswain/scoring"

    agreement_version: str
    caused_by: uuid.UUID = Field(description="Event id of the crm.activities.v1 record judged.")
    source: Code
    activity: ActivityType
    rep_id: Code | None = Field(default=None, description="The rep who acted; null when the CRM did not say.")
    reason: ShortText | None = Field(default=None, description="The reason code as the agreement defines it.")
    reported_reason: ShortText | None = Field(
        default=None, description="The code the CRM sent, when the agreement mapped it to its fallback reason."
    )
    amount: Decimal | None = Field(default=None, ge=0)
    from_stage: Stage = Field(description="The lead's stage before the activity.")
    to_stage: Stage = Field(description="The lead's stage after it (the same when the activity moves nothing).")
    skipped_stages: tuple[Stage, ...] = Field(
        default=(), description="Stages the activity jumped over, recorded as passed (lifecycle.activities)."
    )


class ActivityRefusedV1(Event):
    """Scoring refused a CRM activity: the agreement does not allow it for this lead. Nothing
    changes anywhere (no stage, capacity, SLA clock or report figure); the refusal is on the
    lead's timeline and counted in ``coxswain_activities_refused_total``."""

    topic: ClassVar[str] = "leads.activity_refused.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.activity_refused.v1"
    ce_source: ClassVar[str] = "/coxswain/scoring"

    agreement_version: str
    caused_by: uuid.UUID = Field(description="Event id of the crm.activities.v1 record refused.")
    source: Code
    activity: ActivityType
    rep_id: Code | None = None
    reported_reason: ShortText | None = Field(default=None, description="The reason code the CRM sent, if any.")
    stage: Stage | None = Field(default=None, description="The lead's stage when the activity was judged.")
    refusal: Literal["illegal_transition", "unknown_reason", "unknown_rep", "unknown_lead"]
    reason: str = Field(description="Why, in the agreement's terms.")


class CandidateVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rep_id: str
    eligible: bool
    excluded_because: str | None = None
    weight: float = Field(description="Weight in the rotation now: the pool weight, scaled down while a new rep ramps.")
    current_before: float = Field(description="Smooth weighted round robin credit before this decision.")
    current_after: float
    pool_id: str | None = Field(default=None, description="Pool the rep was considered in (account-owner: as owner).")
    configured_weight: int | None = Field(default=None, description="The pool weight before any ramp.")
    assigned_before: int | None = Field(default=None, description="Leads this pool gave the rep before this one.")
    assigned_after: int | None = None
    open_load: int | None = Field(default=None, description="The rep's open load (weighted by tier) before this lead.")
    capacity: int | None = None
    assigned_today: int | None = Field(default=None, description="Leads the rep got today, in the rep's time zone.")
    daily_cap: int | None = None


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
    playbook: Playbook | None = Field(default=None, description="Copied from the qualified fact.")
    matched_by: Literal["account_owner", "open_domain_lead", "rule", "fallback"] | None = Field(
        default=None,
        description="How the rep was found: the account's owner, the owner of an open lead from the "
        "same domain, the pool of the matched rule, or the fallback pool because nobody there was eligible.",
    )
    replaces_assignment_id: uuid.UUID | None = Field(
        default=None, description="Set on a reassignment: the assignment this one replaces."
    )


class LeadUnassignedV1(Event):
    """Nobody could take a qualified lead (or a reassignment); it waits in the router's unassigned queue.

    The router retries it as reps become eligible and then publishes leads.routed.v1 as usual.
    """

    topic: ClassVar[str] = "leads.unassigned.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.unassigned.v1"
    ce_source: ClassVar[str] = "/coxswain/router"

    agreement_version: str
    caused_by: uuid.UUID = Field(description="The qualified or reassignment-request event that asked for a rep.")
    tier: Tier
    pool_id: str
    rule_id: str
    reason: str
    waiting_for_rep: str | None = Field(
        default=None, description="Set when the agreement queues leads for an unavailable account owner."
    )
    candidates: tuple[CandidateVerdict, ...]


class SlaClockFact(Event):
    """What every fact about one follow-up clock names: the clock, its assignment and its deadline."""

    deadline_id: uuid.UUID
    assignment_id: uuid.UUID
    rep_id: str
    milestone: str
    tier: Tier
    due_at: AwareDatetime


class SlaArmedV1(SlaClockFact):
    """A follow-up deadline started for an assignment."""

    topic: ClassVar[str] = "sla.armed.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.armed.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"


class SlaBreachedV1(SlaClockFact):
    """A deadline passed without the response it waited for. On-call watches this topic."""

    topic: ClassVar[str] = "sla.breached.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.breached.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    fired_at: AwareDatetime


class SlaMetV1(SlaClockFact):
    """The response arrived before the deadline; the clock stopped."""

    topic: ClassVar[str] = "sla.met.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.met.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    responded_at: AwareDatetime
    response_activity_id: uuid.UUID
    responded_by: str | None = Field(
        default=None,
        description="The rep credited with the response: the one who acted (the owner, a teammate under "
        "sla.credit.who team, or another rep under sla.credit.other_rep stop); attainment counts it for them.",
    )


class EscalationAction(StrEnum):
    remind_rep = "remind_rep"
    notify_manager = "notify_manager"
    reassign = "reassign"
    page_oncall = "page_oncall"


class SlaWarnedV1(SlaClockFact):
    """A share of the allowed business time passed without a response; the deadline is still ahead."""

    topic: ClassVar[str] = "sla.warned.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.warned.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    team: str | None = Field(default=None, description="The pool the lead was routed from.")
    fraction: float = Field(gt=0, lt=1, description="Share of the allowed business time used up.")
    warn_at: AwareDatetime = Field(description="When the warning was scheduled; occurred_at is when it fired.")


class SlaEscalatedV1(SlaClockFact):
    """A step of the escalation ladder after a breach: who has to act now."""

    topic: ClassVar[str] = "sla.escalated.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.escalated.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    team: str | None = None
    step: EscalationAction
    step_index: int = Field(ge=0, description="Position of the step in the policy's ladder.")
    target: str = Field(description="Who must act: the rep, the manager (or team:<pool>), router, oncall.")
    escalate_at: AwareDatetime = Field(description="When the step was scheduled; occurred_at is when it fired.")
    reason: str | None = Field(
        default=None, description="Why the step differs from the ladder, e.g. a reassign turned into a page at the cap."
    )


class SlaCancelledV1(SlaClockFact):
    """A clock stopped without a verdict because the lead was assigned again (a new clock started)."""

    topic: ClassVar[str] = "sla.cancelled.v1"
    ce_type: ClassVar[str] = "io.coxswain.sla.cancelled.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    superseded_by: uuid.UUID = Field(description="The assignment whose clock replaced this one.")


class MqlPacingAlertV1(Event):
    """Marketing is behind its pro-rated MQL target for the running period.

    Not about one lead: ``lead_id`` is a fixed id per target (UUIDv5 of the target id), so the
    alerts of one target share a key and stay ordered.
    """

    topic: ClassVar[str] = "marketing.mql_pacing_alert.v1"
    ce_type: ClassVar[str] = "io.coxswain.marketing.mql_pacing_alert.v1"
    ce_source: ClassVar[str] = "/coxswain/sla_monitor"

    target_id: str
    period: Literal["week", "month"]
    period_start: AwareDatetime
    period_end: AwareDatetime
    target: int = Field(description="MQLs promised for the whole period.")
    expected: float = Field(description="The target pro-rated to the business time elapsed so far.")
    actual: int = Field(description="Distinct leads qualified so far in the period.")
    pacing: float = Field(description="actual / expected.")
    threshold: float = Field(description="The agreement's alert_below.")


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


class ShadowDecisionV1(Event):
    """What a candidate agreement, run in shadow beside the one in force, would have decided.

    Never acted on: ``coxswain shadow report`` compares these with the live decisions. The id
    is derived from the input and the candidate version, so a restarted shadow's re-emissions
    dedupe."""

    topic: ClassVar[str] = "shadow.decisions.v1"
    ce_type: ClassVar[str] = "io.coxswain.shadow.decision.v1"
    ce_source: ClassVar[str] = "/coxswain/shadow"

    agreement_version: str = Field(description="The candidate agreement's version.")
    caused_by: uuid.UUID = Field(description="The input (or re-evaluation timer) behind the decision.")
    kind: Literal["stage_changed", "routed"]
    to_stage: Stage | None = Field(default=None, description="For stage_changed: the stage the lead would move to.")
    rep_id: str | None = Field(default=None, description="For routed: the rep the lead would go to.")
    pool_id: str | None = None
    due_at: AwareDatetime | None = Field(default=None, description="For routed: the first-touch deadline.")


Verdict = Literal["met", "missed", "no_data"]


class Attainment(BaseModel):
    """SLA clocks decided in the period for one rep, team or tier: met on time or breached."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="The rep id, team (pool) id or tier.")
    met: int = Field(ge=0)
    breached: int = Field(ge=0)
    attainment: float | None = Field(description="met / (met + breached); null when no clock was decided.")


class LatencyPercentiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(ge=0)
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None


class ReasonCount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str
    count: int = Field(ge=0)


class SalesScorecard(BaseModel):
    """Sales' side: every lead followed up within its deadline (the agreement's attainment target)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Verdict = Field(description="met: attainment >= target; no_data: no clock was decided in the period.")
    attainment_target: float = Field(description="The agreement's sla.attainment_target.")
    overall: Attainment
    by_rep: tuple[Attainment, ...]
    by_team: tuple[Attainment, ...]
    by_tier: tuple[Attainment, ...]
    breaches: int = Field(ge=0)
    routed: int = Field(ge=0, description="Leads routed in the period.")
    untouched: int = Field(ge=0, description="Routed leads without a first touch by a person (so far).")
    system_seconds: LatencyPercentiles = Field(description="Speed to lead, received -> routed.")
    human_seconds: LatencyPercentiles = Field(description="Speed to lead, routed -> first touch by a person.")
    sal_accepted: int = Field(ge=0)
    sal_rejected: int = Field(ge=0)
    rejection_reasons: tuple[ReasonCount, ...]


class MqlTargetResult(BaseModel):
    """One MQL target of the agreement, pro-rated to the business time of the scorecard period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_id: str
    period: Literal["week", "month"] = Field(description="The period the target is stated for.")
    target: int = Field(description="MQLs promised per target period.")
    expected: float = Field(description="The target's share for this scorecard period (business time).")
    actual: int = Field(ge=0, description="Distinct leads qualified in the scorecard period.")
    attainment: float | None = Field(description="actual / expected; null when nothing was expected.")
    met: bool


class SourceFigures(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    leads: int = Field(ge=0, description="Leads first seen in the period from this source.")
    mqls: int = Field(ge=0, description="Distinct leads from this source qualified in the period.")


class MarketingScorecard(BaseModel):
    """Marketing's side: MQL volume against every target of the agreement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Verdict = Field(description="met: every target reached; no_data: the agreement sets no target.")
    leads: int = Field(ge=0, description="Leads first seen in the period.")
    mqls: int = Field(ge=0)
    targets: tuple[MqlTargetResult, ...]
    by_source: tuple[SourceFigures, ...] = Field(description="Largest sources first (at most 100, then `(other)`).")


class ScorecardIssuedV1(Event):
    """Both sides against the SLA for one closed period, for the regular sales-marketing meeting.

    Issued once per period by whichever reporting instance gets there first (the period row in
    ``scorecard_periods`` decides); a period missed during downtime is issued late, once. Not
    about one lead: ``lead_id`` is a fixed id per cadence (UUIDv5), so scorecards stay ordered.
    """

    topic: ClassVar[str] = "reports.scorecard_issued.v1"
    ce_type: ClassVar[str] = "io.coxswain.reports.scorecard_issued.v1"
    ce_source: ClassVar[str] = "/coxswain/reporting"

    cadence: Literal["day", "week", "month"]
    period: str = Field(description="The period's name: 2026-11-23 (day), 2026-W48 (ISO week), 2026-11 (month).")
    period_start: AwareDatetime = Field(description="Local midnight in `timezone` at the start, as UTC.")
    period_end: AwareDatetime = Field(description="Exclusive.")
    timezone: str = Field(description="The company time zone periods are cut in (IANA name).")
    agreement_version: str = Field(description="The agreement the targets were taken from.")
    sales: SalesScorecard
    marketing: MarketingScorecard


class LeadErasedV1(Event):
    """A person's data was erased on request: every stored value that identified them is gone
    from Coxswain's tables (counts, stages, owners and SLA figures stay). Downstream systems (CRM
    connectors, warehouses) should erase the lead too. Copies of earlier facts stay on the topics
    until topic retention removes them (docs/operations.md)."""

    topic: ClassVar[str] = "leads.erased.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.erased.v1"
    ce_source: ClassVar[str] = "/coxswain/admin"

    aliases: tuple[uuid.UUID, ...] = Field(default=(), description="Other ids the same person's events carried.")
    rows_changed: int = Field(ge=0, description="Stored rows that held a personal value.")


class LeadMergedV1(Event):
    """Identity resolution found that a provisional lead id (the one intake answered a webhook
    with) names a lead already known under another id: from now on the alias is the canonical
    lead. Published once per alias, keyed by the canonical ``lead_id``, so it is ordered with that
    lead's facts. A CRM connector that wrote a record for the alias (keyed by the 202's lead id,
    or a contact made for the alias's email) follows the canonical lead from here on."""

    topic: ClassVar[str] = "leads.merged.v1"
    ce_type: ClassVar[str] = "io.coxswain.lead.merged.v1"
    ce_source: ClassVar[str] = "/coxswain/scoring"

    caused_by: uuid.UUID = Field(description="Event id of the leads.received.v1 event that revealed the alias.")
    alias_lead_id: uuid.UUID = Field(description="The provisional id intake answered with; now an alias of lead_id.")
    rule: Literal["email already known", "source id already known"] = Field(
        description="Which of the event's identity keys named the canonical lead (coxswain/core/identity.py)."
    )
    source: Code = Field(description="The sender of the event that carried the alias.")
    external_id: ShortText | None = Field(default=None, description="The sender's contact id on that event, if any.")
    email: Email | None = Field(
        default=None,
        description="The email that event carried (the provisional id is derived from it when there is one), so "
        "a connector can find a CRM record made for the alias. Personal data: erased with the lead.",
    )


# The Kafka key of every audit fact (see AdminActionAuditedV1), named rather than random.
AUDIT_KEY = uuid.uuid5(uuid.NAMESPACE_URL, "urn:coxswain:admin-audit")


class AdminActionAuditedV1(Event):
    """An admin action, or an admin request refused: who (the token's name), what, on what, and
    how it ended. Written in the same transaction as the change it records.

    Not about one lead: ``lead_id`` is the fixed ``AUDIT_KEY``, so the audit trail stays in order
    on one partition; a lead an action was about is its ``target``. Carries no personal data.
    """

    topic: ClassVar[str] = "admin.audit.v1"
    ce_type: ClassVar[str] = "io.coxswain.admin.action_audited.v1"
    ce_source: ClassVar[str] = "/coxswain/admin"

    token: str = Field(max_length=64, description="The name of the token that acted (`?` for an unknown token).")
    action: str = Field(max_length=64, description="What was done or tried, e.g. `agreement.activate`, `rep.pause`.")
    target: str = Field(max_length=256, description="What it was done to: a version, rep, pool, domain or lead id.")
    outcome: Literal["done", "unchanged", "refused", "not_found", "conflict", "invalid"] = Field(
        description="`refused`: the token was wrong or lacked the scope (`detail.scope`)."
    )
    detail: dict[str, str] = Field(default_factory=dict, description="A few words more, never personal data.")


ALL_EVENTS: tuple[type[Event], ...] = (
    LeadReceivedV1,
    ActivityRecordedV1,
    ActivityAcceptedV1,
    ActivityRefusedV1,
    LeadScoredV1,
    LeadStageChangedV1,
    LeadQualifiedV1,
    LeadRoutedV1,
    SlaArmedV1,
    SlaBreachedV1,
    SlaMetV1,
    ReassignmentRequestedV1,
    SlaWarnedV1,
    SlaEscalatedV1,
    SlaCancelledV1,
    MqlPacingAlertV1,
    LeadUnassignedV1,
    ShadowDecisionV1,
    ScorecardIssuedV1,
    AdminActionAuditedV1,
    LeadErasedV1,
    LeadMergedV1,
)

EVENTS_BY_TOPIC: dict[str, type[Event]] = {event.topic: event for event in ALL_EVENTS}
EVENTS_BY_CE_TYPE: dict[str, type[Event]] = {event.ce_type: event for event in ALL_EVENTS}


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def utc_iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
