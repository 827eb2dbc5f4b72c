"""Which lead an event is about.

Rule: a lead is a person. Events that carry an email join the lead of that email, normalised
(trimmed, lower-cased); events without one join the lead of their sender's contact id
(source + external id). The id is a UUIDv5 of that key, so every intake instance derives the
same lead id without a lookup, and every fact about the person is keyed (and ordered) alike.
"""

from __future__ import annotations

import uuid

LEAD_NAMESPACE = uuid.UUID("0c9b3b8e-5d0c-4c57-9a59-3c1f1f7a6b01")
EVENT_NAMESPACE = uuid.UUID("8a6f2d4e-1b7c-4e8a-9d3f-6c2b5a4e7f12")


class UnidentifiableLead(ValueError):
    pass


def normalise_email(email: str) -> str:
    return email.strip().casefold()


def lead_id_for(email: str | None, source: str, external_id: str | None) -> uuid.UUID:
    if email:
        return uuid.uuid5(LEAD_NAMESPACE, f"email:{normalise_email(email)}")
    if external_id:
        return uuid.uuid5(LEAD_NAMESPACE, f"source:{source}:{external_id.strip()}")
    raise UnidentifiableLead("an event needs contact.email or external_id to identify its lead")


def intake_event_id(source: str, webhook_id: str, index: int) -> uuid.UUID:
    """Deterministic: the same webhook delivered twice yields the same event ids."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{source}/{webhook_id}/{index}")
