"""OpenTelemetry spans, exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

A span for every webhook intake answers (its parent: the caller's ``traceparent``) and one for
every event a consumer handles (its parent: the ``traceparent`` header of the record). The span's
own context is what travels on: intake stamps it on every fact the webhook causes, a consumer on
every fact it emits, so one trace shows a form fill, its scoring, routing and SLA verdict.

Not configured, nothing is imported beyond the API and every call is one check of a module
global. Attributes name topics, event types, ids and HTTP statuses; never a person's data.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, Tracer, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

# The standard variables Coxswain's processes honour (read by the OpenTelemetry SDK itself).
STANDARD_VARIABLES = frozenset(
    {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
        "OTEL_BSP_SCHEDULE_DELAY",
    }
)
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer | None = None
_provider: Any = None

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def wanted(environ: MutableMapping[str, str] | None = None) -> bool:
    """The standard variables: an OTLP endpoint, and tracing not switched off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(service: str) -> bool:
    """Export this process's spans when configured; true when it does."""
    global _tracer, _provider
    if _tracer is not None or not wanted():
        return _tracer is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.instance.id": f"{socket.gethostname()}:{os.getpid()}", "service.namespace": "coxswain"}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = f"coxswain-{service}"
    # Endpoint, headers, timeout, compression, sampler and batch sizes come from the OTEL_* variables.
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider, _tracer = provider, provider.get_tracer("coxswain")
    log.info("exporting spans over OTLP/HTTP: service=%s", provider.resource.attributes.get("service.name"))
    return True


def shutdown() -> None:
    """Export what is still buffered, then stop tracing."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_of(traceparent: str | None) -> Context | None:
    return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None


def current_traceparent() -> str | None:
    """The ``traceparent`` of the span running now (the webhook's, in intake); None when not tracing."""
    if _tracer is None:
        return None
    context = get_current_span().get_span_context()
    return format_traceparent(context) if context.is_valid else None


def consumed(
    consumer: str,
    topic: str,
    partition: int,
    offset: int,
    event: Any,
    traceparent: str | None,
    started_ns: int,
) -> str | None:
    """Record the span of one handled event, a child of its record's ``traceparent``.

    Returns the ``traceparent`` the facts it caused carry on: the span's own when tracing, else
    the record's, unchanged."""
    if _tracer is None:
        return traceparent
    span = _tracer.start_span(
        f"{consumer} process {topic}",
        context=parent_of(traceparent),
        kind=SpanKind.CONSUMER,
        start_time=started_ns,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": consumer,
            "messaging.message.id": str(event.event_id),
            "coxswain.consumer": consumer,
            "coxswain.event.type": type(event).__name__,
            "coxswain.lead_id": str(event.lead_id),
        },
    )
    span.end()
    return format_traceparent(span.get_span_context())


def now_ns() -> int:
    return time.time_ns()


class WebhookSpans:
    """ASGI middleware: a server span around every webhook, current while intake handles it, so
    the ``traceparent`` intake stamps on the facts is this span's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _tracer
        path = str(scope.get("path", ""))
        if tracer is None or scope.get("type") != "http" or not path.startswith("/v1/webhooks/"):
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name in (b"traceparent", b"tracestate")
        }
        parts = path.split("/")  # "", "v1", "webhooks", source, kind
        source = parts[3][:64] if len(parts) > 3 else ""
        kind = parts[4][:32] if len(parts) > 4 else ""
        status: dict[str, int] = {}

        async def recording_send(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status", 0))
            await send(message)

        with tracer.start_as_current_span(
            f"POST /v1/webhooks/{{source}}/{kind}",
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": str(scope.get("method", "")),
                "http.route": f"/v1/webhooks/{{source}}/{kind}",
                "coxswain.webhook.source": source,
                "coxswain.webhook.kind": kind,
            },
        ) as span:
            await self.app(scope, receive, recording_send)
            code = status.get("code", 0)
            span.set_attribute("http.response.status_code", code)
            if code >= 500:
                span.set_status(StatusCode.ERROR)
