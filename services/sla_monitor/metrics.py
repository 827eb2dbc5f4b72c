"""Prometheus metrics of the SLA monitor, for on-call.

Counters count what this process decided (Prometheus sums the instances); the gauges are read
from PostgreSQL, so every instance reports the same global picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class SlaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.open_deadlines = Gauge(
            "coxswain_sla_open_deadlines",
            "Deadlines armed and not yet met, breached or cancelled.",
            ["tier", "team"],
            registry=registry,
        )
        self.pending_timers = Gauge(
            "coxswain_sla_pending_timers", "Timers not yet fired or retired.", ["kind"], registry=registry
        )
        self.overdue_timers = Gauge(
            "coxswain_sla_overdue_timers",
            "Pending timers whose due time has passed (should stay near 0).",
            registry=registry,
        )
        self.warnings = Counter(
            "coxswain_sla_warnings", "Warnings fired before a deadline.", ["tier", "team"], registry=registry
        )
        self.breaches = Counter("coxswain_sla_breaches", "Deadlines breached.", ["tier", "team"], registry=registry)
        self.met = Counter("coxswain_sla_met", "Deadlines met in time.", ["tier", "team"], registry=registry)
        self.escalations = Counter(
            "coxswain_sla_escalations", "Escalation steps fired.", ["tier", "team", "step"], registry=registry
        )
        self.timer_lag = Histogram(
            "coxswain_sla_timer_lag_seconds",
            "How late a timer fired after its due time.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.alert_deliveries = Counter(
            "coxswain_sla_alert_webhook_deliveries",
            "Outbound alert webhook attempts by outcome (delivered, retry, failed).",
            ["outcome"],
            registry=registry,
        )
        self.alert_backlog = Gauge(
            "coxswain_sla_alert_webhook_pending", "Alerts waiting for the outbound webhook.", registry=registry
        )
        self.mql_pacing = Gauge(
            "coxswain_marketing_mql_pacing_ratio",
            "MQLs so far / target pro-rated to the elapsed business time.",
            ["target"],
            registry=registry,
        )
        self._open_labels: set[tuple[str, str]] = set()

    def set_open_deadlines(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Labels that disappeared drop to zero rather than keep their last value."""
        for labels in self._open_labels - set(counts):
            self.open_deadlines.labels(*labels).set(0)
        for labels, count in counts.items():
            self.open_deadlines.labels(*labels).set(count)
        self._open_labels |= set(counts)

    def set_pending_timers(self, counts: Iterable[tuple[str, int]], overdue: int) -> None:
        seen = dict(counts)
        for kind in ("warning", "breach", "escalation"):
            self.pending_timers.labels(kind).set(seen.get(kind, 0))
        self.overdue_timers.set(overdue)
