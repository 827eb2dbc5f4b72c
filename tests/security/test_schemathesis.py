"""Property-based bad input against the OpenAPI of every HTTP app, in process, on the real PostgreSQL.

Each app in ``APPS`` is built the way its service builds it and served over ASGI to schemathesis,
which generates requests from the app's OpenAPI document (valid, and deliberately invalid). A thin
ASGI layer plays a legitimate client for four requests in five: it signs webhooks over their raw
body for a configured source and sends the admin bearer token, so the fuzzing reaches validation,
storage and the admin and roster operations, not just the authentication checks. Every answer
must be below 500 and documented, and every 4xx must carry a ``detail`` saying why.

The apps write to a database of their own (``coxswain_fuzz``, migrated here), so fuzzed roster
changes, agreements and leads never reach the other tests, and no broker: nothing is published.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS
from schemathesis.core.result import Err
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.core.agreement import load_agreement
from coxswain.db.database import create_engine, upgrade
from coxswain.settings import DatabaseConfig
from services.intake.signatures import sign
from services.reporting.app import create_reporting_app
from tests.support.stack import SECRET

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_TOKEN = "fuzz-admin-" + "t0k3n-4f9c2e7a1b8d"
FUZZ_DATABASE = "coxswain_fuzz"
SOURCE_SEGMENT = re.compile(r"^/v1/webhooks/[^/]*/")
EXAMPLES_PER_OPERATION = 25


def intake() -> FastAPI:
    from coxswain_app.wiring import intake_app

    app, _ = intake_app()
    return app


def roster() -> FastAPI:
    from coxswain_app.wiring import roster_api_app

    app, _ = roster_api_app()
    return app


def reporting() -> FastAPI:
    agreement = load_agreement(Path("examples/agreement.yaml"))
    return create_reporting_app(create_engine(DatabaseConfig()), lambda: agreement, lambda: datetime.now(UTC))


APPS: dict[str, Callable[[], FastAPI]] = {"intake": intake, "roster": roster, "reporting": reporting}


def as_client(app: ASGIApp) -> ASGIApp:
    """Four requests in five (by body, deterministically) come from a legitimate client."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if hashlib.sha256(body + scope["path"].encode()).digest()[0] % 5:
            added = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            path = scope["path"]
            if path.startswith("/v1/webhooks/"):
                path = SOURCE_SEGMENT.sub("/v1/webhooks/webform/", path, count=1)
                added |= sign(SECRET, f"fuzz-{uuid.uuid4().hex}", datetime.now(UTC), body)
            kept = [(k, v) for k, v in scope["headers"] if k.decode().lower() not in added]
            headers = kept + [(k.encode(), v.encode()) for k, v in added.items()]
            scope = {**scope, "path": path, "raw_path": path.encode(), "headers": headers}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return wrapped


async def _fresh_database(url: str) -> None:
    admin = create_async_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {FUZZ_DATABASE} WITH (FORCE)"))
            await connection.execute(text(f"CREATE DATABASE {FUZZ_DATABASE}"))
    finally:
        await admin.dispose()


@pytest.fixture(scope="module")
def fuzz_database(infrastructure: None) -> Iterator[str]:
    url = make_url(DatabaseConfig().database_url).set(database=FUZZ_DATABASE).render_as_string(hide_password=False)
    asyncio.run(_fresh_database(url))
    upgrade(DatabaseConfig(database_url=url))
    yield url


@pytest.fixture
def fuzz_environment(fuzz_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COXSWAIN_DATABASE_URL", fuzz_database)
    # No broker: the intake's relay keeps retrying in the background, so no fuzzed fact reaches a topic.
    monkeypatch.setenv("COXSWAIN_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("COXSWAIN_WEBHOOK_SECRETS", orjson.dumps({"webform": SECRET, "crm": SECRET}).decode())
    monkeypatch.setenv("COXSWAIN_ADMIN_TOKEN", ADMIN_TOKEN)


def explains_itself(response: Any, case: Any) -> None:
    if 400 <= response.status_code < 500:
        document = orjson.loads(response.content)
        assert isinstance(document, dict), f"{case.method} {case.path}: 4xx body is not an object"
        assert document.get("detail"), f"{case.method} {case.path}: {response.status_code} without a detail"


def _flatten(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        return [problem for inner in exc.exceptions for problem in _flatten(inner)]
    return [f"{type(exc).__name__}: {str(exc).strip()[:1500]}"]


@pytest.mark.parametrize("name", sorted(APPS))
def test_no_generated_request_gets_a_server_error_and_every_refusal_explains_itself(
    name: str, fuzz_environment: None
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", as_client(APPS[name]()))
    checks = [CHECKS.get_by_names([n])[0] for n in ("not_a_server_error", "status_code_conformance")]
    failures: list[str] = []
    answers: Counter[tuple[str, int]] = Counter()
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself did not parse
            raise result.err()
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples on every run: CI never flakes, a failure always reproduces
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call()
            answers[(case.path, response.status_code)] += 1
            # A readiness probe answers 503 by design when a dependency is away (here: Kafka).
            case.validate_response(response, checks=checks[1:] if case.path == "/readyz" else checks)
            explains_itself(response, case)

        try:
            fuzz()
        except Exception as exc:
            failures.extend(f"{operation.label}: {problem}" for problem in _flatten(exc))
    assert not failures, "\n\n".join(failures)
    # The client layer works: generated requests get past authentication to the real work.
    assert any(200 <= status < 300 for (path, status) in answers if path != "/healthz"), answers
    if name == "intake":
        assert answers[("/v1/webhooks/{source}/events", 202)] > 0, answers
        assert answers[("/v1/webhooks/{source}/activities", 202)] > 0, answers
