"""Scoring's own metrics, served on the process's /metrics with the shared ones."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter

from schemas.events import ActivityRefusedV1, Event

ACTIVITIES_REFUSED = Counter(
    "coxswain_activities_refused",
    "CRM activities scoring refused under the agreement in force (the reason is on the lead's timeline).",
    ["refusal", "activity"],
)


def count_refusals(facts: Iterable[Event]) -> None:
    for fact in facts:
        if isinstance(fact, ActivityRefusedV1):
            ACTIVITIES_REFUSED.labels(fact.refusal, fact.activity.value).inc()
