"""A dependency outage is one warning and one info line, not a line per retry (log filter, fake clock)."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
)
from sqlalchemy.exc import DBAPIError

from coxswain.runtime import outages
from coxswain.runtime.outages import GRACE_SECONDS, QUIET_SECONDS, Dependency, Outage, OutageFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state() -> dict[Dependency, Outage]:
    return {"kafka": Outage("kafka"), "postgres": Outage("postgres")}


@pytest.fixture
def kept(clock: Clock, state: dict[Dependency, Outage]) -> Kept:
    handler = Kept()
    handler.addFilter(OutageFilter(clock, state))
    return handler


def record(name: str, level: int, message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def test_twenty_seconds_of_aiokafka_connection_errors_are_one_warning(
    clock: Clock, kept: Kept, state: dict[Dependency, Outage]
) -> None:
    for _ in range(20 * 35):  # what each client logs while a broker is down: 30-40 lines a second
        kept.handle(
            record("aiokafka", logging.ERROR, "Unable connect to node with id 1: [Errno 111] Connection refused")
        )
        kept.handle(
            record("aiokafka.consumer.fetcher", logging.ERROR, "Failed fetch messages from 1: NodeNotReadyError")
        )
        clock.now += 1 / 35
    assert [(r.levelname, r.getMessage()[:17]) for r in kept.records] == [("WARNING", "Kafka unreachable")]
    assert kept.records[0].exc_info is None
    assert state["kafka"].errors == 2 * 20 * 35
    assert state["kafka"].answered(clock.now) is None, "not back while errors are fresh"
    clock.now += QUIET_SECONDS
    away, errors = state["kafka"].answered(clock.now) or (0.0, 0)
    assert 19 < away < 21 and errors == 2 * 20 * 35
    assert not state["kafka"].open


def test_a_coordinator_still_loading_at_start_up_is_counted_not_logged(
    clock: Clock, kept: Kept, state: dict[Dependency, Outage]
) -> None:
    kept.handle(
        record(
            "aiokafka.consumer.group_coordinator",
            logging.ERROR,
            "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError",
        )
    )
    clock.now += GRACE_SECONDS / 4
    kept.handle(record("aiokafka", logging.WARNING, "Marking the coordinator dead (node 1)for group scoring."))
    assert kept.records == []
    clock.now += QUIET_SECONDS
    assert state["kafka"].answered(clock.now) is None, "an outage never logged ends without a line"
    assert not state["kafka"].open


def test_other_lines_pass_and_aiokafka_lines_are_held_only_during_an_outage(
    clock: Clock, kept: Kept, state: dict[Dependency, Outage]
) -> None:
    kept.handle(record("coxswain.runtime.consumer", logging.WARNING, "batch failed, will be redelivered"))
    kept.handle(
        record("aiokafka.consumer.group_coordinator", logging.ERROR, "OffsetCommit failed: UnknownMemberIdError")
    )
    assert len(kept.records) == 2
    kept.handle(record("aiokafka", logging.ERROR, "Unable to update metadata from [1]"))
    clock.now += GRACE_SECONDS
    kept.handle(record("aiokafka", logging.ERROR, "Unable to update metadata from [1]"))
    kept.handle(
        record("aiokafka.consumer.group_coordinator", logging.ERROR, "OffsetCommit failed: UnknownMemberIdError")
    )
    assert [r.levelname for r in kept.records] == ["WARNING", "ERROR", "WARNING"]


def wrapped(cause: OSError) -> DBAPIError:
    """As SQLAlchemy raises it: the driver's error as the cause."""
    try:
        raise DBAPIError("SELECT 1", {}, cause) from cause
    except DBAPIError as exc:
        return exc


def test_our_lines_tagged_with_the_database_make_a_postgres_outage(
    clock: Clock, kept: Kept, state: dict[Dependency, Outage]
) -> None:
    refused = wrapped(ConnectionRefusedError(111, "Connection refused"))
    assert outages.about(refused) == {"dependency": "postgres"}
    assert outages.about(ValueError("a bad row")) == {}
    for _ in range(10):
        kept.handle(record("coxswain.runtime.outbox", logging.WARNING, "outbox relay failed", **outages.about(refused)))
        clock.now += 0.5
    assert [r.getMessage()[:22] for r in kept.records] == ["PostgreSQL unreachable"]
    assert not state["kafka"].open and state["postgres"].errors == 10


def test_an_outage_with_no_watch_is_forgotten_so_the_next_one_is_logged_again(
    clock: Clock, kept: Kept, state: dict[Dependency, Outage]
) -> None:
    for _ in range(2):
        for _ in range(10):
            kept.handle(record("aiokafka", logging.ERROR, "Unable connect to node with id 1"))
            clock.now += 0.5
        clock.now += outages.FORGET_SECONDS
    assert len(kept.records) == 2


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (KafkaConnectionError("refused"), {"dependency": "kafka"}),
        (RequestTimedOutError(), {"dependency": "kafka"}),
        # What a restarted broker answers until it settles: part of the outage, not a traceback.
        (LeaderNotAvailableError(), {"dependency": "kafka"}),
        (NotLeaderForPartitionError(), {"dependency": "kafka"}),
        (OutOfOrderSequenceNumber(), {"dependency": "kafka"}),
        # A record Kafka will never take is no outage: it stays an error with its traceback.
        (MessageSizeTooLargeError(), {}),
    ],
)
def test_kafka_errors_of_a_restart_belong_to_the_outage(error: Exception, dependency: dict[str, str]) -> None:
    assert outages.about(error) == dependency


def test_a_relay_losing_its_leases_while_kafka_is_away_joins_the_outage_and_otherwise_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from coxswain.runtime.kafka import Publisher
    from coxswain.runtime.outbox import OutboxRelay
    from coxswain.settings import KafkaConfig

    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # never connected
    relay = OutboxRelay(engine, Publisher(KafkaConfig()), name="r")
    kafka = outages.OUTAGE["kafka"]
    relay.owned = (1, 2)
    with caplog.at_level(logging.WARNING, logger="coxswain.runtime.outbox"):
        relay._lost({1}, "its lease ran out before it was renewed")
        kafka.first, kafka.last = 1.0, 1.0  # an outage open in this process
        try:
            relay._lost({2}, "its lease ran out before it was renewed")
        finally:
            kafka.first, kafka.errors, kafka.announced = None, 0, False
    alone, during = caplog.records
    # Alone (a paused relay) it is a warning of its own; during an outage it belongs to the
    # outage (the log filter counts it and says nothing new).
    assert getattr(alone, "dependency", None) is None
    assert getattr(during, "dependency", None) == "kafka"
    assert not relay.owned
