"""Shadow mode in the running stack: a candidate agreement decides beside the live one, publishes
only to shadow.decisions.v1, agrees with the live stack where the agreements agree, and a
restart re-emits the same decisions with the same ids (so consumers dedupe)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.settings import DatabaseConfig
from tests.support.stack import Seen, Stack, TopicWatcher, for_lead, post_signed

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The stack's own agreement as the candidate: the shadow must decide as the live stack does.
CANDIDATE = Path(__file__).parent / "agreement.yaml"


class ShadowProcess:
    def __init__(self, stack: Stack, log_dir: Path) -> None:
        self.env = stack.env()
        self.log_dir = log_dir
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"shadow.{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coxswain_app", "run", "shadow", "--agreement", str(CANDIDATE)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def caught_up(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while "shadow caught up" not in self.log_path.read_text(errors="replace"):
            assert self.process is not None and self.process.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "shadow did not catch up:\n" + self.log_path.read_text()[-3000:]
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def shadow(stack: Stack, tmp_path: Path) -> Iterator[ShadowProcess]:
    running = ShadowProcess(stack, tmp_path)
    try:
        yield running
    finally:
        running.stop()


async def test_shadow_agrees_with_the_live_stack_and_restarts_with_the_same_ids(
    client: httpx.AsyncClient, stack: Stack, shadow: ShadowProcess
) -> None:
    engine = create_async_engine(DatabaseConfig().database_url)
    async with engine.connect() as connection:
        started = await connection.scalar(text("SELECT now()"))
    leads = []
    async with TopicWatcher(["leads.routed.v1"]) as live:
        for _ in range(4):
            body = {
                "type": "demo_request",
                "contact": {
                    "email": f"shadow@{uuid.uuid4().hex[:12]}.example.com",
                    "title": "VP Sales",
                    "country": "IS",
                },
            }
            response = await post_signed(client, "/v1/webhooks/webform/events", body)
            assert response.status_code == 202, response.text
            leads.append(response.json()["events"][0]["lead_id"])
        for lead in leads:
            [routed] = await live.wait_for("leads.routed.v1", for_lead(lead))
            assert routed.value["rep_id"] == "iris"
    await engine.dispose()

    async with TopicWatcher(["shadow.decisions.v1"]) as watcher:
        shadow.start()
        await shadow.caught_up()
        first: dict[str, set[str]] = {}
        for lead in leads:
            found = await watcher.wait_for("shadow.decisions.v1", for_lead(lead), 2)
            kinds = {seen.value["kind"]: seen.value for seen in found}
            assert kinds["stage_changed"]["to_stage"] == "mql"
            assert kinds["routed"]["rep_id"] == "iris"
            assert kinds["routed"]["agreement_version"] == "e2e-1"
            first[lead] = {seen.value["event_id"] for seen in found}

        report = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "coxswain_app",
                "shadow",
                "report",
                "--since",
                started.isoformat(),
                "--version",
                "e2e-1",
            ],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            check=False,
        )
        assert report.returncode == 0, report.stderr
        owner = re.search(r"owner\s+agree\s+(\d+)\s+disagree\s+(\d+)", report.stdout)
        assert owner is not None, report.stdout
        assert int(owner.group(1)) >= len(leads), report.stdout

        # A restart rebuilds the engine from the earliest offset and re-emits the same facts.
        # Only this test's decisions: other tests put their own (and undecodable) records on every topic.
        ours = set(leads)

        def decision(seen: Seen) -> bool:
            return seen.value.get("lead_id") in ours

        before = len(watcher.matching("shadow.decisions.v1", decision))
        shadow.stop()
        shadow.start()
        await shadow.caught_up()
        await watcher.wait_for("shadow.decisions.v1", decision, count=2 * before)
        for lead in leads:
            again = watcher.matching("shadow.decisions.v1", for_lead(lead))
            assert len(again) == 4
            assert {seen.value["event_id"] for seen in again} == first[lead]
