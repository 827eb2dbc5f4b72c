"""Dependency outages in the log: one warning when Kafka or PostgreSQL goes away, one info line
when it answers again, and counters in between, instead of a line (or a traceback) per retry.

While a broker is down, aiokafka logs every failed connect, metadata refresh, fetch and heartbeat:
30 to 40 lines a second per client, which drowns the one line an on-call engineer needs and any
log-based alert. Our own retry loops are no better when the database restarts. So every log line
about a dependency's connectivity (aiokafka's, recognised by its text; ours, tagged with
``extra=about(exc)``) goes through ``OutageFilter`` on the process's log handler:

- errors for less than ``GRACE_SECONDS`` (the group coordinator still loading when a broker has
  just started) are counted, not logged: they heal themselves and read like faults;
- a longer outage is logged once, as a warning, and ``coxswain_dependency_up`` drops to 0;
- ``watch`` (one task per process) asks the dependency directly while an outage is open and, once
  it answers and no error has been seen for ``QUIET_SECONDS``, logs one info line with how long it
  was away and how many errors were counted (``coxswain_dependency_errors_total``).

A process that runs no ``watch`` (a CLI command) closes an outage after ``FORGET_SECONDS`` without
errors, so a later outage is announced again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from aiokafka.errors import KafkaError, KafkaTimeoutError, OutOfOrderSequenceNumber
from prometheus_client import Counter, Gauge
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from coxswain.runtime.waiting import sleep_or_stop

log = logging.getLogger(__name__)

Dependency = Literal["kafka", "postgres"]
Check = Callable[[], Awaitable[None]]
LABEL: dict[Dependency, str] = {"kafka": "Kafka", "postgres": "PostgreSQL"}

GRACE_SECONDS = 2.0
QUIET_SECONDS = 2.0
FORGET_SECONDS = 30.0
CHECK_EVERY_SECONDS = 0.5
CHECK_TIMEOUT_SECONDS = 2.0

DEPENDENCY_UP = Gauge(
    "coxswain_dependency_up",
    "1 while the dependency answers; 0 from the warning that it is unreachable until the line that it is back.",
    ["dependency"],
)
OUTAGES = Counter(
    "coxswain_dependency_outages",
    "Outages of a dependency this process logged (errors for longer than the grace period).",
    ["dependency"],
)
ERRORS = Counter(
    "coxswain_dependency_errors",
    "Connection errors about a dependency: counted here, logged once per outage.",
    ["dependency"],
)

# aiokafka's lines that say a broker or coordinator cannot be reached (versions 0.10-0.12).
_KAFKA_CONNECTIVITY = re.compile(
    r"Unable connect|Unable to update metadata|NodeNotReady|KafkaConnectionError|Connection at \S+ closed"
    r"|coordinator dead|CoordinatorNotAvailable|NotCoordinator|CoordinatorLoadInProgress|RequestTimedOut"
    r"|KafkaTimeoutError|LeaderNotAvailable|NotLeaderForPartition|Heartbeat session expired|HeartbeatRequest"
    r"|Heartbeat send request failed|Heartbeat failed for group \S+: coordinator"
)


@dataclass
class Outage:
    """One dependency's connectivity as this process has seen it (monotonic seconds)."""

    dependency: Dependency
    first: float | None = None
    last: float = 0.0
    errors: int = 0
    announced: bool = False

    @property
    def open(self) -> bool:
        return self.first is not None

    def failed(self, now: float) -> bool:
        """Count one error; True when this one should be logged (the outage outlived the grace)."""
        ERRORS.labels(self.dependency).inc()
        if self.first is not None and now - self.last >= FORGET_SECONDS:
            self._close()
        if self.first is None:
            self.first, self.errors = now, 0
        self.last = now
        self.errors += 1
        if self.announced or now - self.first < GRACE_SECONDS:
            return False
        self.announced = True
        OUTAGES.labels(self.dependency).inc()
        DEPENDENCY_UP.labels(self.dependency).set(0)
        return True

    def answered(self, now: float) -> tuple[float, int] | None:
        """The dependency answered: (seconds away, errors counted) when a logged outage ends here."""
        if self.first is None or now - self.last < QUIET_SECONDS:
            return None
        ended = (self.last - self.first, self.errors) if self.announced else None
        self._close()
        return ended

    def _close(self) -> None:
        self.first, self.errors, self.announced = None, 0, False
        DEPENDENCY_UP.labels(self.dependency).set(1)


OUTAGE: dict[Dependency, Outage] = {"kafka": Outage("kafka"), "postgres": Outage("postgres")}


def is_connection_error(exc: BaseException) -> bool:
    """The database or the way to it is away (refused, shutting down, dropped): retry, never dead-letter.

    Walks the cause chain: asyncpg raises a refused connect as a bare OSError and a server
    shutdown as SQLSTATE 57P01/57P03, which SQLAlchemy wraps as a generic DBAPIError.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OperationalError | InterfaceError | OSError):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if str(getattr(error, "sqlstate", "") or "").startswith(("08", "57P")):
            return True
        error = error.__cause__ or error.__context__
    return False


def _kafka_error(exc: BaseException) -> bool:
    """Kafka away, or just back: besides refused connections and timeouts, a restarted broker
    answers with leaders not yet elected (retriable errors) and, to an idempotent producer whose
    state it lost, out-of-order sequence numbers, until it settles. The relay retries all of them
    (its rows stay in the outbox), so they belong to the outage, not to a traceback each."""
    if isinstance(exc, KafkaTimeoutError | OutOfOrderSequenceNumber):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


def about(exc: BaseException) -> dict[str, Dependency]:
    """``extra=`` for a log line about ``exc``: names the dependency when it is a connection error,
    so the line is counted into that dependency's outage instead of logged each time."""
    if _kafka_error(exc):
        return {"dependency": "kafka"}
    if is_connection_error(exc):
        return {"dependency": "postgres"}
    return {}


class OutageFilter(logging.Filter):
    """On the log handler: lines about an unreachable dependency become one warning per outage."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, outages: Mapping[Dependency, Outage] | None = None
    ) -> None:
        super().__init__()
        self._clock = clock
        self._outages = OUTAGE if outages is None else outages

    def filter(self, record: logging.LogRecord) -> bool:
        dependency: Dependency | None = getattr(record, "dependency", None)
        aiokafka = record.name.startswith("aiokafka") and record.levelno >= logging.WARNING
        # While Kafka is away, every aiokafka complaint (a failed offset commit, a lost member id)
        # is a consequence of the outage already announced.
        if (
            dependency is None
            and aiokafka
            and (_KAFKA_CONNECTIVITY.search(record.getMessage()) or self._outages["kafka"].open)
        ):
            dependency = "kafka"
        if dependency is None:
            return True
        outage = self._outages[dependency]
        if not outage.failed(self._clock()):
            return False
        first = record.getMessage().splitlines()[0][:200]
        if record.exc_info and record.exc_info[1] is not None:
            first = f"{first}: {type(record.exc_info[1]).__name__}"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = (
            "%s unreachable for %.1fs (%s); its connection errors are counted in "
            "coxswain_dependency_errors_total and logged again only when it answers"
        )
        record.args = (LABEL[dependency], self._clock() - (outage.first or 0.0), first)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def install(handler: logging.Handler) -> None:
    handler.addFilter(OutageFilter())
    for dependency in OUTAGE:
        DEPENDENCY_UP.labels(dependency).set(1)


async def watch(checks: Mapping[Dependency, Check], stop: asyncio.Event) -> None:
    """While an outage is open, ask the dependency every half second; log once when it is back."""
    while not stop.is_set():
        for dependency, check in checks.items():
            outage = OUTAGE[dependency]
            if not outage.open:
                continue
            try:
                await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
            except Exception as exc:
                log.warning(
                    "%s check failed: %s", LABEL[dependency], type(exc).__name__, extra={"dependency": dependency}
                )
                continue
            ended = outage.answered(time.monotonic())
            if ended is not None:
                seconds, errors = ended
                log.info(
                    "%s answers again after %.1fs unreachable; %s connection errors were counted meanwhile",
                    LABEL[dependency],
                    seconds,
                    errors,
                )
        await sleep_or_stop(stop, CHECK_EVERY_SECONDS)
