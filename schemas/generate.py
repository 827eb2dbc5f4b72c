"""Generate the published contracts (JSON Schema per event, one AsyncAPI 3 document) from the
pydantic models, so the documents can never say something the code does not do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from schemas.events import ALL_EVENTS, Event, dead_letter_topic

HERE = Path(__file__).parent
JSONSCHEMA_DIR = HERE / "jsonschema"
ASYNCAPI_FILE = HERE / "asyncapi.yaml"
AGREEMENT_SCHEMA_FILE = HERE / "agreement.schema.json"

CE_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject"],
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {"type": "string", "description": "Same as event_id; consumers dedupe on it."},
        "ce_source": {"type": "string"},
        "ce_type": {"type": "string"},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "The lead id."},
        "traceparent": {"type": "string", "description": "W3C trace context, when the webhook carried one."},
    },
}


def json_schema(event: type[Event]) -> dict[str, Any]:
    schema = event.model_json_schema(mode="serialization")
    schema["$id"] = f"https://coxswain.dev/schemas/{event.ce_type}.json"
    schema["x-topic"] = event.topic
    schema["x-ce-type"] = event.ce_type
    return schema


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event in ALL_EVENTS:
        name = event.__name__
        messages[name] = {
            "name": name,
            "title": event.ce_type,
            "summary": (event.__doc__ or "").strip(),
            "contentType": "application/json",
            "headers": CE_HEADERS,
            "payload": {"$ref": f"./jsonschema/{event.ce_type}.json"},
            "bindings": {"kafka": {"key": {"type": "string", "format": "uuid", "description": "lead_id"}}},
        }
        channels[event.topic] = {
            "address": event.topic,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "description": f"Key: lead id (per-lead order). Dead letters: {dead_letter_topic(event.topic)}.",
        }
        operations[f"publish{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{event.topic}"},
            "summary": f"{event.ce_source} publishes {name}.",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Coxswain events",
            "version": "1.0.0",
            "description": "Facts published by Coxswain. Values are JSON; CloudEvents attributes are ce_* headers.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def documents() -> dict[Path, str]:
    """The event documents: one JSON Schema per event and the AsyncAPI document. The agreement's
    schema is added by ``coxswain.contracts``: the agreement model stands on the event models."""
    files = {
        JSONSCHEMA_DIR / f"{event.ce_type}.json": json.dumps(json_schema(event), indent=2, sort_keys=True) + "\n"
        for event in ALL_EVENTS
    }
    files[ASYNCAPI_FILE] = yaml.safe_dump(asyncapi(), sort_keys=False, width=120)
    return files
