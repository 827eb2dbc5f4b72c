"""HubSpot workflow webhooks ("Send a webhook" action) and HubSpot's v3 request signature.

v3, as HubSpot documents it: base64(HMAC-SHA256(client secret, method + URI + body + timestamp)),
sent as ``X-HubSpot-Signature-v3`` with the timestamp (epoch milliseconds) in
``X-HubSpot-Request-Timestamp``; requests older than 5 minutes are refused. The URI is the full
URL HubSpot called, with a few percent-encoded characters decoded before signing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from services.intake.adapters.mapping import FieldSpec, SenderMapping
from services.intake.adapters.sender import Delivery, Sender
from services.intake.signatures import SignatureRejected

SIGNATURE_HEADER = "x-hubspot-signature-v3"
TIMESTAMP_HEADER = "x-hubspot-request-timestamp"

# The characters HubSpot's request-validation guide lists as decoded in the signed URI.
DECODED_IN_URI = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


def decode_uri(uri: str) -> str:
    for encoded, plain in DECODED_IN_URI.items():
        uri = uri.replace(encoded, plain).replace(encoded.lower(), plain)
    return uri


def signature_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def sign_v3(secret: str, method: str, uri: str, body: bytes, sent_at: datetime) -> dict[str, str]:
    """The headers HubSpot would attach; for tests and for senders that imitate HubSpot."""
    timestamp = str(int(sent_at.timestamp() * 1000))
    return {
        SIGNATURE_HEADER: signature_v3(secret, method, decode_uri(uri), body, timestamp),
        TIMESTAMP_HEADER: timestamp,
        "content-type": "application/json",
    }


def verify_v3(
    headers: Mapping[str, str],
    method: str,
    uri: str,
    body: bytes,
    secrets: Sequence[str],
    now: datetime,
    tolerance: timedelta,
) -> None:
    missing = [name for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER) if not headers.get(name)]
    if missing:
        raise SignatureRejected(400, f"missing header(s): {', '.join(missing)} (HubSpot v3 request signature required)")
    raw_timestamp = headers[TIMESTAMP_HEADER].strip()
    try:
        sent_at = datetime.fromtimestamp(int(raw_timestamp) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise SignatureRejected(400, f"{TIMESTAMP_HEADER} must be integer milliseconds since the Unix epoch") from None
    if sent_at < now - tolerance:
        raise SignatureRejected(
            401, f"{TIMESTAMP_HEADER} is older than the {int(tolerance.total_seconds())} s tolerance"
        )
    if sent_at > now + tolerance:
        raise SignatureRejected(
            401, f"{TIMESTAMP_HEADER} is more than {int(tolerance.total_seconds())} s in the future"
        )
    offered = headers[SIGNATURE_HEADER].strip().encode()
    for secret in secrets:
        for candidate_uri in dict.fromkeys((decode_uri(uri), uri)):
            expected = signature_v3(secret, method, candidate_uri, body, raw_timestamp).encode()
            if hmac.compare_digest(expected, offered):
                return
    raise SignatureRejected(
        401,
        f"{SIGNATURE_HEADER} does not match: sign with the HubSpot app's client secret over the exact URL "
        "HubSpot called (set COXSWAIN_INTAKE_PUBLIC_URL when intake sits behind a proxy)",
    )


def normalise(document: Any) -> dict[str, Any]:
    """Both body shapes of the workflow action become ``{"id": ..., "properties": {name: value}}``:
    the whole record (properties as ``{"value": ...}`` objects, contact id in ``vid``/``objectId``)
    or a customised body of property name -> value pairs."""
    if not isinstance(document, dict):
        raise ValueError("a HubSpot webhook body is a JSON object")
    source = document.get("properties")
    properties = source if isinstance(source, dict) else document
    flat = {
        name: value.get("value") if isinstance(value, dict) else value
        for name, value in properties.items()
        if not isinstance(value, list)
    }
    contact_id = next(
        (
            document[key]
            for key in ("canonical-vid", "vid", "objectId", "id", "hs_object_id")
            if document.get(key) not in (None, "")
        ),
        flat.get("hs_object_id"),
    )
    return {"id": contact_id, "properties": flat}


MAPPING = SenderMapping(
    external_id=FieldSpec(path="id"),
    contact={
        "email": FieldSpec(path="properties.email"),
        "first_name": FieldSpec(path="properties.firstname"),
        "last_name": FieldSpec(path="properties.lastname"),
        "title": FieldSpec(path="properties.jobtitle"),
        "seniority": FieldSpec(path="properties.hs_seniority"),
        "company": FieldSpec(path="properties.company"),
        "company_domain": FieldSpec(path="properties.hs_email_domain"),
        "company_size": FieldSpec(path="properties.numemployees"),
        "industry": FieldSpec(path="properties.industry"),
        "country": FieldSpec(path="properties.country"),
        "state": FieldSpec(path="properties.state"),
        "campaign": FieldSpec(path="properties.hs_analytics_first_touch_converting_campaign"),
    },
)


def _authenticate(delivery: Delivery, _: SenderMapping) -> None:
    verify_v3(
        delivery.headers, delivery.method, delivery.uri, delivery.body, delivery.keys, delivery.now, delivery.tolerance
    )


SENDER = Sender(
    name="hubspot",
    summary="A HubSpot workflow webhook, verified with HubSpot's v3 request signature.",
    mapping=MAPPING.extended,
    authenticate=_authenticate,
    normalise=normalise,
)
