"""Which lead an event is about.

A lead is a person. Every marketing event carries up to two identity keys:

- ``email:<address>``, the email trimmed and lower-cased;
- ``source:<source>:<external id>``, the sender's own id of the contact.

Intake derives a provisional lead id without any lookup: the UUIDv5 of the email key when there
is an email, else of the source key (so every intake instance agrees, and a webhook retried
anywhere gets the same id). Scoring then resolves the event against the keys already seen
(``lead_identities``), in this order:

1. the email key is known: the event joins that lead;
2. else a source key is known: the event joins that lead (a contact first seen by its external
   id, later with an email, stays one lead, and the email is recorded for it);
3. else the event starts a lead with the provisional id.

Every key the event carries that is not yet known is then recorded for the chosen lead. A key
never moves: when an email and a source key already name two different leads, the email wins
and the two leads are not merged. When the chosen lead differs from the provisional id, the
provisional id is recorded as an alias (``id:<uuid>``), so a CRM activity or an API call
naming the provisional id reaches the same lead, and the event that recorded the alias announces
it once with ``leads.merged.v1`` (``merged``): whoever keyed a record on the provisional id (intake
answered the webhook with it) learns the canonical id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from coxswain.core.ids import uuid5
from schemas.events import LeadMergedV1, LeadReceivedV1

LEAD_NAMESPACE = uuid.UUID("0c9b3b8e-5d0c-4c57-9a59-3c1f1f7a6b01")
EVENT_NAMESPACE = uuid.UUID("8a6f2d4e-1b7c-4e8a-9d3f-6c2b5a4e7f12")
MERGE_NAMESPACE = uuid.UUID("3f1d7c52-8e0b-4a96-b2d4-5c7e9a1f0b63")


class UnidentifiableLead(ValueError):
    pass


def normalise_email(email: str) -> str:
    return email.strip().casefold()


def email_key(email: str) -> str:
    return f"email:{normalise_email(email)}"


def source_key(source: str, external_id: str) -> str:
    return f"source:{source}:{external_id.strip()}"


def alias_key(lead_id: uuid.UUID) -> str:
    return f"id:{lead_id}"


def identity_keys(email: str | None, source: str, external_id: str | None) -> tuple[str, ...]:
    """The event's keys, strongest first."""
    keys = []
    if email:
        keys.append(email_key(email))
    if external_id and external_id.strip():
        keys.append(source_key(source, external_id))
    return tuple(keys)


def lead_id_for(email: str | None, source: str, external_id: str | None) -> uuid.UUID:
    keys = identity_keys(email, source, external_id)
    if not keys:
        raise UnidentifiableLead("an event needs contact.email or external_id to identify its lead")
    return uuid5(LEAD_NAMESPACE, keys[0])


@dataclass(frozen=True)
class Resolution:
    lead_id: uuid.UUID
    record: tuple[str, ...]
    rule: str


def resolve(keys: Sequence[str], known: Mapping[str, uuid.UUID], provisional: uuid.UUID) -> Resolution:
    """Apply the rule above; ``known`` maps the event's keys already seen to their lead."""
    email = next((key for key in keys if key.startswith("email:") and key in known), None)
    source = next((key for key in keys if key.startswith("source:") and key in known), None)
    if email is not None:
        lead_id, rule = known[email], "email already known"
    elif source is not None:
        lead_id, rule = known[source], "source id already known"
    else:
        lead_id, rule = provisional, "new lead"
    record = [key for key in keys if key not in known]
    if lead_id != provisional and alias_key(provisional) not in known:
        record.append(alias_key(provisional))
    return Resolution(lead_id, tuple(record), rule)


def merged(event: LeadReceivedV1, resolution: Resolution) -> LeadMergedV1 | None:
    """The announcement of a new alias, when resolving ``event`` recorded one.

    Its id is derived from the alias alone: an alias is recorded once (its key never moves), and
    should the announcement be made again it is the same fact, which consumers dedupe.
    """
    alias = alias_key(event.lead_id)
    if alias not in resolution.record:
        return None
    return LeadMergedV1(
        event_id=uuid5(MERGE_NAMESPACE, alias),
        lead_id=resolution.lead_id,
        occurred_at=event.occurred_at,
        caused_by=event.event_id,
        alias_lead_id=event.lead_id,
        rule=cast(Literal["email already known", "source id already known"], resolution.rule),
        source=event.source,
        external_id=event.external_id,
        email=event.attributes.email,
    )


def intake_event_id(source: str, webhook_id: str, index: int) -> uuid.UUID:
    """Deterministic: the same webhook delivered twice yields the same event ids."""
    return uuid5(EVENT_NAMESPACE, f"{source}/{webhook_id}/{index}")
