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
from pathlib import Path

import orjson
from standardwebhooks.webhooks import Webhook

from coxswain.settings import IntakeConfig

REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_WEBHOOK_ID = 256  # webhook_inbox.webhook_id


class SecretsError(ValueError):
    """The configured secrets cannot be used; the intake must not start with them."""


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
    if len(webhook_id) > MAX_WEBHOOK_ID or not webhook_id.isprintable():
        raise SignatureRejected(400, f"webhook-id must be at most {MAX_WEBHOOK_ID} printable characters")
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


def load_secrets(config: IntakeConfig) -> dict[str, list[str]]:
    """Active secrets per source, from COXSWAIN_WEBHOOK_SECRETS and COXSWAIN_WEBHOOK_SECRETS_FILE.

    Every secret is checked here, at start: one that is not base64 would otherwise fail each
    request that reaches it.
    """
    secrets = {source: [key.get_secret_value() for key in keys] for source, keys in config.webhook_secrets.items()}
    if config.webhook_secrets_file is not None:
        for source, keys in _read_secrets_file(config.webhook_secrets_file).items():
            secrets.setdefault(source, []).extend(key for key in keys if key not in secrets[source])
    for source, keys in secrets.items():
        if not keys:
            raise SecretsError(f"webhook secrets: source {source!r} has no secret")
        for number, key in enumerate(keys, 1):
            try:
                Webhook(key)
            except Exception as exc:  # the library raises its own types (EmptyWebhookSecretError, ...)
                raise SecretsError(
                    f"webhook secrets: source {source!r}, secret #{number} is not usable "
                    f"({type(exc).__name__}); expected 'whsec_' followed by base64"
                ) from None
    return secrets


def _read_secrets_file(path: Path) -> dict[str, list[str]]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise SecretsError(f"{path}: cannot read the webhook secrets file ({exc.strerror})") from None
    except orjson.JSONDecodeError:
        raise SecretsError(f'{path}: not JSON; expected {{"source": "whsec_..." or ["whsec_...", ...]}}') from None
    if not isinstance(document, dict):
        raise SecretsError(f"{path}: expected a JSON object of source -> secret or list of secrets")
    secrets: dict[str, list[str]] = {}
    for source, keys in document.items():
        listed = [keys] if isinstance(keys, str) else keys
        if not isinstance(listed, list) or not all(isinstance(key, str) for key in listed):
            raise SecretsError(f"{path}: source {source!r}: expected a secret or a list of secrets")
        secrets[source] = listed
    return secrets


def verify_token(headers: Mapping[str, str], header: str, secrets: Sequence[str]) -> None:
    offered = headers.get(header)
    if not offered:
        raise SignatureRejected(400, f"missing header: {header} (the source's shared secret)")
    if not any(hmac.compare_digest(offered.strip().encode(), secret.encode()) for secret in secrets):
        raise SignatureRejected(401, f"{header} does not match any active secret for this source")
