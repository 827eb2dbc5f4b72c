"""``coxswain shadow report``: the candidate's shadow decisions against the live ones, per lead.

Per lead with a decision in the period: the last stage each side moved it to, and the last rep
each side gave it. Read-only: the shadow topic without a consumer group, and the live tables
(``assignments``, ``lead_facts``)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Disagreement:
    lead_id: uuid.UUID
    kind: str
    live: str
    shadow: str


@dataclass
class ShadowReport:
    version: str | None
    agree: dict[str, int] = field(default_factory=lambda: {"stage": 0, "owner": 0})
    disagree: dict[str, int] = field(default_factory=lambda: {"stage": 0, "owner": 0})
    examples: list[Disagreement] = field(default_factory=list)


def compare(
    live_stages: dict[uuid.UUID, str],
    live_owners: dict[uuid.UUID, str],
    shadow_stages: dict[uuid.UUID, str],
    shadow_owners: dict[uuid.UUID, str],
    version: str | None,
    examples: int = 10,
) -> ShadowReport:
    report = ShadowReport(version)
    for kind, live, shadow in (("stage", live_stages, shadow_stages), ("owner", live_owners, shadow_owners)):
        for lead in sorted(live.keys() | shadow.keys(), key=str):
            mine, theirs = live.get(lead, "-"), shadow.get(lead, "-")
            if mine == theirs:
                report.agree[kind] += 1
            else:
                report.disagree[kind] += 1
                if len(report.examples) < examples:
                    report.examples.append(Disagreement(lead, kind, mine, theirs))
    return report


def render(report: ShadowReport, since: datetime, until: datetime) -> str:
    lines = [f"shadow {report.version or '(no decisions)'} vs live, {since.isoformat()} .. {until.isoformat()}"]
    for kind in ("stage", "owner"):
        agree, disagree = report.agree[kind], report.disagree[kind]
        total = agree + disagree
        share = f"{agree / total:.1%}" if total else "n/a"
        lines.append(f"  {kind:6} agree {agree:6}  disagree {disagree:6}  ({share} agree)")
    if report.examples:
        lines.append("examples (lead, what, live, shadow):")
        lines += [f"  {d.lead_id}  {d.kind:6} {d.live:28} {d.shadow}" for d in report.examples]
    return "\n".join(lines)


async def read_shadow(
    kafka: Any, since: datetime, until: datetime, version: str | None
) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, str], str | None]:
    from aiokafka import AIOKafkaConsumer

    from coxswain.runtime.kafka import connection_options
    from schemas.events import ShadowDecisionV1

    consumer = AIOKafkaConsumer(
        ShadowDecisionV1.topic,
        **connection_options(kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    stages: dict[uuid.UUID, tuple[datetime, str]] = {}
    owners: dict[uuid.UUID, tuple[datetime, str]] = {}
    seen_version = version
    await consumer.start()
    try:
        partitions = list(consumer.assignment())
        end = await consumer.end_offsets(partitions) if partitions else {}
        pending = {tp for tp, offset in end.items() if offset > 0}
        while pending:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, found in batch.items():
                for record in found:
                    try:
                        fact = ShadowDecisionV1.model_validate(orjson.loads(record.value or b""))
                    except (orjson.JSONDecodeError, ValidationError):
                        # Not a shadow decision (e.g. a record someone dead-lettered by hand): not ours to compare.
                        log.warning("skipping an undecodable record: topic=%s offset=%s", tp.topic, record.offset)
                        continue
                    if version is not None and fact.agreement_version != version:
                        continue
                    seen_version = fact.agreement_version
                    if not since <= fact.occurred_at < until:
                        continue
                    target = stages if fact.kind == "stage_changed" else owners
                    value = fact.to_stage.value if fact.to_stage else f"{fact.rep_id}@{fact.pool_id}"
                    if fact.lead_id not in target or target[fact.lead_id][0] <= fact.occurred_at:
                        target[fact.lead_id] = (fact.occurred_at, value)
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return {k: v for k, (_, v) in stages.items()}, {k: v for k, (_, v) in owners.items()}, seen_version


async def read_live(
    database_url: str, since: datetime, until: datetime
) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, str]]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from services.shadow import repository

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            stages = await repository.live_stages(connection, since, until)
            owners = await repository.live_owners(connection, since, until)
    finally:
        await engine.dispose()
    return stages, owners


def report(since: datetime, until: datetime, version: str | None = None, examples: int = 10) -> str:
    from coxswain.settings import DatabaseConfig, KafkaConfig

    async def gather() -> str:
        shadow_stages, shadow_owners, seen = await read_shadow(KafkaConfig(), since, until, version)
        live_stages, live_owners = await read_live(DatabaseConfig().database_url, since, until)
        result = compare(live_stages, live_owners, shadow_stages, shadow_owners, seen, examples)
        return render(result, since, until)

    return asyncio.run(gather())
