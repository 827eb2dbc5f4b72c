"""Marketo webhooks: the payload template of docs/senders.md and a shared-secret header.

Marketo signs nothing; its webhooks can send custom headers (Webhooks Actions -> Set Custom
Header), so the source's secret travels in ``X-Coxswain-Token`` over HTTPS and is compared in
constant time against every active secret of the source.
"""

from __future__ import annotations

from services.intake.adapters.mapping import FieldSpec, SenderMapping
from services.intake.adapters.sender import Delivery, Sender
from services.intake.signatures import verify_token

TOKEN_HEADER = "x-coxswain-token"


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


def _authenticate(delivery: Delivery, mapping: SenderMapping) -> None:
    verify_token(delivery.headers, mapping.secret_header.lower(), delivery.keys)


SENDER = Sender(
    name="marketo",
    summary="A Marketo webhook with the payload template of docs/senders.md and the X-Coxswain-Token header.",
    mapping=MAPPING.extended,
    authenticate=_authenticate,
)
