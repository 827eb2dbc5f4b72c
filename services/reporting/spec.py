"""Reporting as the composition root runs it: the consumer that stores report facts, and in the
same process (and engine) the reports API, the dashboard and the weekly scorecards."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from coxswain.access import TokenTable, TokenTableError
from coxswain.runtime import metrics
from coxswain.runtime.http import http_server, serve_until
from coxswain.runtime.service import ConsumerSpec, Process, Wired, versioned_handler
from coxswain.security import token_table
from coxswain.settings import Settings
from services.reporting import consumer

log = logging.getLogger(__name__)


def report_tokens(settings: Settings) -> TokenTable | None:
    """The tokens that may read reports, when reports need one; refuses to start when none could."""
    if not settings.reporting.reports_require_token:
        return None
    try:
        tokens = token_table(settings.admin)
    except TokenTableError as exc:
        raise SystemExit(f"reporting refuses to start: {exc}") from None
    if not any("reports:read" in token.scopes for token in tokens.tokens):
        raise SystemExit(
            "reporting refuses to start: COXSWAIN_REPORTS_REQUIRE_TOKEN is on but no token has scope "
            "'reports:read'; add one to COXSWAIN_TOKENS or set COXSWAIN_ADMIN_TOKEN"
        )
    return tokens


async def serve(process: Process, tokens: TokenTable | None, stop: asyncio.Event) -> None:
    # Imported here: only the reporting process loads the web framework for it.
    from services.reporting import scorecard
    from services.reporting.app import create_reporting_app

    config = process.settings.reporting
    app = create_reporting_app(
        process.engine,
        process.agreement,
        process.clock,
        config.reporting_timezone,
        cadence=config.scorecard_cadence,
        tokens=tokens,
    )
    scorecards = asyncio.create_task(scorecard.run(process.engine, process.agreement, config, process.clock, stop))
    metrics.instrument(app)
    try:
        await serve_until(http_server(app, config.reporting_host, config.reporting_port, lifespan="off"), stop)
    finally:
        if not stop.is_set():
            scorecards.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scorecards
    log.info("reporting served: host=%s port=%s", config.reporting_host, config.reporting_port)


def wire(process: Process) -> Wired:
    tokens = report_tokens(process.settings)  # before anything starts: a refusal is a clean exit
    return Wired(
        versioned_handler(process.agreement, consumer.make_handler), None, (lambda stop: serve(process, tokens, stop),)
    )


# Reports are read by people, minutes later: facts may gather a quarter second (docs/event-path.md).
SPEC = ConsumerSpec(consumer.ACCEPTS, wire, gather_ms=250)
