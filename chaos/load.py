"""The load generator: signed webhooks, retried until acknowledged.

A webhook counts as acknowledged only on 202. Connection errors, timeouts, 5xx and 429 are
retried with the same webhook id (re-signed with a fresh timestamp), so a request whose answer
was lost is absorbed as a duplicate by the intake's inbox. Any other answer is a refusal and is
counted as such; the chaos run never sends bad input on purpose.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from coxswain.core.identity import lead_id_for
from services.intake.signatures import sign

SOURCE = "webform"
CRM = "crm"
COUNTRIES = ("US", "IS", "GB", "SE", "DE", "NO", "FR")
PII_EMAIL_DOMAIN = "chaos-pii.example.com"
PII_LAST_NAME = "Chaoslastname"


@dataclass
class Webhook:
    webhook_id: str
    path: str
    body: dict[str, Any]
    acknowledged: bool = False
    acknowledged_at: float | None = None
    response: dict[str, Any] | None = None
    attempts: int = 0
    refused_status: int | None = None


@dataclass
class LeadPlan:
    index: int
    lead_id: str
    qualifies: bool
    touch: str | None  # "early", "late" or None
    webhook: Webhook


def plan_lead(index: int, run_id: str, touch_every: int) -> LeadPlan:
    """Lead ``index`` with a webhook of its own: qualifies unless index % 10 == 9; index %
    touch_every == 0 gets an early first touch, index % touch_every == touch_every // 2 a late one
    (after its deadline). Deterministic, so the soak run makes each lead as it sends it."""
    email, qualifies, touch, body = _lead(index, run_id, touch_every)
    return LeadPlan(
        index=index,
        lead_id=str(lead_id_for(email, SOURCE, f"chaos-{index}")),
        qualifies=qualifies,
        touch=touch,
        webhook=Webhook(f"chaos-{run_id}-lead-{index}", f"/v1/webhooks/{SOURCE}/events", body),
    )


def plan_leads(count: int, run_id: str, touch_every: int, batch: int = 1) -> list[LeadPlan]:
    """Leads 0 to ``count`` - 1 as ``plan_lead`` makes them. With ``batch`` > 1, consecutive leads
    share one webhook (``{"events": [...]}``)."""
    if batch <= 1:
        return [plan_lead(index, run_id, touch_every) for index in range(count)]
    plans: list[LeadPlan] = []
    shared: Webhook | None = None
    for index in range(count):
        email, qualifies, touch, body = _lead(index, run_id, touch_every)
        if shared is None or index % batch == 0:
            shared = Webhook(f"chaos-{run_id}-batch-{index // batch}", f"/v1/webhooks/{SOURCE}/events", {"events": []})
        shared.body["events"].append(body)
        plans.append(
            LeadPlan(
                index=index,
                lead_id=str(lead_id_for(email, SOURCE, f"chaos-{index}")),
                qualifies=qualifies,
                touch=touch,
                webhook=shared,
            )
        )
    return plans


def _lead(index: int, run_id: str, touch_every: int) -> tuple[str, bool, str | None, dict[str, Any]]:
    """Email, whether the lead qualifies, its first touch ("early", "late" or None) and its event."""
    qualifies = index % 10 != 9
    email = f"lead{index}.{run_id}@{PII_EMAIL_DOMAIN}"
    contact: dict[str, Any] = {
        "email": email,
        "first_name": "Chaosfirstname",
        "last_name": f"{PII_LAST_NAME}{index}",
        "country": COUNTRIES[index % len(COUNTRIES)],
    }
    if qualifies:
        contact |= {"title": "VP Marketing", "company_size": 300}
        body = {"type": "demo_request", "external_id": f"chaos-{index}", "contact": contact}
    else:
        contact |= {"title": "Student"}
        body = {"type": "page_view", "external_id": f"chaos-{index}", "contact": contact}
    touch = None
    if qualifies and index % touch_every == 0:
        touch = "early"
    elif qualifies and index % touch_every == touch_every // 2:
        touch = "late"
    return email, qualifies, touch, body


@dataclass
class Sender:
    """Delivers webhooks with retries; keeps counts of what the intake answered."""

    client: httpx.AsyncClient
    secret: str
    give_up_after: float = 900.0
    statuses: Counter[str] = field(default_factory=Counter)
    settled_leads: int = 0  # leads whose webhook was answered 202 or refused: the load's progress

    def _settle(self, webhook: Webhook) -> None:
        if "/events" in webhook.path:
            self.settled_leads += len(webhook.body.get("events", [webhook.body]))

    async def deliver(self, webhook: Webhook) -> None:
        payload = orjson.dumps(webhook.body)
        started = time.monotonic()
        delay = 0.1
        while time.monotonic() - started < self.give_up_after:
            webhook.attempts += 1
            headers = sign(self.secret, webhook.webhook_id, datetime.now(UTC), payload)
            retry_after = 0.0
            try:
                response = await self.client.post(webhook.path, content=payload, headers=headers)
            except httpx.HTTPError as exc:
                self.statuses[type(exc).__name__] += 1
            except AttributeError:
                # anyio reads the peer address of a connection the killed intake has just reset and
                # finds no socket (httpcore's connect, anyio's extra_attributes): a lost connection
                # like any other, which a webhook sender retries. It crashed the restore run once.
                self.statuses["ConnectionLost"] += 1
            else:
                self.statuses[str(response.status_code)] += 1
                if response.status_code == 202:
                    webhook.acknowledged = True
                    webhook.acknowledged_at = time.time()
                    webhook.response = response.json()
                    self._settle(webhook)
                    return
                if response.status_code == 429 or response.status_code >= 500:
                    retry_after = _retry_after(response)
                else:
                    webhook.refused_status = response.status_code
                    self._settle(webhook)
                    return
            await asyncio.sleep(max(retry_after, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 2.0)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "0")), 10.0)
    except ValueError:
        return 0.0


async def run_pool(items: list[Any], work: Callable[[Any], Awaitable[None]], concurrency: int, rate: float) -> None:
    """Feed items to ``concurrency`` workers, at most ``rate`` starts per second (0 = unbounded)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    interval = 1.0 / rate if rate > 0 else 0.0
    next_start = [time.monotonic()]

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if interval:
                now = time.monotonic()
                wait = next_start[0] - now
                next_start[0] = max(next_start[0], now) + interval
                if wait > 0:
                    await asyncio.sleep(wait)
            await work(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def touch_webhook(plan: LeadPlan, run_id: str, rep_id: str) -> Webhook:
    body = {"lead_id": plan.lead_id, "activity": "first_touch", "rep_id": rep_id}
    return Webhook(f"chaos-{run_id}-touch-{plan.index}", f"/v1/webhooks/{CRM}/activities", body)
