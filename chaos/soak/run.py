"""``make soak``: a steady rate of leads for a long time, with retention on, watching memory and tables.

1. A fresh stack of its own (state dir ``.local/soak``, ports from ``SOAK_PORT_BASE``), every
   topic keeping records only minutes (``retention.ms``, segments rolled each minute) and every
   service as ``coxswain run <service>`` pruning dedupe records and delivered alerts on a matching
   scale, so that retention acts many times within the run.
2. Signed webhooks at a steady rate: qualifying leads and page views from students; leads it sees
   routed get a CRM first touch, some at once, some after their deadline, some never, so SLA clocks
   are met and breached and breach alerts go to a webhook receiver in this process.
3. Every ``--sample-seconds``: the resident memory of each process and the size of each table;
   the outbox backlog every two seconds; webhook -> routed latency for every lead.
4. Per window (default five minutes) a block of figures as it closes; at the end the tables, the
   verdict (memory flat, dedupe, outbox and alert tables bounded, every lead routed, no service
   exited, retention passes ran and none was refused) and one JSON line. Exit status 0 only if
   the verdict holds. Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chaos.infra import ROOT, SERVICES, Infra, Ports, ServiceProcess
from chaos.load import LeadPlan, Webhook, plan_lead, touch_webhook
from chaos.soak.sender import RawSender
from chaos.soak.stats import (
    MIB,
    Check,
    Lead,
    Result,
    Sample,
    TableSize,
    Tolerance,
    aggregate,
    bounded_checks,
    delivery_check,
    memory_checks,
    parent_pid,
    pss,
    rate_check,
    rss_anon,
    summary_tables,
    trend_mib_per_hour,
    verdict_lines,
    vm_rss,
    window_bounds,
    window_report,
)
from chaos.topics import Follower, Record
from coxswain.core.retention import RetentionTooShort, inbox_window
from coxswain.runtime.kafka import all_topics
from coxswain.runtime.retention import WATCHED_TABLES, topic_retention
from coxswain.runtime.waiting import sleep_or_stop
from coxswain.settings import KafkaConfig

log = logging.getLogger("soak")

WEBHOOK_SECRET = "whsec_" + "c29hay1ydW4tc2VjcmV0LW5vdC1mb3ItcHJvZHVjdGlvbg=="
SOAK_SERVICES = (*SERVICES, "reporting")
INFRA = ("kafka", "postgres", "postgres_pss", "postgres_anon")
# Judged for flat memory: PostgreSQL by its processes' anonymous memory (see ``Soak.memory``).
GATED = (*SOAK_SERVICES, "kafka", "postgres_anon")
# The tables the retention pass watches, less those a soak never writes to.
TABLES = tuple(name for name in WATCHED_TABLES if name not in ("audit_log", "report_history"))
BOUNDED = ("inbox", "webhook_inbox", "outbox", "sla_alert_deliveries")
LATE_TOUCH_AFTER_DUE = 2.0
# Leads being delivered at once; beyond it the rate falls behind (and the windows show it).
IN_FLIGHT = 64


# The broker's heap at its maximum and resident from the start. Otherwise the JVM grows it from
# -Xms towards -Xmx when it sees fit: in the third 30-minute run Kafka's RSS rose 147 MiB in one
# window, twenty minutes in, and stayed flat after, which is no leak but fails any flat-memory
# rule. Pre-touched, Kafka's RSS shows what grows outside the heap. SOAK_KAFKA_HEAP_OPTS overrides.
KAFKA_HEAP = "-Xms512m -Xmx512m -XX:+AlwaysPreTouch"


class SoakInfra(Infra):
    def script_env(self) -> dict[str, str]:
        return {**super().script_env(), "KAFKA_HEAP_OPTS": os.environ.get("SOAK_KAFKA_HEAP_OPTS", KAFKA_HEAP)}


@dataclass(frozen=True)
class Options:
    minutes: float
    rate: float
    window_minutes: float
    out: Path
    port_base: int
    topic_retention_minutes: float
    retention_margin_minutes: float
    inbox_retention_minutes: float
    alert_retention_minutes: float
    prune_every_seconds: float
    sample_seconds: float
    touch_every: int
    keep: bool
    state_dir: Path

    @property
    def settled_after(self) -> float:
        """When retention has had time to act: the longer window, one pass and one sample later."""
        longest = max(self.inbox_retention_minutes, self.alert_retention_minutes) * 60
        return longest + self.prune_every_seconds + self.sample_seconds

    def settings(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes,
            "rate_per_s": self.rate,
            "window_minutes": self.window_minutes,
            "topic_retention_minutes": self.topic_retention_minutes,
            "retention_margin_minutes": self.retention_margin_minutes,
            "inbox_retention_minutes": self.inbox_retention_minutes,
            "alert_retention_minutes": self.alert_retention_minutes,
            "prune_every_seconds": self.prune_every_seconds,
            "sample_seconds": self.sample_seconds,
        }


def options(argv: list[str]) -> Options:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m chaos.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(env.get("SOAK_MINUTES", "30")), help="load duration")
    parser.add_argument("--rate", type=float, default=float(env.get("SOAK_RATE", "20")), help="leads per second")
    parser.add_argument("--window-minutes", type=float, default=float(env.get("SOAK_WINDOW_MINUTES", "5")))
    parser.add_argument("--out", type=Path, default=Path(env.get("SOAK_OUT", ROOT / ".local" / "soak" / "result.json")))
    parser.add_argument("--port-base", type=int, default=int(env.get("SOAK_PORT_BASE", "25500")))
    parser.add_argument("--topic-retention-minutes", type=float, default=5.0, help="every topic's retention.ms")
    parser.add_argument("--retention-margin-minutes", type=float, default=5.0, help="COXSWAIN_RETENTION_MARGIN_HOURS")
    parser.add_argument("--inbox-retention-minutes", type=float, default=10.0, help="COXSWAIN_INBOX_RETENTION_DAYS")
    parser.add_argument("--alert-retention-minutes", type=float, default=10.0, help="COXSWAIN_ALERT_RETENTION_DAYS")
    parser.add_argument("--prune-every-seconds", type=float, default=60.0, help="COXSWAIN_PRUNE_EVERY_SECONDS")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="memory and tables sampled this often")
    parser.add_argument("--touch-every", type=int, default=3, help="lead i % N == 0 early touch, N/2 late touch")
    parser.add_argument("--keep", action="store_true", help="leave Kafka and PostgreSQL running afterwards")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".local" / "soak")
    args = parser.parse_args(argv)
    return Options(
        minutes=args.minutes,
        rate=args.rate,
        window_minutes=args.window_minutes,
        out=args.out,
        port_base=args.port_base,
        topic_retention_minutes=args.topic_retention_minutes,
        retention_margin_minutes=args.retention_margin_minutes,
        inbox_retention_minutes=args.inbox_retention_minutes,
        alert_retention_minutes=args.alert_retention_minutes,
        prune_every_seconds=args.prune_every_seconds,
        sample_seconds=args.sample_seconds,
        touch_every=args.touch_every,
        keep=args.keep,
        state_dir=args.state_dir,
    )


@dataclass
class SentLead:
    """A lead being delivered or waiting to be seen routed; the plan is dropped once it is not needed."""

    sent_at: float
    qualifies: bool
    plan: LeadPlan | None
    acknowledged_at: float | None = None  # wall clock, as the routed record's arrival is
    latency_ms: float | None = None


@dataclass
class AlertReceiver:
    """The SLA alert webhook's far end: a bare HTTP/1.1 server that answers 200 to everything."""

    received: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                self.received += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


@dataclass
class Soak:
    opts: Options
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    leads: dict[int, SentLead] = field(default_factory=dict)
    by_lead_id: dict[str, int] = field(default_factory=dict)  # qualifying leads not yet seen routed
    routed_ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    samples: list[Sample] = field(default_factory=list)
    outbox: list[tuple[float, int]] = field(default_factory=list)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    unexpected_exits: list[str] = field(default_factory=list)
    touches: Counter[str] = field(default_factory=Counter)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    receiver: AlertReceiver = field(default_factory=AlertReceiver)
    started: float = 0.0  # monotonic time the load started
    stopping: bool = False

    def __post_init__(self) -> None:
        self.infra = SoakInfra(
            self.opts.state_dir, Ports(self.opts.port_base), ROOT / "chaos" / "agreement.yaml", WEBHOOK_SECRET
        )
        self.bounds = window_bounds(self.opts.minutes * 60, self.opts.window_minutes * 60)

    def now(self) -> float:
        return time.monotonic() - self.started

    # -- the stack ---------------------------------------------------------------------------

    def service_env(self, index: int) -> dict[str, str]:
        o, base = self.opts, self.opts.port_base
        return {
            **self.infra.service_env(),
            "COXSWAIN_INBOX_RETENTION_DAYS": repr(o.inbox_retention_minutes / 1440),
            "COXSWAIN_RETENTION_MARGIN_HOURS": repr(o.retention_margin_minutes / 60),
            "COXSWAIN_ALERT_RETENTION_DAYS": repr(o.alert_retention_minutes / 1440),
            # Decided SLA deadlines and timers go on the alerts' schedule (pruned since the runs
            # recorded in docs/operations.md, where they still grew).
            "COXSWAIN_CLOCK_RETENTION_DAYS": repr(o.alert_retention_minutes / 1440),
            "COXSWAIN_PRUNE_EVERY_SECONDS": repr(o.prune_every_seconds),
            "COXSWAIN_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{base + 91}/alerts",
            "COXSWAIN_REPORTING_PORT": str(base + 90),
            # Ports of this stack's own, never a default that another stack on the machine serves.
            "COXSWAIN_METRICS_PORT": str(base + 100 + index),
            "COXSWAIN_HEALTH_PORT": str(base + 110 + index),
        }

    def check_retention_settings(self) -> None:
        o = self.opts
        try:
            inbox_window(
                timedelta(minutes=o.inbox_retention_minutes),
                timedelta(minutes=o.topic_retention_minutes),
                timedelta(minutes=o.retention_margin_minutes),
            )
        except RetentionTooShort as exc:
            raise SystemExit(f"soak: the services would refuse every retention pass: {exc}") from None

    async def shorten_topic_retention(self) -> timedelta:
        """Every topic keeps records ``--topic-retention-minutes``, in segments rolled each minute
        (Kafka deletes whole segments); returns the retention the services will read back."""
        retention_ms = round(self.opts.topic_retention_minutes * 60_000)
        configs = {"retention.ms": str(retention_ms), "segment.ms": str(min(60_000, retention_ms))}
        admin = AIOKafkaAdminClient(bootstrap_servers=self.infra.bootstrap_servers, client_id="soak-admin")
        await admin.start()
        try:
            responses = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, configs) for topic in all_topics()]
            )
        finally:
            await admin.close()
        for response in responses:
            for resource in response.to_object()["resources"]:
                if resource["error_code"] != 0:
                    raise RuntimeError(f"altering {resource['resource_name']}: {resource['error_message']}")
        # The broker applies the change through its metadata log: read it back until it shows.
        wanted = timedelta(milliseconds=retention_ms)
        kafka = KafkaConfig(kafka_bootstrap_servers=self.infra.bootstrap_servers)
        for _ in range(60):
            if await topic_retention(kafka) == wanted:
                return wanted
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the topics' retention.ms did not read back as {retention_ms} within 30 s")

    # -- measuring -----------------------------------------------------------------------------

    def memory(self) -> dict[str, int]:
        """Resident bytes of every service, Kafka's JVM, PostgreSQL (all its processes: RSS summed,
        which counts the shared buffers again for each process; PSS summed, which counts them
        once; and their anonymous memory alone, without them) and this load generator."""
        usage: dict[str, int] = {}
        for name, service in self.services.items():
            if service.process is not None and service.process.poll() is None:
                _put(usage, name, _read_rss(service.process.pid))
        kafka = self.infra.kafka_pid()
        if kafka is not None:
            _put(usage, "kafka", _read_rss(kafka))
        postmaster = _postmaster_pid(self.opts.state_dir)
        if postmaster is not None:
            family = [postmaster, *_children(postmaster)]
            statuses = [_read(f"/proc/{pid}/status") or "" for pid in family]
            rollups = [_read(f"/proc/{pid}/smaps_rollup") or "" for pid in family]
            usage["postgres"] = sum(value for value in map(vm_rss, statuses) if value is not None)
            usage["postgres_pss"] = sum(value for value in map(pss, rollups) if value is not None)
            usage["postgres_anon"] = sum(value for value in map(rss_anon, statuses) if value is not None)
        _put(usage, "soak-driver", _read_rss(os.getpid()))
        return usage

    async def table_sizes(self, engine: AsyncEngine) -> dict[str, TableSize]:
        counts = " UNION ALL ".join(f"SELECT '{name}' AS name, count(*) AS n FROM {name}" for name in TABLES)
        async with engine.connect() as connection:
            rows = {row.name: int(row.n) for row in await connection.execute(text(counts))}
            sizes = {
                row.name: int(row.bytes)
                for row in await connection.execute(
                    text(
                        # A partitioned table's own size is 0 and its partitions are in its
                        # tree; a plain table's tree is empty.
                        "SELECT name, pg_total_relation_size(name::regclass) + coalesce((SELECT "
                        "sum(pg_total_relation_size(relid)) FROM pg_partition_tree(name::regclass) "
                        "WHERE relid <> name::regclass), 0) AS bytes FROM unnest(CAST(:tables AS text[])) AS name"
                    ),
                    {"tables": list(TABLES)},
                )
            }
        return {name: TableSize(rows[name], sizes[name]) for name in TABLES}

    async def sample(self, engine: AsyncEngine, stop: asyncio.Event) -> None:
        next_at = 0.0
        while not stop.is_set():
            at = self.now()
            try:
                tables = await self.table_sizes(engine)
            except Exception as exc:
                log.warning("table sample failed: %s", type(exc).__name__)
                tables = {}
            # /proc is read in a thread: on a loaded machine it took up to a second, the event loop's.
            self.samples.append(Sample(at, await asyncio.to_thread(self.memory), tables))
            next_at += self.opts.sample_seconds
            await _sleep_until(stop, self.started + next_at)

    async def sample_outbox(self, engine: AsyncEngine, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with engine.connect() as connection:
                    backlog = int(await connection.scalar(text("SELECT count(*) FROM outbox")) or 0)
                self.outbox.append((self.now(), backlog))
            except Exception as exc:
                log.warning("outbox sample failed: %s", type(exc).__name__)
            await _sleep_until(stop, time.monotonic() + 2)

    def snapshot(self) -> list[Lead]:
        return [
            Lead(lead.sent_at, lead.acknowledged_at is not None, lead.qualifies, lead.latency_ms)
            for lead in self.leads.values()
        ]

    async def report_windows(self, stop: asyncio.Event, grace: float) -> None:
        """Print each window but the last ``grace`` seconds after it closes (its leads routed by then)."""
        for index, (_, end) in enumerate(self.bounds[:-1]):
            await _sleep_until(stop, self.started + end + grace)
            if stop.is_set():
                return
            window = aggregate(self.bounds, self.samples, self.outbox, self.snapshot())[index]
            print(window_report(window, self.processes(), TABLES), flush=True)

    def processes(self) -> list[str]:
        return [*SOAK_SERVICES, *INFRA, "soak-driver"]

    # -- the load ------------------------------------------------------------------------------

    async def send(self, sender: RawSender, until: float) -> None:
        """One lead every 1/rate seconds on a fixed schedule until ``until``; behind it (the stack or
        this process stalled), the next leads go at once to catch up. Leads still due at ``until``
        are not sent: a window that fell short shows it in its count."""
        slots = asyncio.Semaphore(IN_FLIGHT)
        index = 0
        while True:
            due = index / self.opts.rate
            if due >= until or self.now() >= until:
                break
            await asyncio.sleep(max(0.0, due - self.now()))
            await slots.acquire()
            plan = plan_lead(index, self.run_id, self.opts.touch_every)
            self.leads[index] = SentLead(self.now(), plan.qualifies, plan if plan.qualifies else None)
            if plan.qualifies:
                self.by_lead_id[plan.lead_id] = index
            self._spawn(self._deliver(sender, index, plan.webhook, slots))
            index += 1

    async def _deliver(self, sender: RawSender, index: int, webhook: Webhook, slots: asyncio.Semaphore) -> None:
        try:
            await sender.deliver(webhook)
        finally:
            slots.release()
        if webhook.acknowledged and webhook.acknowledged_at is not None:
            self.leads[index].acknowledged_at = webhook.acknowledged_at

    def on_routed(self, record: Record, sender: RawSender) -> None:
        seen = time.time()
        lead_id = record.value.get("lead_id")
        if not isinstance(lead_id, str):
            return
        if lead_id in self.routed_ids:
            self.duplicates += 1
            return
        index = self.by_lead_id.pop(lead_id, None)
        if index is None:
            return
        self.routed_ids.add(lead_id)
        lead = self.leads[index]
        plan, lead.plan = lead.plan, None
        if lead.acknowledged_at is not None:
            lead.latency_ms = max(seen - lead.acknowledged_at, 0.0) * 1000
        else:  # routed before the 202 reached us: the latency is the time since the webhook went
            lead.latency_ms = max(self.now() - lead.sent_at, 0.0) * 1000
        if plan is None or plan.touch is None:
            return
        delay = 0.0
        if plan.touch == "late":
            due = datetime.fromisoformat(str(record.value["follow_up_due_at"]))
            delay = max((due - datetime.now(UTC)).total_seconds() + LATE_TOUCH_AFTER_DUE, 0.0)
        self._spawn(self._touch(sender, touch_webhook(plan, self.run_id, str(record.value.get("rep_id"))), delay))

    async def _touch(self, sender: RawSender, webhook: Webhook, delay: float) -> None:
        await asyncio.sleep(delay)
        await sender.deliver(webhook)
        self.touches["acknowledged" if webhook.acknowledged else "not acknowledged"] += 1

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self.stopping:  # the follower may still hand over a routed lead while the run winds down
            work.close()
            return
        task: asyncio.Task[None] = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def supervise(self, stop: asyncio.Event) -> None:
        """A service that dies on its own fails the soak; it is restarted so the run goes on."""
        while not stop.is_set():
            for service in self.services.values():
                code = service.exited()
                if code is not None:
                    self.unexpected_exits.append(f"{service.name} exited {code} at {self.now():.0f}s")
                    log.warning("%s (log %s)", self.unexpected_exits[-1], service.log_path(service.starts))
                    service.start()
            await _sleep_until(stop, time.monotonic() + 1)

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        urls = [f"{self.infra.intake_url}/readyz"] + [
            f"http://127.0.0.1:{self.opts.port_base + 110 + index}/readyz"
            for index, name in enumerate(SOAK_SERVICES)
            if name != "intake"
        ]
        deadline = time.monotonic() + 180
        for url in urls:
            while True:
                try:
                    if (await client.get(url)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not ready after 180 s; see {self.infra.log_dir}")
                await asyncio.sleep(0.5)

    async def drain(self, seconds: float) -> None:
        """Wait for the leads still being delivered or routed (not for touches)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            delivering = sum(1 for lead in self.leads.values() if lead.acknowledged_at is None)
            if not self.by_lead_id and not delivering:
                return
            await asyncio.sleep(0.5)
        log.warning("after %.0f s, %s qualifying leads not seen routed", seconds, len(self.by_lead_id))

    # -- the run -------------------------------------------------------------------------------

    async def main(self) -> int:
        self.check_retention_settings()
        load_at_start = _loadavg()
        log.info(
            "soak %s: %s leads/s for %g min, windows of %g min, state %s; load average %s",
            self.run_id,
            self.opts.rate,
            self.opts.minutes,
            self.opts.window_minutes,
            self.opts.state_dir,
            load_at_start,
        )
        await self.infra.fresh()
        retention = await self.shorten_topic_retention()
        log.info("stack up; topics keep records %s", retention)
        engine = create_async_engine(self.infra.database_url, pool_size=3, pool_pre_ping=True)
        server = await asyncio.start_server(self.receiver.handle, "127.0.0.1", self.opts.port_base + 91)
        try:
            return await self._drive(engine, load_at_start)
        finally:
            for service in self.services.values():
                service.terminate()
            server.close()
            await engine.dispose()
            if not self.opts.keep:
                await self.infra.down()

    async def _drive(self, engine: AsyncEngine, load_at_start: str) -> int:
        for index, name in enumerate(SOAK_SERVICES):
            self.services[name] = ServiceProcess(name, self.service_env(index), self.infra.log_dir)
            self.services[name].start()
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=5) as client:
            await self.wait_ready(client)
            sender = RawSender("127.0.0.1", self.infra.ports.intake, WEBHOOK_SECRET)
            follower = Follower(self.infra.bootstrap_servers, ["leads.routed.v1"], lambda r: self.on_routed(r, sender))
            self.started = time.monotonic()
            log.info("services ready; load starts")
            background = [
                asyncio.create_task(follower.run(stop)),
                asyncio.create_task(self.supervise(stop)),
                asyncio.create_task(self.sample(engine, stop)),
                asyncio.create_task(self.sample_outbox(engine, stop)),
                asyncio.create_task(self.report_windows(stop, grace=min(20.0, self.opts.window_minutes * 30))),
            ]
            try:
                duration = self.opts.minutes * 60
                await self.send(sender, duration)
                await asyncio.sleep(max(0.0, duration - self.now()))
                log.info(
                    "load done at %.0fs: %s leads sent; waiting for the last to be routed", self.now(), len(self.leads)
                )
                await self.drain(120)
            finally:  # also when a signal cancelled the run: nothing may post once the stack is going
                stop.set()
                self.stopping = True
                for task in list(self.tasks):
                    task.cancel()
                await asyncio.gather(*background, *self.tasks, return_exceptions=True)
                sender.close()
        load_at_end = _loadavg()
        # In threads: this loop keeps answering the alert webhook while the monitor shuts down.
        codes = await asyncio.gather(*(asyncio.to_thread(service.terminate) for service in self.services.values()))
        exits = dict(zip(self.services, codes, strict=True))
        result = self.result(sender, exits, load_at_start, load_at_end)
        print(window_report(result.windows[-1], self.processes(), TABLES), flush=True)
        print(file=sys.stdout)
        print(summary_tables(result.windows, self.processes(), TABLES), flush=True)
        print(file=sys.stdout)
        for key, value in result.notes.items():
            print(f"{key}: {value}")
        print(file=sys.stdout)
        print(verdict_lines(result.checks))
        print(f"verdict: {'PASS' if result.passed else 'FAIL'}")
        self.opts.out.parent.mkdir(parents=True, exist_ok=True)
        self.opts.out.write_bytes(orjson.dumps(self.document(result), option=orjson.OPT_INDENT_2))
        print(orjson.dumps(result.headline()).decode(), flush=True)
        return 0 if result.passed else 1

    def result(self, sender: RawSender, exits: dict[str, int | None], load_at_start: str, load_at_end: str) -> Result:
        windows = aggregate(self.bounds, self.samples, self.outbox, self.snapshot())
        tolerance = Tolerance()
        checks: list[Check] = [
            *memory_checks(windows, GATED, tolerance),
            *bounded_checks(windows, BOUNDED, self.opts.settled_after, tolerance),
            rate_check(windows, self.opts.rate),
            delivery_check(windows, self.duplicates),
            Check(
                "no service exited on its own",
                not self.unexpected_exits,
                "; ".join(self.unexpected_exits) or f"{len(self.services)} services ran throughout",
            ),
        ]
        passes, refused, pruned = self.retention_log()
        checks.append(
            Check(
                "retention passes ran, none refused",
                passes > 0 and refused == 0,
                f"{passes} passes pruned rows, {refused} refused; pruned "
                + ", ".join(f"{table} {count:,}" for table, count in sorted(pruned.items())),
            )
        )
        warm = self.bounds[1][0] if len(self.bounds) > 1 else 0.0
        trends = {name: trend_mib_per_hour(self.samples, name, warm) for name in self.processes()}
        notes = {
            "run": f"{self.run_id}, {len(self.leads):,} leads at {self.opts.rate:g}/s offered, {len(self.samples)} samples",
            "load average at start / end": f"{load_at_start} / {load_at_end} ({os.cpu_count()} cpus)",
            "intake answers": ", ".join(f"{k}={v}" for k, v in sender.statuses.most_common()),
            "first touches": ", ".join(f"{k} {v}" for k, v in self.touches.items()),
            "alerts received": str(self.receiver.received),
            "memory trend after warm-up (MiB/hour)": ", ".join(
                f"{name} {value:+.1f}" for name, value in trends.items() if value is not None
            ),
            "service log lines at WARNING or above": self.warnings(),
            "sigterm exit codes": ", ".join(f"{k}={v}" for k, v in exits.items()),
            "logs": str(self.infra.log_dir),
        }
        settings = {**self.opts.settings(), "settled_after_s": self.opts.settled_after}
        return Result(windows, checks, settings, notes)

    def retention_log(self) -> tuple[int, int, Counter[str]]:
        """Retention passes that pruned rows, passes refused, and rows pruned per table, from the services' logs."""
        passes = refused = 0
        pruned: Counter[str] = Counter()
        for service in self.services.values():
            for path in service.log_paths():
                for line in path.read_text(errors="replace").splitlines():
                    if "retention pass refused" in line:
                        refused += 1
                    elif "retention pass:" in line:
                        passes += 1
                        tail = line.split("retention pass:", 1)[1]
                        for table, count in re.findall(r"(\w+)=(\d+)", tail):
                            pruned[table] += int(count)
        return passes, refused, pruned

    def warnings(self) -> str:
        """Log lines at WARNING or above, per service: read them when this is not none."""
        counts: Counter[str] = Counter()
        for service in self.services.values():
            for path in service.log_paths():
                for line in path.read_text(errors="replace").splitlines():
                    level = re.search(r"\blevel=(WARNING|ERROR|CRITICAL)\b", line)
                    if level:
                        counts[f"{service.name} {level.group(1)}"] += 1
        return ", ".join(f"{key} {count}" for key, count in sorted(counts.items())) or "none"

    def document(self, result: Result) -> dict[str, Any]:
        """The result file: the headline, every check, every sample."""
        return {
            **result.headline(),
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in result.checks],
            "notes": dict(result.notes),
            "samples": [
                {
                    "at": round(s.at, 1),
                    "rss_mib": {name: round(value / MIB, 1) for name, value in s.rss.items()},
                    "tables": {name: {"rows": size.rows, "bytes": size.bytes} for name, size in s.tables.items()},
                }
                for s in self.samples
            ],
            "outbox": [[round(at, 1), rows] for at, rows in self.outbox],
        }


def _put(usage: dict[str, int], name: str, value: int | None) -> None:
    if value is not None:
        usage[name] = value


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _read_rss(pid: int) -> int | None:
    status = _read(f"/proc/{pid}/status")
    return None if status is None else vm_rss(status)


def _postmaster_pid(state_dir: Path) -> int | None:
    text_ = _read(str(state_dir / "postgres" / "data" / "postmaster.pid"))
    try:
        return int(text_.split()[0]) if text_ else None
    except ValueError:
        return None


def _children(parent: int) -> list[int]:
    """The children of a single-threaded process (the postmaster), by its own list if the kernel has one."""
    listed = _read(f"/proc/{parent}/task/{parent}/children")
    if listed is not None:
        return [int(pid) for pid in listed.split()]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        content = _read(str(stat))
        if content is not None and parent_pid(content) == parent:
            found.append(int(stat.parent.name))
    return found


def _loadavg() -> str:
    return " ".join((_read("/proc/loadavg") or "? ? ?").split()[:3])


async def _sleep_until(stop: asyncio.Event, monotonic_at: float) -> None:
    delay = monotonic_at - time.monotonic()
    if delay > 0:
        await sleep_or_stop(stop, delay)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="soak %(asctime)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = options(sys.argv[1:] if argv is None else argv)
    import uvloop

    try:
        return uvloop.run(_stoppable(Soak(opts)))
    except asyncio.CancelledError:
        log.warning("stopped by a signal; services and the stack were stopped")
        return 1


async def _stoppable(soak: Soak) -> int:
    """SIGTERM or SIGINT cancels the run, whose clean-up then stops the services and the stack.
    Set here because a shell starting the run in the background (``make soak &``) makes it ignore
    SIGINT, and SIGTERM's default would leave five services, Kafka and PostgreSQL behind."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await soak.main()
