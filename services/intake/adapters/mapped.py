"""Any form or tool without an adapter of its own: the source's entry in the senders file
(``COXSWAIN_SENDERS_FILE``, docs/senders.md) says where each field is and how the source
authenticates: Standard Webhooks signatures with a secret of ``COXSWAIN_WEBHOOK_SECRETS``, or a
shared secret in a header with one of ``COXSWAIN_SENDER_SECRETS``."""

from __future__ import annotations

from services.intake.adapters.mapping import SenderMapping
from services.intake.adapters.sender import Delivery, SecretsSetting, Sender
from services.intake.signatures import verify, verify_token


def _configured(entry: SenderMapping | None) -> SenderMapping | None:
    return entry


def _authenticate(delivery: Delivery, mapping: SenderMapping) -> str | None:
    if mapping.auth == "standard_webhooks":
        return verify(delivery.headers, delivery.body, delivery.keys, delivery.now, delivery.tolerance)
    verify_token(delivery.headers, mapping.secret_header.lower(), delivery.keys)
    return None


def _secrets(mapping: SenderMapping) -> SecretsSetting:
    return "COXSWAIN_WEBHOOK_SECRETS" if mapping.auth == "standard_webhooks" else "COXSWAIN_SENDER_SECRETS"


SENDER = Sender(
    name="mapped",
    summary="Any form or tool, mapped by the source's entry in the senders file.",
    mapping=_configured,
    authenticate=_authenticate,
    secrets=_secrets,
)
