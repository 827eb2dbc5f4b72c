"""The statements that create and drop a month of a partitioned fact table.

Shared by the migration that partitions the tables and by the maintenance pass that keeps months
ahead and drops expired ones (``coxswain/runtime/partitions.py``). Names and bounds come from the
pure ``coxswain.core.partitions``; nothing here is user input.
"""

from __future__ import annotations

from coxswain.core.partitions import Month, PartitionedTable


def _bound(day: object) -> str:
    return f"'{day} 00:00:00+00'"


def bounds(month: Month) -> str:
    return f"FROM ({_bound(month.start)}) TO ({_bound(month.end)})"


def create_month(table: PartitionedTable, month: Month) -> str:
    """A month's partition, when the default partition holds none of its rows."""
    return f"CREATE TABLE IF NOT EXISTS {table.partition(month)} PARTITION OF {table.name} FOR VALUES {bounds(month)}"


def default_rows_in(table: PartitionedTable, month: Month) -> str:
    return (
        f"SELECT EXISTS (SELECT 1 FROM {table.default_partition} WHERE {table.column} >= {_bound(month.start)} "
        f"AND {table.column} < {_bound(month.end)})"
    )


def adopt_month(table: PartitionedTable, month: Month) -> list[str]:
    """A month's partition made from the rows the default partition holds for it, then attached:
    PostgreSQL refuses a new partition while the default still holds rows that belong in it."""
    part = table.partition(month)
    return [
        f"CREATE TABLE {part} (LIKE {table.name} INCLUDING DEFAULTS)",
        f"WITH moved AS (DELETE FROM {table.default_partition} WHERE {table.column} >= {_bound(month.start)} "
        f"AND {table.column} < {_bound(month.end)} RETURNING *) INSERT INTO {part} SELECT * FROM moved",
        f"ALTER TABLE {table.name} ATTACH PARTITION {part} FOR VALUES {bounds(month)}",
    ]


def partitions_of(table: PartitionedTable) -> str:
    return (
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        f"WHERE i.inhparent = '{table.name}'::regclass"
    )


def drop_month(table: PartitionedTable, month: Month) -> str:
    return f"DROP TABLE IF EXISTS {table.partition(month)}"
