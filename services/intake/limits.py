"""Per-source rate limiting: a token bucket per sending system.

In process memory, so the limit holds per intake instance: N instances behind a load balancer
admit up to N times the rate. That is enough to stop one runaway sender from starving the
others; a global limit belongs in front of the instances (a gateway), not here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class SourceRateLimiter:
    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.burst = float(burst or max(1, int(per_second)))
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def acquire(self, source: str) -> float:
        """Take one token: 0.0 when admitted, else the seconds until a token will be there."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.setdefault(source, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_second)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.per_second
