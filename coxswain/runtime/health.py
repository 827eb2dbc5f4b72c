"""Liveness and readiness: ``/healthz`` (the process answers) and ``/readyz`` (its database and
broker answer too).

Intake serves both on its HTTP app; the consumer services, which have no HTTP server, serve them
on ``COXSWAIN_HEALTH_PORT`` with the small server below. Each check gets a short timeout, so a
hung dependency reads as "unavailable" instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:  # only the HTTP apps add probes; a consumer never loads FastAPI
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
CHECK_TIMEOUT_SECONDS = 2.0


def database_check(engine: AsyncEngine) -> Check:
    async def check() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return check


async def readiness(checks: Mapping[str, Check]) -> tuple[bool, dict[str, str]]:
    """Run every check; the answer names each dependency and, when it fails, only the error type."""
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
        except Exception as exc:
            results[name] = type(exc).__name__
        else:
            results[name] = "ok"
    ready = all(result == "ok" for result in results.values())
    return ready, {"status": "ready" if ready else "unavailable", **results}


def add_probes(app: FastAPI, checks: Mapping[str, Check]) -> None:
    """``/healthz`` (the process answers) and ``/readyz`` (every dependency in ``checks`` answers)."""
    from fastapi.responses import JSONResponse

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=None,  # the annotation names a class imported here, not at module level
        responses={503: {"description": "A dependency does not answer; the body names it and its error type"}},
    )
    async def readyz() -> JSONResponse:
        """Ready when every dependency answers (the database; Kafka in a running intake)."""
        ready, report = await readiness(checks)
        return JSONResponse(report, status_code=200 if ready else 503)


async def serve(host: str, port: int, checks: Mapping[str, Check], stop: asyncio.Event) -> None:
    """A minimal HTTP/1.1 server for probes: GET /healthz and GET /readyz, nothing else."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            method, _, rest = request_line.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0]
            if method != "GET":
                status, body = 405, {"detail": "only GET is served here"}
            elif path == "/healthz":
                status, body = 200, {"status": "ok"}
            elif path == "/readyz":
                ready, body = await readiness(checks)
                status = 200 if ready else 503
            else:
                status, body = 404, {"detail": "not found; try /healthz or /readyz"}
            payload = orjson.dumps(body)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, host, port)
    except OSError as exc:
        # A busy port costs the probes, never the service.
        log.warning("health endpoints not started: host=%s port=%s error=%s", host, port, exc.strerror)
        return
    log.info("health endpoints served: host=%s port=%s", host, port)
    async with server:
        await stop.wait()
