"""Retention: lead_facts, report_facts and intake_events in monthly partitions; report_history

The three tables grow with every lead. Partitioned by month of their time column, a month past
retention goes with a DROP TABLE instead of a delete of millions of rows. The primary key gains
the time column (PostgreSQL requires the partition key in every unique index); an event's time
is part of the event, so a redelivered copy still meets its first copy's key.

``report_history`` keeps, per month, the counts reports need once a month of ``report_facts``
is dropped (coxswain/runtime/partitions.py).

The upgrade copies the existing rows into the new tables: on a large database, plan for it.

Revision ID: 0014_monthly_partitions
Revises: 0013_retention_indexes
Create Date: 2026-12-04 07:40:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from coxswain.core.partitions import AHEAD, PARTITIONED, Month
from coxswain.db.partitions import create_month

revision: str = "0014_monthly_partitions"
down_revision: str | Sequence[str] | None = "0013_retention_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "lead_facts": {"ix_lead_facts_lead_id": "(lead_id)", "ix_lead_facts_caused_by": "(caused_by)"},
    "report_facts": {
        "ix_report_facts_kind_occurred_at": "(kind, occurred_at)",
        "ix_report_facts_lead_id": "(lead_id)",
        "ix_report_facts_routed_assignment": "((payload->>'assignment_id')) WHERE kind = 'LeadRoutedV1'",
    },
    "intake_events": {"ix_intake_events_lead_id": "(lead_id)"},
}


def _set_aside(name: str) -> None:
    op.execute(f"ALTER TABLE {name} RENAME TO {name}_old")
    op.execute(f"ALTER TABLE {name}_old RENAME CONSTRAINT pk_{name} TO pk_{name}_old")
    for index in INDEXES[name]:
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_old")


def _indexes(name: str) -> None:
    for index, definition in INDEXES[name].items():
        op.execute(f"CREATE INDEX {index} ON {name} {definition}")


def upgrade() -> None:
    now = datetime.now(UTC)
    for table in PARTITIONED:
        name, column = table.name, table.column
        _set_aside(name)
        op.execute(f"CREATE TABLE {name} (LIKE {name}_old INCLUDING DEFAULTS) PARTITION BY RANGE ({column})")
        op.execute(f"ALTER TABLE {name} ADD CONSTRAINT pk_{name} PRIMARY KEY (event_id, {column})")
        _indexes(name)
        op.execute(f"CREATE TABLE {table.default_partition} PARTITION OF {name} DEFAULT")
        oldest = op.get_bind().scalar(sa.text(f"SELECT min({column}) FROM {name}_old"))
        month = Month.of(min(oldest, now) if oldest is not None else now)
        while month <= Month.of(now).plus(AHEAD):
            op.execute(create_month(table, month))
            month = month.plus(1)
        op.execute(f"INSERT INTO {name} SELECT * FROM {name}_old")
        op.execute(f"DROP TABLE {name}_old")
    op.create_table(
        "report_history",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        # '' rather than NULL, so that every slice is one row under the primary key.
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("campaign", sa.String(length=256), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column("agreement_version", sa.String(length=64), nullable=False),
        sa.Column("facts", sa.BigInteger(), nullable=False),
        sa.Column("leads", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "month", "kind", "stage", "source", "campaign", "persona", "agreement_version", name="pk_report_history"
        ),
    )


def downgrade() -> None:
    op.drop_table("report_history")
    for table in PARTITIONED:
        name = table.name
        _set_aside(name)
        op.execute(f"CREATE TABLE {name} (LIKE {name}_old INCLUDING DEFAULTS)")
        op.execute(f"ALTER TABLE {name} ADD CONSTRAINT pk_{name} PRIMARY KEY (event_id)")
        _indexes(name)
        op.execute(f"INSERT INTO {name} SELECT * FROM {name}_old")
        op.execute(f"DROP TABLE {name}_old")
