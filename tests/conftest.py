from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.db.database import create_engine
from coxswain.settings import DatabaseConfig
from tests.support import infra


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def infrastructure() -> AsyncIterator[None]:
    """Kafka and PostgreSQL started by the project's scripts, emptied for this session."""
    infra.start()
    await infra.reset_database()
    await infra.reset_topics()
    yield


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    """The test database, through the services' own engine settings (a module may define its own)."""
    database = create_engine(DatabaseConfig())
    yield database
    await database.dispose()
