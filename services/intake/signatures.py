"""Standard Webhooks verification (webhook-id, webhook-timestamp, webhook-signature).

The signing scheme itself is the ``standardwebhooks`` library's; what we add is the split of
failures into 400 (the request is incomplete) and 401 (it is not authentic or not fresh), with
a message that says which, and an injected clock. Several secrets per source may be active at
once so a sender can rotate its secret without downtime.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from standardwebhooks.webhooks import Webhook

REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@dataclass(frozen=True)
class SignatureRejected(Exception):
    status: int
    message: str


def _signature_bytes(signature: str) -> bytes:
    return base64.b64decode(signature.split(",", 1)[1])


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: datetime, tolerance: timedelta) -> str:
    """Return the webhook id of an authentic, fresh request; raise SignatureRejected otherwise."""
    missing = [name for name in REQUIRED_HEADERS if not headers.get(name)]
    if missing:
        raise SignatureRejected(400, f"missing header(s): {', '.join(missing)} (Standard Webhooks signature required)")
    webhook_id, raw_timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    try:
        sent_at = datetime.fromtimestamp(int(raw_timestamp), tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise SignatureRejected(400, "webhook-timestamp must be integer seconds since the Unix epoch") from None
    if sent_at < now - tolerance:
        raise SignatureRejected(
            401, f"webhook-timestamp is older than the {int(tolerance.total_seconds())} s tolerance"
        )
    if sent_at > now + tolerance:
        raise SignatureRejected(401, f"webhook-timestamp is more than {int(tolerance.total_seconds())} s in the future")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureRejected(400, "body is not UTF-8") from None
    offered = []
    for candidate in headers["webhook-signature"].split():
        version, _, _ = candidate.partition(",")
        if version != "v1":
            continue
        try:
            offered.append(_signature_bytes(candidate))
        except (IndexError, binascii.Error, ValueError):
            raise SignatureRejected(401, "webhook-signature is malformed; expected 'v1,<base64>'") from None
    if not offered:
        raise SignatureRejected(401, "webhook-signature has no v1 signature")
    for secret in secrets:
        expected = _signature_bytes(Webhook(secret).sign(webhook_id, sent_at, text))
        if any(hmac.compare_digest(expected, signature) for signature in offered):
            return webhook_id
    raise SignatureRejected(401, "webhook-signature does not match any active secret for this source")


def sign(secret: str, webhook_id: str, sent_at: datetime, body: bytes) -> dict[str, str]:
    """Headers a sender attaches; used by the demo traffic generator and the tests."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, sent_at, body.decode("utf-8")),
        "content-type": "application/json",
    }
