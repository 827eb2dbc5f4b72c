"""One CRM request with retries, shared by every CRM client of the connector (HubSpot, Salesforce).

A client names its CRM and says how to read that CRM's answers (:class:`Dialect`): the error
message of a body, whether a refusal is rate limiting (HubSpot: ``429``; Salesforce also ``403
REQUEST_LIMIT_EXCEEDED``), and what to watch in every response (Salesforce's daily API usage).
The retry policy is the same for all:

- a rate limit waits out ``Retry-After`` (seconds or an HTTP date; without it, the backoff), and
  no request of this client is sent before it expires, whichever record sends it;
- a ``5xx`` or a connection error backs off exponentially with jitter;
- after ``COXSWAIN_CRM_MAX_ATTEMPTS`` tries, the CRM out of reach (a connection error, a rate
  limit, ``502``, ``503``, ``504``) is not the record's fault: :class:`CrmDown`, the batch is
  rolled back and redelivered with backoff until the CRM is back, so an outage of any length
  delays writes and loses none. Any other ``5xx`` is :class:`CrmGaveUp`, a permanent error: that
  record goes to the dead-letter topic with the reason instead of holding up its partition;
- ``401`` / ``403`` (a wrong or expired token, a missing permission) are not the record's fault
  either: the client may renew its token once (:attr:`Dialect.renew`), else
  :class:`CrmUnauthorized` (:class:`~coxswain.runtime.consumer.Unavailable`) at once; a
  ``Retry-After`` longer than ``COXSWAIN_CRM_MAX_WAIT_SECONDS`` is :class:`CrmBusy` (also
  Unavailable). Any other ``4xx`` is :class:`CrmRejected` (permanent).

Every wait and every request is preceded by ``keepalive`` (the consumer passes a ``SELECT 1`` on
its transaction's connection), so a long wait never leaves the transaction idle past
PostgreSQL's ``idle_in_transaction_session_timeout``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

import httpx

from coxswain.core.crm_sync import CrmKind
from coxswain.runtime import metrics
from coxswain.runtime.consumer import PermanentError, Unavailable
from coxswain.settings import CrmSyncConfig

log = logging.getLogger(__name__)

Keepalive = Callable[[], Awaitable[Any]]

# Failures that say the CRM (or the way to it) is down, not that the request is bad.
OUTAGE_STATUSES = frozenset({429, 502, 503, 504})


async def no_keepalive() -> None:
    return None


class CrmRejected(PermanentError):
    """The CRM refused the request itself (a 4xx other than 401, 403, 429): retrying cannot help."""

    def __init__(self, label: str, status: int, message: str, code: str = "") -> None:
        super().__init__(f"{label} answered {status}: {message}")
        self.status = status
        self.message = message
        self.code = code


class CrmGaveUp(PermanentError):
    """Every attempt failed, the last with a 5xx that is not an outage (a 500 for this request)."""


class CrmDown(Unavailable):
    """Every attempt failed, the last because the CRM was out of reach: the batch comes back later."""


class CrmUnauthorized(Unavailable):
    """401 / 403: the token is wrong, expired or lacks a permission; no record can be written."""


class CrmBusy(Unavailable):
    """The CRM asked for a pause longer than a batch may wait (Retry-After)."""


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class Failure:
    """What a CRM said when it refused a request: the message, and its error code if it has one."""

    message: str
    code: str = ""


def _ignore(response: httpx.Response) -> None:
    return None


@dataclass
class Dialect:
    """How one CRM speaks: its name, how its errors read, and which refusals mean "slow down"."""

    crm: CrmKind
    label: str  # for messages: "HubSpot", "Salesforce"
    failure: Callable[[httpx.Response], Failure]
    # A refusal that is rate limiting even though its status is not 429.
    throttled: Callable[[httpx.Response, Failure], bool] = lambda response, failure: False
    # Called with every response (a header to read, such as Salesforce's API usage).
    observe: Callable[[httpx.Response], None] = _ignore
    # Gets a new token after a 401 (None: the token is fixed, a 401 stops the batch).
    renew: Callable[[], Awaitable[str]] | None = None


class HttpOptions(TypedDict, total=False):
    """What a test replaces in a CRM client: the transport, the clocks, sleeping and jitter."""

    transport: httpx.AsyncBaseTransport | None
    clock: Callable[[], float]  # monotonic seconds
    wall_clock: Callable[[], datetime]
    sleep: Callable[[float], Awaitable[None]]
    jitter: Callable[[], float]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RetryingHttp:
    """An ``httpx.AsyncClient`` whose ``request`` retries as the module says."""

    def __init__(
        self, dialect: Dialect, config: CrmSyncConfig, base_url: str, token: str, **options: Unpack[HttpOptions]
    ) -> None:
        self.dialect = dialect
        self._config = config
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=config.crm_request_timeout_seconds,
            transport=options.get("transport"),
        )
        self._clock = options.get("clock", time.monotonic)
        self._wall_clock = options.get("wall_clock", _utc_now)
        self._sleep = options.get("sleep", asyncio.sleep)
        self._jitter = options.get("jitter", random.random)
        # Nothing is sent before this (monotonic) moment: the last Retry-After or backoff.
        self._not_before = -math.inf

    def rebase(self, base_url: str, token: str) -> None:
        """A new API root and token (a renewed OAuth token names its instance URL)."""
        self._http.base_url = httpx.URL(base_url)
        self._http.headers["Authorization"] = f"Bearer {token}"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        keepalive: Keepalive = no_keepalive,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """The parsed JSON answer (``{}`` for an empty one, such as a ``204``)."""
        crm, label = self.dialect.crm, self.dialect.label
        attempts = self._config.crm_max_attempts
        last, outage, renewed = "", False, False
        attempt = 0
        while attempt < attempts:
            attempt += 1
            await self._wait(keepalive)
            await keepalive()
            outcome = await self._send(method, path, body, params)
            if isinstance(outcome, str):
                reason, last, outage = "connection", outcome, True
                self._back_off(attempt)
            elif outcome.status_code < 300:
                self.dialect.observe(outcome)
                return outcome.json() if outcome.content else {}
            else:
                self.dialect.observe(outcome)
                status, failure = outcome.status_code, self.dialect.failure(outcome)
                metrics.CRM_ERRORS.labels(crm, str(status)).inc()
                throttled = status == 429 or self.dialect.throttled(outcome, failure)
                if status == 401 and self.dialect.renew is not None and not renewed:
                    renewed = True
                    attempt -= 1  # a renewed token is not a try of the request
                    log.info("%s token refused, renewing it: %s", crm, failure.message)
                    await self.dialect.renew()
                    continue
                if status in (401, 403) and not throttled:
                    log.warning("%s refused the token: status=%s message=%s", crm, status, failure.message)
                    raise CrmUnauthorized(f"{label} answered {status} to {method} {path}: {failure.message}")
                outage = throttled or status in OUTAGE_STATUSES
                if throttled:
                    reason, last = "429", f"{status} {failure.message}"
                    delay = retry_after_seconds(outcome.headers.get("Retry-After"), self._wall_clock())
                    if delay is None:
                        self._back_off(attempt)
                    else:
                        self._not_before = max(self._not_before, self._clock() + delay)
                elif status >= 500:
                    reason, last = "5xx", f"{status} {failure.message}"
                    self._back_off(attempt)
                else:
                    raise CrmRejected(label, status, failure.message, failure.code)
            if attempt < attempts:
                metrics.CRM_RETRIES.labels(crm, reason).inc()
                log.info("%s request retried: %s %s reason=%s attempt=%s", crm, method, path, reason, attempt)
        if outage:
            raise CrmDown(f"{label} {method} {path} failed {attempts} times; last: {last}; the batch comes back")
        raise CrmGaveUp(f"{label} {method} {path} failed {attempts} times; last: {last}")

    async def _send(self, method: str, path: str, body: Any, params: Mapping[str, str] | None) -> httpx.Response | str:
        """The response, or what kept it from coming (returned, not raised: the consumer must not
        mistake a CRM connection error in the exception chain for a database outage)."""
        try:
            return await self._http.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            metrics.CRM_ERRORS.labels(self.dialect.crm, "connection").inc()
            return f"{type(exc).__name__}: {exc}"[:300]

    def _back_off(self, attempt: int) -> None:
        base = self._config.crm_backoff_seconds * 2 ** (attempt - 1)
        delay = min(base, self._config.crm_max_backoff_seconds) * (0.5 + self._jitter() / 2)
        self._not_before = max(self._not_before, self._clock() + delay)

    async def _wait(self, keepalive: Keepalive) -> None:
        """Until ``_not_before``, keeping the transaction alive; too long a wait gives the batch back."""
        remaining = self._not_before - self._clock()
        if remaining <= 0:
            return
        if remaining > self._config.crm_max_wait_seconds:
            raise CrmBusy(
                f"{self.dialect.label} asked for a pause of {remaining:.0f}s; the batch waits outside the transaction"
            )
        while (remaining := self._not_before - self._clock()) > 0:
            await self._sleep(min(remaining, 1.0))
            await keepalive()
