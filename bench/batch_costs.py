"""What scoring's batch costs its process and its wall clock, a lead alone and many together.

    python -m bench.batch_costs postgresql+asyncpg://coxswain:coxswain@127.0.0.1:15432/coxswain [--batches 300] [--sizes 1,50]

The bench's hops (docs/benchmarks.md, "Hop by hop") put most of a lead's time on its way in
scoring's transaction: about 7 ms of a lead sent alone at 5 leads/s, a batch of 50 leads about 30
ms at half the sustained throughput. Through the whole bench that figure moves with everything
else the machine runs; this measures the transaction by itself, so a change to it can be compared
in seconds, on a quiet cluster, before the bench judges it.

It creates a database of its own on the URL's cluster (the user needs CREATEDB), migrates it and
builds scoring's consumer as ``coxswain run scoring`` does, routing inline, with the bench's
agreement. Then it applies batches of leads that agreement qualifies and routes at once, each lead
with a domain of its own, after a seed of leads and an ``ANALYZE`` (below, in the code): ``ConsumerService.process``, everything a batch does between the fetch
that returned it and its offsets (decode, claim, score, route, write, stage, commit), without
Kafka. It prints the process's CPU and the wall time per batch, after a warm-up, and how many of
the measured leads were routed (all of them, or the figures mean nothing). The database is dropped
afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import uvloop
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.core.agreement import load_agreement
from coxswain.db.database import create_engine, upgrade
from coxswain.runtime.consumer import Delivery
from coxswain.runtime.service import Process
from coxswain.settings import DatabaseConfig, Settings
from coxswain_app.wiring import CONSUMERS, consumer_service
from schemas.codec import encode
from schemas.events import EngagementType, LeadAttributes, LeadReceivedV1

AGREEMENT = Path(__file__).resolve().parent / "agreement.yaml"
# A Tuesday afternoon: within the agreement's business hours, as the bench's leads are.
NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
WARM_UP = 30  # batches of each size, not measured: caches, prepared statements, the pool
SEED_BATCH = 50  # leads a batch of the seed, before the statistics are taken


@dataclass(frozen=True)
class BatchCost:
    leads_per_batch: int
    batches: int
    cpu_ms_per_batch: float
    wall_ms_per_batch: float
    routed: int  # of the batches' leads, how many have an assignment afterwards

    @property
    def cpu_ms_per_lead(self) -> float:
        return self.cpu_ms_per_batch / self.leads_per_batch


def _delivery(offset: int) -> tuple[uuid.UUID, Delivery]:
    """A demo request: the bench agreement's fast lane, qualified and routed at once."""
    lead_id = uuid.uuid4()
    event = LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id,
        occurred_at=NOW,
        source="webform",
        webhook_id=f"batch-costs-{lead_id}",
        engagement=EngagementType.demo_request,
        attributes=LeadAttributes(
            title="Sales Manager",
            company_size=100,
            industry="Software",
            country="US",
            email=f"lead@{lead_id.hex}.example",
        ),
    )
    record = encode(event)
    return lead_id, Delivery(record.topic, offset % 6, offset, record.key, record.value, record.headers)


async def _measure_on(url: str, sizes: list[int], batches: int) -> list[BatchCost]:
    engine = create_engine(DatabaseConfig(database_url=url))
    agreement = load_agreement(AGREEMENT)
    settings = Settings()
    spec = CONSUMERS["scoring"]
    wired = spec.wire(Process("scoring", engine, lambda: agreement, lambda: NOW, settings))
    service = consumer_service("scoring", spec, wired, engine, settings, clock=lambda: NOW)
    offsets = itertools.count()
    costs: list[BatchCost] = []
    try:
        # Tables of some size, then statistics for them, as a running deployment has (autovacuum
        # analyses them) and the bench does after its warm-up. The batches' plans are generic
        # (``create_batch_engine``), made once from the statistics of the moment; made on the empty
        # tables of a new database, they scan whole tables, which grow at every batch.
        for _ in range(WARM_UP):
            await service.process([_delivery(next(offsets))[1] for _ in range(SEED_BATCH)])
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE"))
            await connection.commit()
        for size in sizes:
            for _ in range(WARM_UP):
                await service.process([_delivery(next(offsets))[1] for _ in range(size)])
            planned = [[_delivery(next(offsets)) for _ in range(size)] for _ in range(batches)]
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in planned:
                await service.process([delivery for _, delivery in batch])
            cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
            leads = [lead_id for batch in planned for lead_id, _ in batch]
            async with engine.connect() as connection:
                routed = await connection.scalar(
                    text("SELECT count(DISTINCT lead_id) FROM assignments WHERE lead_id = ANY(CAST(:leads AS uuid[]))"),
                    {"leads": leads},
                )
            costs.append(BatchCost(size, batches, cpu_s / batches * 1e3, wall_s / batches * 1e3, int(routed or 0)))
    finally:
        await engine.dispose()
    return costs


async def measure(url: str, sizes: list[int], batches: int) -> list[BatchCost]:
    """Each size's costs, on a database made for the run and dropped after it."""
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    name = f"batch_costs_{uuid.uuid4().hex[:10]}"
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    own = url.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(upgrade, DatabaseConfig(database_url=own))
        return await _measure_on(own, sizes, batches)
    finally:
        # Every connection of the run is closed by now. Not WITH (FORCE): an autovacuum worker
        # busy on the new tables is the server's, and only a superuser may terminate it that way;
        # a plain drop tells it to stop and waits for it.
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        await admin.dispose()


def report(costs: list[BatchCost]) -> str:
    lines = ["leads a batch  batches  CPU ms/batch  CPU ms/lead  wall ms/batch  leads routed"]
    lines += [
        f"{cost.leads_per_batch:>13}  {cost.batches:>7}  {cost.cpu_ms_per_batch:>12.2f}  {cost.cpu_ms_per_lead:>11.3f}"
        f"  {cost.wall_ms_per_batch:>13.2f}  {cost.routed:>6} of {cost.leads_per_batch * cost.batches}"
        for cost in costs
    ]
    return "\n".join(lines)


def _sizes(value: str) -> list[int]:
    sizes = [int(part) for part in value.split(",") if part.strip()]
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("--sizes: whole numbers of at least 1, comma-separated, e.g. 1,50")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="a SQLAlchemy asyncpg URL of a PostgreSQL whose user may create databases")
    parser.add_argument("--batches", type=int, default=300, help="batches measured for each size")
    parser.add_argument("--sizes", type=_sizes, default=[1, 50], help="leads per batch, comma-separated")
    args = parser.parse_args()
    if args.batches < 1:
        parser.error("--batches: at least 1")
    costs = uvloop.run(measure(args.url, args.sizes, args.batches))
    print(report(costs))
    print(orjson.dumps([{**cost.__dict__, "cpu_ms_per_lead": cost.cpu_ms_per_lead} for cost in costs]).decode())


if __name__ == "__main__":
    main()
