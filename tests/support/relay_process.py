"""One outbox relay as its own OS process, as every service runs it (`python -m
tests.support.relay_process NAME`): for tests that kill or freeze a relay."""

from __future__ import annotations

import asyncio
import logging
import sys

from coxswain.db.database import create_relay_engine
from coxswain.runtime.kafka import Publisher
from coxswain.settings import DatabaseConfig, KafkaConfig
from coxswain_app.wiring import outbox_relay, stop_on_signals


async def main(name: str) -> None:
    stop = stop_on_signals()
    engine = create_relay_engine(DatabaseConfig())
    publisher = Publisher(KafkaConfig())
    await publisher.start()
    relay = outbox_relay(engine, publisher)
    relay.name = name
    print(f"relay {name} started", flush=True)
    try:
        await relay.run(stop)
    finally:
        await publisher.stop()
        await engine.dispose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    asyncio.run(main(sys.argv[1]))
