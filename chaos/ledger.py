"""The ledger: what was sent and acknowledged against what PostgreSQL and the topics hold.

Pure: it takes what the load generator recorded and what was read back, and counts. Event ids
dedupe the topics (Kafka carries facts at least once; a republished record is not a second fact).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

REQUIRED_FAULTS = (
    "kill:intake",
    "kill:scoring",
    "kill:router",
    "kill:sla-monitor",
    "restart:kafka",
    "restart:postgres",
)
# The restore scenario: a base backup while leads flow, then the database lost and restored from
# it and the streamed WAL (deploy/local/pitr.sh).
RESTORE_FAULTS = ("backup:postgres", "restore:postgres")

# The keys of the last line, in this order; the acceptance criteria name them.
HEADLINE = (
    "sent",
    "acknowledged",
    "routed",
    "lost",
    "duplicate_assignments",
    "breaches_expected",
    "breaches_emitted",
    "duplicate_breaches",
    "missed_breaches",
    "faults_injected",
)
MUST_BE_ZERO = (
    "lost",
    "duplicate_assignments",
    "duplicate_breaches",
    "missed_breaches",
    "breaches_for_answered_leads",
    "missed_met",
    "unexpected_routings",
    "refused",
)


@dataclass(frozen=True)
class SentLead:
    lead_id: str
    webhook_id: str
    qualifies: bool
    acknowledged: bool
    refused: bool = False


@dataclass(frozen=True)
class SentTouch:
    lead_id: str
    webhook_id: str
    acknowledged: bool
    refused: bool = False


@dataclass(frozen=True)
class Fact:
    """One record of a topic, reduced to what the ledger needs."""

    event_id: str
    lead_id: str
    due_at: datetime | None = None


@dataclass(frozen=True)
class Observed:
    stored_webhooks: frozenset[str]
    # Earliest time intake received a first touch for each lead (the clock the SLA runs on).
    touch_received: Mapping[str, datetime]
    db_assignments: Mapping[str, int]
    db_breached: Mapping[str, int]
    routed: Sequence[Fact]
    breached: Sequence[Fact]
    met: Sequence[Fact]
    dead_letters: int = 0


@dataclass
class Report:
    counts: dict[str, int]
    faults: list[str] = field(default_factory=list)
    required: Sequence[str] = REQUIRED_FAULTS

    @property
    def passed(self) -> bool:
        injected = set(self.faults)
        return all(self.counts.get(key, 0) == 0 for key in MUST_BE_ZERO) and all(
            fault in injected for fault in self.required
        )

    def headline(self) -> dict[str, int]:
        """The acceptance keys first, then every other count."""
        return {key: self.counts[key] for key in HEADLINE} | {
            key: value for key, value in self.counts.items() if key not in HEADLINE
        }


def _ids_by_lead(facts: Iterable[Fact]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        grouped[fact.lead_id].add(fact.event_id)
    return grouped


def compute(
    leads: Sequence[SentLead],
    touches: Sequence[SentTouch],
    observed: Observed,
    faults: Sequence[str],
    required: Sequence[str] = REQUIRED_FAULTS,
) -> Report:
    stored = observed.stored_webhooks
    webhooks: list[SentLead | SentTouch] = [*leads, *touches]
    lost_webhooks = sum(1 for w in webhooks if w.acknowledged and w.webhook_id not in stored)
    qualifying = {lead.lead_id for lead in leads if lead.qualifies and lead.webhook_id in stored}
    not_qualifying = {lead.lead_id for lead in leads if not lead.qualifies}

    routed_ids = _ids_by_lead(observed.routed)
    due: dict[str, datetime] = {}
    for fact in observed.routed:
        if fact.due_at is not None and (fact.lead_id not in due or fact.due_at < due[fact.lead_id]):
            due[fact.lead_id] = fact.due_at
    breach_ids = _ids_by_lead(observed.breached)
    met_ids = _ids_by_lead(observed.met)

    routed = {lead for lead in qualifying if routed_ids.get(lead)}
    unrouted = sum(1 for lead in qualifying if not routed_ids.get(lead) or not observed.db_assignments.get(lead))
    duplicate_assignments = sum(
        max(observed.db_assignments.get(lead, 0) - 1, len(routed_ids.get(lead, ())) - 1, 0)
        for lead in qualifying | set(routed_ids) | set(observed.db_assignments)
    )
    unexpected_routings = sum(1 for lead in not_qualifying if routed_ids.get(lead) or observed.db_assignments.get(lead))

    answered = {
        lead for lead in routed if lead in observed.touch_received and observed.touch_received[lead] <= due[lead]
    }
    expected_breaches = routed - answered
    db_topic_mismatches = sum(
        1
        for lead in routed
        if bool(breach_ids.get(lead)) != bool(observed.db_breached.get(lead)) or observed.db_breached.get(lead, 0) > 1
    )

    counts = {
        "sent": len(leads),
        "acknowledged": sum(1 for lead in leads if lead.acknowledged),
        "routed": len(routed),
        "lost": lost_webhooks + unrouted,
        "duplicate_assignments": duplicate_assignments,
        "breaches_expected": len(expected_breaches),
        "breaches_emitted": sum(len(ids) for ids in breach_ids.values()),
        "duplicate_breaches": sum(max(len(ids) - 1, 0) for ids in breach_ids.values()),
        "missed_breaches": sum(1 for lead in expected_breaches if not breach_ids.get(lead)),
        "faults_injected": len(faults),
        "qualifying": len(qualifying),
        "lost_webhooks": lost_webhooks,
        "unrouted": unrouted,
        "unexpected_routings": unexpected_routings,
        "touches_sent": len(touches),
        "touches_acknowledged": sum(1 for touch in touches if touch.acknowledged),
        "answered_in_time": len(answered),
        "met_emitted": sum(len(ids) for ids in met_ids.values()),
        "missed_met": sum(1 for lead in answered if not met_ids.get(lead)),
        "breaches_for_answered_leads": sum(1 for lead in answered if breach_ids.get(lead)),
        "db_topic_mismatches": db_topic_mismatches,
        "refused": sum(1 for w in webhooks if w.refused),
        "dead_letters": observed.dead_letters,
    }
    return Report(counts=counts, faults=list(faults), required=tuple(required))


def table(report: Report, notes: Mapping[str, str]) -> str:
    width = max(len(key) for key in report.counts) + 2
    lines = ["", "chaos ledger", "-" * (width + 14)]
    for key, count in report.headline().items():
        flag = "  <-- must be 0" if key in MUST_BE_ZERO and count else ""
        lines.append(f"{key:<{width}}{count:>12}{flag}")
    lines.append("-" * (width + 14))
    for key, value in notes.items():
        lines.append(f"{key:<{width}}{value}")
    lines.append("result: " + ("PASS" if report.passed else "FAIL"))
    return "\n".join(lines)
