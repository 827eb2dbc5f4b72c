"""What the reports hold, as the reporting API's OpenAPI document shows it. The queries
(``services/reporting/repository.py``) return these; the API adds the range it answered for."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from schemas.events import ScorecardIssuedV1


class Ranged(BaseModel):
    since: datetime = Field(description="Start of the range (inclusive).")
    until: datetime = Field(description="End of the range (exclusive).")


# ----------------------------------------------------------------------------- funnel


class StageEntered(BaseModel):
    stage: str
    entered: int = Field(description="Distinct leads that entered the stage in the range.")
    conversion: float | None = Field(default=None, description="Share of the stage before; null for the first.")


class FunnelPeriod(BaseModel):
    start: str = Field(description="The period's start: a date, or a local time for minute and hour periods.")
    entered: dict[str, int] = Field(description="Leads entering each stage in the period.")


class TimeInStage(BaseModel):
    stage: str
    left: int = Field(description="Leads that left the stage in the range.")
    median_hours: float
    median_business_hours: float = Field(description="On the agreement's SLA calendar.")


class Funnel(BaseModel):
    stages: list[StageEntered]
    detours: list[StageEntered]
    periods: list[FunnelPeriod]
    time_in_stage: list[TimeInStage]


# ----------------------------------------------------------------------------- speed to lead


class Percentiles(BaseModel):
    count: int
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None


class Speed(BaseModel):
    routed: int
    system_seconds: Percentiles = Field(description="Received -> routed.")
    human_seconds: Percentiles = Field(description="Routed -> first touch by a person.")
    untouched: int = Field(description="Routed leads nobody has touched yet.")


class SpeedToLead(Speed):
    by_tier: dict[str, Speed]


# ----------------------------------------------------------------------------- SLA


class Attainment(BaseModel):
    met: int
    breached: int
    attainment: float | None = Field(description="met / (met + breached); null when nothing was decided.")


class HeatCell(Attainment):
    rep: str | None
    bucket: str


class Breach(BaseModel):
    at: datetime
    rep: str | None
    team: str | None
    tier: str | None
    milestone: str | None
    lead_id: uuid.UUID


class SlaReport(BaseModel):
    overall: Attainment
    by_rep: dict[str, Attainment]
    by_team: dict[str, Attainment]
    by_tier: dict[str, Attainment]
    heatmap: list[HeatCell] = Field(description="Rep x period.")
    breaches: list[Breach] = Field(description="The latest 500 breaches, oldest first.")


# ----------------------------------------------------------------------------- pacing


class TargetPacing(BaseModel):
    target_id: str
    period: str
    period_start: datetime
    period_end: datetime
    target: int
    elapsed_share: float = Field(description="Business time elapsed in the period, 0..1.")
    expected: float
    actual: int
    pacing: float | None = Field(description="actual / expected; null before any business time elapsed.")
    alert_below: float
    behind: bool


class DailyMqls(BaseModel):
    day: str
    mqls: int


class Pacing(BaseModel):
    at: datetime
    mqls: int
    targets: list[TargetPacing]
    daily: list[DailyMqls]


# ----------------------------------------------------------------------------- SAL, closed loop, history


class RejectionReason(BaseModel):
    reason: str
    count: int


class SalRejections(BaseModel):
    accepted: int
    rejected: int
    rejection_rate: float | None
    reasons: list[RejectionReason]


class ClosedLoopRow(BaseModel):
    source: str
    campaign: str
    opportunities: int
    won: int
    lost: int
    won_amount: float


class ClosedLoop(BaseModel):
    rows: list[ClosedLoopRow]
    won_amount: float
    opportunities: int


class MonthCount(BaseModel):
    kind: str
    stage: str | None = None
    facts: int
    leads: int


class HistoryMonth(BaseModel):
    month: str = Field(description="2026-11")
    counts: list[MonthCount]


class History(BaseModel):
    months: list[HistoryMonth]


# ----------------------------------------------------------------------------- the API's answers


class FunnelReport(Funnel, Ranged):
    pass


class SpeedToLeadReport(SpeedToLead, Ranged):
    pass


class SlaAttainmentReport(SlaReport, Ranged):
    pass


class PacingReport(Pacing, Ranged):
    pass


class SalRejectionsReport(SalRejections, Ranged):
    pass


class ClosedLoopReport(ClosedLoop, Ranged):
    pass


class HistoryReport(History, Ranged):
    pass


class Summary(Ranged):
    agreement_version: str
    funnel: Funnel
    speed_to_lead: SpeedToLead
    sla: SlaReport
    pacing: Pacing
    sal_rejections: SalRejections
    closed_loop: ClosedLoop


class IssuedScorecard(BaseModel):
    cadence: str
    period: str
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    agreement_version: str
    sales: str | None = Field(description="The sales side's verdict: met, missed or no_data.")
    marketing: str | None = Field(description="The marketing side's verdict.")


class Scorecards(BaseModel):
    cadence: str
    timezone: str
    scorecards: list[IssuedScorecard] = Field(description="Newest first.")


Scorecard = ScorecardIssuedV1
