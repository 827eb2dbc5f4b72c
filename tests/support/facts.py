"""Facts as the services publish them, for tests that feed a consumer directly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from schemas.events import (
    ActivityRecordedV1,
    ActivityType,
    EngagementType,
    LeadAttributes,
    LeadReceivedV1,
    LeadRoutedV1,
    Playbook,
    Tier,
)


def webform_lead(at: datetime) -> LeadReceivedV1:
    """A new lead from a web form, as intake publishes it: a fresh lead and event id each call."""
    return LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=at,
        source="webform",
        webhook_id=f"msg_{uuid.uuid4().hex}",
        engagement="form_submit",
        attributes=LeadAttributes(title="VP Sales", country="US"),
    )


def routed_fact(
    rep_id: str,
    at: datetime,
    *,
    lead_id: uuid.UUID | None = None,
    pool_id: str = "all",
    rule_id: str = "fallback",
    due_in: timedelta = timedelta(hours=1),
    replaces: uuid.UUID | None = None,
    playbook: Playbook | None = None,
    agreement_version: str = "test",
    reason: str | None = None,
) -> LeadRoutedV1:
    """A lead routed to ``rep_id`` at ``at`` under a new assignment (replacing ``replaces``)."""
    return LeadRoutedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id or uuid.uuid4(),
        occurred_at=at,
        agreement_version=agreement_version,
        caused_by=uuid.uuid4(),
        assignment_id=uuid.uuid4(),
        rep_id=rep_id,
        pool_id=pool_id,
        rule_id=rule_id,
        reason=reason or f"rule {rule_id} -> pool {pool_id}",
        tier=Tier.hot,
        routed_at=at,
        follow_up_due_at=at + due_in,
        candidates=(),
        replaces_assignment_id=replaces,
        playbook=playbook,
    )


def received(
    engagement: EngagementType,
    at: datetime,
    attributes: LeadAttributes,
    *,
    lead_id: uuid.UUID,
    n: int = 0,
    source: str = "hubspot",
) -> LeadReceivedV1:
    """A marketing event about ``lead_id``; its id follows from ``n``, the kind and the time, so
    building the same event twice gives the same event (a redelivery)."""
    return LeadReceivedV1(
        event_id=uuid.uuid5(lead_id, f"received-{n}-{engagement.value}-{at.isoformat()}"),
        lead_id=lead_id,
        occurred_at=at,
        source=source,
        webhook_id=f"wh-{n}",
        engagement=engagement,
        attributes=attributes,
    )


def activity(
    kind: ActivityType,
    at: datetime,
    *,
    lead_id: uuid.UUID,
    n: int = 0,
    reason: str | None = None,
    rep_id: str | None = "ava",
) -> ActivityRecordedV1:
    """A CRM activity about ``lead_id`` as intake records it (identified like ``received``)."""
    return ActivityRecordedV1(
        event_id=uuid.uuid5(lead_id, f"activity-{n}-{kind.value}-{at.isoformat()}"),
        lead_id=lead_id,
        occurred_at=at,
        source="salesforce",
        webhook_id=f"crm-{n}",
        activity=kind,
        rep_id=rep_id,
        reason=reason,
    )
