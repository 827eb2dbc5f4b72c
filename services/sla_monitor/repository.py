"""Every SQL statement of the SLA monitor: clocks (``deadlines``) and their timers
(``sla_timers``), the alert webhook's queue, the gauges and MQL pacing. Each function runs on the
caller's connection, so the caller's transaction decides what commits together; rows come back
as the core's records (``Clock``, ``Timer``, ``HeldClock``) or as named tuples, built by column
name.

Lock order everywhere: the deadline row first, then its timers; the timer side never waits for a
lock (SKIP LOCKED), so the two cannot deadlock. Status values stay literals in the SQL: the
partial index of pending timers (``status = 'pending'``) is only used when the planner sees them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.core.sla import Clock, DeadlineStatus, Timer, TimerKind
from coxswain.core.sla_clocks import HeldClock
from coxswain.db import deferred
from schemas.events import ActivityAcceptedV1, EscalationAction, LeadQualifiedV1, Tier

_CLOCK_COLUMNS = (
    "deadline_id",
    "lead_id",
    "assignment_id",
    "rep_id",
    "team",
    "milestone",
    "tier",
    "due_at",
    "status",
    "responded_at",
    "reassignments",
    "paged",
)
_TIMER_COLUMNS = "key, kind, due_at AS timer_due_at, fraction, step, step_index, target, exclude_last, carried"


def _clock(row: Row[Any]) -> Clock:
    return Clock(
        deadline_id=row.deadline_id,
        lead_id=row.lead_id,
        assignment_id=row.assignment_id,
        rep_id=row.rep_id,
        team=row.team,
        milestone=row.milestone,
        tier=Tier(row.tier),
        due_at=row.due_at,
        status=DeadlineStatus(row.status),
        responded=row.responded_at is not None,
        reassignments=row.reassignments,
        paged=row.paged,
    )


def _timer(row: Row[Any]) -> Timer:
    return Timer(
        kind=TimerKind(row.kind),
        key=row.key,
        due_at=row.timer_due_at,
        fraction=row.fraction,
        step=EscalationAction(row.step) if row.step else None,
        step_index=row.step_index,
        target=row.target,
        exclude_last=row.exclude_last,
        carried=row.carried,
    )


# ---------------------------------------------------------------------------------------------
# The consumer side: a batch's clocks, loaded up front and stored at the end.


class LadderStep(NamedTuple):
    """A pending escalation step of a breached clock, which a new assignment may carry on."""

    deadline_id: uuid.UUID
    timer: Timer


class AppliedActivity(NamedTuple):
    lead_id: uuid.UUID
    received_at: datetime
    activity: ActivityAcceptedV1


async def lock_open_clocks(connection: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[HeldClock]:
    """The leads' clocks that can still change, locked in deadline id order (one global order, so
    two monitors cannot deadlock)."""
    rows = await connection.execute(
        text(
            f"SELECT {', '.join(_CLOCK_COLUMNS)}, started_at, decided_at, decided_by FROM deadlines "
            "WHERE lead_id = ANY(:lead_ids) "
            "AND (status = 'armed' OR (status = 'breached' AND responded_at IS NULL)) "
            "AND superseded_by IS NULL ORDER BY deadline_id FOR UPDATE"
        ),
        {"lead_ids": list(lead_ids)},
    )
    return [HeldClock(_clock(row), row.started_at, row.responded_at, row.decided_at, row.decided_by) for row in rows]


async def pending_ladders(connection: AsyncConnection, deadline_ids: Sequence[uuid.UUID]) -> list[LadderStep]:
    """The clocks' pending escalation steps, in due order."""
    rows = await connection.execute(
        text(
            f"SELECT deadline_id, {_TIMER_COLUMNS} FROM sla_timers WHERE deadline_id = ANY(:deadline_ids) "
            "AND status = 'pending' AND kind = 'escalation' ORDER BY due_at, key"
        ),
        {"deadline_ids": list(deadline_ids)},
    )
    return [LadderStep(row.deadline_id, _timer(row)) for row in rows]


async def stored_deadline_ids(connection: AsyncConnection, deadline_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these deadlines are already stored."""
    found = await connection.scalars(
        text("SELECT deadline_id FROM deadlines WHERE deadline_id = ANY(:deadline_ids)"),
        {"deadline_ids": list(deadline_ids)},
    )
    return set(found.all())


# The batch's leads' facts first, then each one's inbox row and receipt, whatever the statistics
# say. PostgreSQL plans a prepared statement once for all its executions (a generic plan) from the
# statistics of that moment. Written as joins, the plan cached while the tables were small walked
# the monitor's whole inbox and looked up each event's fact: 10 ms a batch after a few thousand
# leads in the bench, growing with the inbox (a week of it in production). A semi-join (EXISTS) is
# turned around the same way; a LATERAL subquery with OFFSET 0 is not flattened into the join, so
# it is looked up once per fact, by primary key.
APPLIED_ACTIVITIES = text(
    "WITH facts AS MATERIALIZED (SELECT lead_id, event_id, caused_by, payload FROM lead_facts "
    "WHERE lead_id = ANY(:lead_ids) AND kind = 'ActivityAcceptedV1') "
    "SELECT f.lead_id, e.received_at, f.payload FROM facts f "
    "CROSS JOIN LATERAL (SELECT FROM inbox i WHERE i.consumer = :consumer AND i.event_id = f.event_id OFFSET 0) AS i "
    "CROSS JOIN LATERAL (SELECT received_at FROM intake_events WHERE event_id = f.caused_by "
    "AND received_at >= :received_since OFFSET 0) AS e "
    "ORDER BY e.received_at"
)


async def applied_activities(
    connection: AsyncConnection, consumer: str, lead_ids: Sequence[uuid.UUID], received_since: datetime
) -> list[AppliedActivity]:
    """The accepted activities ``consumer`` already applied for these leads that intake received
    at or after ``received_since``, oldest first: scoring's judgement, with intake's receipt time."""
    rows = await connection.execute(
        APPLIED_ACTIVITIES, {"consumer": consumer, "lead_ids": list(lead_ids), "received_since": received_since}
    )
    return [
        AppliedActivity(row.lead_id, row.received_at, ActivityAcceptedV1.model_validate(row.payload)) for row in rows
    ]


async def later_routings(
    connection: AsyncConnection, lead_ids: Sequence[uuid.UUID], since: datetime
) -> list[tuple[uuid.UUID, datetime]]:
    """When the router assigned these leads after ``since``: its own record, stored before the
    routing was published (``services/router/repository.py``)."""
    rows = await connection.execute(
        text("SELECT lead_id, routed_at FROM assignments WHERE lead_id = ANY(:lead_ids) AND routed_at > :since"),
        {"lead_ids": list(lead_ids), "since": since},
    )
    return [(row.lead_id, row.routed_at) for row in rows]


# New clocks and their timers, carried in the batch's last statement (``coxswain.db.deferred``):
# nothing later in the batch reads these rows (a clock armed in a batch is changed only in memory
# until the batch ends), so they need no round trip of their own. Two CTEs of one write: the rows
# of different tables, so they meet no row twice.
_INSERT_CLOCKS = (
    "sla_deadlines AS (INSERT INTO deadlines (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, "
    "armed_at, due_at, status, team, started_at, calendar, agreement_version, responded_at, decided_at, decided_by, "
    "responded_by, reassignments, paged) "
    "SELECT deadline_id, assignment_id, lead_id, rep_id, milestone, tier, :sla_now, due_at, status, team, "
    "started_at, calendar, :sla_agreement_version, responded_at, decided_at, decided_by, responded_by, "
    "reassignments, paged FROM unnest(CAST(:sla_deadline_ids AS uuid[]), CAST(:sla_assignment_ids AS uuid[]), "
    "CAST(:sla_lead_ids AS uuid[]), CAST(:sla_rep_ids AS text[]), CAST(:sla_milestones AS text[]), "
    "CAST(:sla_tiers AS text[]), CAST(:sla_due_at AS timestamptz[]), CAST(:sla_statuses AS text[]), "
    "CAST(:sla_teams AS text[]), CAST(:sla_started_at AS timestamptz[]), CAST(:sla_calendars AS text[]), "
    "CAST(:sla_responded_at AS timestamptz[]), CAST(:sla_decided_at AS timestamptz[]), "
    "CAST(:sla_decided_by AS uuid[]), CAST(:sla_responded_by AS text[]), CAST(:sla_reassignments AS int[]), "
    "CAST(:sla_paged AS boolean[])) AS batch (deadline_id, assignment_id, lead_id, rep_id, milestone, tier, due_at, "
    "status, team, started_at, calendar, responded_at, decided_at, decided_by, responded_by, reassignments, paged) "
    "ON CONFLICT DO NOTHING), "
    "sla_timers_armed AS (INSERT INTO sla_timers (deadline_id, key, kind, due_at, status, fraction, step, "
    "step_index, target, exclude_last, decided_at, carried) "
    "SELECT * FROM unnest(CAST(:sla_timer_deadlines AS uuid[]), CAST(:sla_timer_keys AS text[]), "
    "CAST(:sla_timer_kinds AS text[]), CAST(:sla_timer_due_at AS timestamptz[]), "
    "CAST(:sla_timer_statuses AS text[]), CAST(:sla_timer_fractions AS float8[]), CAST(:sla_timer_steps AS text[]), "
    "CAST(:sla_timer_step_indexes AS int[]), CAST(:sla_timer_targets AS text[]), "
    "CAST(:sla_timer_exclude_last AS int[]), CAST(:sla_timer_decided_at AS timestamptz[]), "
    "CAST(:sla_timer_carried AS boolean[])))"
)


async def insert_clocks(
    connection: AsyncConnection, created: Sequence[HeldClock], agreement_version: str, now: datetime
) -> None:
    """New clocks (``arm``'s, with their plan) and their timers, in one statement: carried in the
    transaction's last statement when the caller defers (``coxswain.db.deferred``), else run now.
    A clock stopped in the batch that armed it never had a pending timer."""
    planned = [(held, held.plan) for held in created if held.plan is not None]
    if not planned:
        return
    timers = [(held, timer) for held, plan in planned for timer in plan.timers]
    await deferred.write(
        connection,
        deferred.Write(
            _INSERT_CLOCKS,
            {
                "sla_now": now,
                "sla_agreement_version": agreement_version,
                "sla_deadline_ids": [held.clock.deadline_id for held, _ in planned],
                "sla_assignment_ids": [held.clock.assignment_id for held, _ in planned],
                "sla_lead_ids": [held.clock.lead_id for held, _ in planned],
                "sla_rep_ids": [held.clock.rep_id for held, _ in planned],
                "sla_milestones": [plan.milestone for _, plan in planned],
                "sla_tiers": [held.clock.tier.value for held, _ in planned],
                "sla_due_at": [plan.due_at for _, plan in planned],
                "sla_statuses": [held.clock.status.value for held, _ in planned],
                "sla_teams": [held.clock.team for held, _ in planned],
                "sla_started_at": [plan.started_at for _, plan in planned],
                "sla_calendars": [plan.calendar for _, plan in planned],
                "sla_responded_at": [held.responded_at for held, _ in planned],
                "sla_decided_at": [held.decided_at for held, _ in planned],
                "sla_decided_by": [held.decided_by for held, _ in planned],
                "sla_responded_by": [held.responded_by for held, _ in planned],
                "sla_reassignments": [held.clock.reassignments for held, _ in planned],
                "sla_paged": [held.clock.paged for held, _ in planned],
                "sla_timer_deadlines": [held.clock.deadline_id for held, _ in timers],
                "sla_timer_keys": [timer.key for _, timer in timers],
                "sla_timer_kinds": [timer.kind.value for _, timer in timers],
                "sla_timer_due_at": [timer.due_at for _, timer in timers],
                "sla_timer_statuses": ["cancelled" if held.stopped else "pending" for held, _ in timers],
                "sla_timer_fractions": [timer.fraction for _, timer in timers],
                "sla_timer_steps": [timer.step.value if timer.step else None for _, timer in timers],
                "sla_timer_step_indexes": [timer.step_index for _, timer in timers],
                "sla_timer_targets": [timer.target for _, timer in timers],
                "sla_timer_exclude_last": [timer.exclude_last for _, timer in timers],
                "sla_timer_decided_at": [now if held.stopped else None for held, _ in timers],
                "sla_timer_carried": [timer.carried for _, timer in timers],
            },
        ),
    )


async def update_clocks(connection: AsyncConnection, changed: Sequence[HeldClock]) -> None:
    """Stored clocks as the core left them, in one batched statement."""
    await connection.execute(
        text(
            "UPDATE deadlines SET status = :status, responded_at = :responded_at, decided_at = :decided_at, "
            "decided_by = :decided_by, responded_by = :responded_by, superseded_by = :superseded_by "
            "WHERE deadline_id = :deadline_id"
        ),
        [
            {
                "status": held.clock.status.value,
                "responded_at": held.responded_at,
                "decided_at": held.decided_at,
                "decided_by": held.decided_by,
                "responded_by": held.responded_by,
                "superseded_by": held.superseded_by,
                "deadline_id": held.clock.deadline_id,
            }
            for held in changed
        ],
    )


async def cancel_pending_timers(connection: AsyncConnection, deadline_ids: Sequence[uuid.UUID], now: datetime) -> None:
    await connection.execute(
        text(
            "UPDATE sla_timers SET status = 'cancelled', decided_at = :now "
            "WHERE deadline_id = ANY(:deadline_ids) AND status = 'pending'"
        ),
        {"now": now, "deadline_ids": list(deadline_ids)},
    )


async def insert_mqls(connection: AsyncConnection, qualified: Sequence[LeadQualifiedV1]) -> None:
    """Marketing's MQLs, for pacing: carried in the transaction's last statement like the clocks."""
    if not qualified:
        return
    await deferred.write(
        connection,
        deferred.Write(
            "sla_mqls AS (INSERT INTO marketing_mqls (event_id, lead_id, qualified_at) "
            "SELECT * FROM unnest(CAST(:mql_event_ids AS uuid[]), CAST(:mql_lead_ids AS uuid[]), "
            "CAST(:mql_qualified_at AS timestamptz[])) ON CONFLICT DO NOTHING)",
            {
                "mql_event_ids": [event.event_id for event in qualified],
                "mql_lead_ids": [event.lead_id for event in qualified],
                "mql_qualified_at": [event.occurred_at for event in qualified],
            },
        ),
    )


# ---------------------------------------------------------------------------------------------
# The firing side: due timers claimed with their clocks.


class DueTimer(NamedTuple):
    clock: Clock
    timer: Timer


# A timer waits while an activity for its lead that intake acknowledged before the timer came due
# has not been applied by the monitor yet (``:consumer``'s inbox); ``:awaiting_hold`` bounds the
# wait for an activity that never gets applied. Joined to each timer as a LATERAL subquery with a
# LIMIT, which PostgreSQL cannot flatten into a join, so it is a probe of the lead's own intake
# events by their lead-id index, timer by timer. Written as NOT EXISTS, PostgreSQL turned it into an
# anti-join against every activity of the last ``:awaiting_hold``, found by reading the month's
# partition of intake_events whole on every look for the next due timer: 11 ms at 20,000 intake
# events in the bench (docs/benchmarks-history.md, 7 December), and a month of a year's leads in production.
_AWAITING_RESPONSE = (
    "LEFT JOIN LATERAL (SELECT true AS held FROM intake_events e WHERE e.lead_id = d.lead_id "
    "AND e.kind = 'activity' AND e.received_at <= t.due_at "
    "AND e.received_at > CAST(:now AS timestamptz) - CAST(:awaiting_hold AS interval) "
    "AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.consumer = :consumer AND i.event_id = e.event_id) LIMIT 1"
    ") AS awaiting ON true"
)


async def claim_due_timers(
    connection: AsyncConnection, now: datetime, limit: int, consumer: str, awaiting_hold: timedelta
) -> list[DueTimer]:
    """Up to ``limit`` due timers not held for a response, oldest due first, each locked with its
    deadline row: a response holding the deadline row makes us skip it, never wait."""
    clock_columns = ", ".join(f"d.{name}" for name in _CLOCK_COLUMNS)
    timer_columns = ", ".join(f"t.{name}" for name in _TIMER_COLUMNS.split(", "))
    rows = await connection.execute(
        text(
            f"SELECT {clock_columns}, {timer_columns} FROM sla_timers t "
            f"JOIN deadlines d ON d.deadline_id = t.deadline_id {_AWAITING_RESPONSE} "
            "WHERE t.status = 'pending' AND t.due_at <= :now AND awaiting.held IS NULL "
            "ORDER BY t.due_at LIMIT :limit FOR UPDATE OF t, d SKIP LOCKED"
        ),
        {"now": now, "limit": limit, "consumer": consumer, "awaiting_hold": awaiting_hold},
    )
    return [DueTimer(_clock(row), _timer(row)) for row in rows]


async def reps_by_assignment(connection: AsyncConnection, lead_id: uuid.UUID, milestone: str) -> list[str]:
    """The lead's reps newest first, one per clock of ``milestone`` (one a clock every assignment has)."""
    rows = await connection.execute(
        text(
            "SELECT rep_id FROM deadlines WHERE lead_id = :lead_id AND milestone = :milestone "
            "ORDER BY started_at DESC NULLS LAST, armed_at DESC"
        ),
        {"lead_id": lead_id, "milestone": milestone},
    )
    return [row.rep_id for row in rows]


async def decide_timers(
    connection: AsyncConnection,
    keys: Sequence[tuple[uuid.UUID, str]],
    status: str,
    now: datetime,
    fired_by: str | None,
) -> None:
    """Pending timers, by (deadline id, key), leave ``pending`` for ``status``, in one statement."""
    await connection.execute(
        text(
            "UPDATE sla_timers t SET status = :status, decided_at = :now, fired_by = :fired_by "
            "FROM unnest(CAST(:deadline_ids AS uuid[]), CAST(:keys AS text[])) AS u(deadline_id, key) "
            "WHERE t.deadline_id = u.deadline_id AND t.key = u.key AND t.status = 'pending'"
        ),
        {
            "status": status,
            "now": now,
            "fired_by": fired_by,
            "deadline_ids": [deadline_id for deadline_id, _ in keys],
            "keys": [key for _, key in keys],
        },
    )


async def mark_breached(connection: AsyncConnection, deadline_ids: Sequence[uuid.UUID], now: datetime) -> None:
    await connection.execute(
        text(
            "UPDATE deadlines SET status = 'breached', decided_at = :now "
            "WHERE deadline_id = ANY(:deadline_ids) AND status = 'armed'"
        ),
        {"now": now, "deadline_ids": list(deadline_ids)},
    )


async def mark_paged(connection: AsyncConnection, deadline_ids: Sequence[uuid.UUID]) -> None:
    await connection.execute(
        text("UPDATE deadlines SET paged = true WHERE deadline_id = ANY(:deadline_ids)"),
        {"deadline_ids": list(deadline_ids)},
    )


async def next_due(
    connection: AsyncConnection, now: datetime, consumer: str, awaiting_hold: timedelta
) -> datetime | None:
    """When the next pending timer not held for a response comes due.

    ORDER BY ... LIMIT 1, not min(): with the join PostgreSQL computes min() over every pending
    timer (a second per pass with a million open deadlines), where this walks the partial index of
    pending timers in due order and stops at the first one not held."""
    value = await connection.scalar(
        text(
            f"SELECT t.due_at FROM sla_timers t JOIN deadlines d ON d.deadline_id = t.deadline_id {_AWAITING_RESPONSE} "
            "WHERE t.status = 'pending' AND awaiting.held IS NULL ORDER BY t.due_at LIMIT 1"
        ),
        {"now": now, "consumer": consumer, "awaiting_hold": awaiting_hold},
    )
    return value if isinstance(value, datetime) else None


# ---------------------------------------------------------------------------------------------
# The alert webhook's queue.


class QueuedAlert(NamedTuple):
    event_id: uuid.UUID
    alert: str  # the JSON document


class ClaimedAlert(NamedTuple):
    delivery_id: int
    event_id: uuid.UUID
    alert: dict[str, Any]
    attempts: int


async def queue_alerts(connection: AsyncConnection, alerts: Sequence[QueuedAlert], now: datetime) -> None:
    """One row per fact, in one statement; a fact queued before is left as it is."""
    await connection.execute(
        text(
            "INSERT INTO sla_alert_deliveries (event_id, alert, status, attempts, next_attempt_at, created_at) "
            "VALUES (:event_id, CAST(:alert AS jsonb), 'pending', 0, :now, :now) ON CONFLICT (event_id) DO NOTHING"
        ),
        [{"event_id": alert.event_id, "alert": alert.alert, "now": now} for alert in alerts],
    )


async def claim_alerts(
    connection: AsyncConnection, now: datetime, lease_until: datetime, limit: int
) -> list[ClaimedAlert]:
    """Up to ``limit`` due deliveries, oldest first, each counted as an attempt and leased until
    ``lease_until`` (another process retries it after that)."""
    rows = await connection.execute(
        text(
            "UPDATE sla_alert_deliveries SET attempts = attempts + 1, next_attempt_at = :lease_until "
            "WHERE id IN (SELECT id FROM sla_alert_deliveries WHERE status = 'pending' "
            "AND next_attempt_at <= :now ORDER BY next_attempt_at, id LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "RETURNING id, event_id, alert, attempts"
        ),
        {"now": now, "lease_until": lease_until, "limit": limit},
    )
    return [ClaimedAlert(row.id, row.event_id, row.alert, row.attempts) for row in rows]


async def pending_alerts(connection: AsyncConnection) -> int:
    count = await connection.scalar(text("SELECT count(*) FROM sla_alert_deliveries WHERE status = 'pending'"))
    return int(count or 0)


async def alert_delivered(connection: AsyncConnection, delivery_id: int, now: datetime) -> None:
    await connection.execute(
        text(
            "UPDATE sla_alert_deliveries SET status = 'delivered', delivered_at = :now, last_error = NULL "
            "WHERE id = :delivery_id"
        ),
        {"now": now, "delivery_id": delivery_id},
    )


async def alert_not_delivered(
    connection: AsyncConnection, delivery_id: int, status: str, next_attempt_at: datetime, error: str
) -> None:
    await connection.execute(
        text(
            "UPDATE sla_alert_deliveries SET status = :status, next_attempt_at = :next_attempt_at, "
            "last_error = :error WHERE id = :delivery_id"
        ),
        {"status": status, "next_attempt_at": next_attempt_at, "error": error, "delivery_id": delivery_id},
    )


# ---------------------------------------------------------------------------------------------
# Gauges.


async def armed_deadlines(connection: AsyncConnection) -> dict[tuple[str, str], int]:
    """Armed deadlines by (tier, team); no team is ``''``."""
    rows = await connection.execute(
        text(
            "SELECT tier, coalesce(team, '') AS team, count(*) AS armed FROM deadlines WHERE status = 'armed' "
            "GROUP BY 1, 2"
        )
    )
    return {(row.tier, row.team): row.armed for row in rows}


async def pending_timers(connection: AsyncConnection) -> list[tuple[str, int]]:
    """Pending timers by kind."""
    rows = await connection.execute(
        text("SELECT kind, count(*) AS pending FROM sla_timers WHERE status = 'pending' GROUP BY kind")
    )
    return [(row.kind, row.pending) for row in rows]


async def pending_timers_due_by(connection: AsyncConnection, due_by: datetime) -> int:
    count = await connection.scalar(
        text("SELECT count(*) FROM sla_timers WHERE status = 'pending' AND due_at <= :due_by"), {"due_by": due_by}
    )
    return int(count or 0)


# ---------------------------------------------------------------------------------------------
# MQL pacing.


class PacingSeen(NamedTuple):
    watched_since: datetime
    actual: int  # distinct leads qualified in the period so far
    alerted_level: int | None  # the highest shortfall level already alerted in the period


async def watch_pacing(
    connection: AsyncConnection, target_id: str, period_start: datetime, now: datetime
) -> PacingSeen:
    """The target's pacing so far, in one statement. The first look starts watching the target;
    the row keeps that moment for good."""
    row = (
        await connection.execute(
            text(
                "WITH watch AS (INSERT INTO mql_pacing_watch (target_id, since) VALUES (:target_id, :now) "
                "ON CONFLICT DO NOTHING RETURNING since) "
                "SELECT coalesce((SELECT since FROM watch), (SELECT since FROM mql_pacing_watch "
                "WHERE target_id = :target_id)) AS since, "
                "(SELECT count(DISTINCT lead_id) FROM marketing_mqls WHERE qualified_at >= :period_start "
                "AND qualified_at <= :now) AS actual, "
                "(SELECT max(level) FROM mql_pacing_alerts WHERE target_id = :target_id "
                "AND period_start = :period_start) AS alerted"
            ),
            {"target_id": target_id, "now": now, "period_start": period_start},
        )
    ).one()
    return PacingSeen(row.since, int(row.actual or 0), row.alerted)


async def record_pacing_alert(
    connection: AsyncConnection, event_id: uuid.UUID, target_id: str, period_start: datetime, level: int, now: datetime
) -> bool:
    """True for the first monitor to raise this alert (target, period, level); False for the rest."""
    first = await connection.scalar(
        text(
            "INSERT INTO mql_pacing_alerts (event_id, target_id, period_start, alerted_at, level) "
            "VALUES (:event_id, :target_id, :period_start, :now, :level) ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"event_id": event_id, "target_id": target_id, "period_start": period_start, "now": now, "level": level},
    )
    return first is not None
