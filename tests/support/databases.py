"""Databases for tests that need one of their own, or need the outbox to stay put."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coxswain.db.database import create_engine, upgrade
from coxswain.runtime.outbox import RELAY_LOCK
from coxswain.settings import DatabaseConfig


@asynccontextmanager
async def fresh_database(prefix: str, migrate: bool = True) -> AsyncIterator[AsyncEngine]:
    """A new database on the test cluster (at the current schema unless ``migrate`` is false),
    dropped afterwards: for tests whose rows must not meet anyone else's."""
    config = DatabaseConfig()
    admin = create_async_engine(config.database_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = config.database_url.rsplit("/", 1)[0] + f"/{name}"
    if migrate:
        await asyncio.to_thread(upgrade, DatabaseConfig(database_url=url))
    database = create_async_engine(url, pool_size=10, max_overflow=10)
    try:
        yield database
    finally:
        await database.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@asynccontextmanager
async def engine_without_relays() -> AsyncIterator[AsyncEngine]:
    """The shared test database while no outbox relay (the end-to-end stack's) may publish and
    delete rows: for tests that count what a transaction staged in the outbox."""
    database = create_engine(DatabaseConfig())
    async with database.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": RELAY_LOCK})
        await holder.commit()
        try:
            yield database
        finally:
            await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RELAY_LOCK})
            await holder.commit()
    await database.dispose()
