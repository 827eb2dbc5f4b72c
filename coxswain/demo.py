"""Demo traffic (signed webhooks as a marketing tool and a CRM would send them) and a tail of
the topics, so `make run` shows leads flowing."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from coxswain.runtime.kafka import connection_options
from coxswain.settings import KafkaConfig
from services.intake.signatures import sign

log = logging.getLogger(__name__)

TITLES = ["VP Marketing", "Head of Sales", "Marketing Manager", "CTO", "Student", "Director of RevOps", "Engineer"]
INDUSTRIES = ["software", "fintech", "healthcare", "retail", "manufacturing"]
COUNTRIES = ["US", "US", "CA", "GB", "DE", "FR"]
ENGAGEMENTS = ["demo_request", "form_submit", "webinar_attended", "pricing_view", "content_download"]


def demo_lead(rng: random.Random, index: int) -> dict[str, Any]:
    company = f"company{rng.randint(1, 400)}"
    return {
        "type": rng.choice(ENGAGEMENTS),
        "external_id": f"demo-{index}",
        "contact": {
            "email": f"person{index}@{company}.example.com",
            "first_name": "Demo",
            "last_name": f"Person{index}",
            "title": rng.choice(TITLES),
            "company": company,
            "company_domain": f"{company}.example.com",
            "company_size": rng.choice([8, 40, 120, 600, 2500, 12000]),
            "industry": rng.choice(INDUSTRIES),
            "country": rng.choice(COUNTRIES),
        },
    }


async def post_signed(client: httpx.AsyncClient, url: str, secret: str, body: dict[str, Any]) -> httpx.Response:
    payload = orjson.dumps(body)
    headers = sign(secret, f"msg_{uuid.uuid4().hex}", datetime.now(UTC), payload)
    return await client.post(url, content=payload, headers=headers)


async def run_traffic(
    url: str, source: str, secret: str, rate: float, count: int, touch_share: float, seed: int
) -> None:
    if not secret:
        raise SystemExit("a webhook secret is needed: --secret or COXSWAIN_DEMO_SECRET")
    rng = random.Random(seed)
    sent = 0
    pending: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=10) as client:
        while count == 0 or sent < count:
            response = await post_signed(client, f"{url}/v1/webhooks/{source}/events", secret, demo_lead(rng, sent))
            sent += 1
            if response.status_code != 202:
                log.warning("demo lead rejected: status=%s body=%s", response.status_code, response.text[:200])
            elif rng.random() < touch_share:
                lead_id = response.json()["events"][0]["lead_id"]
                task = asyncio.create_task(_touch_later(client, url, source, secret, lead_id, rng.uniform(1, 8)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*pending)
    log.info("demo traffic done: sent=%s", sent)


async def _touch_later(
    client: httpx.AsyncClient, url: str, source: str, secret: str, lead_id: str, delay: float
) -> None:
    await asyncio.sleep(delay)
    body = {"lead_id": lead_id, "activity": "first_touch", "rep_id": "demo"}
    await post_signed(client, f"{url}/v1/webhooks/{source}/activities", secret, body)


async def tail(topics: list[str]) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics,
        **connection_options(KafkaConfig()),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async for record in consumer:
            value = orjson.loads(record.value)
            summary = {
                k: value.get(k)
                for k in ("lead_id", "rep_id", "pool_id", "tier", "due_at", "follow_up_due_at", "reason")
                if k in value
            }
            print(f"{record.topic:18} {orjson.dumps(summary).decode()}", flush=True)
    finally:
        await consumer.stop()
