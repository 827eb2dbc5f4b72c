"""``make chaos``: leads through the running stack while processes die, then the ledger.

1. A fresh stack of its own (state dir ``.local/chaos``, ports from ``CHAOS_PORT_BASE``).
2. Every service as its own OS process; the load generator posts one signed webhook per lead
   (or per ``CHAOS_BATCH`` leads).
3. Leads whose routing it sees get a first touch: some at once (well before the deadline),
   some two seconds after the deadline.
4. Meanwhile the fault injector kills each service with SIGKILL, SIGKILLs and restarts the
   broker, and restarts PostgreSQL.
5. Quiescence: every deadline decided, outbox empty, every consumer group caught up, steady.
6. The ledger against PostgreSQL and the topics (an independent reader from the earliest offset);
   a table, then one JSON line. Exit status 0 only if every guarantee held.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chaos.faults import Injector, plan_faults, plan_restore
from chaos.infra import ROOT, SERVICES, Infra, Ports, ServiceProcess
from chaos.ledger import REQUIRED_FAULTS, RESTORE_FAULTS, Fact, Observed, Report, SentLead, SentTouch, compute, table
from chaos.load import PII_EMAIL_DOMAIN, PII_LAST_NAME, LeadPlan, Sender, Webhook, plan_leads, run_pool, touch_webhook
from chaos.topics import Follower, Record, group_lag, read_all

log = logging.getLogger("chaos")

WEBHOOK_SECRET = "whsec_" + "Y2hhb3MtcnVuLXNlY3JldC0wMTIzNDU2Nzg5YWI="
LATE_TOUCH_AFTER_DUE = 2.0


@dataclass(frozen=True)
class Options:
    leads: int
    port_base: int
    seed: int
    concurrency: int
    rate: float
    extra_kills: int
    batch: int
    touch_every: int
    quiesce_timeout: float
    keep: bool
    state_dir: Path
    scenario: str


def options(argv: list[str]) -> Options:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=int(env.get("CHAOS_LEADS", "3000")))
    parser.add_argument("--port-base", type=int, default=int(env.get("CHAOS_PORT_BASE", "24500")))
    parser.add_argument("--seed", type=int, default=int(env.get("CHAOS_SEED", "6")))
    parser.add_argument("--concurrency", type=int, default=int(env.get("CHAOS_CONCURRENCY", "16")))
    parser.add_argument("--rate", type=float, default=float(env.get("CHAOS_RATE", "0")), help="webhooks/s, 0 = max")
    parser.add_argument("--extra-kills", type=int, default=int(env.get("CHAOS_EXTRA_KILLS", "2")))
    parser.add_argument("--batch", type=int, default=int(env.get("CHAOS_BATCH", "1")), help="leads per webhook")
    parser.add_argument("--touch-every", type=int, default=6, help="lead i % N == 0 early touch, N/2 late touch")
    parser.add_argument("--quiesce-timeout", type=float, default=float(env.get("CHAOS_QUIESCE_TIMEOUT", "300")))
    parser.add_argument("--keep", action="store_true", help="leave Kafka and PostgreSQL running afterwards")
    parser.add_argument("--state-dir", type=Path, default=None, help="default .local/chaos (restore: chaos-restore)")
    parser.add_argument(
        "--scenario",
        choices=("faults", "restore"),
        default=env.get("CHAOS_SCENARIO", "faults"),
        help="faults: kill every service, restart Kafka and PostgreSQL; restore: lose the database "
        "and restore it from a base backup taken while leads flowed, plus the streamed WAL",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir or ROOT / ".local" / ("chaos" if args.scenario == "faults" else "chaos-restore")
    return Options(
        leads=args.leads,
        port_base=args.port_base,
        seed=args.seed,
        concurrency=args.concurrency,
        rate=args.rate,
        extra_kills=args.extra_kills,
        batch=args.batch,
        touch_every=args.touch_every,
        quiesce_timeout=args.quiesce_timeout,
        keep=args.keep,
        state_dir=state_dir,
        scenario=args.scenario,
    )


class Run:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.run_id = uuid.UUID(int=self.rng.getrandbits(128)).hex[:8]
        self.infra = Infra(opts.state_dir, Ports(opts.port_base), ROOT / "chaos" / "agreement.yaml", WEBHOOK_SECRET)
        self.services: dict[str, ServiceProcess] = {}
        self.plans: list[LeadPlan] = plan_leads(opts.leads, self.run_id, opts.touch_every, opts.batch)
        self.by_lead = {plan.lead_id: plan for plan in self.plans}
        self.touches: dict[str, Webhook] = {}
        self.touch_tasks: set[asyncio.Task[None]] = set()
        self.unexpected_exits: list[str] = []
        self.started = time.monotonic()

    def elapsed(self) -> str:
        return f"t+{time.monotonic() - self.started:.0f}s"

    async def main(self) -> int:
        log.info(
            "chaos run %s: %s leads, seed %s, state %s",
            self.run_id,
            self.opts.leads,
            self.opts.seed,
            self.opts.state_dir,
        )
        await self.infra.fresh()
        if self.opts.scenario == "restore":
            await self.infra.script("pitr.sh", "stream")
        log.info(
            "%s stack up (kafka %s, postgres %s)",
            self.elapsed(),
            self.infra.bootstrap_servers,
            self.opts.port_base + 432,
        )
        engine = create_async_engine(self.infra.database_url, pool_pre_ping=True)
        try:
            return await self._drive(engine)
        finally:
            for service in self.services.values():
                service.terminate()
            await engine.dispose()
            if not self.opts.keep:
                await self.infra.script("pitr.sh", "stop")
                await self.infra.down()

    async def _drive(self, engine: AsyncEngine) -> int:
        env = self.infra.service_env()
        self.services = {name: ServiceProcess(name, env, self.infra.log_dir) for name in SERVICES}
        for service in self.services.values():
            service.start()
        stop = asyncio.Event()
        limits = httpx.Limits(
            max_connections=self.opts.concurrency + 48, max_keepalive_connections=self.opts.concurrency + 16
        )
        async with httpx.AsyncClient(base_url=self.infra.intake_url, timeout=10, limits=limits) as client:
            sender = Sender(client, WEBHOOK_SECRET)
            await self._wait_ready(client)
            injector = Injector(self.infra, self.services, self.rng, started=self.started)
            if self.opts.scenario == "restore":
                fault_plan = plan_restore(self.rng)
            else:
                fault_plan = plan_faults(self.rng, self.opts.extra_kills)
            follower = Follower(self.infra.bootstrap_servers, ["leads.routed.v1"], lambda r: self._on_routed(r, sender))
            background = [
                asyncio.create_task(follower.run(stop)),
                asyncio.create_task(self._supervise(stop)),
                asyncio.create_task(self._report_progress(stop, sender)),
            ]
            # A counter, not a scan of the plans: the injector asks every 50 ms, and at 100,000 leads a
            # scan starved the load generator sharing this process.
            faults = asyncio.create_task(injector.run(fault_plan, lambda: sender.settled_leads / len(self.plans)))
            load_started = time.monotonic()
            webhooks = list({id(plan.webhook): plan.webhook for plan in self.plans}.values())
            await run_pool(webhooks, sender.deliver, self.opts.concurrency, self.opts.rate)
            load_seconds = time.monotonic() - load_started
            log.info("%s load done in %.1fs; waiting for the remaining faults", self.elapsed(), load_seconds)
            await faults
            quiet = await self._wait_quiescent(engine)
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
        report, notes = await self._ledger(engine, injector, sender, load_seconds, quiet)
        print(table(report, notes), flush=True)
        print(orjson.dumps(report.headline()).decode(), flush=True)
        return 0 if report.passed and quiet else 1

    async def _wait_ready(self, client: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
        raise RuntimeError(f"intake not ready after 120 s; see {self.infra.log_dir}")

    def _on_routed(self, record: Record, sender: Sender) -> None:
        lead_id = record.value.get("lead_id")
        plan = self.by_lead.get(lead_id) if isinstance(lead_id, str) else None
        if plan is None or plan.touch is None or plan.lead_id in self.touches:
            return
        webhook = touch_webhook(plan, self.run_id, str(record.value.get("rep_id", "unknown")))
        self.touches[plan.lead_id] = webhook
        delay = 0.0
        if plan.touch == "late":
            due = datetime.fromisoformat(str(record.value["follow_up_due_at"]))
            delay = max((due - datetime.now(UTC)).total_seconds() + LATE_TOUCH_AFTER_DUE, 0.0)
        task = asyncio.create_task(self._touch(webhook, delay, sender))
        self.touch_tasks.add(task)
        task.add_done_callback(self.touch_tasks.discard)

    async def _touch(self, webhook: Webhook, delay: float, sender: Sender) -> None:
        await asyncio.sleep(delay)
        await sender.deliver(webhook)

    async def _supervise(self, stop: asyncio.Event) -> None:
        """A service that dies on its own is a finding: record it and restart it, as systemd would."""
        while not stop.is_set():
            for service in self.services.values():
                code = service.exited()
                if code is not None:
                    self.unexpected_exits.append(
                        f"{service.name} exited {code} (log {service.log_path(service.starts)})"
                    )
                    log.warning("%s %s", self.elapsed(), self.unexpected_exits[-1])
                    service.start()
            await asyncio.sleep(0.5)

    async def _report_progress(self, stop: asyncio.Event, sender: Sender) -> None:
        while not stop.is_set():
            await asyncio.sleep(5)
            log.info(
                "%s acknowledged %s/%s leads, touches %s, answers %s",
                self.elapsed(),
                sum(1 for plan in self.plans if plan.webhook.acknowledged),
                len(self.plans),
                sum(1 for touch in self.touches.values() if touch.acknowledged),
                dict(sender.statuses.most_common(6)),
            )

    async def _wait_quiescent(self, engine: AsyncEngine) -> bool:
        """Outbox empty, no deadline armed, every group caught up, touches delivered, steady for 3 s."""
        deadline = time.monotonic() + self.opts.quiesce_timeout
        last: object = None
        steady = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            try:
                async with engine.connect() as connection:
                    outbox = await connection.scalar(text("SELECT count(*) FROM outbox"))
                    armed = await connection.scalar(text("SELECT count(*) FROM deadlines WHERE status = 'armed'"))
                    inbox = await connection.scalar(text("SELECT count(*) FROM inbox"))
                lag = await group_lag(self.infra.bootstrap_servers)
            except Exception as exc:
                log.info("quiescence check failed (%s); retrying", type(exc).__name__)
                steady = 0
                continue
            snapshot = (outbox, armed, inbox, sorted(lag.items()))
            idle = outbox == 0 and armed == 0 and len(lag) >= 3 and not any(lag.values()) and not self.touch_tasks
            steady = steady + 1 if idle and snapshot == last else 0
            last = snapshot
            if steady >= 3:
                log.info("%s quiescent", self.elapsed())
                return True
            if steady == 0:
                log.info(
                    "%s waiting: outbox=%s armed=%s lag=%s touches pending=%s",
                    self.elapsed(),
                    outbox,
                    armed,
                    lag,
                    len(self.touch_tasks),
                )
        log.warning("not quiescent after %.0fs; checking the ledger anyway", self.opts.quiesce_timeout)
        return False

    async def _ledger(
        self, engine: AsyncEngine, injector: Injector, sender: Sender, load_seconds: float, quiet: bool
    ) -> tuple[Report, dict[str, str]]:
        async with engine.connect() as connection:
            stored = frozenset((await connection.scalars(text("SELECT DISTINCT webhook_id FROM intake_events"))).all())
            touched = {
                str(row.lead_id): row.received
                for row in await connection.execute(
                    text(
                        "SELECT lead_id, min(received_at) AS received FROM intake_events "
                        "WHERE kind = 'activity' AND payload->>'activity' = 'first_touch' GROUP BY lead_id"
                    )
                )
            }
            assignments = {
                str(row.lead_id): int(row.n)
                for row in await connection.execute(
                    text("SELECT lead_id, count(*) AS n FROM assignments GROUP BY lead_id")
                )
            }
            breached_db = {
                str(row.lead_id): int(row.n)
                for row in await connection.execute(
                    text("SELECT lead_id, count(*) AS n FROM deadlines WHERE status = 'breached' GROUP BY lead_id")
                )
            }
        topics = ["leads.routed.v1", "sla.breached.v1", "sla.met.v1"]
        dlq = [
            f"{topic}.dlq"
            for topic in (
                "leads.received.v1",
                "crm.activities.v1",
                "leads.activity_accepted.v1",
                "leads.qualified.v1",
                "leads.routed.v1",
            )
        ]
        records = await read_all(self.infra.bootstrap_servers, topics + dlq)

        def facts(topic: str) -> list[Fact]:
            return [
                Fact(
                    event_id=str(r.value.get("event_id", r.headers.get("ce_id", ""))),
                    lead_id=str(r.value.get("lead_id", "")),
                    due_at=datetime.fromisoformat(r.value["follow_up_due_at"])
                    if "follow_up_due_at" in r.value
                    else None,
                )
                for r in records
                if r.topic == topic
            ]

        observed = Observed(
            stored_webhooks=stored,
            touch_received=touched,
            db_assignments=assignments,
            db_breached=breached_db,
            routed=facts("leads.routed.v1"),
            breached=facts("sla.breached.v1"),
            met=facts("sla.met.v1"),
            dead_letters=sum(1 for r in records if r.topic.endswith(".dlq")),
        )
        leads = [
            SentLead(
                p.lead_id,
                p.webhook.webhook_id,
                p.qualifies,
                p.webhook.acknowledged,
                p.webhook.refused_status is not None,
            )
            for p in self.plans
        ]
        touches = [
            SentTouch(lead, w.webhook_id, w.acknowledged, w.refused_status is not None)
            for lead, w in self.touches.items()
        ]
        required = RESTORE_FAULTS if self.opts.scenario == "restore" else REQUIRED_FAULTS
        report = compute(leads, touches, observed, injector.injected, required)
        report.counts["unexpected_exits"] = len(self.unexpected_exits)
        report.counts["pii_log_lines"] = self._pii_log_lines()
        shutdown = {name: service.terminate() for name, service in self.services.items()}
        # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully, so -15 is clean for intake.
        report.counts["unclean_shutdowns"] = sum(
            1 for name, code in shutdown.items() if code != 0 and not (name == "intake" and code == -signal.SIGTERM)
        )
        records_per_topic = Counter(r.topic for r in records)
        notes = {
            "run": f"{self.run_id} scenario={self.opts.scenario} seed={self.opts.seed} leads={self.opts.leads} "
            f"batch={self.opts.batch} "
            f"concurrency={self.opts.concurrency}",
            "load": f"{load_seconds:.1f}s ({self.opts.leads / max(load_seconds, 0.001):.0f} leads/s acknowledged)",
            "quiescent": str(quiet),
            "total time": self.elapsed(),
            "intake answers": ", ".join(f"{k}={v}" for k, v in sender.statuses.most_common()),
            "topic records": ", ".join(f"{k}={v}" for k, v in sorted(records_per_topic.items())),
            "sigterm exit codes": ", ".join(f"{k}={v}" for k, v in shutdown.items()),
            "logs": str(self.infra.log_dir),
        }
        for number, line in enumerate(injector.timeline, 1):
            notes[f"fault {number}"] = line
        for number, line in enumerate(self.unexpected_exits, 1):
            notes[f"unexpected exit {number}"] = line
        return report, notes

    def _pii_log_lines(self) -> int:
        needles = (PII_EMAIL_DOMAIN, PII_LAST_NAME, "Chaosfirstname")
        hits = 0
        for path in sorted(self.infra.log_dir.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if any(needle in line for needle in needles):
                    hits += 1
                    if hits <= 5:
                        log.warning("PII in %s: %s", path.name, line[:300])
        return hits


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="chaos %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = options(sys.argv[1:] if argv is None else argv)
    import uvloop

    return uvloop.run(Run(opts).main())
