"""OpenTelemetry export when configured: intake and a consumer service, each its own process with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a small OTLP/HTTP collector this test runs, send
spans that continue the webhook caller's trace: intake's span is the caller's child, the
consumer's span of every fact the webhook caused is intake's child, and no span carries the
lead's personal data."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.stack import ServiceProcess, Stack, TopicWatcher, free_port, signed, wait_until_ready

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRACE = secrets.token_hex(16)
CALLER_SPAN = secrets.token_hex(8)
EMAIL = f"traced-{uuid.uuid4().hex[:8]}@example.com"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]


class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(self.path, self.headers.get("content-type", ""), request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, content_type: str, request: ExportTraceServiceRequest) -> None:
        assert path == "/v1/traces" and content_type == "application/x-protobuf", (path, content_type)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {}
                    for attribute in span.attributes:
                        value = attribute.value
                        attributes[attribute.key] = (
                            value.int_value if value.WhichOneof("value") == "int_value" else value.string_value
                        )
                    spans.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes=attributes,
                        )
                    )
        with self.lock:
            self.requests += 1
            self.spans += spans

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    running = Collector()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def traced_env(stack: Stack, collector: Collector) -> dict[str, str]:
    return {
        **stack.env(),
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


@pytest.fixture(scope="module")
def traced(stack: Stack, collector: Collector) -> Iterator[str]:
    """A second intake and the reporting consumer, both exporting spans to the collector."""
    intake_port = free_port()
    env = traced_env(stack, collector)
    intake = stack.services["intake-traced"] = ServiceProcess(
        "intake", {**env, "COXSWAIN_INTAKE_PORT": str(intake_port)}, stack.log_dir
    )
    intake.start()
    stack.start_reporting("reporting-traced", env)
    url = f"http://127.0.0.1:{intake_port}"
    wait_until_ready(url, intake)
    yield url
    intake.stop()
    stack.services["reporting-traced"].stop()


async def test_spans_continue_the_webhook_callers_trace_through_kafka(traced: str, collector: Collector) -> None:
    body = {
        "type": "demo_request",
        "contact": {"email": EMAIL, "first_name": "Tracy", "title": "VP Sales", "company_size": 300, "country": "US"},
    }
    async with TopicWatcher(["leads.received.v1"]) as watcher, httpx.AsyncClient(base_url=traced, timeout=10) as client:
        payload, headers = signed(body)
        response = await client.post(
            "/v1/webhooks/webform/events",
            content=payload,
            headers={**headers, "traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"},
        )
        assert response.status_code == 202, response.text
        lead_id = response.json()["events"][0]["lead_id"]
        [received] = await watcher.wait_for("leads.received.v1", lambda seen: seen.value.get("lead_id") == lead_id)

    wanted_topics = {"leads.received.v1", "leads.qualified.v1", "leads.routed.v1"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        spans = collector.of_trace(TRACE)
        consumed = {s.attributes.get("messaging.destination.name") for s in spans if s.service == "coxswain-reporting"}
        if any(s.service == "coxswain-intake" for s in spans) and wanted_topics <= consumed:
            break
        await asyncio.sleep(0.2)

    [webhook] = [s for s in spans if s.service == "coxswain-intake"]
    assert webhook.parent_span_id == CALLER_SPAN, "intake's span is a child of the caller's"
    assert webhook.kind == 2  # SPAN_KIND_SERVER
    assert webhook.attributes["coxswain.webhook.source"] == "webform"
    assert webhook.attributes["http.response.status_code"] == 202
    # The fact on Kafka carries intake's span: every consumer continues from there.
    assert received.headers["traceparent"] == f"00-{TRACE}-{webhook.span_id}-01"

    by_topic = {s.attributes["messaging.destination.name"]: s for s in spans if s.service == "coxswain-reporting"}
    assert wanted_topics <= set(by_topic), sorted(by_topic)
    first = by_topic["leads.received.v1"]
    assert first.parent_span_id == webhook.span_id and first.kind == 5  # SPAN_KIND_CONSUMER
    assert first.attributes["coxswain.consumer"] == "reporting"
    assert first.attributes["coxswain.event.type"] == "LeadReceivedV1"
    assert first.attributes["coxswain.lead_id"] == lead_id
    assert by_topic["leads.routed.v1"].attributes["coxswain.event.type"] == "LeadRoutedV1"

    everything = repr([(s.name, s.attributes) for s in spans])
    assert EMAIL not in everything and "Tracy" not in everything, "no personal data in spans"
