from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.support import infra


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def infrastructure() -> AsyncIterator[None]:
    """Kafka and PostgreSQL started by the project's scripts, emptied for this session."""
    infra.start()
    await infra.reset_database()
    await infra.reset_topics()
    yield
