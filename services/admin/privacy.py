"""Erase or export everything Coxswain stores about a person (``coxswain privacy``, and
``/v1/admin/privacy/*`` behind scope ``privacy:erase``).

The shell of ``coxswain/core/privacy.py``: find the person's leads (by email, or by a lead id and
its aliases), load every stored value that belongs to them, scrub it, write back what changed, and
stage a ``LeadErasedV1`` fact, all in one transaction that holds the lead's row, so scoring never
writes the person's values back in between. ``HOLDERS`` lists where values about a lead are kept.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.identity import alias_key, email_key
from coxswain.core.privacy import Person, scrub
from coxswain.runtime import audit, outbox
from schemas.events import LeadErasedV1
from services.admin.leads import aliases_of


@dataclass(frozen=True)
class Holder:
    """A table that holds values about a lead: its key column, the JSON and the text columns that
    may hold personal values, and the condition that finds a lead's rows (``:leads``: uuid[],
    ``:texts``: the same ids as LIKE patterns)."""

    table: str
    key: str
    documents: tuple[str, ...]
    texts: tuple[str, ...] = ()
    where: str = "lead_id = ANY(:leads)"

    @property
    def columns(self) -> tuple[str, ...]:
        return self.documents + self.texts


HOLDERS: tuple[Holder, ...] = (
    Holder("leads", "lead_id", ("attributes", "touches")),
    Holder("intake_events", "event_id", ("payload",)),
    Holder("lead_facts", "event_id", ("payload",)),
    Holder("report_facts", "event_id", ("payload",)),
    Holder("assignments", "assignment_id", ("decision",), ("reason",)),
    Holder("unassigned_leads", "lead_id", ("request",), ("reason",)),
    Holder("lead_routing", "lead_id", ("owners",)),
    # Alerts name their lead inside the document.
    Holder("sla_alert_deliveries", "id", ("alert",), ("last_error",), "alert::text LIKE ANY(:texts)"),
)
# Tables that hold a lead's ids, times, stages, owners and clocks but no personal value:
# deadlines, sla_timers, scoring_timers, marketing_mqls, report_leads (source, campaign,
# persona), webhook_inbox (ids), inbox (event ids), audit_log (no personal data by design).


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
        found = await connection.scalar(
            text("SELECT lead_id FROM lead_identities WHERE key = :key"), {"key": email_key(email)}
        )
    elif lead_id is not None:
        found = await connection.scalar(
            text(
                "SELECT coalesce((SELECT lead_id FROM lead_identities WHERE key = :alias), "
                "(SELECT lead_id FROM leads WHERE lead_id = :id), "
                "(SELECT lead_id FROM intake_events WHERE lead_id = :id LIMIT 1))"
            ),
            {"alias": alias_key(lead_id), "id": lead_id},
        )
    else:
        raise ValueError("give an email or a lead id")
    if not isinstance(found, uuid.UUID):
        return None
    aliases = await aliases_of(connection, found)
    return Found(found, tuple(alias for alias in aliases if alias != found))


def _bindings(found: Found) -> dict[str, Any]:
    return {"leads": found.ids, "texts": [f"%{lead}%" for lead in found.ids]}


async def _person(connection: AsyncConnection, found: Found, email: str | None) -> Person:
    documents: list[dict[str, Any]] = [{"email": email}] if email else []
    for row in await connection.execute(
        text(
            "SELECT attributes AS document FROM leads WHERE lead_id = ANY(:leads) "
            "UNION ALL SELECT payload FROM intake_events WHERE lead_id = ANY(:leads)"
        ),
        _bindings(found),
    ):
        documents.append(row.document)
    keys = await connection.scalars(
        text("SELECT key FROM lead_identities WHERE lead_id = :lead_id AND key LIKE 'email:%'"),
        {"lead_id": found.lead_id},
    )
    documents.extend({"email": key.removeprefix("email:")} for key in keys)
    return Person.of(documents)


@dataclass(frozen=True)
class Erased:
    found: Found
    rows_changed: int
    fact: LeadErasedV1


async def erase(connection: AsyncConnection, found: Found, email: str | None, now: datetime) -> Erased:
    """Erase the person in the caller's transaction; stage the ``LeadErasedV1`` fact."""
    # Scoring locks the lead's row for every event it applies: holding it here means no event
    # writes the person's values back while they are being erased.
    await connection.execute(
        text("SELECT 1 FROM leads WHERE lead_id = :lead_id FOR UPDATE"), {"lead_id": found.lead_id}
    )
    person = await _person(connection, found, email)
    changed = 0
    for holder in HOLDERS:
        changed += await _scrub_table(connection, holder, found, person)
    changed += await _scrub_outbox(connection, found, person)
    removed = await connection.execute(
        text("DELETE FROM lead_identities WHERE lead_id = :lead_id AND key LIKE 'email:%'"), {"lead_id": found.lead_id}
    )
    changed += removed.rowcount
    fact = LeadErasedV1(
        event_id=uuid.uuid4(), lead_id=found.lead_id, occurred_at=now, aliases=found.aliases, rows_changed=changed
    )
    await outbox.stage(connection, [fact], now)
    return Erased(found, changed, fact)


async def _scrub_table(connection: AsyncConnection, holder: Holder, found: Found, person: Person) -> int:
    columns = ", ".join(holder.columns)
    rows = await connection.execute(
        text(f"SELECT {holder.key} AS row_key, {columns} FROM {holder.table} WHERE {holder.where} FOR UPDATE"),
        _bindings(found),
    )
    changed = 0
    for row in rows.all():
        values = row._mapping
        updates = {
            column: scrubbed
            for column in holder.columns
            if (scrubbed := scrub(values[column], person)) is not values[column]
        }
        if not updates:
            continue
        assignments = ", ".join(
            f"{column} = CAST(:{column} AS jsonb)" if column in holder.documents else f"{column} = :{column}"
            for column in updates
        )
        parameters = {
            column: orjson.dumps(value).decode() if column in holder.documents else value
            for column, value in updates.items()
        }
        await connection.execute(
            text(f"UPDATE {holder.table} SET {assignments} WHERE {holder.key} = :row_key"),
            {**parameters, "row_key": row.row_key},
        )
        changed += 1
    return changed


async def _scrub_outbox(connection: AsyncConnection, found: Found, person: Person) -> int:
    """Facts about the person not yet published: published without their values."""
    rows = await connection.execute(
        text("SELECT id, value FROM outbox WHERE key = ANY(:keys) FOR UPDATE"),
        {"keys": [str(lead).encode() for lead in found.ids]},
    )
    changed = 0
    for row in rows.all():
        document = orjson.loads(bytes(row.value))
        scrubbed = scrub(document, person)
        if scrubbed is not document:
            await connection.execute(
                text("UPDATE outbox SET value = :value WHERE id = :id"), {"value": orjson.dumps(scrubbed), "id": row.id}
            )
            changed += 1
    return changed


async def export(connection: AsyncConnection, found: Found) -> dict[str, Any]:
    """Everything stored about the person, table by table, as JSON-ready data."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for holder in HOLDERS:
        rows = await connection.execute(text(f"SELECT * FROM {holder.table} WHERE {holder.where}"), _bindings(found))
        tables[holder.table] = [dict(row._mapping) for row in rows]
    for table in ("deadlines", "scoring_timers", "marketing_mqls", "report_leads"):
        rows = await connection.execute(text(f"SELECT * FROM {table} WHERE lead_id = ANY(:leads)"), _bindings(found))
        tables[table] = [dict(row._mapping) for row in rows]
    identities = await connection.execute(
        text("SELECT key, created_at FROM lead_identities WHERE lead_id = :lead_id ORDER BY key"),
        {"lead_id": found.lead_id},
    )
    tables["lead_identities"] = [dict(row._mapping) for row in identities]
    pending = await connection.execute(
        text("SELECT topic, value, created_at FROM outbox WHERE key = ANY(:keys) ORDER BY id"),
        {"keys": [str(lead).encode() for lead in found.ids]},
    )
    tables["outbox"] = [
        {"topic": row.topic, "fact": orjson.loads(bytes(row.value)), "created_at": row.created_at} for row in pending
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
