"""Tables. PostgreSQL is the source of truth; Kafka carries copies of these facts."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    Table,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# Constraint names from a convention, so migrations can refer to them deterministically.
SQLModel.metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _utc(nullable: bool = False) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable))


def _jsonb() -> Any:
    return Field(sa_column=Column(JSONB, nullable=False))


class WebhookInbox(SQLModel, table=True):
    """One row per accepted webhook: a repeated webhook id is answered from here, not stored twice."""

    __tablename__ = "webhook_inbox"
    source: str = Field(primary_key=True, max_length=64)
    webhook_id: str = Field(primary_key=True, max_length=256)
    kind: str = Field(max_length=16)
    event_ids: list[str] = _jsonb()
    lead_ids: list[str] = _jsonb()
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


class IntakeEvent(SQLModel, table=True):
    """Every acknowledged event, as accepted: the ledger that proves nothing acknowledged is lost."""

    __tablename__ = "intake_events"
    # 0014_monthly_partitions: partitioned by month of received_at (coxswain/core/partitions.py).
    __table_args__ = {"postgresql_partition_by": "RANGE (received_at)"}
    event_id: uuid.UUID = Field(primary_key=True)
    lead_id: uuid.UUID = Field(index=True)
    source: str = Field(max_length=64)
    webhook_id: str = Field(max_length=256)
    kind: str = Field(max_length=16)
    payload: dict[str, Any] = _jsonb()
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))


class Outbox(SQLModel, table=True):
    """Facts waiting to be published; written in the same transaction as the state change."""

    __tablename__ = "outbox"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    event_id: uuid.UUID = Field(unique=True)
    topic: str = Field(max_length=255)
    key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: list[list[str]] = _jsonb()
    created_at: datetime = _utc()
    # 0011_outbox_buckets: a stable hash of the key; one relay at a time publishes a bucket.
    bucket: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class OutboxLease(SQLModel, table=True):
    """0011_outbox_buckets: which relay publishes a bucket until when; ``token`` grows on every takeover."""

    __tablename__ = "outbox_leases"
    bucket: int = Field(primary_key=True)
    owner: str | None = Field(default=None, max_length=200)
    token: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    expires_at: datetime = _utc()


class OutboxRelayRow(SQLModel, table=True):
    """0011_outbox_buckets: relays alive (seen within a lease), so each takes its fair share of buckets."""

    __tablename__ = "outbox_relays"
    owner: str = Field(primary_key=True, max_length=200)
    seen_at: datetime = _utc()


class OutboxSample(SQLModel, table=True):
    """0022_outbox_sample: the outbox's backlog as last counted, by one process per window for all."""

    __tablename__ = "outbox_sample"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)
    id: int = Field(default=1, primary_key=True)
    sampled_at: datetime = _utc()
    backlog: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    oldest_created_at: datetime | None = _utc(nullable=True)


class Inbox(SQLModel, table=True):
    """Events a consumer has applied; the primary key makes a redelivery a no-op."""

    __tablename__ = "inbox"
    consumer: str = Field(primary_key=True, max_length=64)
    event_id: uuid.UUID = Field(primary_key=True)
    topic: str = Field(max_length=255)
    # 0013_retention_indexes: pruned by age (coxswain/runtime/retention.py).
    processed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


class Lead(SQLModel, table=True):
    __tablename__ = "leads"
    lead_id: uuid.UUID = Field(primary_key=True)
    stage: str = Field(max_length=32)
    source: str = Field(max_length=64)
    attributes: dict[str, Any] = _jsonb()
    touches: list[list[str]] = _jsonb()
    score_total: float
    tier: str | None = Field(default=None, max_length=16)
    agreement_version: str = Field(max_length=64)
    updated_at: datetime = _utc()
    # 0003_agreements: the persona, and what keeps decay from demoting or a lead from re-qualifying.
    persona: str | None = Field(default=None, max_length=64)
    pinned: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false")))
    held_until: datetime | None = _utc(nullable=True)
    recycled_until: datetime | None = _utc(nullable=True)


class PoolRotation(SQLModel, table=True):
    """Rotation state per pool; locked FOR UPDATE while an assignment is made from it."""

    __tablename__ = "pool_rotation"
    pool_id: str = Field(primary_key=True, max_length=64)
    current: dict[str, int] = _jsonb()
    assigned: dict[str, int] = _jsonb()
    updated_at: datetime = _utc()
    # 0004_routing: reps the pool skipped at its last decision (re-entry policy, docs/routing.md).
    away: list[str] = Field(sa_column=Column(JSONB, nullable=False, server_default=text("'[]'::jsonb")))


class Assignment(SQLModel, table=True):
    __tablename__ = "assignments"
    assignment_id: uuid.UUID = Field(primary_key=True)
    # One assignment per routing decision: the qualified (or reassignment) event that asked for it.
    decision_key: uuid.UUID = Field(unique=True)
    lead_id: uuid.UUID = Field(index=True)
    rep_id: str | None = Field(default=None, max_length=64)
    pool_id: str = Field(max_length=64)
    rule_id: str = Field(max_length=64)
    reason: str
    tier: str = Field(max_length=16)
    agreement_version: str = Field(max_length=64)
    routed_at: datetime = _utc()
    decision: dict[str, Any] = _jsonb()


class Deadline(SQLModel, table=True):
    __tablename__ = "deadlines"
    __table_args__ = (Index("ix_deadlines_armed_due", "due_at", postgresql_where=text("status = 'armed'")),)
    deadline_id: uuid.UUID = Field(primary_key=True)
    assignment_id: uuid.UUID = Field(index=True)
    lead_id: uuid.UUID = Field(index=True)
    rep_id: str = Field(max_length=64)
    milestone: str = Field(max_length=32)
    tier: str = Field(max_length=16)
    armed_at: datetime = _utc()
    due_at: datetime = _utc()
    status: str = Field(max_length=16)
    decided_at: datetime | None = _utc(nullable=True)
    decided_by: uuid.UUID | None = Field(default=None)
    # 0002_sla: clocks on business calendars, with a ladder that a late response stops.
    team: str | None = Field(default=None, max_length=64)
    started_at: datetime | None = _utc(nullable=True)
    calendar: str | None = Field(default=None, max_length=64)
    agreement_version: str | None = Field(default=None, max_length=64)
    responded_at: datetime | None = _utc(nullable=True)
    # 0010_one_judgement: the rep credited with the response, and the follow-up across reassignments.
    responded_by: str | None = Field(default=None, max_length=64)
    superseded_by: uuid.UUID | None = Field(default=None)
    reassignments: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    paged: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})


class SlaTimer(SQLModel, table=True):
    """One scheduled instant of a deadline (warning, breach, escalation step); leaves pending once."""

    __tablename__ = "sla_timers"
    __table_args__ = (Index("ix_sla_timers_pending_due", "due_at", postgresql_where=text("status = 'pending'")),)
    deadline_id: uuid.UUID = Field(primary_key=True)
    key: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)
    due_at: datetime = _utc()
    status: str = Field(max_length=16)
    fraction: float | None = Field(default=None)
    step: str | None = Field(default=None, max_length=32)
    step_index: int | None = Field(default=None)
    target: str | None = Field(default=None, max_length=128)
    exclude_last: int | None = Field(default=None)
    decided_at: datetime | None = _utc(nullable=True)
    fired_by: str | None = Field(default=None, max_length=128)
    carried: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})


class SlaAlertDelivery(SQLModel, table=True):
    """Alerts waiting for the outbound webhook; written with the fact, delivered with retries."""

    __tablename__ = "sla_alert_deliveries"
    __table_args__ = (
        Index("ix_sla_alert_deliveries_pending_next", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    event_id: uuid.UUID = Field(unique=True)
    alert: dict[str, Any] = _jsonb()
    status: str = Field(max_length=16)
    attempts: int = Field(default=0)
    next_attempt_at: datetime = _utc()
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    delivered_at: datetime | None = _utc(nullable=True)
    last_error: str | None = Field(default=None, max_length=500)


class MarketingMql(SQLModel, table=True):
    """Every qualification the SLA monitor saw, for marketing's volume targets."""

    __tablename__ = "marketing_mqls"
    event_id: uuid.UUID = Field(primary_key=True)
    lead_id: uuid.UUID
    qualified_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))


class MqlPacingAlert(SQLModel, table=True):
    """Pacing alerts already raised: one per target, period and shortfall level, whichever monitor checks."""

    __tablename__ = "mql_pacing_alerts"
    event_id: uuid.UUID = Field(primary_key=True)
    target_id: str = Field(max_length=64)
    period_start: datetime = _utc()
    alerted_at: datetime = _utc()
    level: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class MqlPacingWatch(SQLModel, table=True):
    """0010_one_judgement: when each MQL target was first checked; pacing counts from then."""

    __tablename__ = "mql_pacing_watch"
    target_id: str = Field(primary_key=True, max_length=64)
    since: datetime = _utc()


class AgreementVersion(SQLModel, table=True):
    """Every agreement ever stored; the one activated last is in force (0003_agreements)."""

    __tablename__ = "agreements"
    version: str = Field(primary_key=True, max_length=64)
    document: dict[str, Any] = _jsonb()
    sha256: str = Field(max_length=64)
    created_at: datetime = _utc()
    activated_at: datetime | None = _utc(nullable=True)


class ScoringTimer(SQLModel, table=True):
    """The one pending re-evaluation of a lead (decay below an exit, end of a recycle cooldown)."""

    __tablename__ = "scoring_timers"
    lead_id: uuid.UUID = Field(primary_key=True)
    timer_id: uuid.UUID
    due_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    stage: str = Field(max_length=32)
    agreement_version: str = Field(max_length=64)
    armed_at: datetime = _utc()


class LeadFact(SQLModel, table=True):
    """Every fact scoring emitted about a lead, written with it: the lead's explainable timeline."""

    __tablename__ = "lead_facts"
    # 0014_monthly_partitions: partitioned by month of occurred_at (coxswain/core/partitions.py).
    __table_args__ = {"postgresql_partition_by": "RANGE (occurred_at)"}
    event_id: uuid.UUID = Field(primary_key=True)
    lead_id: uuid.UUID = Field(index=True)
    kind: str = Field(max_length=64)
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    agreement_version: str | None = Field(default=None, max_length=64)
    caused_by: uuid.UUID | None = Field(default=None, index=True)
    payload: dict[str, Any] = _jsonb()
    recorded_at: datetime = _utc()


class LeadIdentity(SQLModel, table=True):
    """Identity keys (normalised email, source + external id, provisional lead id) -> the lead."""

    __tablename__ = "lead_identities"
    key: str = Field(primary_key=True, max_length=640)
    lead_id: uuid.UUID = Field(index=True)
    created_at: datetime = _utc()


class ReportFact(SQLModel, table=True):
    """0006_reporting: every published fact the reporting consumer saw; reports are queries over it."""

    __tablename__ = "report_facts"
    __table_args__ = (
        Index("ix_report_facts_kind_occurred_at", "kind", "occurred_at"),
        Index(
            "ix_report_facts_routed_assignment",
            text("(payload->>'assignment_id')"),
            postgresql_where=text("kind = 'LeadRoutedV1'"),
        ),
        # 0014_monthly_partitions: partitioned by month of occurred_at (coxswain/core/partitions.py).
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )
    event_id: uuid.UUID = Field(primary_key=True)
    kind: str = Field(max_length=64)
    lead_id: uuid.UUID = Field(index=True)
    occurred_at: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    agreement_version: str | None = Field(default=None, max_length=64)
    payload: dict[str, Any] = _jsonb()
    recorded_at: datetime = _utc()


class ReportHistory(SQLModel, table=True):
    """0014_monthly_partitions: per month and slice, the counts a dropped month of ``report_facts``
    held. '' stands for "none" so that each slice is one primary key."""

    __tablename__ = "report_history"
    month: date = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=64)
    stage: str = Field(primary_key=True, max_length=64)
    source: str = Field(primary_key=True, max_length=64)
    campaign: str = Field(primary_key=True, max_length=256)
    persona: str = Field(primary_key=True, max_length=64)
    agreement_version: str = Field(primary_key=True, max_length=64)
    facts: int = Field(sa_column=Column(BigInteger, nullable=False))
    leads: int = Field(sa_column=Column(BigInteger, nullable=False))
    recorded_at: datetime = _utc()


class ReportLead(SQLModel, table=True):
    """0006_reporting: the dimensions reports slice by, fixed at the lead's first touch."""

    __tablename__ = "report_leads"
    lead_id: uuid.UUID = Field(primary_key=True)
    first_seen_at: datetime = _utc()
    source: str = Field(max_length=64)
    campaign: str | None = Field(default=None, max_length=256)
    persona: str | None = Field(default=None, max_length=64)


# 0004_routing: account ownership, open load, runtime roster overrides, the unassigned queue.


class Account(SQLModel, table=True):
    """CRM accounts by domain: a lead from an owned domain goes to the owner (docs/routing.md)."""

    __tablename__ = "accounts"
    domain: str = Field(primary_key=True, max_length=253)
    owner_rep_id: str = Field(max_length=64)
    external_id: str | None = Field(default=None, max_length=256)
    updated_at: datetime = _utc()


class LeadRouting(SQLModel, table=True):
    """Who holds each routed lead now, its owners so far, and whether it still counts as open load."""

    __tablename__ = "lead_routing"
    __table_args__ = (Index("ix_lead_routing_open_domain", "domain", "opened_at", postgresql_where=text("open")),)
    lead_id: uuid.UUID = Field(primary_key=True)
    assignment_id: uuid.UUID
    rep_id: str = Field(max_length=64)
    pool_id: str = Field(max_length=64)
    owners: list[str] = _jsonb()
    domain: str | None = Field(default=None, max_length=253)
    tier: str = Field(max_length=16)
    load: int
    open: bool
    opened_at: datetime = _utc()
    released_at: datetime | None = _utc(nullable=True)


class RepCounter(SQLModel, table=True):
    """Per rep: open load (weighted by tier) and leads received on the rep's current local day."""

    __tablename__ = "rep_counters"
    rep_id: str = Field(primary_key=True, max_length=64)
    open_load: int
    open_leads: int
    day: date | None = Field(default=None)
    assigned_on_day: int
    updated_at: datetime = _utc()


class RepOverrideRow(SQLModel, table=True):
    """Runtime changes to a rep (settings, pause, out-of-office), layered over the agreement's roster."""

    __tablename__ = "rep_overrides"
    rep_id: str = Field(primary_key=True, max_length=64)
    body: dict[str, Any] = _jsonb()
    updated_at: datetime = _utc()


class PoolMemberOverride(SQLModel, table=True):
    """Runtime pool membership: a weight adds or re-weights a member, null removes one."""

    __tablename__ = "pool_member_overrides"
    pool_id: str = Field(primary_key=True, max_length=64)
    rep_id: str = Field(primary_key=True, max_length=64)
    weight: int | None = Field(default=None)
    updated_at: datetime = _utc()


class RosterRevision(SQLModel, table=True):
    """Bumped by every roster change, in its transaction: routers rebuild their roster when it moves."""

    __tablename__ = "roster_revision"
    id: int = Field(primary_key=True)
    revision: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = _utc()


class UnassignedLead(SQLModel, table=True):
    """Leads nobody could take yet; the router retries them and removes the row when one is assigned."""

    __tablename__ = "unassigned_leads"
    lead_id: uuid.UUID = Field(primary_key=True)
    decision_key: uuid.UUID = Field(unique=True)
    kind: str = Field(max_length=16)
    request: dict[str, Any] = _jsonb()
    reason: str
    waiting_for: str | None = Field(default=None, max_length=64)
    pool_id: str = Field(max_length=64)
    rule_id: str = Field(max_length=64)
    tier: str = Field(max_length=16)
    agreement_version: str = Field(max_length=64)
    parked_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    last_tried_at: datetime = _utc()
    attempts: int


class ScorecardPeriod(SQLModel, table=True):
    """0008_scorecards: one row per issued scorecard; inserting it is what issues the period."""

    __tablename__ = "scorecard_periods"
    cadence: str = Field(primary_key=True, max_length=8)
    period_start: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    period_end: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    label: str = Field(unique=True, max_length=16)
    event_id: uuid.UUID = Field(unique=True)
    agreement_version: str = Field(max_length=64)
    issued_at: datetime = _utc()
    scorecard: dict[str, Any] = _jsonb()


class AuditEntry(SQLModel, table=True):
    """0012_audit_log: one admin action, or one refused admin request; also published on admin.audit.v1."""

    __tablename__ = "audit_log"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    event_id: uuid.UUID = Field(unique=True)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    token: str = Field(max_length=64)
    action: str = Field(max_length=64)
    target: str = Field(max_length=256)
    outcome: str = Field(max_length=32)
    detail: dict[str, Any] = _jsonb()


def table(name: str) -> Table:
    """The SQLAlchemy table of a model, typed (SQLModel's ``__table__`` is not, to mypy)."""
    return SQLModel.metadata.tables[name]


class CrmWrite(SQLModel, table=True):
    """One row per assignment a CRM connector wrote (0015_crm_writes): committed in the same
    transaction as the connector's inbox claim of the routed fact. A task is looked up here
    (then in the CRM by its assignment id) before one is created, and closed from here on a
    reassignment or a release."""

    __tablename__ = "crm_writes"
    # COXSWAIN_CRM_CONNECTION: one CRM account's writes.
    connection: str = Field(primary_key=True, max_length=64)
    assignment_id: uuid.UUID = Field(primary_key=True)
    lead_id: uuid.UUID = Field(index=True)
    rep_id: str = Field(max_length=64)
    owner_id: str = Field(max_length=64)
    contact_id: str = Field(max_length=64)
    task_id: str = Field(max_length=64)
    written_at: datetime = _utc()
    closed_at: datetime | None = _utc(nullable=True)
    closed_reason: str | None = Field(default=None)


class CrmCursor(SQLModel, table=True):
    """How far a CRM connection has polled one object's changes (0017_crm_cursors)."""

    __tablename__ = "crm_cursors"
    connection: str = Field(primary_key=True, max_length=64)
    sobject: str = Field(primary_key=True, max_length=64)
    cursor: datetime = _utc()
    updated_at: datetime = _utc()


class CrmActivityKey(SQLModel, table=True):
    """An activity a CRM connection published (0017_crm_cursors): recorded with the outbox row and
    the cursor, so a change polled again is not published twice."""

    __tablename__ = "crm_activity_keys"
    connection: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=256)
    event_id: uuid.UUID
    lead_id: uuid.UUID
    published_at: datetime = _utc()


class Erasure(SQLModel, table=True):
    """A lead id (a lead or one of its aliases) whose person was erased, and when (0019_erasures).
    Facts about it that occurred until then are applied without their personal values."""

    __tablename__ = "erasures"
    lead_id: uuid.UUID = Field(primary_key=True)
    erased_at: datetime = _utc()
