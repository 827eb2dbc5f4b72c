"""The follow-up clock of one assignment: armed -> met | breached (| cancelled).

Exactly one of met or breached is ever decided for a deadline: the shell applies these
transitions under a row lock, and every transition out of ``armed`` is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from coxswain.core.agreement import Agreement
from schemas.events import ActivityType, Tier

FIRST_TOUCH = "first_touch"


class DeadlineStatus(StrEnum):
    armed = "armed"
    met = "met"
    breached = "breached"
    cancelled = "cancelled"


@dataclass(frozen=True)
class Verdict:
    status: DeadlineStatus
    reason: str


def first_touch_due(agreement: Agreement, tier: Tier, routed_at: datetime) -> datetime:
    policy = agreement.sla.policies[tier]
    return routed_at + policy.first_touch


def counts_as_response(agreement: Agreement, tier: Tier, activity: ActivityType) -> bool:
    return activity in agreement.sla.policies[tier].responses


def on_response(status: DeadlineStatus, due_at: datetime, responded_at: datetime) -> Verdict | None:
    """A response stops an armed clock. A deadline already decided stays as it is."""
    if status is not DeadlineStatus.armed:
        return None
    if responded_at > due_at:
        # The clock has passed but the timer has not fired yet: the breach is real.
        return Verdict(DeadlineStatus.breached, "response came after the deadline")
    return Verdict(DeadlineStatus.met, "responded before the deadline")


def on_due(status: DeadlineStatus, due_at: datetime, now: datetime) -> Verdict | None:
    if status is not DeadlineStatus.armed or now < due_at:
        return None
    return Verdict(DeadlineStatus.breached, "no response before the deadline")
