"""The statements on a lead's way to a rep, sent to asyncpg directly, inside SQLAlchemy's
transaction on the same connection.

Why: a statement through SQLAlchemy's execute path costs the client about three times what
asyncpg alone costs (184 against 64 µs of CPU for the same parameterised statement and its rows,
docs/benchmarks.md, 6 December); a lead takes a few dozen of them across the services, so at a
hundred leads a second that difference is a tenth of the machine. Only the execution path is
skipped, nothing of what SQLAlchemy guarantees:

- the statement runs in the transaction the caller began (``engine.begin()``), started here the
  way SQLAlchemy's adapter starts it when it is the transaction's first statement, under the
  adapter's own mutex, so it commits and rolls back with everything else on the connection;
- parameters and rows go through the same asyncpg codecs SQLAlchemy registers on the connection
  (JSON included): a ``text()`` statement without types passes its values through unchanged, so
  the same values arrive either way;
- an error is raised as SQLAlchemy would raise it (``sqlalchemy.exc.DBAPIError`` subclasses
  around the driver's error, parameters hidden), and a connection the error closed is
  invalidated, so the callers' retry and outage handling see what they always saw.

Parameters are named (``:name``) as in ``text()``, with the same rule for what a name is. When
something listens to SQLAlchemy's engine events (an instrumentation's cursor hooks, the tests that
count a batch's round trips), statements go through SQLAlchemy after all, so the listener sees
every one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, Protocol, cast

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from coxswain.db.sql import clause

# ``text()``'s own rule: a colon, a word, not preceded by a colon, a word character or a
# backslash, not followed by a colon (so PostgreSQL's ``::type`` casts are not parameters).
_NAMED = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


@functools.lru_cache(maxsize=512)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with its named parameters numbered as asyncpg takes them ($1, $2, ...; a name used
    twice is one number), and the names in that order. Built once per distinct text."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql).replace("\\:", ":"), tuple(names)


class Row(Protocol):
    """A row as callers read SQLAlchemy's: by column name as an attribute, by position, unpacked."""

    def __getattr__(self, name: str) -> Any: ...

    def __getitem__(self, index: int) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class _Record:
    """asyncpg's record read as a ``Row``."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, index: int) -> Any:
        return self._record[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._record)

    def __len__(self) -> int:
        return len(self._record)


async def rows(connection: AsyncConnection, sql: str, parameters: Mapping[str, Any]) -> list[Row]:
    """Run ``sql`` in the connection's transaction and return its rows."""
    adapted = _adapted(connection)
    if adapted is None:
        return cast(list[Row], list(await connection.execute(clause(sql), parameters)))
    statement, names = positional(sql)
    arguments = [parameters[name] for name in names]
    records = await _run(connection, adapted, sql, lambda driver: driver.fetch(statement, *arguments))
    return [_Record(record) for record in records]


async def execute(connection: AsyncConnection, sql: str, parameters: Mapping[str, Any]) -> None:
    """Run ``sql`` in the connection's transaction for its effect."""
    await rows(connection, sql, parameters)


async def execute_many(connection: AsyncConnection, sql: str, parameters: Sequence[Mapping[str, Any]]) -> None:
    """Run ``sql`` once per set of parameters, in one round trip (asyncpg's pipelined executemany)."""
    if not parameters:
        return
    adapted = _adapted(connection)
    if adapted is None:
        await connection.execute(clause(sql), list(parameters))
        return
    statement, names = positional(sql)
    arguments = [[each[name] for name in names] for each in parameters]
    await _run(connection, adapted, sql, lambda driver: driver.executemany(statement, arguments))


async def scalar(connection: AsyncConnection, sql: str, parameters: Mapping[str, Any]) -> Any:
    """The first column of the first row, None when there is no row."""
    found = await rows(connection, sql, parameters)
    return found[0][0] if found else None


def _adapted(connection: AsyncConnection) -> Any:
    """SQLAlchemy's adapter of the asyncpg connection, or None where SQLAlchemy's own path is
    needed: something listens to its events, or the connection is not checked out, begun or
    valid yet (SQLAlchemy's own statement sees to all three)."""
    sync = connection.sync_connection
    pooled = None if sync is None else sync._dbapi_connection
    adapted = None if pooled is None else pooled.dbapi_connection
    if adapted is None or sync is None or sync._has_events or sync.engine._has_events or not sync.in_transaction():
        return None
    return adapted


async def _run(connection: AsyncConnection, adapted: Any, sql: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
    """``call`` with the asyncpg connection, in the transaction, under the adapter's mutex."""
    async with adapted._execute_mutex:
        try:
            if adapted._transaction is None:
                # The transaction's first statement: BEGIN now, as SQLAlchemy's cursor would
                # (nothing under autocommit).
                await adapted._start_transaction()
            return await call(adapted._connection)
        except Exception as error:
            await _raise_as_sqlalchemy(connection, adapted, sql, error)


async def _raise_as_sqlalchemy(connection: AsyncConnection, adapted: Any, sql: str, error: Exception) -> NoReturn:
    dbapi_error: type[Exception] = connection.dialect.loaded_dbapi.Error
    try:
        # The adapter's translation: asyncpg's error becomes the DB-API error SQLAlchemy raises
        # from (sqlstate kept); an error that is not the driver's (OSError) comes out as it is.
        adapted._handle_exception(error)
    except dbapi_error as translated:
        invalidated = bool(connection.dialect.is_disconnect(cast(Any, translated), adapted, None))
        if invalidated:
            await connection.invalidate(translated)
        raise DBAPIError.instance(
            sql,
            None,
            translated,
            dbapi_error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=connection.dialect,
        ) from error
    raise error  # pragma: no cover - _handle_exception always raises
