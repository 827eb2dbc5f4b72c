"""The composition root: the one place that builds concrete adapters and hands them to services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement, load_agreement
from coxswain.db.database import create_engine, require_current_schema
from coxswain.runtime.consumer import ConsumerService, Handler, utc_now
from coxswain.runtime.kafka import Publisher
from coxswain.runtime.outbox import OutboxRelay
from coxswain.settings import AgreementConfig, ConsumerConfig, DatabaseConfig, IntakeConfig, KafkaConfig, SlaConfig
from schemas.events import Event
from services.intake.app import create_app
from services.router import service as router
from services.scoring import service as scoring
from services.sla_monitor import service as sla_monitor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerSpec:
    accepts: dict[str, tuple[type[Event], ...]]
    make_handler: Callable[[Agreement], Handler]


CONSUMERS: dict[str, ConsumerSpec] = {
    "scoring": ConsumerSpec(scoring.ACCEPTS, scoring.make_handler),
    "router": ConsumerSpec(router.ACCEPTS, router.make_handler),
    "sla_monitor": ConsumerSpec(sla_monitor.ACCEPTS, sla_monitor.make_handler),
}


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _retry(what: str, attempt: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Dependencies may come up after us (compose, restarts): wait for them with backoff."""
    delay = 0.5
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            if stop.is_set():
                raise
            log.warning("waiting for %s: %s; retrying in %.1fs", what, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _start_publisher(kafka: KafkaConfig, stop: asyncio.Event) -> Publisher:
    holder: list[Publisher] = []

    async def start() -> None:
        publisher = Publisher(kafka)
        try:
            await publisher.start()
        except Exception:
            await publisher.stop()
            raise
        holder.append(publisher)

    await _retry("kafka", start, stop)
    return holder[0]


async def _engine_with_current_schema(database: DatabaseConfig) -> AsyncEngine:
    engine = create_engine(database)
    # Out-of-date schema is not transient: fail at once so the operator runs the migration.
    await require_current_schema(engine, database)
    return engine


async def run_consumer(name: str) -> None:
    spec = CONSUMERS[name]
    kafka, database = KafkaConfig(), DatabaseConfig()
    agreement = load_agreement(AgreementConfig().agreement_file)
    stop = stop_on_signals()
    engine = await _engine_with_current_schema(database)
    publisher = await _start_publisher(kafka, stop)
    relay = OutboxRelay(engine, publisher)
    service = ConsumerService(
        name=name,
        accepts=spec.accepts,
        handler=spec.make_handler(agreement),
        engine=engine,
        kafka=kafka,
        config=ConsumerConfig(),
        clock=utc_now,
    )
    log.info("%s running under agreement %s", name, agreement.version)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(relay.run(stop))
            group.create_task(_retry("kafka consumer", lambda: service.run(stop), stop))
            if name == "sla_monitor":
                group.create_task(sla_monitor.run_timer(engine, SlaConfig(), utc_now, stop))
    finally:
        await publisher.stop()
        await engine.dispose()


def intake_app() -> tuple[FastAPI, IntakeConfig]:
    config, kafka, database = IntakeConfig(), KafkaConfig(), DatabaseConfig()
    engine = create_engine(database)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await require_current_schema(engine, database)
        stop = asyncio.Event()
        publisher = await _start_publisher(kafka, stop)
        relay = asyncio.create_task(OutboxRelay(engine, publisher).run(stop))
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await relay
            await publisher.stop()
            await engine.dispose()

    return create_app(config, engine, utc_now, lifespan=lifespan), config


def run_intake() -> None:
    app, config = intake_app()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.intake_host,
            port=config.intake_port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    )
    server.run()
