"""Consumers on the path from a webhook to a rep fetch each record as soon as it arrives; consumers
off it (the SLA monitor, reporting) let records gather and apply them in fewer, larger batches,
leaving the CPU to the path users wait on. An operator can override either (docs/event-path.md)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.runtime.consumer import ConsumerService
from coxswain.runtime.kafka import GATHER_BYTES, make_consumer
from coxswain.settings import ConsumerConfig, KafkaConfig
from services.reporting.spec import SPEC as REPORTING
from services.router.spec import SPEC as ROUTER
from services.scoring.spec import SPEC as SCORING
from services.sla_monitor.spec import SPEC as SLA_MONITOR


def fetch_settings(consumer: Any) -> tuple[int, int]:
    """What the consumer's fetch requests ask of the broker: the bytes to wait for, and how long."""
    return consumer._fetch_min_bytes, consumer._fetch_max_wait_ms


def test_the_services_a_lead_waits_on_fetch_at_once_and_the_others_gather() -> None:
    assert SCORING.gather_ms == 0
    assert ROUTER.gather_ms == 0
    assert SLA_MONITOR.gather_ms > 0
    assert REPORTING.gather_ms > 0


async def test_an_eager_consumer_asks_the_broker_to_answer_with_the_first_record() -> None:
    consumer = make_consumer(KafkaConfig(), "eager", (), 10)
    try:
        assert fetch_settings(consumer)[0] == 1
    finally:
        await consumer.stop()  # never started: only marks it closed


async def test_a_gathering_consumer_asks_the_broker_to_hold_its_fetch_for_the_gathering_time() -> None:
    consumer = make_consumer(KafkaConfig(), "gathering", (), 10, gather_ms=250)
    try:
        assert fetch_settings(consumer) == (GATHER_BYTES, 250)
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("override", "chosen", "expected"), [(None, 250, 250), (0, 250, 0), (40, 0, 40)])
async def test_the_setting_overrides_the_services_choice(override: int | None, chosen: int, expected: int) -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    service = ConsumerService(
        name="svc",
        accepts={},
        handler=_unused,
        engine=engine,
        kafka=KafkaConfig(),
        config=ConsumerConfig(consumer_gather_ms=override),
        gather_ms=chosen,
    )
    assert service.gather_ms == expected
    await engine.dispose()


async def _unused(*_: Any) -> list[Any]:
    raise AssertionError("never called")
