"""The checks every intake route runs before it reads a webhook, in the same words everywhere:
the body's size, the sender's authentication, the source's rate limit."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from fastapi import Request

from services.intake.events import Problem
from services.intake.limits import SourceRateLimiter
from services.intake.signatures import SignatureRejected

log = logging.getLogger(__name__)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 beyond ``max_bytes`` (by its declared length before reading it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise Problem(413, f"body is larger than {max_bytes} bytes")
    body = await request.body()
    if len(body) > max_bytes:
        raise Problem(413, f"body is larger than {max_bytes} bytes")
    return body


def authenticated(source: str, sender: str, check: Callable[[], str | None]) -> str | None:
    """What ``check`` returns; its refusal logged and answered with its own status (400 or 401)."""
    try:
        return check()
    except SignatureRejected as rejected:
        log.info(
            "webhook rejected: source=%s sender=%s status=%s reason=%s",
            source,
            sender,
            rejected.status,
            rejected.message,
        )
        raise Problem(rejected.status, rejected.message) from None


def within_rate(limiter: SourceRateLimiter, source: str, per_second: float, hint: str = "") -> None:
    """429 with ``Retry-After`` when the source is over its rate."""
    wait = limiter.acquire(source)
    if wait > 0:
        log.info("webhook rate-limited: source=%s retry_after_seconds=%.2f", source, wait)
        raise Problem(
            429,
            f"source {source!r} is over its limit of {per_second:g} webhooks per second{hint}",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
