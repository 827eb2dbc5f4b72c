"""The load generator: signed webhooks over keep-alive HTTP/1.1 connections, in its own process.

A small raw HTTP/1.1 client on asyncio protocols rather than an HTTP library: on a 2-core
machine the generator shares the CPU with what it measures, and the less it spends per request
the more of the machine is left to the server. Requests are built and signed before the clock
starts, so signing costs are not charged to the server either.

Modes (one JSON object on stdout when done):
- ``closed``: ``--connections`` workers send back to back for ``--duration`` seconds; the first
  ``--warmup`` seconds are not counted.
- ``open``: requests start at a fixed ``--rate`` per second whatever the answers do (no
  coordinated omission); every accepted lead's id and acceptance time go to ``--out``.
- ``count``: ``--count`` events in bodies of ``--batch`` events, as fast as the server takes them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import uvloop

from coxswain.core.identity import lead_id_for
from services.intake.signatures import sign

MAX_FAILURES = 200
LEADS = "leads"  # written to --out, not to stdout


class ConnectionClosed(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionClosed(str(exc) if exc else "server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None or self._waiter.done():
            return
        response = parse_response(self._buffer)
        if response is not None:
            status, body, used = response
            del self._buffer[:used]
            self._waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.closed or self._transport is None:
            raise ConnectionClosed("connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def parse_response(buffer: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first complete response in ``buffer``, or None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    marker = head.find(b"\r\ncontent-length:")
    if marker < 0:
        raise ValueError("response without content-length; the load generator needs one")
    line_end = head.find(b"\r\n", marker + 2)
    length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)].strip())
    total = end + 4 + length
    if len(buffer) < total:
        return None
    return status, bytes(buffer[end + 4 : total]), total


@dataclass(frozen=True)
class Prepared:
    raw: bytes
    lead_ids: tuple[str, ...]


@dataclass
class Requests:
    """Signed requests, built ahead; more are signed on the fly if a run outlasts the supply."""

    host: str
    path: str
    secret: str
    batch: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def lead(self, index: int) -> tuple[dict[str, Any], str]:
        email = f"bench-{self.tag}-{index}@example.com"
        body = {
            "type": "demo_request",
            "contact": {
                "email": email,
                "first_name": "Bench",
                "last_name": "Lead",
                "title": "VP Marketing",
                "company": "Example",
                "company_size": 300,
                "industry": "software",
                "country": "US",
            },
        }
        return body, str(lead_id_for(email, "bench", None))

    def build(self) -> Prepared:
        number = next(self._counter)
        leads = [self.lead(number * self.batch + i) for i in range(self.batch)]
        document: Any = leads[0][0] if self.batch == 1 else {"events": [body for body, _ in leads]}
        body = orjson.dumps(document)
        headers = sign(self.secret, f"msg_{self.tag}_{number}", datetime.now(UTC), body)
        head = f"POST {self.path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-length: {len(body)}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        return Prepared(head.encode() + b"\r\n" + body, tuple(lead for _, lead in leads))

    def ahead(self, count: int) -> list[Prepared]:
        return [self.build() for _ in range(count)]


class Supply:
    def __init__(self, requests: Requests, prepared: list[Prepared]) -> None:
        self._requests = requests
        self._prepared = iter(prepared)

    def next(self) -> Prepared:
        return next(self._prepared, None) or self._requests.build()


async def connect(host: str, port: int) -> HttpConnection:
    _, protocol = await asyncio.get_running_loop().create_connection(HttpConnection, host, port)
    return protocol


@dataclass
class Tally:
    started: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0
    accepted: int = 0
    events: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


async def _send(
    connection: HttpConnection, host: str, port: int, prepared: Prepared, tally: Tally
) -> tuple[HttpConnection, int | None]:
    if connection.closed:
        # The server closed it while it sat idle (uvicorn ends a keep-alive connection after 5 s
        # without a request): open a fresh one, as any HTTP client's pool does. Not a failure. At
        # 5 requests/s over 32 connections each one sits idle 6.4 s between requests, and a
        # quarter of the latency curve's slowest point used to be lost here.
        connection = await connect(host, port)
    try:
        status, _ = await connection.request(prepared.raw)
    except ConnectionClosed as exc:
        tally.failures[type(exc).__name__] += 1
        if sum(tally.failures.values()) > MAX_FAILURES:
            raise SystemExit(f"more than {MAX_FAILURES} connection failures; is the server up?") from exc
        return await connect(host, port), None
    tally.statuses[status] += 1
    return connection, status


async def closed_loop(args: argparse.Namespace, requests: Requests, host: str, port: int) -> dict[str, Any]:
    supply = Supply(requests, requests.ahead(args.supply))
    connections = [await connect(host, port) for _ in range(args.connections)]
    tally = Tally()
    tally.started = time.perf_counter()
    tally.window_start = tally.started + args.warmup
    tally.window_end = tally.window_start + args.duration

    async def worker(connection: HttpConnection) -> None:
        while True:
            prepared = supply.next()
            sent = time.perf_counter()
            if sent >= tally.window_end:
                break
            connection, status = await _send(connection, host, port, prepared, tally)
            done = time.perf_counter()
            if status == 202 and tally.window_start <= done < tally.window_end:
                tally.accepted += 1
                tally.events += len(prepared.lead_ids)
                tally.latencies_ms.append((done - sent) * 1000)
        connection.close()

    await asyncio.gather(*(worker(connection) for connection in connections))
    return _summary(tally, args.duration)


async def open_loop(args: argparse.Namespace, requests: Requests, host: str, port: int) -> dict[str, Any]:
    total = int(args.rate * args.duration)
    prepared = requests.ahead(total)
    idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(args.connections):
        idle.put_nowait(await connect(host, port))
    tally = Tally()
    accepted: list[tuple[str, float, float]] = []

    async def one(item: Prepared, intended: float) -> None:
        connection = await idle.get()
        connection, status = await _send(connection, host, port, item, tally)
        idle.put_nowait(connection)
        if status == 202:
            now = time.time()
            tally.accepted += 1
            tally.events += len(item.lead_ids)
            tally.latencies_ms.append((now - intended) * 1000)
            accepted.extend((lead, now, intended) for lead in item.lead_ids)

    tasks: set[asyncio.Task[None]] = set()
    start = time.time() + 0.05
    tally.started = tally.window_start = time.perf_counter()
    for index, item in enumerate(prepared):
        intended = start + index / args.rate
        delay = intended - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(item, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    tally.window_end = time.perf_counter()
    while not idle.empty():
        idle.get_nowait().close()
    result = _summary(tally, tally.window_end - tally.window_start)
    result["offered_rps"] = args.rate
    result[LEADS] = accepted
    return result


async def count_loop(args: argparse.Namespace, requests: Requests, host: str, port: int) -> dict[str, Any]:
    prepared = requests.ahead(-(-args.count // args.batch))
    queue = iter(prepared)
    connections = [await connect(host, port) for _ in range(args.connections)]
    tally = Tally()
    began = time.time()
    tally.started = tally.window_start = time.perf_counter()

    async def worker(connection: HttpConnection) -> None:
        for item in queue:
            status = None
            while status is None:
                connection, status = await _send(connection, host, port, item, tally)
            if status == 202:
                tally.accepted += 1
                tally.events += len(item.lead_ids)
        connection.close()

    await asyncio.gather(*(worker(connection) for connection in connections))
    tally.window_end = time.perf_counter()
    result = _summary(tally, tally.window_end - tally.window_start)
    result["began_at"] = began
    result["ended_at"] = time.time()
    result[LEADS] = [lead for item in prepared for lead in item.lead_ids]
    return result


def _summary(tally: Tally, seconds: float) -> dict[str, Any]:
    latencies = sorted(tally.latencies_ms)
    return {
        "seconds": seconds,
        "accepted": tally.accepted,
        "events": tally.events,
        "requests_per_s": tally.accepted / seconds if seconds > 0 else 0.0,
        "events_per_s": tally.events / seconds if seconds > 0 else 0.0,
        "statuses": {str(status): count for status, count in sorted(tally.statuses.items())},
        "failures": dict(tally.failures),
        "http_p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "http_p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/v1/webhooks/bench/events")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--mode", choices=("closed", "open", "count"), required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="events per request")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--supply", type=int, default=20000, help="closed mode: requests signed ahead")
    parser.add_argument("--rate", type=float, default=500.0, help="open mode: requests per second")
    parser.add_argument("--count", type=int, default=10000, help="count mode: events to send")
    parser.add_argument("--out", default="", help="open/count mode: where to write the accepted leads")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    requests = Requests(host=f"{host}:{port}", path=url.path, secret=args.secret, batch=args.batch)
    modes = {"closed": closed_loop, "open": open_loop, "count": count_loop}
    return await modes[args.mode](args, requests, host, port)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = uvloop.run(main(arguments))
    leads = outcome.pop(LEADS, None)
    if arguments.out and leads is not None:
        Path(arguments.out).write_bytes(orjson.dumps(leads))
    sys.stdout.write(orjson.dumps(outcome).decode() + "\n")
