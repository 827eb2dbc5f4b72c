"""The scorecard: both sides of the agreement judged for one closed period.

Pure: the shell gathers the figures of a period from the stored facts and passes them in with
the agreement and the time; this module cuts periods, says which are due, pro-rates marketing's
targets to the period and gives each side its verdict.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

from coxswain.core.agreement import Agreement, MqlTarget
from coxswain.core.business_time import BusinessCalendar
from coxswain.core.sla import period_bounds
from schemas.events import (
    Attainment,
    LatencyPercentiles,
    MarketingScorecard,
    MqlTargetResult,
    ReasonCount,
    SalesScorecard,
    ScorecardIssuedV1,
    SourceFigures,
    Verdict,
)

Cadence = Literal["day", "week", "month"]
SCORECARD_NAMESPACE = uuid.UUID("8d1f6f0e-5a4b-4c1e-9f0a-2b7c3d4e5f60")
MOST_SOURCES = 100


@dataclass(frozen=True)
class Period:
    cadence: Cadence
    start: datetime
    end: datetime
    label: str


def _local_midnight(day: date, zone: tzinfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def label_of(cadence: Cadence, first: date) -> str:
    if cadence == "day":
        return first.isoformat()
    if cadence == "week":
        year, week, _ = first.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{first.year}-{first.month:02d}"


def period_containing(cadence: Cadence, at: datetime, zone: tzinfo) -> Period:
    """The local day, Monday-to-Monday week or calendar month that contains ``at``."""
    if cadence == "day":
        first = at.astimezone(zone).date()
        start, end = _local_midnight(first, zone), _local_midnight(first + timedelta(days=1), zone)
    else:
        start, end = period_bounds(cadence, at, zone)
        first = start.astimezone(zone).date()
    return Period(cadence, start, end, label_of(cadence, first))


def following(period: Period, zone: tzinfo) -> Period:
    return period_containing(period.cadence, period.end, zone)


def periods_due(
    cadence: Cadence,
    zone: tzinfo,
    last_issued_start: datetime | None,
    now: datetime,
    grace: timedelta,
    catch_up: int,
) -> list[Period]:
    """Closed periods (ended at least ``grace`` ago) not issued yet, oldest first.

    The first time, only the latest closed period. After downtime, every period since the last
    one issued, but at most the latest ``catch_up`` of them.
    """
    running = period_containing(cadence, now - grace, zone)
    latest = period_containing(cadence, running.start - timedelta(microseconds=1), zone)
    if last_issued_start is None:
        return [latest]
    due: list[Period] = []
    period = following(period_containing(cadence, last_issued_start, zone), zone)
    while period.start <= latest.start:
        due.append(period)
        due = due[-catch_up:]
        period = following(period, zone)
    return due


def scorecard_key(cadence: Cadence) -> uuid.UUID:
    """The Kafka key of every scorecard of a cadence (they are about no lead)."""
    return uuid.uuid5(SCORECARD_NAMESPACE, f"scorecard:{cadence}")


def scorecard_id(period: Period) -> uuid.UUID:
    """The same period always gets the same event id, whichever instance issues it."""
    return uuid.uuid5(scorecard_key(period.cadence), f"{period.start.isoformat()}/{period.label}")


@dataclass(frozen=True)
class Latency:
    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class Figures:
    """What happened in the period, as counted from the stored facts."""

    # (met, breached) per key.
    sla_by_rep: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    sla_by_team: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    sla_by_tier: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    routed: int = 0
    untouched: int = 0
    system_seconds: Latency = Latency()
    human_seconds: Latency = Latency()
    sal_accepted: int = 0
    sal_rejections: Mapping[str, int] = field(default_factory=dict)
    leads_by_source: Mapping[str, int] = field(default_factory=dict)
    mqls_by_source: Mapping[str, int] = field(default_factory=dict)
    mqls: int = 0


def ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _attainment(key: str, counts: tuple[int, int]) -> Attainment:
    met, breached = counts
    return Attainment(key=key, met=met, breached=breached, attainment=ratio(met, met + breached))


def _attainments(counts: Mapping[str, tuple[int, int]]) -> tuple[Attainment, ...]:
    return tuple(_attainment(key, counts[key]) for key in sorted(counts))


def _latency(figures: Latency) -> LatencyPercentiles:
    return LatencyPercentiles(count=figures.count, p50=figures.p50, p90=figures.p90, p95=figures.p95, p99=figures.p99)


def sales_side(figures: Figures, target: float) -> SalesScorecard:
    met = sum(m for m, _ in figures.sla_by_rep.values())
    breached = sum(b for _, b in figures.sla_by_rep.values())
    overall = _attainment("overall", (met, breached))
    verdict: Verdict
    if overall.attainment is None:
        verdict = "no_data"
    else:
        # Compared with a tolerance: 0.9 * 30 is 27.000000000000004 in binary floating point.
        verdict = "met" if met >= target * (met + breached) - 1e-9 else "missed"
    reasons = sorted(figures.sal_rejections.items(), key=lambda item: (-item[1], item[0]))
    return SalesScorecard(
        verdict=verdict,
        attainment_target=target,
        overall=overall,
        by_rep=_attainments(figures.sla_by_rep),
        by_team=_attainments(figures.sla_by_team),
        by_tier=_attainments(figures.sla_by_tier),
        breaches=breached,
        routed=figures.routed,
        untouched=figures.untouched,
        system_seconds=_latency(figures.system_seconds),
        human_seconds=_latency(figures.human_seconds),
        sal_accepted=figures.sal_accepted,
        sal_rejected=sum(figures.sal_rejections.values()),
        rejection_reasons=tuple(ReasonCount(reason=reason, count=count) for reason, count in reasons),
    )


def expected_mqls(target: MqlTarget, calendar: BusinessCalendar, start: datetime, end: datetime) -> float:
    """The target's share of ``[start, end)``: for each target period the window overlaps, the
    count times the share of that period's business time the overlap holds. A scorecard period
    equal to the target period expects the whole count."""
    expected = 0.0
    cursor = start
    while cursor < end:
        first, after = period_bounds(target.period, cursor, calendar.zone)
        whole = calendar.diff(first, after)
        overlap = calendar.diff(max(first, start), min(after, end))
        if whole > timedelta(0):
            expected += target.count * (overlap / whole)
        cursor = after
    return expected


def marketing_side(figures: Figures, agreement: Agreement, period: Period) -> MarketingScorecard:
    results = []
    for target in agreement.marketing.mql_targets:
        calendar = agreement.calendar(target.calendar or agreement.sla.calendar)
        expected = round(expected_mqls(target, calendar, period.start, period.end), 3)
        results.append(
            MqlTargetResult(
                target_id=target.key,
                period=target.period,
                target=target.count,
                expected=expected,
                actual=figures.mqls,
                attainment=ratio(figures.mqls, expected),
                met=figures.mqls >= expected,
            )
        )
    verdict: Verdict = "no_data" if not results else "met" if all(r.met for r in results) else "missed"
    sources = sorted(
        set(figures.leads_by_source) | set(figures.mqls_by_source),
        key=lambda s: (-figures.mqls_by_source.get(s, 0), -figures.leads_by_source.get(s, 0), s),
    )
    rows = [
        SourceFigures(source=s, leads=figures.leads_by_source.get(s, 0), mqls=figures.mqls_by_source.get(s, 0))
        for s in sources
    ]
    if len(rows) > MOST_SOURCES:
        rest = rows[MOST_SOURCES - 1 :]
        rows = [
            *rows[: MOST_SOURCES - 1],
            SourceFigures(source="(other)", leads=sum(r.leads for r in rest), mqls=sum(r.mqls for r in rest)),
        ]
    return MarketingScorecard(
        verdict=verdict,
        leads=sum(figures.leads_by_source.values()),
        mqls=figures.mqls,
        targets=tuple(results),
        by_source=tuple(rows),
    )


def scorecard(
    figures: Figures, agreement: Agreement, period: Period, timezone: str, issued_at: datetime
) -> ScorecardIssuedV1:
    return ScorecardIssuedV1(
        event_id=scorecard_id(period),
        lead_id=scorecard_key(period.cadence),
        occurred_at=issued_at,
        cadence=period.cadence,
        period=period.label,
        period_start=period.start,
        period_end=period.end,
        timezone=timezone,
        agreement_version=agreement.version,
        sales=sales_side(figures, agreement.sla.attainment_target),
        marketing=marketing_side(figures, agreement, period),
    )
