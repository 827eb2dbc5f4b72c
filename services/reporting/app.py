"""Reporting API and the live dashboard (``coxswain run reporting``).

The endpoints are one module-level router; what they need (engine, agreement, clock, time zone,
cadence, tokens) is a ``ReportingContext`` that ``create_reporting_app`` keeps in ``app.state``
and handlers take as the ``Context`` dependency. Report bodies are ``services/reporting/models.py``;
their SQL is ``services/reporting/repository.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import AwareDatetime
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import TokenTable, presented_token
from coxswain.core.agreement import Agreement
from coxswain.core.scorecard import Cadence, period_containing
from coxswain.runtime.health import add_probes, database_check
from services.reporting import repository, scorecard, scorecard_page
from services.reporting.dashboard import PAGE
from services.reporting.models import (
    ClosedLoopReport,
    FunnelReport,
    HistoryReport,
    IssuedScorecard,
    PacingReport,
    SalRejectionsReport,
    Scorecard,
    Scorecards,
    SlaAttainmentReport,
    SpeedToLeadReport,
    Summary,
)
from services.reporting.repository import Period, Scope


class BadRange(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


Since = Annotated[AwareDatetime | None, Query(description="Start of the range (inclusive); default: until - 7 days.")]
Until = Annotated[AwareDatetime | None, Query(description="End of the range (exclusive); default: now.")]
# PostgreSQL text cannot hold NUL: refused here with a 422 rather than failing the query with a 500.
Filter = Annotated[str | None, Query(max_length=256, pattern=r"^[^\x00]*$")]
PeriodName = Annotated[
    str,
    Path(
        pattern=r"^[0-9]{4}-(W[0-9]{2}|[0-9]{2}|[0-9]{2}-[0-9]{2})$",
        description="2026-11-23 (day), 2026-W48 (ISO week) or 2026-11 (month).",
    ),
]


@dataclass(frozen=True)
class ReportingContext:
    """What the reports need from the process, kept in ``app.state.reporting`` by create_reporting_app."""

    engine: AsyncEngine
    agreement: Callable[[], Agreement]
    clock: Callable[[], datetime]
    timezone: str
    cadence: Cadence
    tokens: TokenTable | None


def reporting_context(request: Request) -> ReportingContext:
    context: ReportingContext = request.app.state.reporting
    return context


Context = Annotated[ReportingContext, Depends(reporting_context)]


def report_window(
    reporting: Context,
    since: Since = None,
    until: Until = None,
    source: Filter = None,
    campaign: Filter = None,
    persona: Filter = None,
) -> Scope:
    """The range and filters every report takes (query parameters), checked once for all."""
    end = until or reporting.clock()
    try:
        start = since or end - timedelta(days=7)
    except OverflowError:
        raise BadRange(f"until ({end.isoformat()}) leaves no room for the default 7-day range; give since") from None
    if start >= end:
        raise BadRange(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    if end - start > timedelta(days=731):
        raise BadRange("a range spans at most two years")
    return Scope(start, end, source, campaign, persona, None, reporting.timezone)


Window = Annotated[Scope, Depends(report_window)]


def versioned_window(window: Window, agreement_version: Filter = None) -> Scope:
    """The same, for the reports that can be limited to the facts of one agreement version."""
    return replace(window, agreement_version=agreement_version)


VersionedWindow = Annotated[Scope, Depends(versioned_window)]


# Probes answer whatever the token setting: an orchestrator has no token.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CHALLENGE = {"WWW-Authenticate": 'Basic realm="coxswain-reports", charset="UTF-8"'}


def reports_reader(request: Request, context: Context) -> None:
    """Every page and report needs a token with ``reports:read`` when the app has tokens: as a
    Bearer token, or as the password of HTTP Basic, which a browser asks for (the dashboard's own
    requests then carry it). A missing or wrong token is 401 with the Basic challenge, so a
    browser asks again; a token without the scope is 403 naming it."""
    if context.tokens is None or request.url.path in OPEN_PATHS:
        return
    given = presented_token(request.headers.get("authorization"), basic=True)
    holder = context.tokens.holder(given) if given is not None else None
    if holder is None:
        raise HTTPException(
            401,
            "reports need a token with scope 'reports:read': send 'Authorization: Bearer <token>', "
            "or give the token as the password when the browser asks",
            CHALLENGE,
        )
    if "reports:read" not in holder.scopes:
        raise HTTPException(403, f"token {holder.name!r} lacks scope 'reports:read'")


router = APIRouter()


def ranged(window: Scope) -> dict[str, datetime]:
    return {"since": window.since, "until": window.until}


@router.get("/v1/reports/funnel")
async def funnel(context: Context, window: VersionedWindow, period: Period = "day") -> FunnelReport:
    """Leads entering each stage, conversion from the stage before, per period; time in stage."""
    async with context.engine.connect() as connection:
        report = await repository.funnel(connection, window, period, context.agreement())
    return FunnelReport(**ranged(window), **dict(report))


@router.get("/v1/reports/speed-to-lead")
async def speed_to_lead(context: Context, window: VersionedWindow) -> SpeedToLeadReport:
    """System latency (received -> routed) and human latency (routed -> first touch), percentiles in seconds."""
    async with context.engine.connect() as connection:
        report = await repository.speed_to_lead(connection, window)
    return SpeedToLeadReport(**ranged(window), **dict(report))


@router.get("/v1/reports/sla")
async def sla(context: Context, window: Window, period: Period = "day") -> SlaAttainmentReport:
    """SLA attainment per rep, team and tier, a rep x period heatmap and the breach timeline."""
    async with context.engine.connect() as connection:
        report = await repository.sla(connection, window, period)
    return SlaAttainmentReport(**ranged(window), **dict(report))


@router.get("/v1/reports/pacing")
async def pacing(
    context: Context,
    window: Window,
    at: Annotated[AwareDatetime | None, Query(description="Pacing as of this time; default: until.")] = None,
) -> PacingReport:
    """MQLs against marketing's targets, pro-rated to the business time elapsed in the period."""
    async with context.engine.connect() as connection:
        report = await repository.pacing_report(connection, window, context.agreement(), at or window.until)
    return PacingReport(**ranged(window), **dict(report))


@router.get("/v1/reports/sal-rejections")
async def sal_rejections(context: Context, window: Window) -> SalRejectionsReport:
    """SAL accepted vs rejected, and the rejection reasons."""
    async with context.engine.connect() as connection:
        report = await repository.sal_rejections(connection, window)
    return SalRejectionsReport(**ranged(window), **dict(report))


@router.get("/v1/reports/closed-loop")
async def closed_loop(context: Context, window: Window) -> ClosedLoopReport:
    """Opportunities, won and lost deals and won amount by source and campaign."""
    async with context.engine.connect() as connection:
        report = await repository.closed_loop(connection, window)
    return ClosedLoopReport(**ranged(window), **dict(report))


@router.get("/v1/reports/history")
async def history(context: Context, window: VersionedWindow) -> HistoryReport:
    """Monthly fact and lead counts per kind and stage for months past report retention
    (COXSWAIN_REPORT_RETENTION_MONTHS), whose detail has been dropped."""
    async with context.engine.connect() as connection:
        report = await repository.history(connection, window)
    return HistoryReport(**ranged(window), **dict(report))


@router.get("/v1/reports/summary")
async def summary(context: Context, window: Window, period: Period = "day") -> Summary:
    """Every report for one range, as the dashboard shows it."""
    agreement = context.agreement()
    async with context.engine.connect() as connection:
        return Summary(
            **ranged(window),
            agreement_version=agreement.version,
            funnel=await repository.funnel(connection, window, period, agreement),
            speed_to_lead=await repository.speed_to_lead(connection, window),
            sla=await repository.sla(connection, window, period),
            pacing=await repository.pacing_report(connection, window, agreement, window.until),
            sal_rejections=await repository.sal_rejections(connection, window),
            closed_loop=await repository.closed_loop(connection, window),
        )


async def running_scorecard(context: ReportingContext) -> dict[str, Any]:
    now = context.clock()
    period = period_containing(context.cadence, now, ZoneInfo(context.timezone))
    async with context.engine.connect() as connection:
        card = await scorecard.compose(connection, context.agreement(), period, context.timezone, now)
    return card.model_dump(mode="json")


async def stored_scorecard(context: ReportingContext, period: str | None) -> dict[str, Any] | None:
    async with context.engine.connect() as connection:
        return await repository.stored_scorecard(connection, period)


async def issued_periods(context: ReportingContext) -> list[IssuedScorecard]:
    async with context.engine.connect() as connection:
        return await repository.issued_scorecards(connection)


# A scorecard is answered as it was emitted on reports.scorecard_issued.v1, not re-serialised.
AS_EMITTED: dict[int | str, dict[str, Any]] = {200: {"model": Scorecard, "description": "A ScorecardIssuedV1."}}


@router.get("/v1/scorecards")
async def scorecards(context: Context) -> Scorecards:
    """Issued scorecards, newest first: period, bounds and both verdicts."""
    return Scorecards(cadence=context.cadence, timezone=context.timezone, scorecards=await issued_periods(context))


@router.get("/v1/scorecards/current", responses=AS_EMITTED)
async def current_scorecard(context: Context) -> JSONResponse:
    """The running period's scorecard so far (computed now, not issued)."""
    return JSONResponse(await running_scorecard(context))


@router.get("/v1/scorecards/latest", responses={**AS_EMITTED, 404: {"description": "No scorecard issued yet."}})
async def latest_scorecard(context: Context) -> JSONResponse:
    """The latest issued scorecard, exactly as emitted on reports.scorecard_issued.v1."""
    card = await stored_scorecard(context, None)
    if card is None:
        raise HTTPException(404, "no scorecard has been issued yet")
    return JSONResponse(card)


@router.get("/v1/scorecards/{period}", responses={**AS_EMITTED, 404: {"description": "No scorecard for this period."}})
async def scorecard_of(context: Context, period: PeriodName) -> JSONResponse:
    """The scorecard issued for a period, exactly as emitted on reports.scorecard_issued.v1."""
    card = await stored_scorecard(context, period)
    if card is None:
        raise HTTPException(404, f"no scorecard issued for {period}")
    return JSONResponse(card)


def html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-cache"})


async def _nav(context: ReportingContext) -> list[dict[str, Any]]:
    return [issued.model_dump(mode="json") for issued in await issued_periods(context)]


@router.get("/scorecard", response_class=HTMLResponse, include_in_schema=False)
async def scorecard_latest_page(context: Context) -> HTMLResponse:
    return html(scorecard_page.page(await stored_scorecard(context, None), await _nav(context)))


@router.get("/scorecard/current", response_class=HTMLResponse, include_in_schema=False)
async def scorecard_current_page(context: Context) -> HTMLResponse:
    return html(scorecard_page.page(await running_scorecard(context), await _nav(context), provisional=True))


@router.get("/scorecard/{period}", response_class=HTMLResponse, include_in_schema=False)
async def scorecard_page_of(context: Context, period: PeriodName) -> HTMLResponse:
    card = await stored_scorecard(context, period)
    body = scorecard_page.page(card, await _nav(context), missing=None if card is not None else period)
    return html(body, 200 if card is not None else 404)


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"cache-control": "no-cache"})


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")


async def _bad_range(_: Request, problem: Exception) -> JSONResponse:
    return JSONResponse({"detail": problem.message if isinstance(problem, BadRange) else str(problem)}, 422)


def create_reporting_app(
    engine: AsyncEngine,
    agreement_in_force: Callable[[], Agreement],
    clock: Callable[[], datetime],
    timezone: str = "UTC",
    lifespan: Callable[[FastAPI], Any] | None = None,
    cadence: Cadence = "week",
    tokens: TokenTable | None = None,
) -> FastAPI:
    """The reports, scorecards and dashboard; with ``tokens``, only for holders of reports:read."""
    app = FastAPI(
        title="Coxswain reporting",
        version="1",
        description="Funnel, speed to lead, SLA attainment, pacing, SAL rejections and closed loop, from stored facts.",
        lifespan=lifespan,
        dependencies=[Depends(reports_reader)],
    )
    app.state.reporting = ReportingContext(engine, agreement_in_force, clock, timezone, cadence, tokens)
    app.add_exception_handler(BadRange, _bad_range)
    app.include_router(router)
    add_probes(app, {"database": database_check(engine)})
    return app
