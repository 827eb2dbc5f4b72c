"""What a webhook sender is to intake: one value per sender, in the registry of
``services/intake/adapters/__init__.py`` (``SENDERS``). Intake gives each a route,
``POST /v1/webhooks/{source}/<name>``, and runs every delivery through the same steps (secrets,
authentication, rate limit, mapping, the inbox); a sender only says what differs: where its
mapping comes from, how a delivery is authenticated, and how its payload is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from services.intake.adapters.mapping import SenderMapping

SecretsSetting = Literal["COXSWAIN_WEBHOOK_SECRETS", "COXSWAIN_SENDER_SECRETS"]


@dataclass(frozen=True)
class Delivery:
    """A webhook as it arrived, with the active secrets of its source."""

    headers: Mapping[str, str]
    method: str
    uri: str  # the URL the sender called (COXSWAIN_INTAKE_PUBLIC_URL behind a proxy)
    body: bytes
    keys: Sequence[str]
    now: datetime
    tolerance: timedelta


def _as_is(document: Any) -> Any:
    return document


def _sender_secrets(_: SenderMapping) -> SecretsSetting:
    return "COXSWAIN_SENDER_SECRETS"


@dataclass(frozen=True)
class Sender:
    name: str  # the route's last segment
    summary: str  # the route's description in the OpenAPI document
    # The mapping a source uses, given its entry in the senders file (None: none; None back: 404).
    mapping: Callable[[SenderMapping | None], SenderMapping | None]
    # Raises SignatureRejected; returns the delivery's id when the scheme carries one, else None
    # (the body then names the delivery, since such senders retry with the same body).
    authenticate: Callable[[Delivery, SenderMapping], str | None]
    normalise: Callable[[Any], Any] = _as_is
    # Which setting holds the source's secrets.
    secrets: Callable[[SenderMapping], SecretsSetting] = _sender_secrets
