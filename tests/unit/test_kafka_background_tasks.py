"""Which ended aiokafka background tasks make a client one to replace (coxswain.runtime.kafka)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

from coxswain.runtime.kafka import background_task_failure


async def ended_with(error: BaseException | None) -> asyncio.Task[None]:
    async def body() -> None:
        if error is not None:
            raise error

    task = asyncio.create_task(body())
    with contextlib.suppress(BaseException):
        await task
    return task


async def cancelled() -> asyncio.Task[bool]:
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return task


async def test_a_consumer_whose_metadata_or_fetch_task_failed_is_to_be_replaced() -> None:
    closed = RuntimeError("the handler is closed")
    running = asyncio.create_task(asyncio.Event().wait())
    try:
        by_metadata = SimpleNamespace(
            _client=SimpleNamespace(_sync_task=await ended_with(closed)), _fetcher=SimpleNamespace(_fetch_task=running)
        )
        by_fetch = SimpleNamespace(
            _client=SimpleNamespace(_sync_task=running), _fetcher=SimpleNamespace(_fetch_task=await ended_with(closed))
        )
        healthy = SimpleNamespace(
            _client=SimpleNamespace(_sync_task=running), _fetcher=SimpleNamespace(_fetch_task=running)
        )
        assert background_task_failure(by_metadata) is closed
        assert background_task_failure(by_fetch) is closed
        assert background_task_failure(healthy) is None
    finally:
        running.cancel()


async def test_a_producer_whose_send_task_failed_is_to_be_replaced() -> None:
    closed = RuntimeError("the handler is closed")
    producer = SimpleNamespace(
        client=SimpleNamespace(_sync_task=None), _sender=SimpleNamespace(_sender_task=await ended_with(closed))
    )
    assert background_task_failure(producer) is closed


async def test_tasks_stopped_on_purpose_or_absent_are_not_failures() -> None:
    stopped = SimpleNamespace(_client=SimpleNamespace(_sync_task=await cancelled()), _fetcher=None)
    assert background_task_failure(stopped) is None
    assert background_task_failure(SimpleNamespace()) is None
    assert background_task_failure(None) is None
