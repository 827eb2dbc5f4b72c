"""Facts as the services publish them, for tests that feed a consumer directly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from schemas.events import LeadRoutedV1, Playbook, Tier


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
