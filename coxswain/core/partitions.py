"""Monthly partitions of the fact tables: which months must exist and which may go.

``lead_facts``, ``report_facts`` and ``intake_events`` grow with every lead. Each is partitioned by
month of its time column; a month is created ahead of the rows that will fall in it, and dropped
whole (a cheap ``DROP TABLE``, no row-by-row delete, no bloat) once every row in it is older than
the retention. Rows are therefore kept at least ``retention_months`` and at most one month more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

AHEAD = 3  # months created beyond the current one: months of slack if maintenance stops running


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @staticmethod
    def of(moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return Month(moment.year, moment.month)

    def plus(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def end(self) -> date:
        """The first day of the next month: the bound is exclusive."""
        return self.plus(1).start


@dataclass(frozen=True)
class PartitionedTable:
    name: str
    column: str  # the time every row is filed under; part of the primary key

    def partition(self, month: Month) -> str:
        return f"{self.name}_p{month.year:04d}_{month.month:02d}"

    @property
    def default_partition(self) -> str:
        """Rows whose month has no partition (a sender's date years off) wait here."""
        return f"{self.name}_default"

    def month_of(self, partition: str) -> Month | None:
        """The month a partition's name stands for; None for the default or a foreign table."""
        prefix = f"{self.name}_p"
        if not partition.startswith(prefix):
            return None
        year, _, month = partition.removeprefix(prefix).partition("_")
        if not (year.isdigit() and month.isdigit() and len(year) == 4 and len(month) == 2):
            return None
        return Month(int(year), int(month)) if 1 <= int(month) <= 12 else None


LEAD_FACTS = PartitionedTable("lead_facts", "occurred_at")
REPORT_FACTS = PartitionedTable("report_facts", "occurred_at")
INTAKE_EVENTS = PartitionedTable("intake_events", "received_at")
PARTITIONED = (LEAD_FACTS, REPORT_FACTS, INTAKE_EVENTS)


def months_to_create(now: datetime, existing: set[Month]) -> list[Month]:
    """The current month and the ``AHEAD`` after it, less those that exist."""
    current = Month.of(now)
    return [month for month in (current.plus(n) for n in range(AHEAD + 1)) if month not in existing]


def retention_cutoff(now: datetime, retention_months: int) -> date:
    """Rows before this date are past retention: the start of the month ``retention_months`` ago."""
    if retention_months < 1:
        raise ValueError("retention_months must be at least 1")
    return Month.of(now).plus(-retention_months).start


def months_to_drop(now: datetime, existing: set[Month], retention_months: int) -> list[Month]:
    """Partitions all of whose rows are past retention, oldest first."""
    cutoff = retention_cutoff(now, retention_months)
    return sorted(month for month in existing if month.end <= cutoff)
