"""Demo traffic, as a marketing tool and a CRM would send it, and a tail of the topics, so
`make run` shows leads flowing and every panel of the dashboard fills.

The marketing side posts signed leads. The CRM side is scripted like a real connector: it reads
``leads.routed.v1`` and has the assigned rep act on each lead. Most reps touch their lead in
time, some only after the deadline (a breach, then a late touch), some never; touched leads are
accepted or rejected with one of the agreement's reasons, and some accepted ones become
opportunities that are won or lost. Delays are shares of each lead's own deadline, so the same
script fits an agreement with 5-minute deadlines and a test agreement with 4-second ones.

With local CRMs (:class:`CrmLinks`, ``make run``), the first touch of a share of the leads goes
through a CRM as a rep's would: the rep waits until crm-sync has made them the owner of the lead's
contact (HubSpot) or Lead (Salesforce), then logs a call there: in HubSpot a call engagement, which
the local HubSpot posts to intake as a signed webhook; in Salesforce a completed Task of subtype
Call, which crm-sync's poller reads back. The other steps (SAL accept / reject, opportunity, won /
lost) and the other leads' touches are posted to intake's generic activities endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from coxswain.runtime.kafka import connection_options
from coxswain.settings import AgreementConfig, KafkaConfig
from services.intake.signatures import sign

log = logging.getLogger(__name__)

TITLES = ["VP Marketing", "Head of Sales", "Marketing Manager", "CTO", "Student", "Director of RevOps", "Engineer"]
INDUSTRIES = ["software", "fintech", "healthcare", "retail", "manufacturing"]
COUNTRIES = ["US", "US", "CA", "GB", "DE", "FR"]
ENGAGEMENTS = ["demo_request", "form_submit", "webinar_attended", "pricing_view", "content_download"]
CAMPAIGNS = ["webinar-q4", "pricing-page", "ebook-revops", "paid-search"]
FALLBACK_REASONS = ("no-budget", "bad-timing", "wrong-person")
ROUTED_TOPIC = "leads.routed.v1"
# Even a lead with an hour to its deadline is touched within this many seconds in the demo.
MOST_DELAY_SECONDS = 90.0
# How long a rep waits for crm-sync to make them the owner in the CRM before touching through intake.
OWNER_WAIT_SECONDS = 30.0
SALESFORCE_API = "/services/data/v60.0"


def demo_lead(rng: random.Random, index: int, campaign: str | None = None, run: str = "") -> dict[str, Any]:
    """A made-up person; ``run`` keeps another run's people (same seed, same names) from being joined."""
    company = f"company{rng.randint(1, 400)}"
    return {
        "type": rng.choice(ENGAGEMENTS),
        "external_id": f"demo-{run}{index}",
        "contact": {
            "email": f"person{index}{run}@{company}.example.com",
            "first_name": "Demo",
            "last_name": f"Person{index}",
            "title": rng.choice(TITLES),
            "company": company,
            "company_domain": f"{company}.example.com",
            "company_size": rng.choice([8, 40, 120, 600, 2500, 12000]),
            "industry": rng.choice(INDUSTRIES),
            "country": rng.choice(COUNTRIES),
            "campaign": campaign or rng.choice(CAMPAIGNS),
        },
    }


async def post_signed(client: httpx.AsyncClient, url: str, secret: str, body: dict[str, Any]) -> httpx.Response:
    payload = orjson.dumps(body)
    headers = sign(secret, f"msg_{uuid.uuid4().hex}", datetime.now(UTC), payload)
    return await client.post(url, content=payload, headers=headers)


@dataclass(frozen=True)
class Mix:
    """Shares of routed leads the scripted reps touch in time and only late; the rest never."""

    in_time: float = 0.7
    late: float = 0.15

    def __post_init__(self) -> None:
        if not (0 <= self.in_time <= 1 and 0 <= self.late <= 1 and self.in_time + self.late <= 1):
            raise ValueError(f"touch shares must be within 0..1 and add up to at most 1, got {self}")


@dataclass(frozen=True)
class Step:
    after: float  # seconds after the lead was routed
    activity: dict[str, Any]


def plan_for(rng: random.Random, allowed: float, mix: Mix, reasons: tuple[str, ...], progress: bool) -> list[Step]:
    """What the rep does with one routed lead, as delays after routing (``allowed``: seconds to the deadline)."""
    draw = rng.random()
    if draw < mix.in_time:
        touch = allowed * rng.uniform(0.1, 0.6)
        if touch > MOST_DELAY_SECONDS:
            touch = MOST_DELAY_SECONDS * rng.uniform(0.1, 1.0)
    elif draw < mix.in_time + mix.late:
        touch = allowed + min(allowed, MOST_DELAY_SECONDS) * rng.uniform(0.2, 1.0)
    else:
        return []
    steps = [Step(touch, {"activity": "first_touch"})]
    if not progress:
        return steps
    at = touch + rng.uniform(1, 5)
    outcome = rng.random()
    if outcome < 0.25:
        return [*steps, Step(at, {"activity": "sal_rejected", "reason": rng.choice(reasons)})]
    if outcome > 0.75:
        return steps  # still deciding
    steps.append(Step(at, {"activity": "sal_accepted"}))
    if rng.random() < 0.5:
        return steps
    amount = float(rng.randrange(5_000, 60_000, 500))
    at += rng.uniform(2, 6)
    steps.append(Step(at, {"activity": "sql_qualified"}))
    at += rng.uniform(2, 6)
    steps.append(Step(at, {"activity": "opportunity_created", "amount": amount}))
    at += rng.uniform(3, 10)
    won = rng.random() < 0.6
    steps.append(Step(at, {"activity": "won" if won else "lost", **({"amount": amount} if won else {})}))
    return steps


@dataclass(frozen=True)
class CrmLinks:
    """The local CRMs the scripted reps log their first calls in, and who each rep is there."""

    token: str
    hubspot_url: str | None = None
    salesforce_url: str | None = None
    share: float = 0.35  # of routed leads, per CRM
    owners: dict[str, str] = field(default_factory=dict)  # rep id -> HubSpot owner id
    users: dict[str, str] = field(default_factory=dict)  # rep id -> Salesforce user id

    def choose(self, rng: random.Random, rep_id: str) -> str:
        """Where this lead's first touch is logged: hubspot, salesforce or intake."""
        draw = rng.random()
        if self.hubspot_url and rep_id in self.owners and draw < self.share:
            return "hubspot"
        if self.salesforce_url and rep_id in self.users and self.share <= draw < 2 * self.share:
            return "salesforce"
        return "intake"


def crm_links(token: str, hubspot_url: str | None, salesforce_url: str | None, share: float) -> CrmLinks | None:
    """The links with the reps' ids of the agreement in COXSWAIN_AGREEMENT_FILE (None without a CRM)."""
    if not (hubspot_url or salesforce_url):
        return None
    from coxswain.core.agreement import load_agreement
    from coxswain.core.crm_sync import owner_ids

    agreement = load_agreement(AgreementConfig().agreement_file)
    return CrmLinks(
        token,
        hubspot_url,
        salesforce_url,
        share,
        owner_ids(agreement, "hubspot"),
        owner_ids(agreement, "salesforce"),
    )


def agreement_reasons() -> tuple[str, ...]:
    """The SAL rejection codes of the agreement in COXSWAIN_AGREEMENT_FILE (others are dead-lettered)."""
    from coxswain.core.agreement import AgreementError, load_agreement

    try:
        agreement = load_agreement(AgreementConfig().agreement_file)
    except (AgreementError, OSError):
        return FALLBACK_REASONS
    recycled = tuple(r.code for r in agreement.lifecycle.rejection_reasons if r.outcome == "recycle")
    return recycled or FALLBACK_REASONS


@dataclass
class Crm:
    """The scripted CRM: follows leads.routed.v1 and plays each of our leads' steps at their time."""

    client: httpx.AsyncClient
    url: str
    secret: str
    rng: random.Random
    mix: Mix
    reasons: tuple[str, ...]
    links: CrmLinks | None = None
    emails: dict[str, str] = field(default_factory=dict)  # lead id -> the email it was posted with
    through: dict[str, int] = field(default_factory=lambda: {"hubspot": 0, "salesforce": 0, "intake": 0})
    ours: set[str] = field(default_factory=set)
    progressed: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    routed: int = 0
    last_routed: float = field(default_factory=time.monotonic)

    async def follow(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            ROUTED_TOPIC,
            **connection_options(KafkaConfig()),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            # Without a group the consumer takes every partition once it knows the topic.
            waited = time.monotonic()
            while not consumer.assignment():
                if time.monotonic() - waited > 30:
                    raise SystemExit(f"no topic {ROUTED_TOPIC} on Kafka: run `coxswain topics create` first")
                await asyncio.sleep(0.05)
            assigned = list(consumer.assignment())
            # Positioned before the first lead is posted: no routing of ours can be missed.
            await consumer.seek_to_end(*assigned)
            for tp in assigned:
                await consumer.position(tp)
            ready.set()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self.on_routed(orjson.loads(record.value))
        finally:
            await consumer.stop()

    def on_routed(self, routed: dict[str, Any]) -> None:
        lead_id = str(routed.get("lead_id"))
        if lead_id not in self.ours:
            return  # another run's lead, or a test's: not ours to act on
        self.routed += 1
        self.last_routed = time.monotonic()
        allowed = max(
            (
                datetime.fromisoformat(routed["follow_up_due_at"]) - datetime.fromisoformat(routed["routed_at"])
            ).total_seconds(),
            0.5,
        )
        # A lead reassigned after a breach gets a new rep, whose touch counts; the lifecycle moves once.
        steps = plan_for(self.rng, allowed, self.mix, self.reasons, progress=lead_id not in self.progressed)
        if any(step.activity["activity"] != "first_touch" for step in steps):
            self.progressed.add(lead_id)
        rep_id = str(routed["rep_id"])
        via = self.links.choose(self.rng, rep_id) if self.links is not None else "intake"
        task = asyncio.create_task(self.play(lead_id, rep_id, steps, via))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def play(self, lead_id: str, rep_id: str, steps: list[Step], via: str = "intake") -> None:
        started = time.monotonic()
        for step in steps:
            await asyncio.sleep(max(0.0, started + step.after - time.monotonic()))
            if step.activity["activity"] == "first_touch":
                if via != "intake" and await self.call_in_crm(via, lead_id, rep_id):
                    self.through[via] += 1
                    continue
                self.through["intake"] += 1
            body = {"lead_id": lead_id, "rep_id": rep_id, **step.activity}
            try:
                response = await post_signed(self.client, self.url, self.secret, body)
            except httpx.HTTPError as exc:
                log.warning("demo activity not delivered: activity=%s error=%s", step.activity["activity"], exc)
                return
            if response.status_code != 202:
                log.warning("demo activity rejected: status=%s body=%s", response.status_code, response.text[:200])

    async def call_in_crm(self, via: str, lead_id: str, rep_id: str) -> bool:
        """The rep logs a call on the lead in ``via`` once they own it there; False: not done."""
        assert self.links is not None
        email = self.emails.get(lead_id)
        if email is None:
            return False
        try:
            if via == "hubspot":
                return await self._hubspot_call(email, self.links.owners[rep_id])
            return await self._salesforce_call(email, self.links.users[rep_id])
        except httpx.HTTPError as exc:
            log.warning("demo call not logged in the crm: crm=%s error=%s", via, exc)
            return False

    async def _owned(self, find: Callable[[], Any], owner: str) -> str | None:
        """The id of the record ``find`` reads once ``owner`` owns it (crm-sync writes it), or None."""
        deadline = time.monotonic() + OWNER_WAIT_SECONDS
        while time.monotonic() < deadline:
            found = await find()
            if found is not None and found[1] == owner:
                return str(found[0])
            await asyncio.sleep(0.5)
        log.info("demo rep not the owner in the crm in time; touching through intake: owner=%s", owner)
        return None

    async def _hubspot_call(self, email: str, owner: str) -> bool:
        assert self.links is not None and self.links.hubspot_url is not None
        url, headers = self.links.hubspot_url, {"Authorization": f"Bearer {self.links.token}"}

        async def contact() -> tuple[str, str] | None:
            query = {
                "filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}],
                "properties": ["email", "hubspot_owner_id"],
                "limit": 1,
            }
            response = await self.client.post(f"{url}/crm/v3/objects/contacts/search", json=query, headers=headers)
            response.raise_for_status()
            results = response.json()["results"]
            return (results[0]["id"], results[0]["properties"].get("hubspot_owner_id")) if results else None

        contact_id = await self._owned(contact, owner)
        if contact_id is None:
            return False
        call = {
            "properties": {
                "hs_timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "hubspot_owner_id": owner,
                "hs_call_direction": "OUTBOUND",
                "hs_call_status": "COMPLETED",
                "hs_call_title": "First call",
            },
            "associations": [
                {
                    "to": {"id": contact_id},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}],
                }
            ],
        }
        response = await self.client.post(f"{url}/crm/v3/objects/calls", json=call, headers=headers)
        response.raise_for_status()
        return True

    async def _salesforce_call(self, email: str, user: str) -> bool:
        assert self.links is not None and self.links.salesforce_url is not None
        url, headers = self.links.salesforce_url + SALESFORCE_API, {"Authorization": f"Bearer {self.links.token}"}
        literal = "'" + email.replace("\\", "\\\\").replace("'", "\\'") + "'"

        async def lead() -> tuple[str, str] | None:
            soql = f"SELECT Id, OwnerId FROM Lead WHERE Email = {literal}"
            response = await self.client.get(f"{url}/query", params={"q": soql}, headers=headers)
            response.raise_for_status()
            records = response.json()["records"]
            return (records[0]["Id"], records[0]["OwnerId"]) if records else None

        lead_id = await self._owned(lead, user)
        if lead_id is None:
            return False
        # "Log a Call": a Task of subtype Call, completed when it is made.
        task = {
            "WhoId": lead_id,
            "OwnerId": user,
            "Subject": "Call",
            "TaskSubtype": "Call",
            "Status": "Completed",
            "ActivityDate": datetime.now(UTC).date().isoformat(),
        }
        response = await self.client.post(f"{url}/sobjects/Task", json=task, headers=headers)
        response.raise_for_status()
        return True


async def run_traffic(
    url: str,
    source: str,
    secret: str,
    rate: float,
    count: int,
    mix: Mix,
    seed: int,
    crm_source: str = "crm",
    campaign: str | None = None,
    settle: float = 15.0,
    linger: float = 900.0,
    on_sent: Callable[[float], None] | None = None,
    links: CrmLinks | None = None,
) -> dict[str, int]:
    """Post leads until COUNT (0: until stopped), with the scripted CRM acting on the routed ones.

    With a COUNT, waits for the routings still to come (``settle`` seconds without one) and for
    every rep's last step (at most ``linger`` seconds), then returns what was sent and routed."""
    if not secret:
        raise SystemExit("a webhook secret is needed: --secret or COXSWAIN_DEMO_SECRET")
    rng = random.Random(seed)
    run = f"-{uuid.uuid4().hex[:6]}"
    sent = 0
    async with httpx.AsyncClient(timeout=10) as client:
        crm = Crm(
            client,
            f"{url}/v1/webhooks/{crm_source}/activities",
            secret,
            random.Random(seed + 1),
            mix,
            agreement_reasons(),
            links,
        )
        ready, stop = asyncio.Event(), asyncio.Event()
        follower = asyncio.create_task(crm.follow(ready, stop))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait([follower, waiting], return_when=asyncio.FIRST_COMPLETED)
        if follower.done():
            waiting.cancel()
            follower.result()  # the Kafka error, if any
        try:
            while count == 0 or sent < count:
                body = demo_lead(rng, sent, campaign, run)
                response = await post_signed(client, f"{url}/v1/webhooks/{source}/events", secret, body)
                sent += 1
                if on_sent is not None:
                    on_sent(1)
                if response.status_code != 202:
                    log.warning("demo lead rejected: status=%s body=%s", response.status_code, response.text[:200])
                else:
                    leads = [str(e["lead_id"]) for e in response.json()["events"]]
                    crm.ours.update(leads)
                    crm.emails.update((lead, body["contact"]["email"]) for lead in leads)
                await asyncio.sleep(1 / rate)
            done_sending = time.monotonic()
            while time.monotonic() - crm.last_routed < settle or crm.tasks:
                if follower.done() or time.monotonic() - done_sending > linger:
                    follower.result()
                    break
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(follower, return_exceptions=True)
            for task in list(crm.tasks):
                task.cancel()
    log.info(
        "demo traffic done: sent=%s routed=%s touched_through_hubspot=%s touched_through_salesforce=%s",
        sent,
        crm.routed,
        crm.through["hubspot"],
        crm.through["salesforce"],
    )
    return {"sent": sent, "routed": crm.routed, **{f"through_{k}": v for k, v in crm.through.items()}}


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
            print(tail_line(record.topic, orjson.loads(record.value)), flush=True)
    finally:
        await consumer.stop()


def tail_line(topic: str, value: dict[str, Any]) -> str:
    """One line of ``coxswain demo tail``: the fact's key fields, then why in plain words.

    The reason goes last and outside the JSON, so "same domain (acme.com) as open lead … held by
    ava" reads as a sentence next to the lead it explains."""
    summary = {
        k: value.get(k)
        for k in ("lead_id", "rep_id", "pool_id", "matched_by", "tier", "due_at", "follow_up_due_at")
        if k in value
    }
    line = f"{topic:18} {orjson.dumps(summary).decode()}"
    reason = value.get("reason")
    return f"{line}  why: {reason}" if reason else line
