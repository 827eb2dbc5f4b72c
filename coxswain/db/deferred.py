"""Writes that ride in the transaction's last statement instead of a round trip of their own.

A consumer's transaction ends with one statement that stages its facts in the outbox
(``coxswain.runtime.outbox.stage_records``). A service's write that nothing later in the same
transaction reads, such as scoring's states, timeline, identity keys and timers, or the router's
write of a batch's last run, can be carried in that statement as data-modifying CTEs: one round trip fewer per batch, which is a wait for
PostgreSQL and a core, its parse and bind, and a wake-up of a backend.

The consumer opens a scope on its connection (``deferring``) for the whole of a batch applied at
once; ``write`` adds to the scope, and the staging statement takes what it holds (``take``). A
read sent anyway may take them sooner (``carried_before``): the router's read of names does, so
that scoring's write is not made under the routing locks the next statement takes.
Outside a scope (a timer's transaction, a record applied on its own inside a savepoint, a test)
``write`` runs the statement at once, so a caller never depends on being deferred.

What one statement requires of the writes it carries: they see one snapshot, so a deferred write
is never read back in its transaction (scoring's tables are not read by the router, which runs
between them); and no two parts touch the same row, so the writes carried together write
different tables. Their parameter names must differ too (checked in ``carried``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.db.sql import clause

# Where a connection keeps its scope: the info dictionary of the connection it holds, which
# outlives the transaction, so ``deferring`` removes the entry however the scope ends.
_SCOPE = "coxswain.deferred_writes"


@dataclass(frozen=True)
class Write:
    """One statement's data-modifying CTEs (``name AS (...)``, comma-separated) and parameters,
    and a scalar SQL expression evaluated once after them, if any (a notification on commit)."""

    ctes: str
    parameters: Mapping[str, Any]
    effect: str = ""


def carried(
    writes: Sequence[Write], ctes: Sequence[str] = (), effects: Sequence[str] = (), own: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """One statement: ``writes``' CTEs, then ``ctes``; its SELECT evaluates ``writes``' effects,
    then ``effects``. Its parameters: the caller's ``own`` (those of ``ctes`` and ``effects``) and
    the writes', no name twice."""
    parameters = _parameters(writes, own)
    parts = [write.ctes for write in writes] + list(ctes)
    selected = [write.effect for write in writes if write.effect] + list(effects)
    sql = ("WITH " + ", ".join(parts) + " " if parts else "") + "SELECT " + (", ".join(selected) or "true")
    return sql, parameters


def carried_before(
    writes: Sequence[Write], ctes: Sequence[str], select: str, own: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """One statement: ``writes``' CTEs, then ``ctes``, then ``select``, a query of the caller's
    that reads the one row of ``effects`` (``FROM effects LEFT JOIN ...``), where the writes'
    effects are evaluated once. For a read that carries the writes waiting so far, so that they
    run before what the transaction does next instead of in its last statement."""
    parameters = _parameters(writes, own)
    selected = [write.effect for write in writes if write.effect] or ["true"]
    parts = [write.ctes for write in writes] + list(ctes)
    effects = "effects AS (SELECT " + ", ".join(selected) + ")"
    return "WITH " + ", ".join([*parts, effects]) + " " + select, parameters


def _parameters(writes: Sequence[Write], own: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's ``own`` parameters and the writes', no name twice."""
    parameters: dict[str, Any] = dict(own or {})
    for write in writes:
        if not parameters.keys().isdisjoint(write.parameters):
            raise ValueError(
                f"writes carried together share parameter names: {sorted(parameters.keys() & write.parameters.keys())}"
            )
        parameters.update(write.parameters)
    return parameters


async def write(connection: AsyncConnection, deferred: Write) -> None:
    """Carry ``deferred`` in the transaction's last statement when a scope is open on this
    connection; otherwise run it now."""
    scope = connection.info.get(_SCOPE)
    if scope is not None:
        scope.append(deferred)
        return
    await write_now(connection, deferred)


async def write_now(connection: AsyncConnection, deferred: Write) -> None:
    """Run ``deferred`` now, in a statement of its own, scope or not: for a write that something
    later in the transaction reads."""
    sql, parameters = carried([deferred])
    await connection.execute(clause(sql), parameters)


def take(connection: AsyncConnection) -> list[Write]:
    """The writes waiting in this connection's scope, which then holds none."""
    scope: list[Write] | None = connection.info.get(_SCOPE)
    if not scope:
        return []
    taken = list(scope)
    scope.clear()
    return taken


def waiting(connection: AsyncConnection) -> int:
    """How many writes wait in this connection's scope."""
    return len(connection.info.get(_SCOPE) or ())


@contextmanager
def deferring(connection: AsyncConnection) -> Iterator[None]:
    """A scope in which ``write`` defers to the transaction's last statement. Whoever opens it
    runs that statement (``take``) before it closes; a write still waiting when it closes
    normally is a bug, and raises rather than being lost."""
    if _SCOPE in connection.info:
        raise RuntimeError("deferred writes: a scope is already open on this connection")
    connection.info[_SCOPE] = []
    try:
        yield
        left = connection.info.get(_SCOPE)
        if left:
            raise RuntimeError(f"deferred writes: {len(left)} left unwritten when their scope closed")
    finally:
        connection.info.pop(_SCOPE, None)
