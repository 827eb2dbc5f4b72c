"""Merge the parallel branches (SLA timers, agreements, routing, reporting) into one line

The four features grew side by side from 0001; one head from here on means later migrations
have a single parent and `alembic upgrade head` works as well as "heads".

Revision ID: 0007_merge
Revises: 0002_sla, 0003_agreements, 0004_routing, 0006_reporting
Create Date: 2026-11-23 01:45:00
"""

from collections.abc import Sequence

revision: str = "0007_merge"
down_revision: str | Sequence[str] | None = ("0002_sla", "0003_agreements", "0004_routing", "0006_reporting")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to change: the branches touch disjoint tables."""


def downgrade() -> None:
    """Nothing to undo."""
