"""Each service as its own OS process (as in production), and an independent topic watcher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.runtime.kafka import connection_options
from coxswain.settings import DatabaseConfig, KafkaConfig
from services.intake.signatures import sign
from tests.support.waiting import wait_until

SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTAxMjM0NTY3"
# Opens intake's /v1/leads/{id} and /v1/admin/* in the end-to-end stack.
ADMIN_TOKEN = "e2e-admin-token-" + "0123456789abcdef0123456789abcdef"
READY_LINE = {
    "scoring": "partitions assigned",
    "router": "partitions assigned",
    "sla-monitor": "partitions assigned",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coxswain_app", "run", self.name],
                env={**self.env, **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: {needle!r} not logged within {timeout}s:\n{self.log_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until_ready(url: str, service: ServiceProcess, timeout: float = 60) -> None:
    """Until ``url``/readyz answers 200; fails with the end of the service's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{service.name} not ready at {url}:\n" + service.log_text()[-3000:])


@dataclass
class Stack:
    agreement: Path
    log_dir: Path
    intake_port: int = field(default_factory=free_port)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.intake_port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "COXSWAIN_AGREEMENT_FILE": str(self.agreement),
            "COXSWAIN_INTAKE_PORT": str(self.intake_port),
            "COXSWAIN_WEBHOOK_SECRETS": orjson.dumps({"webform": SECRET, "crm": SECRET}).decode(),
            "COXSWAIN_SLA_MAX_SLEEP_SECONDS": "0.2",
            "COXSWAIN_ADMIN_TOKEN": ADMIN_TOKEN,
        }

    def start(self, names: Iterable[str] = ("intake", "scoring", "router", "sla-monitor")) -> None:
        for name in names:
            service = self.services.setdefault(name, ServiceProcess(name, self.env(), self.log_dir))
            service.start()
        for name in names:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        if name == "intake":
            wait_until_ready(self.url, self.services[name])
            return
        self.services[name].wait_for_log(READY_LINE[name])

    def start_reporting(self, key: str, extra_env: dict[str, str] | None = None) -> str:
        """`coxswain run reporting` as its own process (stopped with the stack); its URL once it
        has its partitions and answers /readyz."""
        port = free_port()
        env = {**self.env(), **(extra_env or {}), "COXSWAIN_REPORTING_PORT": str(port)}
        service = self.services[key] = ServiceProcess("reporting", env, self.log_dir)
        service.start()
        service.wait_for_log("partitions assigned")
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, service)
        return url

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()


def signed(
    body: dict[str, Any], webhook_id: str | None = None, sent_at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    payload = orjson.dumps(body)
    return payload, sign(SECRET, webhook_id or f"msg_{uuid.uuid4().hex}", sent_at or datetime.now(UTC), payload)


async def post_signed(client: httpx.AsyncClient, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    payload, headers = signed(body, **kwargs)
    return await client.post(path, content=payload, headers=headers)


@dataclass
class Seen:
    topic: str
    key: str
    value: dict[str, Any]
    headers: dict[str, str]


class TopicWatcher:
    """An independent consumer (no group, from the earliest offset) that collects every record."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.records: list[Seen] = []
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self._next: dict[tuple[str, int], int] = {}  # per partition: the offset after the last record seen

    async def __aenter__(self) -> TopicWatcher:
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            **connection_options(KafkaConfig()),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _collect(self) -> None:
        async for record in self._consumer:
            try:
                value = orjson.loads(record.value) if record.value else {}
            except orjson.JSONDecodeError:
                value = {"_raw": record.value.decode(errors="replace")}
            headers = {name: bytes(raw).decode(errors="replace") for name, raw in (record.headers or ())}
            self.records.append(Seen(record.topic, (record.key or b"").decode(), value, headers))
            self._next[(record.topic, record.partition)] = record.offset + 1

    async def wait_until_settled(self, within: float = 60) -> None:
        """The positive signal a "nothing doubled" check waits for, instead of a fixed sleep: no fact
        of the watched topics is left in any service's outbox (so no relay can publish one again:
        a row is deleted only after Kafka acknowledged it), and this watcher has read every topic
        to the end offsets taken after that."""
        engine = create_async_engine(DatabaseConfig().database_url)
        try:

            async def outbox_drained() -> bool:
                async with engine.connect() as connection:
                    left: int | None = await connection.scalar(
                        text("SELECT count(*) FROM outbox WHERE topic = ANY(:topics)"), {"topics": self.topics}
                    )
                return left == 0

            await wait_until(outbox_drained, f"the outbox to drain of {self.topics}", within=within)
        finally:
            await engine.dispose()
        partitions = self._consumer.assignment()
        ends: dict[Any, int] = await self._consumer.end_offsets(list(partitions))

        def read_to_the_end() -> bool:
            return all(self._next.get((tp.topic, tp.partition), 0) >= end for tp, end in ends.items())

        await wait_until(read_to_the_end, f"the watcher to read {self.topics} to their end", within=within)

    def matching(self, topic: str, where: Callable[[Seen], bool] = lambda _: True) -> list[Seen]:
        return [seen for seen in self.records if seen.topic == topic and where(seen)]

    async def wait_for(
        self, topic: str, where: Callable[[Seen], bool] = lambda _: True, count: int = 1, within: float = 30
    ) -> list[Seen]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = self.matching(topic, where)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"expected {count} record(s) on {topic} within {within}s, saw {len(self.matching(topic, where))}"
        )


def for_lead(lead_id: str) -> Callable[[Seen], bool]:
    return lambda seen: seen.value.get("lead_id") == lead_id


def _in_force(version: str) -> str:
    return f"agreement in force: version={version} "


def _logged(stack: Stack, name: str, needle: str) -> int:
    return stack.services[name].log_text().count(needle)


async def _wait_logged(stack: Stack, name: str, needle: str, more_than: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while _logged(stack, name, needle) <= more_than:
        assert time.monotonic() < deadline, f"{name} did not log {needle!r}:\n{stack.services[name].log_text()[-3000:]}"
        await asyncio.sleep(0.1)


def coxswain_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coxswain_app", *args], env=dict(os.environ), capture_output=True, text=True, check=False
    )


@contextlib.asynccontextmanager
async def agreement_in_force(
    stack: Stack, path: Path, version: str, followers: Sequence[str], stack_version: str = "e2e-1"
) -> AsyncIterator[None]:
    """Activate an agreement with the CLI and wait until every follower runs under it; afterwards
    the stack goes back to its file (``stack_version``)."""
    before = {name: _logged(stack, name, _in_force(version)) for name in followers}
    activated = await asyncio.to_thread(coxswain_cli, "agreement", "activate", str(path))
    assert activated.returncode == 0, activated.stderr
    assert f"agreement version {version}" in activated.stdout
    for name in followers:
        await _wait_logged(stack, name, _in_force(version), before[name])
    try:
        yield
    finally:
        restored = {name: _logged(stack, name, _in_force(stack_version)) for name in followers}
        engine = create_async_engine(DatabaseConfig().database_url)
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM agreements"))
        await engine.dispose()
        for name in followers:
            await _wait_logged(stack, name, _in_force(stack_version), restored[name])
