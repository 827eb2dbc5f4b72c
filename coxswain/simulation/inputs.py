"""Where a simulation's inputs come from: a JSON Lines stream, the intake history in PostgreSQL,
or the input topics in Kafka from the earliest offset. Each yields intake events in the order
the live stack received them; nothing here writes anywhere."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from coxswain.core.intake import ActivityIn, LeadEventIn, Unacceptable, build_activities, build_lead_events
from coxswain.simulation.engine import Input
from schemas.events import ActivityRecordedV1, LeadAttributes, LeadReceivedV1


class BadInput(ValueError):
    """The input cannot be simulated; the message says where and why."""


# One line is one webhook delivery, and intake takes a body of at most 1 MiB
# (COXSWAIN_MAX_BODY_BYTES); a longer line is not an event, and is never read whole.
MAX_LINE_BYTES = 1_048_576


@dataclass(frozen=True)
class Part:
    """The lines of a stream from byte ``start`` (the first byte of a line) up to byte ``end``;
    ``lines_before`` lines come before them, so each keeps its number (and its ``sim-<line>``)."""

    start: int
    end: int
    lines_before: int


def read_stream(path: Path, part: Part | None = None) -> list[Input]:
    """A stream as ``coxswain generate`` writes it, through intake's own event builders."""
    return [event for chunk in read_chunks(path, part) for event in chunk]


def read_chunks(path: Path, part: Part | None = None, lines: int = 1 << 62) -> Iterator[list[Input]]:
    """``read_stream`` a chunk of about ``lines`` lines at a time, so a reader can hand each one
    on while it reads the next."""
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    events: list[Input] = []
    contacts: dict[bytes, LeadAttributes] = {}
    position, end, number = (0, None, 0) if part is None else (part.start, part.end, part.lines_before)
    with path.open("rb") as handle:
        handle.seek(position)
        while end is None or position < end:
            raw = handle.readline(MAX_LINE_BYTES + 1)  # never a whole file without a newline
            if not raw:
                break
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise BadInput(_unreadable(path, number, position, raw) or _too_long(path, number, position))
            if raw.strip():
                events.extend(_line(path, number, position, raw, contacts))
            position += len(raw)
            if number % lines == 0:
                yield events
                events = []
    yield events


def split_stream(path: Path, share: float) -> tuple[Part, Part]:
    """The stream cut at the first line that starts after ``share`` of its bytes."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(min(size, int(size * share)))
        while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
            pass  # to the end of the line, a MiB at a time (a file without newlines is no stream)
        middle = handle.tell() if int(size * share) > 0 else 0
        handle.seek(0)
        lines, read = 0, 0
        while read < middle:
            chunk = handle.read(min(1 << 20, middle - read))
            lines += chunk.count(b"\n")
            read += len(chunk)
    return Part(0, middle, 0), Part(middle, size, lines)


def _contact(body: Any, contacts: dict[bytes, LeadAttributes]) -> Any:
    """A person's contact repeats on each of their events: validate each distinct one once (the
    email check is the costly part). A validated model passes through ``LeadEventIn`` as is."""
    if not isinstance(body, dict) or not isinstance(body.get("contact"), dict):
        return body
    key = orjson.dumps(body["contact"])  # the same contact in another key order only misses the cache
    found = contacts.get(key)
    if found is None:
        found = contacts[key] = LeadAttributes.model_validate(body["contact"])
    return {**body, "contact": found}


def _too_long(path: Path, number: int, position: int) -> str:
    return (
        f"{path}:{number}: the line starting at byte {position} is longer than {MAX_LINE_BYTES:,} bytes, "
        "the most one event may take"
    )


def _unreadable(path: Path, number: int, position: int, raw: bytes) -> str | None:
    """What makes a line no text at all (a NUL byte, bytes that are not UTF-8), with its column
    and its byte in the file; None for a text line."""
    nul = raw.find(b"\0")
    if nul >= 0:
        return (
            f"{path}:{number}: a NUL byte at column {nul + 1} (byte {position + nul} of the file): "
            "this is a binary file, not a JSON Lines stream"
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"{path}:{number}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
            f"(byte {position + exc.start} of the file) is not UTF-8 text; a stream is JSON Lines in UTF-8"
        )
    return None


def _line(path: Path, number: int, position: int, raw: bytes, contacts: dict[bytes, LeadAttributes]) -> Sequence[Input]:
    where = f"{path}:{number}"
    try:
        line = orjson.loads(raw)
        if not isinstance(line, dict):
            raise BadInput(f"{where}: a line must be a JSON object")
        at = datetime.fromisoformat(line["at"])
        source, kind, body = str(line["source"]), line["kind"], line["body"]
        webhook_id = str(line.get("webhook_id") or f"sim-{number}")
        if kind == "lead":
            item = LeadEventIn.model_validate(_contact(body, contacts))
            return build_lead_events(source, webhook_id, [item], at)
        if kind == "activity":
            return build_activities(source, webhook_id, [ActivityIn.model_validate(body)], at)
        raise BadInput(f"{where}: kind must be 'lead' or 'activity', not {kind!r}")
    except orjson.JSONDecodeError as exc:
        raise BadInput(_unreadable(path, number, position, raw) or f"{where}: not JSON ({exc})") from None
    except KeyError as exc:
        raise BadInput(f"{where}: missing field {exc}") from None
    except (ValidationError, Unacceptable) as exc:
        raise BadInput(f"{where}: body does not validate: {_brief(exc)}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, BadInput):
            raise
        raise BadInput(f"{where}: {exc}") from None


def _brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']} ({exc.error_count()} error(s))"
    return str(exc)


def event_of(kind: str, payload: Any) -> Input:
    document = orjson.loads(payload) if isinstance(payload, (str, bytes)) else payload
    if kind == "lead":
        return LeadReceivedV1.model_validate(document)
    return ActivityRecordedV1.model_validate(document)


async def read_database(
    database_url: str, received_after: datetime | None = None
) -> tuple[list[Input], dict[str, str]]:
    """Every intake event (received after ``received_after``, if given) in received order (ties:
    the event's own time), and the account owners."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT kind, payload FROM intake_events WHERE received_at > :after "
                    "ORDER BY received_at, (payload->>'occurred_at')::timestamptz, event_id"
                ),
                {"after": received_after or datetime(1970, 1, 1, tzinfo=UTC)},
            )
            events = [event_of(row.kind, row.payload) for row in rows]
            accounts = {
                row.domain: row.owner_rep_id
                for row in await connection.execute(text("SELECT domain, owner_rep_id FROM accounts"))
            }
    finally:
        await engine.dispose()
    return events, accounts


async def read_kafka(max_idle_seconds: float = 2.0) -> list[Input]:
    """leads.received.v1 and crm.activities.v1 from the earliest offset, without a consumer group
    (nothing is committed), merged by time; stops when no record arrived for ``max_idle_seconds``."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from coxswain.runtime.kafka import connection_options
    from coxswain.settings import KafkaConfig
    from schemas.codec import decode

    consumer = AIOKafkaConsumer(
        LeadReceivedV1.topic,
        ActivityRecordedV1.topic,
        **connection_options(KafkaConfig()),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    per_partition: dict[tuple[str, int], list[tuple[datetime, int, Input]]] = {}
    try:
        await consumer.start()
        while True:
            batch = await consumer.getmany(timeout_ms=int(max_idle_seconds * 1000), max_records=5000)
            if not batch:
                break
            for partition, records in batch.items():
                expected = (LeadReceivedV1,) if partition.topic == LeadReceivedV1.topic else (ActivityRecordedV1,)
                for record in records:
                    try:
                        event = decode(partition.topic, record.value, tuple(record.headers or ()), expected)
                    except ValueError:
                        continue  # the live consumers dead-letter it too
                    assert isinstance(event, (LeadReceivedV1, ActivityRecordedV1))
                    stamp = datetime.fromtimestamp(record.timestamp / 1000, tz=event.occurred_at.tzinfo)
                    per_partition.setdefault((partition.topic, partition.partition), []).append(
                        (stamp, record.offset, event)
                    )
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    # Each partition is in order already; merge them by the time Kafka appended each record.
    merged = heapq.merge(*per_partition.values(), key=lambda item: (item[0], item[1]))
    return [event for _, _, event in merged]
