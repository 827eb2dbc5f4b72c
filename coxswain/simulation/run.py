"""``coxswain simulate``: load the inputs and both agreements, run the engines, report, judge.

Exit codes: 0 every guard holds, 1 a guard is crossed, 2 the input is bad (with a message)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import yaml

from coxswain.core.agreement import MAX_AGREEMENT_BYTES, Agreement, AgreementError, byte_position, load_agreement
from coxswain.simulation.engine import Engine, Input, Results
from coxswain.simulation.inputs import (
    BadInput,
    Part,
    read_chunks,
    read_database,
    read_kafka,
    read_stream,
    split_stream,
)
from coxswain.simulation.parallel import ChildFailed, Forked, Streamed, second_core
from coxswain.simulation.report import Comparison, compare, guards, html, terminal


class Watcher(Protocol):
    """Someone watching the replay (``coxswain.progress.Meter``): told how many inputs there are
    and how many the baseline's replay has taken, in this process only, never in a forked child
    (the child's copy of a progress bar would draw over the parent's)."""

    def __call__(self, n: float = 1) -> None: ...

    def expect(self, total: float) -> None: ...


class Unwatched:
    def __call__(self, n: float = 1) -> None:
        return None

    def expect(self, total: float) -> None:
        return None


UNWATCHED = Unwatched()
# Inputs a watched replay takes between two reports: a call per input would cost more than the
# bar is worth.
WATCH_EVERY = 2048


def lines_in(path: Path) -> int:
    """The lines of a file, counted in blocks (a stream of 100,000 leads in a few milliseconds)."""
    count = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


def feed_watched(engine: Engine, events: Sequence[Input], watch: Watcher) -> None:
    for start in range(0, len(events), WATCH_EVERY):
        chunk = events[start : start + WATCH_EVERY]
        for event in chunk:
            engine.feed(event)
        watch(len(chunk))


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
        with path.open("rb") as handle:
            data = handle.read(MAX_AGREEMENT_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"policy {path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_AGREEMENT_BYTES:
        raise BadInput(f"policy {path}: larger than {MAX_AGREEMENT_BYTES:,} bytes; a policy is a few guards")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = byte_position(data, exc.start)
        raise BadInput(f"policy {path}: {where}: byte 0x{data[exc.start]:02x} is not UTF-8 text") from None
    try:
        document = yaml.safe_load(text) or {}
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
    from coxswain.runtime.agreements import active
    from coxswain.settings import DatabaseConfig

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


def one_input(request: Request) -> None:
    if sum((request.events is not None, request.from_db, request.from_kafka)) != 1:
        raise BadInput("give exactly one input: --events FILE, --from-db or --from-kafka")


def inputs(request: Request) -> tuple[list[Input], dict[str, str]]:
    one_input(request)
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


def simulate(
    agreement: Agreement, events: Sequence[Input], accounts: dict[str, str], watch: Watcher = UNWATCHED
) -> Results:
    engine = Engine(agreement, accounts=accounts)
    feed_watched(engine, events, watch)
    engine.finish()
    return engine.results


@contextmanager
def collector_paused() -> Iterator[None]:
    """The replay builds millions of objects and frees them by reference counting (it makes no
    cycles), so the cyclic collector would only rescan the inputs, over and over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cpu_seconds() -> float:
    """This process's CPU time and that of its finished children (a reader, the candidate's replay)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def children_cpu_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


@dataclass(frozen=True)
class Replayed:
    events: list[Input]
    baseline: Results
    candidate: Results
    reading_cpu: float  # seconds, in every process that read


def replay(request: Request, baseline: Agreement, candidate: Agreement, watch: Watcher = UNWATCHED) -> Replayed | None:
    """The inputs and both replays; None when there is no input."""
    one_input(request)
    if request.events is not None and second_core():
        replayed = simulate_stream(request.events, baseline, candidate, watch)
        return replayed if replayed.events else None
    started = cpu_seconds()
    events, accounts = inputs(request)
    reading = cpu_seconds() - started
    if not events:
        return None
    old, new = simulate_both(baseline, candidate, events, accounts, watch)
    return Replayed(events, old, new, reading)


def simulate_both(
    baseline: Agreement,
    candidate: Agreement,
    events: Sequence[Input],
    accounts: dict[str, str],
    watch: Watcher = UNWATCHED,
) -> tuple[Results, Results]:
    """Both replays; the same agreement decides the same way, so it is simulated once.

    The replays are independent: with a second core the candidate's runs in a forked child while
    this process runs the baseline's. Each replay still runs on one core.
    """
    if candidate == baseline:
        watch.expect(len(events))
        old = simulate(baseline, events, accounts, watch)
        return old, old
    if not second_core():
        watch.expect(2 * len(events))
        return simulate(baseline, events, accounts, watch), simulate(candidate, events, accounts, watch)
    watch.expect(len(events))
    child = Forked(lambda: simulate(candidate, events, accounts))
    try:
        old = simulate(baseline, events, accounts, watch)
    except BaseException:
        child.cancel()
        raise
    try:
        return old, child.result()
    except ChildFailed:
        return old, simulate(candidate, events, accounts)


# Of a stream replayed on two cores, the share this process reads before both replays start; a
# reader child parses the rest meanwhile and hands it on in chunks of this many lines.
HEAD_SHARE = 0.03
TAIL_CHUNK_LINES = 10_000


def simulate_stream(path: Path, baseline: Agreement, candidate: Agreement, watch: Watcher = UNWATCHED) -> Replayed:
    """Read a stream file and replay it through both agreements (once when they are the same), on
    two cores (``replay`` reads and replays in one process when there is one core).

    A forked reader parses the tail of the file while this process parses its head;
    the candidate's replay is forked with the head, and both replays go on through the tail chunk
    by chunk as the reader hands each on, pickled once. Each replay still sees every input, in
    order.
    """
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    watch.expect(lines_in(path))  # about one input per line: close enough for a rate and time left
    both = candidate != baseline
    head_part, tail_part = split_stream(path, HEAD_SHARE)
    reader: Streamed[list[Input] | str] = Streamed(lambda: _read_chunks(path, tail_part), copies=2 if both else 1)
    candidate_replay: Forked[Results] | None = None
    try:
        started = time.process_time()
        head = read_stream(path, head_part)
        read_cpu = time.process_time() - started

        def replay_candidate() -> Results:
            reader.release(0)
            engine = Engine(candidate)
            for event in head:
                engine.feed(event)
            for event in _tail(reader, 1, path, tail_part):
                engine.feed(event)
            engine.finish()
            return engine.results

        if both:
            candidate_replay = Forked(replay_candidate)
            reader.release(1)
        engine = Engine(baseline)
        feed_watched(engine, head, watch)
        rest: list[Input] = []
        before = children_cpu_seconds()
        for number, event in enumerate(_tail(reader, 0, path, tail_part, rest), start=1):
            engine.feed(event)
            if number % WATCH_EVERY == 0:
                watch(WATCH_EVERY)
        watch(len(rest) % WATCH_EVERY)
        reader.wait()
        read_cpu += children_cpu_seconds() - before
        engine.finish()
        old = new = engine.results
        events = head + rest
        if candidate_replay is not None:
            try:
                new = candidate_replay.result()
            except ChildFailed:
                new = simulate(candidate, events, {})
    except BaseException:
        if candidate_replay is not None:
            candidate_replay.cancel()
        raise
    finally:
        reader.close()
    return Replayed(events, old, new, read_cpu)


def _tail(
    reader: Streamed[list[Input] | str], copy: int, path: Path, part: Part, kept: list[Input] | None = None
) -> Iterator[Input]:
    """The reader's chunks of ``part``, in order (each also appended to ``kept``, if given); if the
    reader dies, this process reads what it had not handed on yet."""
    received = 0
    try:
        for chunk in reader.items(copy):
            if isinstance(chunk, str):
                raise BadInput(chunk)
            received += len(chunk)
            if kept is not None:
                kept.extend(chunk)
            yield from chunk
    except ChildFailed:
        rest = read_stream(path, part)[received:]
        if kept is not None:
            kept.extend(rest)
        yield from rest


def _read_chunks(path: Path, part: Part) -> Iterator[list[Input] | str]:
    try:
        yield from read_chunks(path, part, TAIL_CHUNK_LINES)
    except BadInput as exc:
        yield str(exc)


def execute(request: Request, watch: Watcher = UNWATCHED) -> Outcome:
    with collector_paused():
        return _execute(request, watch)


def _execute(request: Request, watch: Watcher) -> Outcome:
    try:
        candidate = load(request.candidate, "candidate")
        baseline = baseline_agreement(request.baseline)
        policy = load_policy(request.policy)
        started_cpu, started = cpu_seconds(), time.perf_counter()
        replayed = replay(request, baseline, candidate, watch)
    except BadInput as exc:
        return Outcome(2, str(exc))
    if replayed is None:
        return Outcome(2, "the input holds no events")
    total_cpu, wall = cpu_seconds() - started_cpu, time.perf_counter() - started
    events, old, new = replayed.events, replayed.baseline, replayed.candidate
    cpu = total_cpu - replayed.reading_cpu
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
        f"({old.leads} leads, {len(events)} inputs, {runs} agreement(s): replaying {cpu:.1f}s CPU, "
        f"reading {replayed.reading_cpu:.1f}s CPU; {wall:.1f}s wall for both)"
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
        record |= {"matched_by": a.matched_by, "reason": a.reason}
        lines.append((a.at, len(results.stage_changes) + n, record | {"sla": a.sla, "responded_by": a.responded_by}))
    offset = len(results.stage_changes) + len(results.assignments)
    for n, step in enumerate(results.escalations):
        record = {"kind": "escalated", "lead_id": str(step.lead_id), "at": step.at.isoformat(), "rep_id": step.rep_id}
        lines.append((step.at, offset + n, record | {"step": step.step, "step_index": step.step_index}))
    with path.open("wb") as handle:
        for _, _, record in sorted(lines, key=lambda item: (item[0], item[1])):
            handle.write(orjson.dumps(record) + b"\n")
