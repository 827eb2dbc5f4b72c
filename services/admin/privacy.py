"""Erase or export everything Coxswain stores about a person (``coxswain privacy``, and
``/v1/admin/privacy/*`` behind scope ``privacy:erase``).

The shell of ``coxswain/core/privacy.py``: find the person's leads (by email, or by a lead id and
its aliases), load every stored value that belongs to them, scrub it, write back what changed, and
stage a ``LeadErasedV1`` fact, all in one transaction that holds the lead's row, so scoring never
writes the person's values back in between. The same transaction records a tombstone per lead id
(``erasures``): a consumer that applies a fact published before the erasure only later applies it
without the person's values. ``repository.HOLDERS`` lists where values about a lead
are kept; every statement is in ``repository.py``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.identity import alias_key, email_key
from coxswain.core.privacy import Person, scrub
from coxswain.runtime import audit, outbox
from schemas.events import LeadErasedV1
from services.admin import repository


@dataclass(frozen=True)
class Found:
    lead_id: uuid.UUID
    aliases: tuple[uuid.UUID, ...]

    @property
    def ids(self) -> list[uuid.UUID]:
        return [self.lead_id, *self.aliases]


async def find(
    connection: AsyncConnection, *, email: str | None = None, lead_id: uuid.UUID | None = None
) -> Found | None:
    """The person's lead (by email or by any of its ids) with its aliases; None if unknown."""
    if email is not None:
        found = await repository.lead_by_identity(connection, email_key(email))
    elif lead_id is not None:
        found = await repository.lead_by_id(connection, lead_id, alias_key(lead_id))
    else:
        raise ValueError("give an email or a lead id")
    if found is None:
        return None
    aliases = await repository.aliases(connection, found)
    return Found(found, tuple(alias for alias in aliases if alias != found))


async def _person(connection: AsyncConnection, found: Found, email: str | None) -> Person:
    documents: list[dict[str, Any]] = [{"email": email}] if email else []
    documents.extend(await repository.person_documents(connection, found.ids))
    documents.extend({"email": known} for known in await repository.emails(connection, found.lead_id))
    return Person.of(documents)


@dataclass(frozen=True)
class Erased:
    found: Found
    rows_changed: int
    fact: LeadErasedV1


async def erase(connection: AsyncConnection, found: Found, email: str | None, now: datetime) -> Erased:
    """Erase the person in the caller's transaction; stage the ``LeadErasedV1`` fact."""
    # First of all: a consumer applying a fact about the lead now finishes before anything is read
    # (so what it writes is scrubbed below), and one that comes later waits for the tombstone.
    await repository.lock_erasure(connection, found.ids)
    # Scoring locks the lead's row for every event it applies: holding it here means no event
    # writes the person's values back while they are being erased.
    await repository.lock_lead(connection, found.lead_id)
    person = await _person(connection, found, email)
    changed = 0
    for holder in repository.HOLDERS:
        changed += await _scrub_table(connection, holder, found, person)
    changed += await _scrub_outbox(connection, found, person)
    changed += await repository.forget_emails(connection, found.lead_id)
    # Facts about the lead published before now may still reach a consumer that is behind: the
    # tombstone makes every consumer apply them without the person's values (runtime/consumer.py).
    await repository.record_erasure(connection, found.ids, now)
    fact = LeadErasedV1(
        event_id=uuid.uuid4(), lead_id=found.lead_id, occurred_at=now, aliases=found.aliases, rows_changed=changed
    )
    await outbox.stage(connection, [fact], now)
    return Erased(found, changed, fact)


async def _scrub_table(connection: AsyncConnection, holder: repository.Holder, found: Found, person: Person) -> int:
    changed = 0
    for row in await repository.lock_held_rows(connection, holder, found.ids):
        updates = {
            column: scrubbed for column, value in row.values.items() if (scrubbed := scrub(value, person)) is not value
        }
        if updates:
            await repository.rewrite_held_row(connection, holder, row.key, updates)
            changed += 1
    return changed


async def _scrub_outbox(connection: AsyncConnection, found: Found, person: Person) -> int:
    """Facts about the person not yet published: published without their values."""
    changed = 0
    for staged in await repository.lock_staged_facts(connection, found.ids):
        document = orjson.loads(staged.value)
        scrubbed = scrub(document, person)
        if scrubbed is not document:
            await repository.rewrite_staged_fact(connection, staged.outbox_id, orjson.dumps(scrubbed))
            changed += 1
    return changed


async def export(connection: AsyncConnection, found: Found) -> dict[str, Any]:
    """Everything stored about the person, table by table, as JSON-ready data."""
    tables = await repository.stored_rows(connection, found.lead_id, found.ids)
    tables["outbox"] = [
        {"topic": pending.topic, "fact": orjson.loads(pending.value), "created_at": pending.created_at}
        for pending in await repository.pending_facts(connection, found.ids)
    ]
    return {"lead_id": found.lead_id, "aliases": list(found.aliases), "tables": tables}


async def erase_audited(
    connection: AsyncConnection, *, email: str | None, lead_id: uuid.UUID | None, token: str, now: datetime
) -> Erased | None:
    """Find the person, erase them and record it in the audit trail, in the caller's transaction;
    None when nobody is stored under that email or id."""
    found = await find(connection, email=email, lead_id=lead_id)
    if found is None:
        return None
    erased = await erase(connection, found, email, now)
    detail = {"rows_changed": str(erased.rows_changed)}
    target = str(found.lead_id)
    await audit.record(
        connection, token=token, action="lead.erase", target=target, outcome="done", at=now, detail=detail
    )
    return erased


async def export_audited(
    connection: AsyncConnection, *, email: str | None, lead_id: uuid.UUID | None, token: str, now: datetime
) -> tuple[Found, bytes] | None:
    """Find the person and export them as JSON, recorded in the audit trail; None when unknown."""
    found = await find(connection, email=email, lead_id=lead_id)
    if found is None:
        return None
    document = as_json(await export(connection, found))
    await audit.record(connection, token=token, action="lead.export", target=str(found.lead_id), outcome="done", at=now)
    return found, document


def as_json(document: dict[str, Any]) -> bytes:
    """The export as JSON (UUIDs, times and dates as strings)."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=_plain)


def _plain(value: object) -> Any:
    if isinstance(value, uuid.UUID):  # asyncpg's own UUID class, which orjson does not take as one
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(type(value).__name__)
