"""``coxswain simulate``: load the inputs and both agreements, run the engines, report, judge.

Exit codes: 0 every guard holds, 1 a guard is crossed, 2 the input is bad (with a message)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from coxswain.core.agreement import Agreement, AgreementError, load_agreement
from coxswain.simulation.engine import Engine, Input, Results
from coxswain.simulation.inputs import BadInput, read_database, read_kafka, read_stream
from coxswain.simulation.report import Comparison, compare, guards, html, terminal


@dataclass(frozen=True)
class Request:
    candidate: Path
    baseline: Path | None = None
    events: Path | None = None
    from_db: bool = False
    from_kafka: bool = False
    policy: Path | None = None
    html: Path | None = None
    first: int = 20
    decisions: Path | None = None
    received_after: datetime | None = None


@dataclass
class Outcome:
    code: int
    text: str
    comparison: Comparison | None = None


def load(path: Path, what: str) -> Agreement:
    if not path.is_file():
        raise BadInput(f"{what} {path}: no such file")
    try:
        return load_agreement(path)
    except AgreementError as exc:
        raise BadInput(f"{what} {path} does not load:\n" + "\n".join(f"  {p}" for p in exc.problems)) from None


def load_policy(path: Path | None) -> dict[str, float]:
    if path is None:
        return {}
    if not path.is_file():
        raise BadInput(f"policy {path}: no such file")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"policy {path} is not YAML: {exc}") from None
    if not isinstance(document, dict):
        raise BadInput(f"policy {path}: expected a mapping of guard name to number")
    try:
        return {str(key): float(value) for key, value in document.items()}
    except (TypeError, ValueError):
        raise BadInput(f"policy {path}: every guard needs a number") from None


async def active_agreement() -> Agreement | None:
    """The version activated in the database, when a database answers."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from coxswain.core.agreement import parse_agreement
    from coxswain.settings import DatabaseConfig
    from services.admin.agreements import active

    engine = create_async_engine(DatabaseConfig().database_url, connect_args={"timeout": 3})
    try:
        async with engine.connect() as connection:
            found = await active(connection)
    except Exception:
        return None
    finally:
        await engine.dispose()
    return None if found is None else parse_agreement(found[1], source="agreements (active version)")


def baseline_agreement(path: Path | None) -> Agreement:
    if path is not None:
        return load(path, "baseline")
    from coxswain.settings import AgreementConfig

    stored = asyncio.run(active_agreement())
    return (
        stored if stored is not None else load(AgreementConfig().agreement_file, "baseline (COXSWAIN_AGREEMENT_FILE)")
    )


def inputs(request: Request) -> tuple[list[Input], dict[str, str]]:
    chosen = sum((request.events is not None, request.from_db, request.from_kafka))
    if chosen != 1:
        raise BadInput("give exactly one input: --events FILE, --from-db or --from-kafka")
    if request.events is not None:
        return read_stream(request.events), {}
    try:
        if request.from_db:
            from coxswain.settings import DatabaseConfig

            return asyncio.run(read_database(DatabaseConfig().database_url, request.received_after))
        return asyncio.run(read_kafka()), {}
    except BadInput:
        raise
    except Exception as exc:
        where = "the database" if request.from_db else "Kafka"
        raise BadInput(f"cannot read the history from {where}: {type(exc).__name__}: {exc}") from None


def simulate(agreement: Agreement, events: Sequence[Input], accounts: dict[str, str]) -> Results:
    return Engine(agreement, accounts=accounts).run(events)


def execute(request: Request) -> Outcome:
    try:
        candidate = load(request.candidate, "candidate")
        baseline = baseline_agreement(request.baseline)
        policy = load_policy(request.policy)
        events, accounts = inputs(request)
    except BadInput as exc:
        return Outcome(2, str(exc))
    if not events:
        return Outcome(2, "the input holds no events")
    started_cpu, started = time.process_time(), time.perf_counter()
    old = simulate(baseline, events, accounts)
    # The same agreement decides the same way: simulate it once.
    new = old if candidate == baseline else simulate(candidate, events, accounts)
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    comparison = compare((old, baseline), (new, candidate), events, request.first)
    runs = 1 if new is old else 2
    comparison.cpu_seconds = cpu
    comparison.leads_per_second = old.leads * runs / cpu if cpu > 0 else 0.0
    try:
        crossed = guards(comparison, policy)
    except ValueError as exc:
        return Outcome(2, f"policy {request.policy}: {exc}")
    text = terminal(comparison, crossed)
    text += (
        f"\nthroughput: {comparison.leads_per_second:,.0f} leads/s on one core "
        f"({old.leads} leads, {len(events)} inputs, {runs} agreement(s), {cpu:.1f}s CPU, {wall:.1f}s wall)"
    )
    if request.decisions is not None:
        try:
            write_decisions(new, request.decisions)
        except OSError as exc:
            return Outcome(2, f"cannot write {request.decisions}: {exc}")
        text += f"\ndecisions: {request.decisions}"
    if request.html is not None:
        try:
            request.html.write_text(html(comparison, crossed))
        except OSError as exc:
            return Outcome(2, f"cannot write {request.html}: {exc}")
        text += f"\nreport: {request.html}"
    return Outcome(1 if crossed else 0, text, comparison)


def write_decisions(results: Results, path: Path) -> None:
    """The candidate's decisions as JSON Lines, in the order they were made."""
    lines: list[tuple[datetime, int, dict[str, Any]]] = []
    for n, change in enumerate(results.stage_changes):
        record = {"kind": "stage_changed", "lead_id": str(change.lead_id), "at": change.at.isoformat()}
        record |= {"from_stage": change.from_stage.value, "to_stage": change.to_stage.value}
        lines.append((change.at, n, record | {"caused_by": str(change.caused_by)}))
    for n, a in enumerate(results.assignments):
        record = {"kind": "routed", "lead_id": str(a.lead_id), "at": a.at.isoformat(), "rep_id": a.rep_id}
        record |= {"pool_id": a.pool_id, "rule_id": a.rule_id, "tier": a.tier.value, "due": a.due.isoformat()}
        lines.append((a.at, len(results.stage_changes) + n, record | {"sla": a.sla}))
    with path.open("wb") as handle:
        for _, _, record in sorted(lines, key=lambda item: (item[0], item[1])):
            handle.write(orjson.dumps(record) + b"\n")
