"""JSON logs, W3C trace context and the HTTP metrics of an instrumented app (no infrastructure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from fastapi import FastAPI

from coxswain.runtime.metrics import instrument
from coxswain.runtime.telemetry import JsonFormatter, child_traceparent, trace_id
from services.intake.adapters.hubspot import sign_v3, verify_v3
from services.intake.signatures import SignatureRejected

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_json_log_lines_render_the_message_and_the_exception() -> None:
    record = logging.LogRecord("coxswain.test", logging.WARNING, __file__, 1, "lead=%s count=%s", ("L1", 3), None)
    document = orjson.loads(JsonFormatter().format(record))
    assert document["msg"] == "lead=L1 count=3"
    assert document["level"] == "WARNING" and document["logger"] == "coxswain.test"
    assert datetime.fromisoformat(document["ts"]).tzinfo is not None
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in orjson.loads(JsonFormatter().format(failed))["exc"]


def test_intake_continues_a_valid_trace_and_starts_one_otherwise() -> None:
    continued = child_traceparent({"traceparent": CALLER})
    assert trace_id(continued) == "0af7651916cd43dd8448eb211c80319c"
    assert continued.endswith("-01") and continued.split("-")[2] != "b7ad6b7169203331"
    for bad in ("", "garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01", "ff-" + "1" * 32 + "-" + "2" * 16 + "-01"):
        started = child_traceparent({"traceparent": bad} if bad else {})
        assert trace_id(started) is not None and trace_id(started) != "0" * 32


def test_hubspot_v3_is_hmac_sha256_over_method_uri_body_and_millisecond_timestamp() -> None:
    secret, body = "client-secret", b'{"email":"a@b.example.com"}'
    sent_at = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    uri = "https://leads.example.com/v1/webhooks/hubspot/hubspot?type=demo_request"
    headers = sign_v3(secret, "POST", uri, body, sent_at)
    assert headers["x-hubspot-request-timestamp"] == "1795426200000"
    message = b"POST" + uri.encode() + body + b"1795426200000"
    expected = base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()
    assert headers["x-hubspot-signature-v3"] == expected
    verify_v3(headers, "POST", uri, body, [secret], sent_at + timedelta(minutes=4), timedelta(minutes=5))
    encoded = "https://leads.example.com/v1/webhooks/hubspot/hubspot%3Ftype=demo_request"
    verify_v3(headers, "POST", encoded, body, ["old", secret], sent_at, timedelta(minutes=5))
    with pytest.raises(SignatureRejected) as late:
        verify_v3(headers, "POST", uri, body, [secret], sent_at + timedelta(minutes=6), timedelta(minutes=5))
    assert late.value.status == 401


async def test_an_instrumented_app_counts_requests_by_route_template() -> None:
    app = FastAPI()

    @app.get("/v1/things/{thing}")
    async def thing(thing: str) -> dict[str, str]:
        return {"thing": thing}

    instrument(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        assert (await client.get("/v1/things/a")).status_code == 200
        assert (await client.get("/v1/things/b")).status_code == 200
        exposition = await client.get("/metrics")
    assert exposition.status_code == 200
    assert exposition.headers["content-type"].startswith("text/plain")
    lines = exposition.text.splitlines()
    assert any(
        line.startswith('coxswain_http_requests_total{method="GET",route="/v1/things/{thing}",status="200"} ')
        for line in lines
    ), [line for line in lines if "http_requests" in line]
