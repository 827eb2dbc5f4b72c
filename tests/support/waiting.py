"""One way for a test to wait for something the system does in its own time: poll a condition
until it holds, and fail naming what never happened. Tests assert behaviour, not speed, so the
limit is generous and only bounds a broken run."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool], what: str, within: float = 60, every: float = 0.05
) -> None:
    """Until ``condition()`` (plain or awaitable) is true; AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(every)
