"""Migrations are a step of their own; services refuse a schema they were not built for."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.db.database import SchemaOutOfDate, current_revisions, head_revisions, require_current_schema
from coxswain.settings import DatabaseConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_test_database_is_at_head_after_the_real_migrations(infrastructure: None) -> None:
    config = DatabaseConfig()
    engine = create_async_engine(config.database_url)
    try:
        assert await current_revisions(engine) == head_revisions(config)
        await require_current_schema(engine, config)
    finally:
        await engine.dispose()


async def test_a_service_refuses_to_start_on_an_unmigrated_database(infrastructure: None) -> None:
    config = DatabaseConfig()
    admin = create_async_engine(config.database_url, isolation_level="AUTOCOMMIT")
    name = f"empty_{uuid.uuid4().hex[:8]}"
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    empty_url = config.database_url.rsplit("/", 1)[0] + f"/{name}"
    empty = create_async_engine(empty_url)
    try:
        with pytest.raises(SchemaOutOfDate, match="run `coxswain db upgrade` first"):
            await require_current_schema(empty, DatabaseConfig(database_url=empty_url))
    finally:
        await empty.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}"'))
        await admin.dispose()
