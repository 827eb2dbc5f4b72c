"""Serving an HTTP app the same way everywhere: uvloop, httptools, no access log. uvicorn is
imported when a server is built, so a consumer process that serves none never loads it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI


def http_server(app: FastAPI, host: str, port: int, lifespan: Literal["on", "off"] = "on") -> uvicorn.Server:
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan=lifespan,
        )
    )


async def serve_until(server: uvicorn.Server, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then let the server finish its requests and return."""

    async def stop_server() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_server())
    try:
        await server.serve()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
