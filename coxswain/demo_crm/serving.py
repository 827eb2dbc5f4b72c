"""Serving a local CRM: on a free port for a test's block, or on a given port as a process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def served(app: FastAPI, port: int = 0, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """``app`` served by uvicorn on ``port`` (0: a free one) for the duration of the block; the port."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    )
    running = asyncio.create_task(server.serve())
    while not server.started:
        if running.done():
            running.result()
            raise SystemExit(f"could not serve on {host}:{port}")
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await running


async def serve_until_stopped(
    kind: str, owners: set[str], token: str, port: int, subscription_url: str | None, client_secret: str | None
) -> None:
    """``coxswain demo crm``: one local CRM on ``port`` until SIGTERM or Ctrl-C."""
    import signal

    from coxswain.demo_crm import hubspot, salesforce

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if kind == "hubspot":
        subscription = None
        if subscription_url and client_secret:
            subscription = hubspot.Subscription(subscription_url, client_secret)
        async with hubspot.serving(owners, token, subscription, port) as served_hubspot:
            log.info(
                "local hubspot serving: url=%s owners=%s webhooks=%s",
                served_hubspot.url,
                len(owners),
                subscription_url or "none",
            )
            await stop.wait()
    else:
        async with salesforce.serving(owners, token, port) as served_salesforce:
            log.info("local salesforce serving: url=%s users=%s", served_salesforce.url, len(owners))
            await stop.wait()
