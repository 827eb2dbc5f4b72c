"""Logs and trace context: key=value or JSON log lines, W3C ``traceparent`` from a request.

Intake starts (or continues) a trace for every webhook; the ``traceparent`` travels as a Kafka
header on every fact the webhook causes, so one trace id links a form fill to its routing and
its SLA verdict across every service.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from coxswain.runtime import outages, tracing

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
TEXT_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"


def trace_id(traceparent: str) -> str | None:
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or match.group(1) == "ff" or (match.group(1) == "00" and match.group(5)):
        return None
    trace, parent = match.group(2), match.group(3)
    if trace == "0" * 32 or parent == "0" * 16:
        return None
    return trace


def child_traceparent(headers: Mapping[str, str]) -> str:
    """Continue the caller's trace with a new span id, or start a trace when there is none.

    When spans are exported, the new span is the webhook's own span (``tracing.WebhookSpans``)."""
    exported = tracing.current_traceparent()
    if exported is not None:
        return exported
    incoming = headers.get("traceparent")
    trace = trace_id(incoming) if incoming else None
    flags = incoming.strip().lower()[53:55] if trace and incoming else "01"
    return f"00-{trace or secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (rendered), and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    outages.install(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
