"""Every SQL statement of the reporting service: the facts it stores (``report_facts``,
``report_leads``), the reports over them (and ``intake_events``), and the scorecards it issues
(``scorecard_periods``). Each function runs on the caller's connection, so the caller's
transaction decides what commits together (the consumer's inbox claim with its fact; a
scorecard's row with its outbox event); rows come back as the report models
(``services/reporting/models.py``), built by column name.

Every figure is a function of the facts whose time falls in ``[since, until)`` and of the slice
(source, campaign, persona, agreement version), so the same request always gives the same
answer once the facts are in; nothing here depends on when it runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any, Literal

import orjson
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.scorecard import Cadence
from coxswain.core.scorecard import Period as ScorecardPeriod
from coxswain.core.sla import pacing, period_bounds
from coxswain.db.models import table
from schemas.events import Event, LeadQualifiedV1, LeadReceivedV1, ScorecardIssuedV1
from services.reporting.models import (
    Attainment,
    Breach,
    ClosedLoop,
    ClosedLoopRow,
    DailyMqls,
    Funnel,
    FunnelPeriod,
    HeatCell,
    History,
    HistoryMonth,
    IssuedScorecard,
    MonthCount,
    Pacing,
    Percentiles,
    RejectionReason,
    SalRejections,
    SlaReport,
    Speed,
    SpeedToLead,
    StageEntered,
    TargetPacing,
    TimeInStage,
)

Period = Literal["minute", "hour", "day", "week", "month"]
FUNNEL = ("lead", "mql", "sal", "sql", "opportunity", "customer")
DETOURS = ("recycled", "disqualified")
PERCENTILES = (0.5, 0.9, 0.95, 0.99)

# Facts about a lead are filtered through its dimensions; a lead reporting has not seen a
# first event of yet still counts when no slice is asked for.
SLICE = (
    "(CAST(:source AS text) IS NULL OR d.source = :source) "
    "AND (CAST(:campaign AS text) IS NULL OR d.campaign = :campaign) "
    "AND (CAST(:persona AS text) IS NULL OR d.persona = :persona)"
)


@dataclass(frozen=True)
class Scope:
    since: datetime
    until: datetime
    source: str | None = None
    campaign: str | None = None
    persona: str | None = None
    agreement_version: str | None = None
    timezone: str = "UTC"

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "source": self.source,
            "campaign": self.campaign,
            "persona": self.persona,
            "version": self.agreement_version,
            "tz": self.timezone,
        }


VERSION = "(CAST(:version AS text) IS NULL OR f.agreement_version = :version)"


def bucket_label(bucket: datetime, period: Period) -> str:
    return bucket.isoformat() if period in ("minute", "hour") else bucket.date().isoformat()


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def funnel(connection: AsyncConnection, scope: Scope, period: Period, agreement: Agreement) -> Funnel:
    rows = (
        await connection.execute(
            text(
                "SELECT 'lead' AS stage, date_trunc(:period, d.first_seen_at AT TIME ZONE :tz) AS bucket, "
                "count(*) AS n FROM report_leads d "
                "WHERE d.first_seen_at >= :since AND d.first_seen_at < :until AND " + SLICE + " GROUP BY 1, 2 "
                "UNION ALL "
                "SELECT f.payload->>'to_stage', date_trunc(:period, f.occurred_at AT TIME ZONE :tz), "
                "count(DISTINCT f.lead_id) FROM report_facts f LEFT JOIN report_leads d USING (lead_id) "
                "WHERE f.kind = 'LeadStageChangedV1' AND f.occurred_at >= :since AND f.occurred_at < :until AND "
                + SLICE
                + " AND "
                + VERSION
                + " GROUP BY 1, 2 ORDER BY 2, 1"
            ),
            {**scope.params(), "period": period},
        )
    ).all()
    totals = await _entered(connection, scope)
    by_bucket: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        by_bucket[bucket_label(row.bucket, period)][row.stage] = row.n
    stages = []
    previous: int | None = None
    for stage in FUNNEL:
        entered = totals.get(stage, 0)
        conversion = ratio(entered, previous) if previous is not None else None
        stages.append(StageEntered(stage=stage, entered=entered, conversion=conversion))
        previous = entered
    return Funnel(
        stages=stages,
        detours=[StageEntered(stage=stage, entered=totals.get(stage, 0)) for stage in DETOURS],
        periods=[FunnelPeriod(start=bucket, entered=counts) for bucket, counts in by_bucket.items()],
        time_in_stage=await time_in_stage(connection, scope, agreement),
    )


async def _entered(connection: AsyncConnection, scope: Scope) -> dict[str, int]:
    """Distinct leads per stage over the whole range (a lead entering twice counts once)."""
    rows = (
        await connection.execute(
            text(
                "SELECT 'lead' AS stage, count(*) AS n FROM report_leads d "
                "WHERE d.first_seen_at >= :since AND d.first_seen_at < :until AND " + SLICE + " "
                "UNION ALL "
                "SELECT f.payload->>'to_stage', count(DISTINCT f.lead_id) FROM report_facts f "
                "LEFT JOIN report_leads d USING (lead_id) "
                "WHERE f.kind = 'LeadStageChangedV1' AND f.occurred_at >= :since AND f.occurred_at < :until AND "
                + SLICE
                + " AND "
                + VERSION
                + " GROUP BY 1"
            ),
            scope.params(),
        )
    ).all()
    return {row.stage: int(row.n) for row in rows}


async def time_in_stage(connection: AsyncConnection, scope: Scope, agreement: Agreement) -> list[TimeInStage]:
    """How long leads that left a stage in the range had spent in it: wall-clock and business
    hours on the agreement's SLA calendar, as medians."""
    rows = (
        await connection.execute(
            text(
                "WITH changes AS ("
                " SELECT f.lead_id, f.payload->>'from_stage' AS stage, f.occurred_at AS left_at, f.agreement_version,"
                " lag(f.occurred_at) OVER (PARTITION BY f.lead_id ORDER BY f.occurred_at) AS entered_at"
                " FROM report_facts f WHERE f.kind = 'LeadStageChangedV1' AND f.lead_id IN ("
                "  SELECT lead_id FROM report_facts WHERE kind = 'LeadStageChangedV1'"
                "  AND occurred_at >= :since AND occurred_at < :until))"
                " SELECT c.stage, coalesce(c.entered_at, d.first_seen_at) AS entered_at, c.left_at"
                " FROM changes c LEFT JOIN report_leads d USING (lead_id)"
                " WHERE c.left_at >= :since AND c.left_at < :until AND " + SLICE + " AND "
                "(CAST(:version AS text) IS NULL OR c.agreement_version = :version)"
            ),
            scope.params(),
        )
    ).all()
    calendar = agreement.calendar(agreement.sla.calendar)
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row.entered_at is None or row.entered_at > row.left_at:
            continue
        wall = (row.left_at - row.entered_at).total_seconds() / 3600
        business = calendar.diff(row.entered_at, row.left_at).total_seconds() / 3600
        spans[row.stage].append((wall, business))
    return [
        TimeInStage(
            stage=stage,
            left=len(spans[stage]),
            median_hours=round(median(w for w, _ in spans[stage]), 4),
            median_business_hours=round(median(b for _, b in spans[stage]), 4),
        )
        for stage in (*FUNNEL, *DETOURS)
        if spans.get(stage)
    ]


def _percentiles(row: Any, prefix: str) -> Percentiles:
    figures: dict[str, float | None] = {}
    for p in PERCENTILES:
        value = getattr(row, f"{prefix}_p{int(p * 100)}")
        figures[f"p{int(p * 100)}"] = round(float(value), 6) if value is not None else None
    return Percentiles(count=int(getattr(row, f"{prefix}_n")), **figures)


def _percentile_columns(expression: str, prefix: str) -> str:
    columns = [f"count({expression}) AS {prefix}_n"]
    columns += [
        f"percentile_cont({p}) WITHIN GROUP (ORDER BY {expression}) AS {prefix}_p{int(p * 100)}" for p in PERCENTILES
    ]
    return ", ".join(columns)


SPEED_ROWS = (
    "SELECT r.lead_id, r.payload->>'tier' AS tier, r.occurred_at AS routed_at, "
    " extract(epoch FROM r.occurred_at - coalesce(ie.received_at, x.occurred_at)) AS system_seconds, "
    " extract(epoch FROM (SELECT min(a.occurred_at) FROM report_facts a WHERE a.kind = 'ActivityAcceptedV1' "
    "   AND a.lead_id = r.lead_id AND a.payload->>'activity' <> 'automated_email' "
    "   AND a.occurred_at >= r.occurred_at) - r.occurred_at) AS human_seconds "
    "FROM report_facts r "
    "JOIN report_facts q ON q.event_id = CAST(r.payload->>'caused_by' AS uuid) AND q.kind = 'LeadQualifiedV1' "
    "JOIN report_facts x ON x.event_id = CAST(q.payload->>'caused_by' AS uuid) AND x.kind = 'LeadReceivedV1' "
    "LEFT JOIN intake_events ie ON ie.event_id = x.event_id "
    "LEFT JOIN report_leads d ON d.lead_id = r.lead_id "
    "WHERE r.kind = 'LeadRoutedV1' AND r.occurred_at >= :since AND r.occurred_at < :until AND "
    + SLICE
    + " AND (CAST(:version AS text) IS NULL OR r.agreement_version = :version)"
)


async def speed_to_lead(connection: AsyncConnection, scope: Scope) -> SpeedToLead:
    """System latency (received -> routed) and human latency (routed -> first touch by a person),
    in seconds, as percentiles; leads routed in the range after a marketing event."""
    aggregate = (
        "SELECT {tier} "
        + _percentile_columns("s.system_seconds", "system")
        + ", "
        + _percentile_columns("s.human_seconds", "human")
        + ", count(*) AS routed FROM ("
        + SPEED_ROWS
        + ") s {group}"
    )
    overall = (await connection.execute(text(aggregate.format(tier="", group="")), scope.params())).one()
    tiers = (
        await connection.execute(
            text(aggregate.format(tier="s.tier AS tier,", group="GROUP BY s.tier ORDER BY s.tier")), scope.params()
        )
    ).all()

    def figures(row: Any) -> Speed:
        human = _percentiles(row, "human")
        return Speed(
            routed=int(row.routed),
            system_seconds=_percentiles(row, "system"),
            human_seconds=human,
            untouched=int(row.routed) - human.count,
        )

    return SpeedToLead(**dict(figures(overall)), by_tier={row.tier: figures(row) for row in tiers})


async def sla(connection: AsyncConnection, scope: Scope, period: Period) -> SlaReport:
    """Attainment (met / decided) of the clocks decided in the range, per rep, team, tier and
    period; the heatmap is rep x period; the timeline lists the breaches."""
    rows = (
        await connection.execute(
            text(
                # A met clock counts for the rep credited with the response (sla.credit), a breach for the owner.
                "SELECT f.kind, f.occurred_at, f.lead_id, "
                "coalesce(f.payload->>'responded_by', f.payload->>'rep_id') AS rep, f.payload->>'tier' AS tier, "
                "f.payload->>'milestone' AS milestone, "
                "coalesce(f.payload->>'team', r.payload->>'pool_id') AS team, "
                "date_trunc(:period, f.occurred_at AT TIME ZONE :tz) AS bucket "
                "FROM report_facts f "
                "LEFT JOIN report_facts r ON r.kind = 'LeadRoutedV1' "
                " AND r.payload->>'assignment_id' = f.payload->>'assignment_id' "
                "LEFT JOIN report_leads d ON d.lead_id = f.lead_id "
                "WHERE f.kind IN ('SlaMetV1', 'SlaBreachedV1') AND f.occurred_at >= :since "
                "AND f.occurred_at < :until AND " + SLICE + " ORDER BY f.occurred_at"
            ),
            {**scope.params(), "period": period},
        )
    ).all()
    counters: dict[str, dict[str, list[int]]] = {name: defaultdict(lambda: [0, 0]) for name in ("rep", "team", "tier")}
    heat: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    overall = [0, 0]
    timeline = []
    for row in rows:
        met = row.kind == "SlaMetV1"
        index = 0 if met else 1
        overall[index] += 1
        for name, key in (("rep", row.rep), ("team", row.team or "(none)"), ("tier", row.tier)):
            counters[name][key][index] += 1
        bucket = bucket_label(row.bucket, period)
        heat[(row.rep, bucket)][index] += 1
        if not met:
            timeline.append(
                Breach(
                    at=row.occurred_at,
                    rep=row.rep,
                    team=row.team,
                    tier=row.tier,
                    milestone=row.milestone,
                    lead_id=row.lead_id,
                )
            )

    def attained(counts: list[int]) -> Attainment:
        return Attainment(met=counts[0], breached=counts[1], attainment=ratio(counts[0], counts[0] + counts[1]))

    def by(name: str) -> dict[str, Attainment]:
        return {key: attained(c) for key, c in sorted(counters[name].items())}

    return SlaReport(
        overall=attained(overall),
        by_rep=by("rep"),
        by_team=by("team"),
        by_tier=by("tier"),
        heatmap=[
            HeatCell(rep=rep, bucket=bucket, **dict(attained(counts))) for (rep, bucket), counts in sorted(heat.items())
        ],
        breaches=timeline[-500:],
    )


async def pacing_report(connection: AsyncConnection, scope: Scope, agreement: Agreement, at: datetime) -> Pacing:
    """Marketing's side: MQLs (distinct leads qualified) against each target of the agreement,
    pro-rated to the business time elapsed in the period that contains ``at``; plus MQLs per day."""
    targets = []
    for target in agreement.marketing.mql_targets:
        calendar = agreement.calendar(target.calendar or agreement.sla.calendar)
        start, end = period_bounds(target.period, at, calendar.zone)
        actual = await mql_count(connection, scope, start, min(at, end))
        result = pacing(target, calendar, at, actual)
        targets.append(
            TargetPacing(
                target_id=result.target_id,
                period=result.period,
                period_start=result.period_start,
                period_end=result.period_end,
                target=result.target,
                elapsed_share=round(result.elapsed_share, 4),
                expected=round(result.expected, 3),
                actual=result.actual,
                pacing=round(result.ratio, 4) if result.ratio is not None else None,
                alert_below=result.threshold,
                behind=result.behind,
            )
        )
    daily = (
        await connection.execute(
            text(
                "SELECT date_trunc('day', f.occurred_at AT TIME ZONE :tz) AS day, count(DISTINCT f.lead_id) AS n "
                "FROM report_facts f LEFT JOIN report_leads d USING (lead_id) "
                "WHERE f.kind = 'LeadQualifiedV1' AND f.occurred_at >= :since AND f.occurred_at < :until AND "
                + SLICE
                + " GROUP BY 1 ORDER BY 1"
            ),
            scope.params(),
        )
    ).all()
    return Pacing(
        at=at,
        mqls=await mql_count(connection, scope, scope.since, scope.until),
        targets=targets,
        daily=[DailyMqls(day=row.day.date().isoformat(), mqls=int(row.n)) for row in daily],
    )


async def mql_count(connection: AsyncConnection, scope: Scope, since: datetime, until: datetime) -> int:
    value = await connection.scalar(
        text(
            "SELECT count(DISTINCT f.lead_id) FROM report_facts f LEFT JOIN report_leads d USING (lead_id) "
            "WHERE f.kind = 'LeadQualifiedV1' AND f.occurred_at >= :since AND f.occurred_at < :until AND " + SLICE
        ),
        {**scope.params(), "since": since, "until": until},
    )
    return int(value or 0)


async def sal_rejections(connection: AsyncConnection, scope: Scope) -> SalRejections:
    rows = (
        await connection.execute(
            text(
                "SELECT coalesce(f.payload->>'reason', '(none)') AS reason, count(*) AS n FROM report_facts f "
                "LEFT JOIN report_leads d USING (lead_id) "
                "WHERE f.kind = 'ActivityAcceptedV1' AND f.payload->>'activity' = 'sal_rejected' "
                "AND f.occurred_at >= :since AND f.occurred_at < :until AND " + SLICE + " GROUP BY 1 ORDER BY 2 DESC, 1"
            ),
            scope.params(),
        )
    ).all()
    accepted = await connection.scalar(
        text(
            "SELECT count(*) FROM report_facts f LEFT JOIN report_leads d USING (lead_id) "
            "WHERE f.kind = 'ActivityAcceptedV1' AND f.payload->>'activity' = 'sal_accepted' "
            "AND f.occurred_at >= :since AND f.occurred_at < :until AND " + SLICE
        ),
        scope.params(),
    )
    rejected = sum(int(row.n) for row in rows)
    return SalRejections(
        accepted=int(accepted or 0),
        rejected=rejected,
        rejection_rate=ratio(rejected, rejected + int(accepted or 0)),
        reasons=[RejectionReason(reason=row.reason, count=int(row.n)) for row in rows],
    )


async def closed_loop(connection: AsyncConnection, scope: Scope) -> ClosedLoop:
    """Opportunities and closed-won revenue by the source and campaign that brought the lead."""
    rows = (
        await connection.execute(
            text(
                "SELECT coalesce(d.source, '(unknown)') AS source, coalesce(d.campaign, '(none)') AS campaign, "
                "count(*) FILTER (WHERE f.payload->>'activity' = 'opportunity_created') AS opportunities, "
                "count(*) FILTER (WHERE f.payload->>'activity' = 'won') AS won, "
                "count(*) FILTER (WHERE f.payload->>'activity' = 'lost') AS lost, "
                "coalesce(sum(CAST(f.payload->>'amount' AS numeric)) "
                " FILTER (WHERE f.payload->>'activity' = 'won'), 0) AS won_amount "
                "FROM report_facts f LEFT JOIN report_leads d USING (lead_id) "
                "WHERE f.kind = 'ActivityAcceptedV1' "
                "AND f.payload->>'activity' IN ('opportunity_created', 'won', 'lost') "
                "AND f.occurred_at >= :since AND f.occurred_at < :until AND " + SLICE + " GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            scope.params(),
        )
    ).all()
    return ClosedLoop(
        rows=[
            ClosedLoopRow(
                source=row.source,
                campaign=row.campaign,
                opportunities=int(row.opportunities),
                won=int(row.won),
                lost=int(row.lost),
                won_amount=float(row.won_amount),
            )
            for row in rows
        ],
        won_amount=float(sum(row.won_amount for row in rows)),
        opportunities=sum(int(row.opportunities) for row in rows),
    )


def default_range(now: datetime, days: int = 7) -> tuple[datetime, datetime]:
    return now - timedelta(days=days), now


async def history(connection: AsyncConnection, scope: Scope) -> History:
    """Monthly counts kept after a month of facts passed retention (``report_history``): facts and
    distinct leads per kind and stage. Months still held in detail are in the other reports."""
    rows = (
        await connection.execute(
            text(
                "SELECT h.month, h.kind, h.stage, sum(h.facts) AS facts, sum(h.leads) AS leads FROM report_history h "
                "WHERE h.month >= CAST(date_trunc('month', CAST(:since AS timestamptz) AT TIME ZONE 'UTC') AS date) "
                "AND h.month < :until "
                "AND (CAST(:source AS text) IS NULL OR h.source = :source) "
                "AND (CAST(:campaign AS text) IS NULL OR h.campaign = :campaign) "
                "AND (CAST(:persona AS text) IS NULL OR h.persona = :persona) "
                "AND (CAST(:version AS text) IS NULL OR h.agreement_version = :version) "
                "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ),
            scope.params(),
        )
    ).all()
    months: dict[str, list[MonthCount]] = defaultdict(list)
    for row in rows:
        entry = MonthCount(kind=row.kind, stage=row.stage or None, facts=int(row.facts), leads=int(row.leads))
        months[row.month.strftime("%Y-%m")].append(entry)
    return History(months=[HistoryMonth(month=month, counts=counts) for month, counts in months.items()])


async def stored_scorecard(connection: AsyncConnection, label: str | None) -> dict[str, Any] | None:
    """An issued scorecard (a ScorecardIssuedV1 as emitted) by its period name, or the latest one."""
    if label is None:
        row = (
            await connection.execute(
                text("SELECT scorecard FROM scorecard_periods ORDER BY period_end DESC, cadence LIMIT 1")
            )
        ).first()
    else:
        row = (
            await connection.execute(
                text("SELECT scorecard FROM scorecard_periods WHERE label = :label"), {"label": label}
            )
        ).first()
    if row is None:
        return None
    card: dict[str, Any] = row.scorecard if isinstance(row.scorecard, dict) else orjson.loads(row.scorecard)
    return card


async def issued_scorecards(connection: AsyncConnection, limit: int = 104) -> list[IssuedScorecard]:
    """The latest issued periods, newest first: name, bounds and both verdicts."""
    rows = await connection.execute(
        text(
            "SELECT cadence, label AS period, period_start, period_end, issued_at, agreement_version, "
            "scorecard->'sales'->>'verdict' AS sales, scorecard->'marketing'->>'verdict' AS marketing "
            "FROM scorecard_periods ORDER BY period_end DESC, cadence LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [IssuedScorecard.model_validate(row._asdict()) for row in rows]


async def leads_by_source(connection: AsyncConnection, scope: Scope) -> dict[str, int]:
    """Leads first seen in the range, by the source that brought them."""
    rows = await connection.execute(
        text(
            "SELECT coalesce(d.source, '(unknown)') AS source, count(*) AS n FROM report_leads d "
            "WHERE d.first_seen_at >= :since AND d.first_seen_at < :until GROUP BY 1"
        ),
        scope.params(),
    )
    return {row.source: int(row.n) for row in rows}


async def mqls_by_source(connection: AsyncConnection, scope: Scope) -> dict[str, int]:
    """Distinct leads qualified in the range, by source."""
    rows = await connection.execute(
        text(
            "SELECT coalesce(d.source, '(unknown)') AS source, count(DISTINCT f.lead_id) AS n FROM report_facts f "
            "LEFT JOIN report_leads d USING (lead_id) WHERE f.kind = 'LeadQualifiedV1' "
            "AND f.occurred_at >= :since AND f.occurred_at < :until AND " + SLICE + " GROUP BY 1"
        ),
        scope.params(),
    )
    return {row.source: int(row.n) for row in rows}


async def last_issued_start(connection: AsyncConnection, cadence: Cadence) -> datetime | None:
    value: datetime | None = await connection.scalar(
        text("SELECT max(period_start) FROM scorecard_periods WHERE cadence = :cadence"), {"cadence": cadence}
    )
    return value


async def store_scorecard(
    connection: AsyncConnection, card: ScorecardIssuedV1, period: ScorecardPeriod, now: datetime
) -> bool:
    """The period's row, once: false when another instance (or an earlier run) already stored it."""
    inserted = await connection.scalar(
        text(
            "INSERT INTO scorecard_periods (cadence, period_start, period_end, label, event_id, "
            "agreement_version, issued_at, scorecard) VALUES (:cadence, :start, :end, :label, :event_id, "
            ":version, :now, CAST(:card AS jsonb)) ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {
            "cadence": period.cadence,
            "start": period.start,
            "end": period.end,
            "label": period.label,
            "event_id": card.event_id,
            "version": card.agreement_version,
            "now": now,
            "card": card.model_dump_json(),
        },
    )
    return inserted is not None


async def store_fact(connection: AsyncConnection, event: Event, now: datetime) -> None:
    """Once per fact: a redelivery hits the primary key and changes nothing."""
    await connection.execute(
        insert(table("report_facts"))
        .values(
            event_id=event.event_id,
            kind=type(event).__name__,
            lead_id=event.lead_id,
            occurred_at=event.occurred_at,
            agreement_version=getattr(event, "agreement_version", None),
            payload=event.model_dump(mode="json"),
            recorded_at=now,
        )
        .on_conflict_do_nothing(index_elements=["event_id", "occurred_at"])
    )


async def remember_lead(connection: AsyncConnection, event: LeadReceivedV1 | LeadQualifiedV1) -> None:
    """First touch wins: a lead keeps the source and campaign it arrived with. Topics are not
    ordered with each other, so a qualification may be seen before the event that caused it."""
    await connection.execute(
        text(
            "INSERT INTO report_leads (lead_id, first_seen_at, source, campaign, persona) "
            "VALUES (:lead_id, :at, :source, :campaign, :persona) ON CONFLICT (lead_id) DO UPDATE SET "
            "source = CASE WHEN excluded.first_seen_at < report_leads.first_seen_at "
            "THEN excluded.source ELSE report_leads.source END, "
            "campaign = CASE WHEN excluded.first_seen_at < report_leads.first_seen_at "
            "THEN coalesce(excluded.campaign, report_leads.campaign) "
            "ELSE coalesce(report_leads.campaign, excluded.campaign) END, "
            "persona = coalesce(excluded.persona, report_leads.persona), "
            "first_seen_at = least(report_leads.first_seen_at, excluded.first_seen_at)"
        ),
        {
            "lead_id": event.lead_id,
            "at": event.occurred_at,
            "source": event.source,
            "campaign": event.attributes.campaign,
            "persona": getattr(event, "persona", None),
        },
    )
