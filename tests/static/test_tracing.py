"""Tracing is off unless the standard OpenTelemetry variables ask for it, and off it changes nothing:
the ``traceparent`` a consumer passes on is the record's own, and webhooks go straight through."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from coxswain.runtime import tracing
from coxswain.runtime.telemetry import child_traceparent, trace_id
from schemas.events import EngagementType, LeadAttributes, LeadReceivedV1

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_spans_are_exported_only_when_an_endpoint_is_configured(environ: dict[str, str], expected: bool) -> None:
    assert tracing.wanted(environ) is expected


def test_without_configuration_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.configure("test") is False
    assert not tracing.enabled() and tracing.current_traceparent() is None
    event = LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        source="webform",
        webhook_id="msg_1",
        engagement=EngagementType.form_submit,
        attributes=LeadAttributes(),
    )
    assert tracing.consumed("scoring", "leads.received.v1", 0, 7, event, CALLER, tracing.now_ns()) == CALLER
    assert tracing.consumed("scoring", "leads.received.v1", 0, 7, event, None, tracing.now_ns()) is None
    continued = child_traceparent({"traceparent": CALLER})
    assert trace_id(continued) == trace_id(CALLER) and continued != CALLER


async def test_the_webhook_middleware_passes_requests_through_when_off() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 202, "headers": []})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": "/v1/webhooks/webform/events", "method": "POST", "headers": []}
    await tracing.WebhookSpans(app)(scope, receive, send)
    assert seen == ["/v1/webhooks/webform/events"] and sent[0]["status"] == 202


def test_the_traceparent_of_a_span_context_is_w3c() -> None:
    from opentelemetry.trace import SpanContext, TraceFlags

    context = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(1),
    )
    assert tracing.format_traceparent(context) == "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
