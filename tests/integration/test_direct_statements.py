"""Statements sent to asyncpg directly (``coxswain.db.direct``) behave as the same statements sent
through SQLAlchemy: same rows, same transaction, same errors; and whatever listens to SQLAlchemy's
cursor events still sees them. Against the real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.db import direct
from coxswain.runtime.consumer import _sqlstate
from coxswain.runtime.outages import is_connection_error
from tests.support.databases import engine_without_relays

pytestmark = pytest.mark.asyncio(loop_scope="session")

TABLE = "direct_statements_probe"
ROWS = "SELECT k, v, CAST(:doc AS jsonb) AS doc FROM unnest(CAST(:keys AS text[]), CAST(:vals AS uuid[])) AS t(k, v) ORDER BY k"


@pytest_asyncio.fixture(loop_scope="session")
async def engine(infrastructure: None) -> AsyncIterator[AsyncEngine]:
    async with engine_without_relays() as database:
        async with database.begin() as connection:
            await connection.execute(text(f"CREATE TABLE IF NOT EXISTS {TABLE} (id uuid PRIMARY KEY, note text)"))
            await connection.execute(text(f"TRUNCATE {TABLE}"))
        yield database


async def test_a_direct_statement_returns_what_sqlalchemy_returns(engine: AsyncEngine) -> None:
    parameters: dict[str, Any] = {
        "keys": ["b", "a"],
        "vals": [uuid.uuid4(), uuid.uuid4()],
        "doc": '{"score": 40, "tags": ["mql"]}',
    }
    async with engine.begin() as connection:
        through_sqlalchemy = (await connection.execute(text(ROWS), parameters)).all()
        sent_directly = await direct.rows(connection, ROWS, parameters)
    assert [tuple(row) for row in sent_directly] == [tuple(row) for row in through_sqlalchemy]
    assert [row.k for row in sent_directly] == ["a", "b"]
    assert sent_directly[0][2] == {"score": 40, "tags": ["mql"]}
    assert len(sent_directly[0]) == 3


async def test_a_direct_statement_is_part_of_the_callers_transaction(engine: AsyncEngine) -> None:
    kept, undone = uuid.uuid4(), uuid.uuid4()
    insert = f"INSERT INTO {TABLE} (id, note) VALUES (:id, :note)"
    async with engine.connect() as connection:
        async with connection.begin():
            # The transaction's first statement, sent directly: it begins the transaction.
            await connection.execute(text("SELECT 1"))
            await direct.execute(connection, insert, {"id": undone, "note": "rolled back"})
            # SQLAlchemy's statements on the connection see it before the commit.
            assert await connection.scalar(text(f"SELECT note FROM {TABLE} WHERE id = :id"), {"id": undone})
            await connection.rollback()
        async with connection.begin():
            await direct.execute(connection, insert, {"id": kept, "note": "committed"})
    async with engine.connect() as connection:
        found = await connection.execute(text(f"SELECT id FROM {TABLE} WHERE id IN (:a, :b)"), {"a": kept, "b": undone})
        assert {row.id for row in found} == {kept}


async def test_a_direct_statement_that_begins_a_transaction_rolls_back_with_it(engine: AsyncEngine) -> None:
    lead = uuid.uuid4()
    async with engine.connect() as connection:
        transaction = await connection.begin()
        # Nothing sent yet on this transaction: the direct statement sends its BEGIN.
        await direct.execute(connection, f"INSERT INTO {TABLE} (id, note) VALUES (:id, 'x')", {"id": lead})
        await transaction.rollback()
        assert await direct.scalar(connection, f"SELECT count(*) FROM {TABLE} WHERE id = :id", {"id": lead}) == 0


async def test_a_failing_direct_statement_raises_what_sqlalchemy_raises(engine: AsyncEngine) -> None:
    lead = uuid.uuid4()
    insert = f"INSERT INTO {TABLE} (id, note) VALUES (:id, :note)"
    with pytest.raises(IntegrityError) as raised:
        async with engine.begin() as connection:
            await direct.execute(connection, insert, {"id": lead, "note": "first"})
            await direct.execute(connection, insert, {"id": lead, "note": "a personal value"})
    assert _sqlstate(raised.value) == "23505"
    # Parameters stay out of the message, as the services' engines are told (hide_parameters).
    assert "a personal value" not in str(raised.value)
    async with engine.connect() as connection:
        assert await connection.scalar(text(f"SELECT count(*) FROM {TABLE} WHERE id = :id"), {"id": lead}) == 0


async def test_a_connection_lost_under_a_direct_statement_is_an_outage_and_is_invalidated(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.begin()
        backend = await direct.scalar(connection, "SELECT pg_backend_pid()", {})
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            await other.commit()
        with pytest.raises(DBAPIError) as raised:
            await direct.execute(connection, "SELECT 1", {})
        # As SQLAlchemy does on its own path: the connection is known dead at once, not at its
        # next use, and the pool will not hand it out again.
        assert connection.invalidated
    assert raised.value.connection_invalidated
    assert is_connection_error(raised.value)
    async with engine.begin() as connection:
        assert await direct.scalar(connection, "SELECT 2", {}) == 2


async def test_cursor_listeners_see_direct_statements(engine: AsyncEngine) -> None:
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", listen)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SELECT 1"))
            assert await direct.scalar(connection, "SELECT CAST(:n AS int) + 1", {"n": 41}) == 42
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listen)
    assert any("+ 1" in statement for statement in seen)
