"""Deleting many old rows without long locks: one short transaction per batch."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

BATCH = 10_000  # rows per delete statement: short transactions, no long lock on a busy table


async def delete_in_batches(engine: AsyncEngine, table: str, key: str, condition: str, before: datetime) -> int:
    """Delete the rows of ``table`` matching ``condition`` (which may use ``:before``), ``BATCH``
    at a time by ``key`` (a unique column, or ``ctid``); the number deleted."""
    total = 0
    while True:
        async with engine.begin() as connection:
            deleted = (
                await connection.execute(
                    text(
                        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {condition} LIMIT :batch)"
                    ),
                    {"before": before, "batch": BATCH},
                )
            ).rowcount
        total += deleted
        if deleted < BATCH:
            return total
