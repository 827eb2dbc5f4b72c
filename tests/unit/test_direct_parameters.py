"""Named parameters numbered for asyncpg by the rule ``text()`` reads them by."""

from __future__ import annotations

from sqlalchemy import text

from coxswain.db.direct import positional

SQL = "SELECT CAST(:b AS int), :a, x\\:y, 'p'::text, :c::text FROM t WHERE c = :long_name AND d = :b"


def test_named_parameters_are_numbered_in_order_of_first_use() -> None:
    sql, names = positional(SQL)
    assert sql == "SELECT CAST($1 AS int), $2, x:y, 'p'::text, :c::text FROM t WHERE c = $3 AND d = $1"
    assert names == ("b", "a", "long_name")


def test_what_is_a_parameter_is_what_text_takes_for_one() -> None:
    # A name followed by '::' is not a parameter for text() either (PostgreSQL's cast syntax).
    assert set(positional(SQL)[1]) == set(text(SQL)._bindparams)
