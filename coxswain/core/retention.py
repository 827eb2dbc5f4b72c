"""How long dedupe records must be kept: longer than any copy of the event can come back.

A consumer skips an event it has applied because its id is in ``inbox``. Kafka can redeliver an
event for as long as the topic keeps it (a consumer rewound, a group reset, a restored database
whose offsets are older), so an inbox row may go only once its event is gone from the topic: the
window is at least the longest retention of the topics consumed, plus a margin for clocks and for
a broker's deletion running late (Kafka deletes whole segments, after the retention has passed).
A topic that keeps records for ever means inbox rows are kept for ever too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

MARGIN = timedelta(days=1)  # the default; a test stack with minutes-long topics may set less


class RetentionTooShort(ValueError):
    """The configured window would let a redelivered event through twice; says what to set."""


def longest_retention(retention_ms: Iterable[int]) -> timedelta | None:
    """The longest of the topics' ``retention.ms``; None when one keeps records for ever (-1)."""
    longest = timedelta(0)
    for value in retention_ms:
        if value < 0:
            return None
        longest = max(longest, timedelta(milliseconds=value))
    return longest


def inbox_window(
    configured: timedelta, topic_retention: timedelta | None, margin: timedelta = MARGIN
) -> timedelta | None:
    """How old an inbox row must be before it may go; None: never (a topic keeps records for ever).

    Raises ``RetentionTooShort`` when ``configured`` is not longer than the retention plus the
    margin: pruning inside it could let a redelivery be applied a second time."""
    if topic_retention is None:
        return None
    floor = topic_retention + margin
    if configured < floor:
        raise RetentionTooShort(
            f"COXSWAIN_INBOX_RETENTION_DAYS is {_days(configured)}, but the topics keep events for "
            f"{_days(topic_retention)}: dedupe records must outlive them by {_days(margin)}, "
            f"so set it to at least {_days(floor)} (or shorten the topics' retention.ms)"
        )
    return configured


def _days(span: timedelta) -> str:
    days = round(span / timedelta(days=1), 6)
    return f"{days:g} day" + ("" if days == 1 else "s")
