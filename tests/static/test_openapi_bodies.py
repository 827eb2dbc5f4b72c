"""The OpenAPI documents of the roster, admin and reporting APIs show every body: each JSON
operation that takes a body declares its schema, and each 2xx answer declares a schema that is
not an untyped object, so clients and schemathesis see what goes in and what comes out.

The apps are only built, never served: building an engine does not connect."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.access import TokenTable
from coxswain.core.agreement import Agreement, load_agreement
from services.admin.api import create_admin_router
from services.reporting.app import create_reporting_app
from services.roster.app import create_roster_app

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
Document = dict[str, Any]
WRITES = ("post", "put", "patch")
# The probes belong to the runtime (coxswain/runtime/health.py) and answer orchestrators, not clients.
PROBES = frozenset({"/healthz", "/readyz"})
# Actions whose path says everything: they take no body by design.
BODILESS = frozenset(
    {
        ("post", "/v1/reps/{rep_id}/unpause"),
        ("post", "/v1/admin/agreements/{version}/activate"),
    }
)


def _agreement() -> Agreement:
    return AGREEMENT


def _now() -> datetime:
    return datetime(2026, 12, 4, tzinfo=UTC)


def _engine() -> Any:
    return create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")


def roster() -> FastAPI:
    return create_roster_app(_engine(), TokenTable.of("token"), _agreement, _now)


def admin() -> FastAPI:
    app = FastAPI(title="admin")
    app.include_router(create_admin_router(_engine(), TokenTable.of("token"), _agreement, _now))
    return app


def reporting() -> FastAPI:
    return create_reporting_app(_engine(), _agreement, _now, tokens=TokenTable.of("token"))


APPS: dict[str, Callable[[], FastAPI]] = {"roster": roster, "admin": admin, "reporting": reporting}


def resolve(document: Document, schema: Document) -> Document:
    while "$ref" in schema:
        name = str(schema["$ref"]).removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def typed(document: Document, schema: Document) -> bool:
    """A schema that says what the body holds: not ``{}``, not an object of anything."""
    schema = resolve(document, schema)
    for combined in ("anyOf", "oneOf", "allOf"):
        if combined in schema:
            return all(typed(document, part) for part in schema[combined])
    kind = schema.get("type")
    if kind == "array":
        return typed(document, schema.get("items", {}))
    if kind == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        return bool(schema.get("properties")) or (isinstance(extra, dict) and typed(document, extra))
    return kind in ("string", "integer", "number", "boolean", "null")


def operations(document: Document) -> Iterator[tuple[str, str, Document]]:
    for path, methods in document["paths"].items():
        if path in PROBES:
            continue
        for method, operation in methods.items():
            yield method, path, operation


def untyped_bodies(document: Document) -> list[str]:
    """Every operation whose request or 2xx response body the document does not type."""
    found = []
    for method, path, operation in operations(document):
        where = f"{method.upper()} {path}"
        if method in WRITES and (method, path) not in BODILESS:
            schemas = [c.get("schema", {}) for c in operation.get("requestBody", {}).get("content", {}).values()]
            if not schemas or not all(typed(document, schema) for schema in schemas):
                found.append(f"{where}: request body")
        for status, answer in operation["responses"].items():
            if not status.startswith("2") or status == "204":
                continue
            content = answer.get("content", {})
            if not content or not all(typed(document, media.get("schema", {})) for media in content.values()):
                found.append(f"{where}: {status} response")
    return found


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_json_operation_shows_its_request_and_response_bodies(name: str) -> None:
    document = APPS[name]().openapi()

    assert list(operations(document)), "the app has no operations"
    assert untyped_bodies(document) == []


def test_an_untyped_body_is_noticed() -> None:
    """The check itself: a body of anything, an answer of anything and a missing body are found."""
    app = FastAPI()

    @app.post("/anything")
    async def anything(body: dict[str, Any]) -> dict[str, Any]:
        return body

    @app.put("/nothing")
    async def nothing() -> list[int]:
        return []

    assert untyped_bodies(app.openapi()) == [
        "POST /anything: request body",
        "POST /anything: 200 response",
        "PUT /nothing: request body",
    ]
