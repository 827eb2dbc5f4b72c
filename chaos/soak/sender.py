"""Signed webhooks for the soak run over a few keep-alive connections of the bench's raw HTTP/1.1
client (``bench/loadgen.py``), with the chaos sender's contract (``chaos/load.py``): a webhook is
acknowledged only on 202; connection errors, timeouts, 5xx and 429 are retried with the same
webhook id, re-signed; any other answer is a refusal.

Not httpx: on the shared 2-core machine the first 30-minute run could not hold 20 leads/s, and a
profile of this process showed it busy nearly all the time, most of it inside httpx and its
connection pool; the soak shares the CPU with what it measures, like the bench's load generator.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from bench.loadgen import ConnectionClosed, HttpConnection, connect
from chaos.load import Webhook
from services.intake.signatures import sign


@dataclass
class RawSender:
    host: str
    port: int
    secret: str
    connections: int = 32
    timeout: float = 10.0
    give_up_after: float = 900.0
    statuses: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        # Idle connections; None is a slot whose connection is made when it is first needed.
        self._idle: asyncio.Queue[HttpConnection | None] = asyncio.Queue()
        for _ in range(self.connections):
            self._idle.put_nowait(None)

    async def deliver(self, webhook: Webhook) -> None:
        payload = orjson.dumps(webhook.body)
        started = time.monotonic()
        delay = 0.1
        while time.monotonic() - started < self.give_up_after:
            webhook.attempts += 1
            headers = sign(self.secret, webhook.webhook_id, datetime.now(UTC), payload)
            head = (
                f"POST {webhook.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            )
            try:
                status = await self._exchange(head.encode() + b"\r\n" + payload)
            except (ConnectionClosed, OSError, TimeoutError, ValueError) as exc:
                self.statuses[type(exc).__name__] += 1
            else:
                self.statuses[str(status)] += 1
                if status == 202:
                    webhook.acknowledged = True
                    webhook.acknowledged_at = time.time()
                    return
                if status != 429 and status < 500:
                    webhook.refused_status = status
                    return
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)

    def close(self) -> None:
        while not self._idle.empty():
            connection = self._idle.get_nowait()
            if connection is not None:
                connection.close()

    async def _exchange(self, raw: bytes) -> int:
        """One request on an idle connection; a connection that failed or was cancelled is dropped."""
        connection = await self._idle.get()
        try:
            if connection is None or connection.closed:
                connection = await connect(self.host, self.port)
            status, _ = await asyncio.wait_for(connection.request(raw), self.timeout)
        except BaseException:
            if connection is not None:
                connection.close()
            self._idle.put_nowait(None)
            raise
        self._idle.put_nowait(connection)
        return status
