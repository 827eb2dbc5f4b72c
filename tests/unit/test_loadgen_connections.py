"""The load generator's connections: a keep-alive connection the server closed while it sat idle
is replaced before it is used, so an open loop at a low rate loses no request to it."""

from __future__ import annotations

import argparse
import asyncio

from bench.loadgen import Requests, open_loop

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LW5vdC1mb3ItcHJvZHVjdGlvbg=="


async def answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request, then closes the connection (a keep-alive timeout, at its shortest)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_an_open_loop_replaces_connections_the_server_closed_while_idle() -> None:
    server = await asyncio.start_server(answer_once_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        requests = Requests(host=f"127.0.0.1:{port}", path="/v1/webhooks/bench/events", secret=SECRET, batch=1)
        # Two connections, twelve requests: each connection is used six times, and the server has
        # closed it after each use.
        args = argparse.Namespace(rate=60.0, duration=0.2, connections=2)
        result = await open_loop(args, requests, "127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()
    assert result["accepted"] == 12
    assert result["statuses"] == {"202": 12}
    assert result["failures"] == {}
