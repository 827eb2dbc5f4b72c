"""A consumer that fetched records of several topics at once applies them in the order they were
published, without reordering any partition (docs/event-path.md)."""

from __future__ import annotations

from dataclasses import dataclass

from coxswain.runtime.consumer import in_time_order


@dataclass(frozen=True)
class Record:
    topic: str
    offset: int
    timestamp: int


def test_a_batch_is_applied_in_record_time_and_no_partition_is_reordered() -> None:
    routed = [Record("leads.routed.v1", 7, 100), Record("leads.routed.v1", 8, 300)]
    # A clock step back inside one partition (another producer's clock): its order still holds.
    touched = [Record("leads.activity_accepted.v1", 3, 200), Record("leads.activity_accepted.v1", 4, 150)]
    batch = {"activity": touched, "routed": routed}

    assert [(record.topic, record.offset) for record in in_time_order(batch)] == [
        ("leads.routed.v1", 7),
        ("leads.activity_accepted.v1", 3),
        ("leads.activity_accepted.v1", 4),
        ("leads.routed.v1", 8),
    ]


def test_an_empty_batch_is_empty() -> None:
    assert in_time_order({}) == []
