"""Routing locks: one transaction-scoped advisory lock per lead, domain, pool and rep a decision
reads, so decisions that share none of them run at the same time on different router instances.

What conflicts, and so what is locked: a pool's rotation row (two decisions in one pool must
see each other's credits), a rep's counters (a rep can be in several pools, be an account owner
or hold an open lead of a domain, and a release lowers the counters), a domain (a lead goes to
the holder of its domain's newest open lead, so two leads of one domain are decided one after
the other), a lead (its ``lead_routing`` row and its parked request).

Why no deadlock: a transaction waits for routing locks only in one statement that takes, in
ascending key order, keys all greater than every routing key it already holds. Any other time
it needs more (a later run of decisions in the same batch, or a rep discovered only once the
state is read), it asks without waiting (``pg_try_advisory_xact_lock``) and, when another
transaction has one of them, gives the batch back with ``RoutingLocksBusy`` to be redelivered
instead of waiting out of order. Two transactions can then never wait for each other in a cycle.
Row locks are only taken on rows whose routing lock the transaction already holds.

The first locks of a transaction may be left to the next read of the routing state
(``acquire_with_the_read``): that read waits for them before it reads, in one round trip
(``repository.load_state``). Until then nothing reads what they protect: any other ``acquire``
takes them first, in the same ordered statement as its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.runtime.consumer import RetrySoon
from services.router import repository

# First half of the two-int advisory keys (pg_locks.classid): routing keys never meet another
# subsystem's advisory locks. "ro".
ROUTING_LOCK_CLASS = 0x726F
_HELD = "coxswain.router.locks"
_WITH_THE_READ = "coxswain.router.locks.with_the_read"


class RoutingLocksBusy(RetrySoon):
    """Locks a decision needs are held elsewhere and cannot be waited for in order.

    The consumer applies the batch again shortly and never dead-letters it: nothing is wrong with
    the records, only with the moment.
    """


def lock_key(kind: str, name: object) -> int:
    """A stable non-negative 31-bit key (pg_locks.objid is unsigned; keep both orders equal).

    Two names sharing a key only serialise more than needed, never less.
    """
    digest = hashlib.blake2b(f"{kind}:{name}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


def keys_for(
    leads: Iterable[object] = (),
    domains: Iterable[str] = (),
    pools: Iterable[str] = (),
    reps: Iterable[str] = (),
) -> set[int]:
    return (
        {lock_key("lead", lead) for lead in leads}
        | {lock_key("domain", domain) for domain in domains}
        | {lock_key("pool", pool) for pool in pools}
        | {lock_key("rep", rep) for rep in reps}
    )


def _root(connection: AsyncConnection) -> object:
    return connection.sync_connection.get_transaction() if connection.sync_connection is not None else None


def acquire_with_the_read(connection: AsyncConnection, keys: Iterable[int]) -> bool:
    """Leave ``keys`` to the next read of the routing state (``taken_by_the_read``), when they are
    the transaction's first routing locks: that read then waits for them, in ascending order,
    before it reads. False when the transaction has asked for routing locks before: the caller
    ``acquire``s them instead. The caller reads nothing they protect before that read."""
    root = _root(connection)
    if connection.info.get(_HELD) is root:
        return False
    # From now on ``acquire`` asks PostgreSQL what is held, and takes these first.
    connection.info[_HELD] = root
    connection.info[_WITH_THE_READ] = (root, sorted(set(keys)))
    return True


def taken_by_the_read(connection: AsyncConnection) -> list[int]:
    """The keys left to this read (``acquire_with_the_read``), once: it waits for them, ascending.

    Nothing else took locks since they were left (``acquire`` takes them first), so the
    transaction holds no routing lock and may wait for them in order."""
    left = connection.info.pop(_WITH_THE_READ, None)
    return left[1] if left is not None and left[0] is _root(connection) else []


async def acquire(connection: AsyncConnection, keys: Iterable[int]) -> None:
    """Hold ``keys`` until the transaction ends; wait only where the global order allows it."""
    left = taken_by_the_read(connection)
    wanted = sorted(set(keys) | set(left))
    if not wanted:
        return
    root = _root(connection)
    known = connection.info.get(_HELD)
    if known is None or known is not root or left:
        # A transaction that has not asked yet, or only left its first locks to the read, holds
        # no routing lock: no need to look.
        connection.info[_HELD] = root
        held: set[int] = set()
    else:
        # Asked before in this transaction: ask PostgreSQL, not a cache, because a savepoint
        # rolled back releases the locks taken inside it.
        held = await repository.held_locks(connection, ROUTING_LOCK_CLASS)
    missing = [key for key in wanted if key not in held]
    if not missing:
        return
    if not held or missing[0] > max(held):
        # In ascending order within one statement.
        await repository.wait_for_locks(connection, ROUTING_LOCK_CLASS, missing)
        return
    if not await repository.try_locks(connection, ROUTING_LOCK_CLASS, missing):
        raise RoutingLocksBusy(f"{len(missing)} routing locks busy and below ones already held")
