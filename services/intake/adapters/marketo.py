"""Marketo webhooks: the payload template of docs/senders.md and a shared-secret header.

Marketo signs nothing; its webhooks can send custom headers (Webhooks Actions -> Set Custom
Header), so the source's secret travels in ``X-Coxswain-Token`` over HTTPS and is compared in
constant time against every active secret of the source.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from services.intake.adapters.mapping import FieldSpec, SenderMapping
from services.intake.signatures import SignatureRejected

TOKEN_HEADER = "x-coxswain-token"


def verify_token(headers: Mapping[str, str], header: str, secrets: Sequence[str]) -> None:
    offered = headers.get(header)
    if not offered:
        raise SignatureRejected(400, f"missing header: {header} (the source's shared secret)")
    if not any(hmac.compare_digest(offered.strip().encode(), secret.encode()) for secret in secrets):
        raise SignatureRejected(401, f"{header} does not match any active secret for this source")


MAPPING = SenderMapping(
    auth="shared_secret",
    secret_header=TOKEN_HEADER,
    type=FieldSpec(path="event", default="form_submit"),
    external_id=FieldSpec(path="id"),
    contact={
        "email": FieldSpec(path="email"),
        "first_name": FieldSpec(path="first_name"),
        "last_name": FieldSpec(path="last_name"),
        "title": FieldSpec(path="title"),
        "company": FieldSpec(path="company"),
        "company_domain": FieldSpec(path="website"),
        "company_size": FieldSpec(path="employees"),
        "industry": FieldSpec(path="industry"),
        "country": FieldSpec(path="country"),
        "state": FieldSpec(path="state"),
        "campaign": FieldSpec(path="campaign"),
    },
)
