"""The dedupe window must outlive every copy Kafka could redeliver (coxswain/core/retention.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from coxswain.core.retention import MARGIN, RetentionTooShort, inbox_window, longest_retention

DAY = timedelta(days=1)


def test_the_longest_topic_retention_counts_and_for_ever_means_none() -> None:
    assert longest_retention([86_400_000, 7 * 86_400_000, 3_600_000]) == 7 * DAY
    assert longest_retention([86_400_000, -1]) is None
    assert longest_retention([]) == timedelta(0)


def test_the_window_must_be_longer_than_the_retention_plus_a_margin() -> None:
    assert inbox_window(14 * DAY, 7 * DAY) == 14 * DAY
    assert inbox_window(7 * DAY + MARGIN, 7 * DAY) == 7 * DAY + MARGIN
    with pytest.raises(RetentionTooShort) as refused:
        inbox_window(7 * DAY, 7 * DAY)
    assert str(refused.value) == (
        "COXSWAIN_INBOX_RETENTION_DAYS is 7 days, but the topics keep events for 7 days: dedupe records "
        "must outlive them by 1 day, so set it to at least 8 days (or shorten the topics' retention.ms)"
    )


def test_topics_that_keep_events_for_ever_keep_dedupe_records_for_ever() -> None:
    assert inbox_window(DAY, None) is None


def test_a_smaller_margin_moves_the_floor_for_a_stack_whose_topics_keep_minutes() -> None:
    minutes = timedelta(minutes=1)
    assert inbox_window(15 * minutes, 10 * minutes, 5 * minutes) == 15 * minutes
    with pytest.raises(RetentionTooShort):
        inbox_window(14 * minutes, 10 * minutes, 5 * minutes)
