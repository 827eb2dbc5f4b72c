"""Router shell: lock the pools' rotation rows, ask the core, store the assignment and the new
rotation in the same transaction, return the routed fact."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.agreement import Agreement
from coxswain.core.routing import Rotation, RoutingDecision, RoutingInput, decide, select_pool
from coxswain.core.sla import first_touch_due
from coxswain.runtime.consumer import Handler, PermanentError
from schemas.events import Event, LeadQualifiedV1, LeadRoutedV1

ACCEPTS: dict[str, tuple[type[Event], ...]] = {LeadQualifiedV1.topic: (LeadQualifiedV1,)}


async def lock_rotations(connection: AsyncConnection, pool_ids: Sequence[str], now: datetime) -> dict[str, Rotation]:
    """Row locks serialise concurrent routers on a pool; sorted ids avoid lock-order deadlocks."""
    ordered = sorted(set(pool_ids))
    await connection.execute(
        text(
            "INSERT INTO pool_rotation (pool_id, current, assigned, updated_at) "
            "SELECT unnest(CAST(:ids AS text[])), '{}', '{}', :now ON CONFLICT DO NOTHING"
        ),
        {"ids": ordered, "now": now},
    )
    rows = await connection.execute(
        text(
            "SELECT pool_id, current, assigned FROM pool_rotation WHERE pool_id = ANY(:ids) ORDER BY pool_id FOR UPDATE"
        ),
        {"ids": ordered},
    )
    return {row.pool_id: Rotation(current=row.current, assigned=row.assigned) for row in rows}


async def record(
    connection: AsyncConnection,
    event: LeadQualifiedV1,
    decision: RoutingDecision,
    assignment_id: uuid.UUID,
    agreement: Agreement,
    now: datetime,
) -> bool:
    """Store the assignment; false if this decision was already made (the unique key says so)."""
    inserted = await connection.scalar(
        text(
            "INSERT INTO assignments (assignment_id, decision_key, lead_id, rep_id, pool_id, rule_id, reason, tier, "
            "agreement_version, routed_at, decision) VALUES (:a, :k, :l, :r, :p, :rule, :reason, :tier, :v, :now, "
            "CAST(:d AS jsonb)) "
            "ON CONFLICT (decision_key) DO NOTHING RETURNING 1"
        ),
        {
            "a": assignment_id,
            "k": event.event_id,
            "l": event.lead_id,
            "r": decision.rep_id,
            "p": decision.pool_id,
            "rule": decision.rule_id,
            "reason": decision.reason,
            "tier": event.tier.value,
            "v": agreement.version,
            "now": now,
            "d": orjson.dumps(_jsonable_decision(decision)).decode(),
        },
    )
    if inserted is None:
        return False
    await connection.execute(
        text(
            "UPDATE pool_rotation SET current = CAST(:c AS jsonb), assigned = CAST(:a AS jsonb), updated_at = :now "
            "WHERE pool_id = :p"
        ),
        {
            "c": orjson.dumps(dict(decision.rotation_after.current)).decode(),
            "a": orjson.dumps(dict(decision.rotation_after.assigned)).decode(),
            "now": now,
            "p": decision.pool_id,
        },
    )
    return True


def _jsonable_decision(decision: RoutingDecision) -> dict[str, Any]:
    return {
        "rule_id": decision.rule_id,
        "pool_id": decision.pool_id,
        "reason": decision.reason,
        "candidates": [candidate.model_dump() for candidate in decision.candidates],
        "rotation_after": {k: dict(v) for k, v in asdict(decision.rotation_after).items()},
    }


def make_handler(agreement: Agreement, unavailable: Mapping[str, str] | None = None) -> Handler:
    excluded = dict(unavailable or {})

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> list[Event]:
        if not isinstance(event, LeadQualifiedV1):
            raise PermanentError(f"router does not handle {type(event).__name__}")
        lead = RoutingInput(attributes=event.attributes, tier=event.tier, source=event.source)
        _, pool_id = select_pool(lead, agreement)
        rotations = await lock_rotations(connection, [pool_id, agreement.routing.fallback_pool], now)
        decision = decide(lead, agreement, rotations, excluded)
        if decision.rep_id is None:
            raise PermanentError(f"no rep is eligible for lead {event.lead_id}: {decision.reason}")
        assignment_id = uuid.uuid5(event.event_id, "assignment")
        if not await record(connection, event, decision, assignment_id, agreement, now):
            return []
        return [
            LeadRoutedV1(
                event_id=uuid.uuid5(event.event_id, "routed"),
                lead_id=event.lead_id,
                occurred_at=now,
                agreement_version=agreement.version,
                caused_by=event.event_id,
                assignment_id=assignment_id,
                rep_id=decision.rep_id,
                pool_id=decision.pool_id,
                rule_id=decision.rule_id,
                reason=decision.reason,
                tier=event.tier,
                routed_at=now,
                follow_up_due_at=first_touch_due(agreement, event.tier, now),
                candidates=decision.candidates,
            )
        ]

    return handle
