"""Every SQL statement of the admin API: what explaining a lead reads, and what exporting or
erasing a person reads, locks and rewrites. Each function runs on the caller's connection, so the
caller's transaction decides what commits together (an erasure is one transaction holding the
lead's row). Rows come back as typed records built by column name: the API's own models where
the API shows the row as it is, named tuples otherwise; an export is the stored rows as they are.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.admin.models import Owner, Reevaluation, SlaClock

# ---------------------------------------------------------------------------------------------
# A lead and its identities.


async def aliases(connection: AsyncConnection, lead_id: uuid.UUID) -> list[uuid.UUID]:
    """The provisional ids identity resolution folded into the lead (``id:`` keys), in order."""
    keys = await connection.scalars(
        text("SELECT key FROM lead_identities WHERE lead_id = :lead_id AND key LIKE 'id:%' ORDER BY key"),
        {"lead_id": lead_id},
    )
    return [uuid.UUID(key.removeprefix("id:")) for key in keys]


async def lead_by_identity(connection: AsyncConnection, identity_key: str) -> uuid.UUID | None:
    found = await connection.scalar(
        text("SELECT lead_id FROM lead_identities WHERE key = :identity_key"), {"identity_key": identity_key}
    )
    return found if isinstance(found, uuid.UUID) else None


async def lead_by_id(connection: AsyncConnection, lead_id: uuid.UUID, alias_key: str) -> uuid.UUID | None:
    """The lead a (possibly provisional) id names: the lead it was folded into, the lead itself,
    or a lead intake received that scoring has not stored yet."""
    found = await connection.scalar(
        text(
            "SELECT coalesce((SELECT lead_id FROM lead_identities WHERE key = :alias_key), "
            "(SELECT lead_id FROM leads WHERE lead_id = :lead_id), "
            "(SELECT lead_id FROM intake_events WHERE lead_id = :lead_id LIMIT 1))"
        ),
        {"alias_key": alias_key, "lead_id": lead_id},
    )
    return found if isinstance(found, uuid.UUID) else None


# ---------------------------------------------------------------------------------------------
# Explaining a lead.


class StoredFact(NamedTuple):
    event_id: uuid.UUID
    kind: str
    occurred_at: datetime
    agreement_version: str | None
    caused_by: uuid.UUID | None
    payload: dict[str, Any]


class RefusalFact(NamedTuple):
    event_id: uuid.UUID
    occurred_at: datetime
    agreement_version: str | None
    payload: dict[str, Any]


class ReceivedEvent(NamedTuple):
    event_id: uuid.UUID
    kind: str  # lead or activity
    payload: dict[str, Any]
    received_at: datetime


class RoutedLead(NamedTuple):
    assignment_id: uuid.UUID
    rep_id: str | None
    pool_id: str
    rule_id: str
    agreement_version: str
    routed_at: datetime


class DeadlineSeen(NamedTuple):
    milestone: str
    status: str
    armed_at: datetime
    due_at: datetime
    decided_at: datetime | None


async def next_reevaluation(connection: AsyncConnection, lead_id: uuid.UUID) -> Reevaluation | None:
    row = (
        await connection.execute(
            text("SELECT due_at, stage, timer_id FROM scoring_timers WHERE lead_id = :lead_id"), {"lead_id": lead_id}
        )
    ).one_or_none()
    return None if row is None else Reevaluation.model_validate(row._asdict())


async def refusals(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[RefusalFact]:
    """The CRM activities scoring refused for these leads, oldest first."""
    rows = await connection.execute(
        text(
            "SELECT event_id, occurred_at, agreement_version, payload FROM lead_facts "
            "WHERE lead_id = ANY(:lead_ids) AND kind = 'ActivityRefusedV1' ORDER BY occurred_at, event_id"
        ),
        {"lead_ids": list(lead_ids)},
    )
    return [RefusalFact(**row._asdict()) for row in rows]


async def owner(connection: AsyncConnection, lead_id: uuid.UUID) -> Owner | None:
    """The lead's latest assignment."""
    row = (
        await connection.execute(
            text(
                "SELECT assignment_id, rep_id, pool_id, rule_id, reason, tier, agreement_version, routed_at "
                "FROM assignments WHERE lead_id = :lead_id ORDER BY routed_at DESC LIMIT 1"
            ),
            {"lead_id": lead_id},
        )
    ).one_or_none()
    return None if row is None else Owner.model_validate(row._asdict())


async def sla_clocks(connection: AsyncConnection, lead_id: uuid.UUID) -> list[SlaClock]:
    rows = await connection.execute(
        text(
            "SELECT deadline_id, assignment_id, rep_id, milestone, tier, armed_at, due_at, status, decided_at, "
            "responded_by, superseded_by, reassignments, paged FROM deadlines WHERE lead_id = :lead_id "
            "ORDER BY armed_at, milestone"
        ),
        {"lead_id": lead_id},
    )
    return [SlaClock.model_validate(row._asdict()) for row in rows]


async def received_events(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[ReceivedEvent]:
    rows = await connection.execute(
        text("SELECT event_id, kind, payload, received_at FROM intake_events WHERE lead_id = ANY(:lead_ids)"),
        {"lead_ids": list(lead_ids)},
    )
    return [ReceivedEvent(**row._asdict()) for row in rows]


async def facts(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[StoredFact]:
    rows = await connection.execute(
        text(
            "SELECT event_id, kind, occurred_at, agreement_version, caused_by, payload FROM lead_facts "
            "WHERE lead_id = ANY(:lead_ids)"
        ),
        {"lead_ids": list(lead_ids)},
    )
    return [StoredFact(**row._asdict()) for row in rows]


async def routings(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[RoutedLead]:
    rows = await connection.execute(
        text(
            "SELECT assignment_id, rep_id, pool_id, rule_id, agreement_version, routed_at FROM assignments "
            "WHERE lead_id = ANY(:lead_ids)"
        ),
        {"lead_ids": list(lead_ids)},
    )
    return [RoutedLead(**row._asdict()) for row in rows]


async def deadlines(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[DeadlineSeen]:
    rows = await connection.execute(
        text("SELECT milestone, status, armed_at, due_at, decided_at FROM deadlines WHERE lead_id = ANY(:lead_ids)"),
        {"lead_ids": list(lead_ids)},
    )
    return [DeadlineSeen(**row._asdict()) for row in rows]


# ---------------------------------------------------------------------------------------------
# A person's data: export and erasure.


@dataclass(frozen=True)
class Holder:
    """A table that holds values about a lead: its key column, the JSON and the text columns that
    may hold personal values, and the condition that finds a lead's rows (``:lead_ids``: uuid[],
    ``:lead_id_patterns``: the same ids as LIKE patterns)."""

    table: str
    key: str
    documents: tuple[str, ...]
    texts: tuple[str, ...] = ()
    where: str = "lead_id = ANY(:lead_ids)"

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
    Holder("sla_alert_deliveries", "id", ("alert",), ("last_error",), "alert::text LIKE ANY(:lead_id_patterns)"),
)
# Tables that hold a lead's ids, times, stages, owners and clocks but no personal value:
# deadlines, sla_timers, scoring_timers, marketing_mqls, report_leads (source, campaign,
# persona), webhook_inbox (ids), inbox (event ids), audit_log (no personal data by design),
# erasures (the tombstones: lead ids and times). An export shows these, keyed by lead id:
ID_ONLY_TABLES = ("deadlines", "scoring_timers", "marketing_mqls", "report_leads", "erasures")


class HeldRow(NamedTuple):
    key: Any  # the value of the holder's key column
    values: dict[str, Any]  # the holder's columns, by name


class StagedFact(NamedTuple):
    outbox_id: int
    value: bytes  # the fact as the relay will publish it (JSON)


def _lead_binds(lead_ids: Sequence[uuid.UUID]) -> dict[str, Any]:
    return {"lead_ids": list(lead_ids), "lead_id_patterns": [f"%{lead_id}%" for lead_id in lead_ids]}


def _outbox_keys(lead_ids: Sequence[uuid.UUID]) -> list[bytes]:
    return [str(lead_id).encode() for lead_id in lead_ids]


async def lock_erasure(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> None:
    """Wait for the consumers' batches about these leads that are being applied, and keep new
    ones out until the caller's transaction ends (``lock_erasure``, migration 0019_erasures)."""
    await connection.execute(text("SELECT lock_erasure(CAST(:lead_ids AS uuid[]))"), {"lead_ids": list(lead_ids)})


async def lock_lead(connection: AsyncConnection, lead_id: uuid.UUID) -> None:
    """Scoring locks the lead's row for every event it applies: holding it keeps scoring from
    writing values back until the caller's transaction ends."""
    await connection.execute(text("SELECT 1 FROM leads WHERE lead_id = :lead_id FOR UPDATE"), {"lead_id": lead_id})


async def person_documents(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[dict[str, Any]]:
    """The leads' stored attributes and the payloads intake received for them."""
    rows = await connection.execute(
        text(
            "SELECT attributes AS document FROM leads WHERE lead_id = ANY(:lead_ids) "
            "UNION ALL SELECT payload FROM intake_events WHERE lead_id = ANY(:lead_ids)"
        ),
        {"lead_ids": list(lead_ids)},
    )
    return [row.document for row in rows]


async def emails(connection: AsyncConnection, lead_id: uuid.UUID) -> list[str]:
    """The email addresses identity resolution keeps for the lead."""
    keys = await connection.scalars(
        text("SELECT key FROM lead_identities WHERE lead_id = :lead_id AND key LIKE 'email:%'"),
        {"lead_id": lead_id},
    )
    return [key.removeprefix("email:") for key in keys]


async def lock_held_rows(connection: AsyncConnection, holder: Holder, lead_ids: Sequence[uuid.UUID]) -> list[HeldRow]:
    columns = ", ".join(holder.columns)
    rows = await connection.execute(
        text(f"SELECT {holder.key} AS row_key, {columns} FROM {holder.table} WHERE {holder.where} FOR UPDATE"),
        _lead_binds(lead_ids),
    )
    return [HeldRow(row.row_key, {column: row._mapping[column] for column in holder.columns}) for row in rows.all()]


async def rewrite_held_row(connection: AsyncConnection, holder: Holder, row_key: Any, updates: dict[str, Any]) -> None:
    """Set the given columns of one row; documents are written as JSON."""
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
        {**parameters, "row_key": row_key},
    )


async def lock_staged_facts(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[StagedFact]:
    """The leads' facts not yet published, locked so the relay cannot publish them meanwhile."""
    rows = await connection.execute(
        text("SELECT id, value FROM outbox WHERE key = ANY(:outbox_keys) FOR UPDATE"),
        {"outbox_keys": _outbox_keys(lead_ids)},
    )
    return [StagedFact(row.id, bytes(row.value)) for row in rows.all()]


async def rewrite_staged_fact(connection: AsyncConnection, outbox_id: int, value: bytes) -> None:
    await connection.execute(
        text("UPDATE outbox SET value = :value WHERE id = :outbox_id"), {"value": value, "outbox_id": outbox_id}
    )


async def forget_emails(connection: AsyncConnection, lead_id: uuid.UUID) -> int:
    """Delete the lead's email identities; how many there were."""
    removed = await connection.execute(
        text("DELETE FROM lead_identities WHERE lead_id = :lead_id AND key LIKE 'email:%'"), {"lead_id": lead_id}
    )
    return removed.rowcount


async def record_erasure(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID], erased_at: datetime) -> None:
    """The tombstones of the lead and its aliases: every consumer applies the facts about them
    that occurred until ``erased_at`` without their personal values. Erased again (a returning
    person), the tombstone moves to the later erasure."""
    await connection.execute(
        text(
            "INSERT INTO erasures (lead_id, erased_at) SELECT lead_id, :erased_at FROM unnest(CAST(:lead_ids AS uuid[])) "
            "AS u(lead_id) ON CONFLICT (lead_id) DO UPDATE SET erased_at = greatest(erasures.erased_at, EXCLUDED.erased_at)"
        ),
        {"lead_ids": list(lead_ids), "erased_at": erased_at},
    )


class PendingFact(NamedTuple):
    topic: str
    value: bytes
    created_at: datetime


async def stored_rows(
    connection: AsyncConnection, lead_id: uuid.UUID, lead_ids: Sequence[uuid.UUID]
) -> dict[str, list[dict[str, Any]]]:
    """Every stored row about the lead (``lead_id`` with its aliases, ``lead_ids``), table by
    table, as stored: the holders, the tables keyed by lead id, and its identities."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for holder in HOLDERS:
        rows = await connection.execute(
            text(f"SELECT * FROM {holder.table} WHERE {holder.where}"), _lead_binds(lead_ids)
        )
        tables[holder.table] = [dict(row._mapping) for row in rows]
    for table in ID_ONLY_TABLES:
        rows = await connection.execute(
            text(f"SELECT * FROM {table} WHERE lead_id = ANY(:lead_ids)"), {"lead_ids": list(lead_ids)}
        )
        tables[table] = [dict(row._mapping) for row in rows]
    identities = await connection.execute(
        text("SELECT key, created_at FROM lead_identities WHERE lead_id = :lead_id ORDER BY key"),
        {"lead_id": lead_id},
    )
    tables["lead_identities"] = [dict(row._mapping) for row in identities]
    return tables


async def pending_facts(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[PendingFact]:
    """The leads' facts not yet published, in the order the relay publishes them."""
    rows = await connection.execute(
        text("SELECT topic, value, created_at FROM outbox WHERE key = ANY(:outbox_keys) ORDER BY id"),
        {"outbox_keys": _outbox_keys(lead_ids)},
    )
    return [PendingFact(row.topic, bytes(row.value), row.created_at) for row in rows]
