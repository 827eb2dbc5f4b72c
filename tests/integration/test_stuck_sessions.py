"""A process frozen inside a transaction (SIGSTOP, a long pause) holds its locks only until
PostgreSQL ends its idle session (``COXSWAIN_DATABASE_IDLE_IN_TRANSACTION_SECONDS``): then another
instance takes them and carries on, and the frozen one's work is rolled back, to be redone."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.db.database import create_engine
from coxswain.runtime.outages import is_connection_error
from coxswain.settings import DatabaseConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def engines(infrastructure: None) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    frozen = create_engine(DatabaseConfig(database_idle_in_transaction_seconds=1.0))
    awake = create_engine(DatabaseConfig())
    yield frozen, awake
    await frozen.dispose()
    await awake.dispose()


async def test_a_frozen_transactions_locks_are_released_and_its_work_rolled_back(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    frozen, awake = engines
    key = uuid.uuid4().int % 2**62
    stuck = await frozen.connect()
    await stuck.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    # The frozen process goes no further: its session sits idle in its transaction.

    started = time.monotonic()
    async with awake.begin() as connection:
        await connection.execute(text("SET LOCAL lock_timeout = '30s'"))
        await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    waited = time.monotonic() - started

    with pytest.raises(DBAPIError) as ended:
        await stuck.execute(text("SELECT 1"))
    assert is_connection_error(ended.value), "on waking, the frozen process sees a connection error and retries"
    await stuck.close()
    print(f"lock free {waited:.2f} s after the holder froze (idle-in-transaction timeout 1 s)")
