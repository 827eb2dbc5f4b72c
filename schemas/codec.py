"""Kafka wire format of the events: key = lead id, value = JSON, CloudEvents as ``ce_*`` headers."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from schemas.events import EVENTS_BY_CE_TYPE, Event, utc_iso

Headers = tuple[tuple[str, bytes], ...]
MAX_RECORD_BYTES = 256 * 1024


@dataclass(frozen=True)
class WireRecord:
    topic: str
    key: bytes
    value: bytes
    headers: Headers


class DecodeError(ValueError):
    """A record that no retry can fix: it belongs on the dead-letter topic."""


def encode(event: Event, *, traceparent: str | None = None) -> WireRecord:
    headers: list[tuple[str, bytes]] = [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(event.event_id).encode()),
        ("ce_source", event.ce_source.encode()),
        ("ce_type", event.ce_type.encode()),
        ("ce_time", utc_iso(event.occurred_at).encode()),
        ("ce_subject", str(event.lead_id).encode()),
        ("content-type", b"application/json"),
    ]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return WireRecord(
        topic=event.topic,
        key=str(event.lead_id).encode(),
        value=event.model_dump_json().encode(),
        headers=tuple(headers),
    )


def header(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", errors="replace")
    return None


def decode(topic: str, value: bytes | None, headers: Headers, expected: tuple[type[Event], ...]) -> Event:
    """Turn a record back into its event, or say precisely why it cannot be."""
    if value is None:
        raise DecodeError("record has no value (tombstone); expected a JSON event")
    if len(value) > MAX_RECORD_BYTES:
        raise DecodeError(f"record value is {len(value)} bytes; the limit is {MAX_RECORD_BYTES}")
    ce_type = header(headers, "ce_type")
    if ce_type is None:
        raise DecodeError("missing ce_type header; every record must carry its CloudEvents type")
    event_type = EVENTS_BY_CE_TYPE.get(ce_type)
    if event_type is None or event_type not in expected:
        allowed = ", ".join(sorted(e.ce_type for e in expected))
        raise DecodeError(f"ce_type {ce_type!r} is not accepted on {topic}; allowed: {allowed}")
    try:
        event = event_type.model_validate(orjson.loads(value))
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"value is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise DecodeError(f"value does not match {event_type.__name__}: {_summarise(exc)}") from exc
    ce_id = header(headers, "ce_id")
    if ce_id is not None and ce_id != str(event.event_id):
        raise DecodeError(f"ce_id header {ce_id!r} differs from event_id {event.event_id}")
    return event


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(part) for part in error["loc"]) or "(root)"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)
