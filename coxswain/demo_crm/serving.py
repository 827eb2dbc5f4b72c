"""Serving a local CRM's app with uvicorn for the duration of a block, on a free or a given port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI


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
