"""A process whose own loop is on a lead's way to its rep runs a standby relay: it publishes only
while no full relay is alive, so other services' rows are not published in the way of the lead's
own batch, nor the lead's rows behind it. The processes off that way (their records gather) run
the full relays. An operator can say otherwise (docs/event-path.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from coxswain.core.agreement import load_agreement
from coxswain.runtime.kafka import Publisher
from coxswain.runtime.outbox import OutboxRelay
from coxswain.runtime.service import Process
from coxswain.settings import KafkaConfig, OutboxConfig, ScoringConfig, Settings
from coxswain_app.wiring import CONSUMERS, consumer_relay, consumer_service, outbox_relay

AGREEMENT = load_agreement(Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml")
ENGINE = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # never connected


def relay_of(name: str, settings: Settings) -> OutboxRelay:
    """The relay a consumer's process runs, as the wiring builds it."""
    spec = CONSUMERS[name]
    wired = spec.wire(Process(name, ENGINE, lambda: AGREEMENT, lambda: datetime.now(UTC), settings))
    service = consumer_service(name, spec, wired, ENGINE, settings)
    return consumer_relay(ENGINE, Publisher(settings.kafka), settings, service)


def relay_is_standby(name: str, settings: Settings) -> bool:
    return relay_of(name, settings).standby


def test_scorings_relay_is_a_standby_and_the_relays_off_the_leads_way_are_full() -> None:
    settings = Settings()
    assert relay_is_standby("scoring", settings)
    # Scoring routes inline: the router's records gather, it is off the way.
    assert not relay_is_standby("router", settings)
    assert not relay_is_standby("sla_monitor", settings)
    assert not relay_is_standby("reporting", settings)


def test_a_router_that_routes_itself_is_on_the_leads_way() -> None:
    settings = Settings()
    settings.scoring = ScoringConfig(scoring_routes_inline=False)
    assert relay_is_standby("router", settings)


@pytest.mark.parametrize(
    ("setting", "on_leads_way", "standby"),
    [(None, True, True), (None, False, False), (False, True, False), (True, False, True)],
)
def test_the_setting_overrides_the_processs_choice(setting: bool | None, on_leads_way: bool, standby: bool) -> None:
    relay = outbox_relay(ENGINE, Publisher(KafkaConfig()), OutboxConfig(outbox_relay_standby=setting), on_leads_way)
    assert relay.standby is standby


def test_a_consumers_relay_is_named_after_its_instance_id_so_its_restart_takes_its_buckets_back() -> None:
    settings = Settings()
    settings.kafka = KafkaConfig(kafka_instance_id="router-0")
    assert relay_of("router", settings).name.startswith("router-0/")
    settings.kafka = KafkaConfig(kafka_instance_id=None)
    assert "/" not in relay_of("router", settings).name
