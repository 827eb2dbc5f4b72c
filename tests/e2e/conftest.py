from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.stack import Stack

AGREEMENT = Path(__file__).parent / "agreement.yaml"


@pytest.fixture(scope="session")
def stack(infrastructure: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every service as its own OS process, started once for the end-to-end tests."""
    running = Stack(agreement=AGREEMENT, log_dir=tmp_path_factory.mktemp("service-logs"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        yield http
