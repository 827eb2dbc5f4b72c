"""Reporting API and the live dashboard (``coxswain run reporting``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import AwareDatetime
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import TokenTable, presented_token
from coxswain.core.agreement import Agreement
from coxswain.core.scorecard import Cadence, period_containing
from coxswain.runtime.health import add_probes, database_check
from services.reporting import queries, scorecard, scorecard_page
from services.reporting.dashboard import PAGE
from services.reporting.queries import Period, Scope


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
class _Reporting:
    """What every report's range needs from the app: its clock and its time zone."""

    clock: Callable[[], datetime]
    timezone: str


def report_window(
    request: Request,
    since: Since = None,
    until: Until = None,
    source: Filter = None,
    campaign: Filter = None,
    persona: Filter = None,
) -> Scope:
    """The range and filters every report takes (query parameters), checked once for all."""
    reporting: _Reporting = request.app.state.reporting
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


def reports_guard(tokens: TokenTable) -> Callable[[Request], None]:
    """Every page and report needs a token with ``reports:read``: as a Bearer token, or as the
    password of HTTP Basic, which a browser asks for (the dashboard's own requests then carry it).
    A missing or wrong token is 401 with the Basic challenge, so a browser asks again; a token
    without the scope is 403 naming it."""

    def guard(request: Request) -> None:
        if request.url.path in OPEN_PATHS:
            return
        given = presented_token(request.headers.get("authorization"), basic=True)
        holder = tokens.holder(given) if given is not None else None
        if holder is None:
            raise HTTPException(
                401,
                "reports need a token with scope 'reports:read': send 'Authorization: Bearer <token>', "
                "or give the token as the password when the browser asks",
                CHALLENGE,
            )
        if "reports:read" not in holder.scopes:
            raise HTTPException(403, f"token {holder.name!r} lacks scope 'reports:read'")

    return guard


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
        dependencies=[Depends(reports_guard(tokens))] if tokens is not None else None,
    )

    app.state.reporting = _Reporting(clock, timezone)

    @app.exception_handler(BadRange)
    async def _bad_range(_: Request, problem: BadRange) -> JSONResponse:
        return JSONResponse({"detail": problem.message}, status_code=422)

    def envelope(window: Scope, report: dict[str, Any]) -> dict[str, Any]:
        return {"since": window.since.isoformat(), "until": window.until.isoformat(), **report}

    @app.get("/v1/reports/funnel")
    async def funnel(window: VersionedWindow, period: Period = "day") -> dict[str, Any]:
        """Leads entering each stage, conversion from the stage before, per period; time in stage."""
        async with engine.connect() as connection:
            return envelope(window, await queries.funnel(connection, window, period, agreement_in_force()))

    @app.get("/v1/reports/speed-to-lead")
    async def speed_to_lead(window: VersionedWindow) -> dict[str, Any]:
        """System latency (received -> routed) and human latency (routed -> first touch), percentiles in seconds."""
        async with engine.connect() as connection:
            return envelope(window, await queries.speed_to_lead(connection, window))

    @app.get("/v1/reports/sla")
    async def sla(window: Window, period: Period = "day") -> dict[str, Any]:
        """SLA attainment per rep, team and tier, a rep x period heatmap and the breach timeline."""
        async with engine.connect() as connection:
            return envelope(window, await queries.sla(connection, window, period))

    @app.get("/v1/reports/pacing")
    async def pacing(
        window: Window,
        at: Annotated[AwareDatetime | None, Query(description="Pacing as of this time; default: until.")] = None,
    ) -> dict[str, Any]:
        """MQLs against marketing's targets, pro-rated to the business time elapsed in the period."""
        async with engine.connect() as connection:
            report = await queries.pacing_report(connection, window, agreement_in_force(), at or window.until)
            return envelope(window, report)

    @app.get("/v1/reports/sal-rejections")
    async def sal_rejections(window: Window) -> dict[str, Any]:
        """SAL accepted vs rejected, and the rejection reasons."""
        async with engine.connect() as connection:
            return envelope(window, await queries.sal_rejections(connection, window))

    @app.get("/v1/reports/closed-loop")
    async def closed_loop(window: Window) -> dict[str, Any]:
        """Opportunities, won and lost deals and won amount by source and campaign."""
        async with engine.connect() as connection:
            return envelope(window, await queries.closed_loop(connection, window))

    @app.get("/v1/reports/history")
    async def history(window: VersionedWindow) -> dict[str, Any]:
        """Monthly fact and lead counts per kind and stage for months past report retention
        (COXSWAIN_REPORT_RETENTION_MONTHS), whose detail has been dropped."""
        async with engine.connect() as connection:
            return envelope(window, await queries.history(connection, window))

    @app.get("/v1/reports/summary")
    async def summary(window: Window, period: Period = "day") -> dict[str, Any]:
        """Every report for one range, as the dashboard shows it."""
        agreement = agreement_in_force()
        async with engine.connect() as connection:
            return envelope(
                window,
                {
                    "agreement_version": agreement.version,
                    "funnel": await queries.funnel(connection, window, period, agreement),
                    "speed_to_lead": await queries.speed_to_lead(connection, window),
                    "sla": await queries.sla(connection, window, period),
                    "pacing": await queries.pacing_report(connection, window, agreement, window.until),
                    "sal_rejections": await queries.sal_rejections(connection, window),
                    "closed_loop": await queries.closed_loop(connection, window),
                },
            )

    async def running_scorecard() -> dict[str, Any]:
        now = clock()
        period = period_containing(cadence, now, ZoneInfo(timezone))
        async with engine.connect() as connection:
            card = await scorecard.compose(connection, agreement_in_force(), period, timezone, now)
        return card.model_dump(mode="json")

    async def stored_scorecard(period: str | None) -> dict[str, Any] | None:
        async with engine.connect() as connection:
            return await scorecard.stored(connection, period)

    async def issued_periods() -> list[dict[str, Any]]:
        async with engine.connect() as connection:
            return await scorecard.issued(connection)

    @app.get("/v1/scorecards")
    async def scorecards() -> dict[str, Any]:
        """Issued scorecards, newest first: period, bounds and both verdicts."""
        return {"cadence": cadence, "timezone": timezone, "scorecards": await issued_periods()}

    @app.get("/v1/scorecards/current")
    async def current_scorecard() -> dict[str, Any]:
        """The running period's scorecard so far (computed now, not issued)."""
        return await running_scorecard()

    @app.get("/v1/scorecards/latest", responses={404: {"description": "No scorecard issued yet."}})
    async def latest_scorecard() -> dict[str, Any]:
        """The latest issued scorecard, exactly as emitted on reports.scorecard_issued.v1."""
        card = await stored_scorecard(None)
        if card is None:
            raise HTTPException(404, "no scorecard has been issued yet")
        return card

    @app.get("/v1/scorecards/{period}", responses={404: {"description": "No scorecard for this period."}})
    async def scorecard_of(period: PeriodName) -> dict[str, Any]:
        """The scorecard issued for a period, exactly as emitted on reports.scorecard_issued.v1."""
        card = await stored_scorecard(period)
        if card is None:
            raise HTTPException(404, f"no scorecard issued for {period}")
        return card

    def html(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers={"cache-control": "no-cache"})

    @app.get("/scorecard", response_class=HTMLResponse, include_in_schema=False)
    async def scorecard_latest_page() -> HTMLResponse:
        return html(scorecard_page.page(await stored_scorecard(None), await issued_periods()))

    @app.get("/scorecard/current", response_class=HTMLResponse, include_in_schema=False)
    async def scorecard_current_page() -> HTMLResponse:
        return html(scorecard_page.page(await running_scorecard(), await issued_periods(), provisional=True))

    @app.get("/scorecard/{period}", response_class=HTMLResponse, include_in_schema=False)
    async def scorecard_page_of(period: PeriodName) -> HTMLResponse:
        card = await stored_scorecard(period)
        body = scorecard_page.page(card, await issued_periods(), missing=None if card is not None else period)
        return html(body, 200 if card is not None else 404)

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"cache-control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    add_probes(app, {"database": database_check(engine)})

    return app
