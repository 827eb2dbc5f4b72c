"""The composition root: the one place that builds concrete adapters and hands them to services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeVar

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.access import TokenTable, TokenTableError
from coxswain.core.agreement import Agreement
from coxswain.core.crm_sync import CrmKind, unmapped_reps
from coxswain.db.database import create_engine, require_current_schema
from coxswain.runtime import health, metrics, outages, retention, tracing
from coxswain.runtime.consumer import BatchHandler, ConsumerService, Handler, utc_now
from coxswain.runtime.kafka import Publisher
from coxswain.runtime.outages import is_connection_error
from coxswain.runtime.outbox import OutboxRelay
from coxswain.security import InsecureConfiguration, require_safe_configuration, token_table
from coxswain.settings import (
    AdminConfig,
    AgreementConfig,
    ConsumerConfig,
    CrmSyncConfig,
    DatabaseConfig,
    DeploymentConfig,
    HealthConfig,
    HubSpotActivitiesConfig,
    IntakeConfig,
    KafkaConfig,
    ObservabilityConfig,
    OutboxConfig,
    ReportingConfig,
    RetentionConfig,
    RosterApiConfig,
    RouterConfig,
    ScoringConfig,
    SendersConfig,
    SlaConfig,
)
from schemas.events import Event
from services.admin.agreements import AgreementSource
from services.reporting import consumer as reporting
from services.router import service as router
from services.scoring import service as scoring
from services.scoring import timers as scoring_timers
from services.sla_monitor import service as sla_monitor
from services.sla_monitor.monitor import Monitor

# The HTTP apps' modules (FastAPI, uvicorn, the intake, admin and reporting apps) are imported
# by the functions that build them: a consumer process never loads them, and a restarted
# consumer is back in its group (and routing) that much sooner (docs/operations.md).
if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

log = logging.getLogger(__name__)

H = TypeVar("H")


@dataclass(frozen=True)
class ConsumerSpec:
    accepts: dict[str, tuple[type[Event], ...]]
    make_handler: Callable[[Agreement], Handler]
    # A service that can apply a whole polled batch in a fixed number of statements.
    make_batch_handler: Callable[[Agreement], BatchHandler] | None = None


CONSUMERS: dict[str, ConsumerSpec] = {
    "scoring": ConsumerSpec(scoring.ACCEPTS, scoring.make_handler, scoring.make_batch_handler),
    "router": ConsumerSpec(router.ACCEPTS, router.make_handler, router.make_batch_handler),
    "sla_monitor": ConsumerSpec(sla_monitor.ACCEPTS, sla_monitor.make_handler, sla_monitor.make_batch_handler),
    "reporting": ConsumerSpec(reporting.ACCEPTS, reporting.make_handler),
}


def outbox_relay(engine: AsyncEngine, publisher: Publisher) -> OutboxRelay:
    config = OutboxConfig()
    return OutboxRelay(engine, publisher, lease_seconds=config.outbox_lease_seconds, failpoint=config.outbox_failpoint)


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
            log.warning(
                "waiting for %s: %s; retrying in %.1fs", what, type(exc).__name__, delay, extra=outages.about(exc)
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _start_publisher(kafka: KafkaConfig, stop: asyncio.Event) -> Publisher:
    holder: list[Publisher] = []

    async def start() -> None:
        publisher = Publisher(kafka)
        await publisher.start()  # a failed start cleans up after itself
        holder.append(publisher)

    await _retry("kafka", start, stop)
    return holder[0]


async def _open_database(engine: AsyncEngine, database: DatabaseConfig, source: AgreementSource) -> None:
    """Check the schema and load the agreement, waiting with backoff while the database is down or
    restarting (a service started beside it, or restarted during an outage, comes up by itself)."""
    delay = 0.5
    while True:
        try:
            # Out-of-date schema is not transient: it raises at once so the operator runs the migration.
            await require_current_schema(engine, database)
            await source.refresh()
            return
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning(
                "waiting for the database: %s; retrying in %.1fs", type(exc).__name__, delay, extra=outages.about(exc)
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def agreement_source(engine: AsyncEngine) -> AgreementSource:
    config = AgreementConfig()
    return AgreementSource(engine, config.agreement_file, config.agreement_poll_seconds)


def versioned(current: Callable[[], Agreement], make: Callable[[Agreement], H]) -> Callable[[], H]:
    """The handler for the agreement in force now, rebuilt only when the agreement changes."""
    # Keyed by identity: an Agreement holds dicts, so it is not hashable (hashing it failed every event).
    built: list[tuple[Agreement, H]] = []

    def get() -> H:
        agreement = current()
        if not built or built[0][0] is not agreement:
            built[:] = [(agreement, make(agreement))]
        return built[0][1]

    return get


def versioned_handler(source: AgreementSource, make_handler: Callable[[Agreement], Handler]) -> Handler:
    """Each event is handled under the agreement in force when it is processed; the facts name it."""
    get = versioned(lambda: source.current, make_handler)

    async def handle(connection: AsyncConnection, event: Event, now: datetime) -> Sequence[Event]:
        return await get()(connection, event, now)

    return handle


def versioned_batch_handler(source: AgreementSource, make: Callable[[Agreement], BatchHandler]) -> BatchHandler:
    """A batch is handled under the agreement in force when it is processed."""
    get = versioned(lambda: source.current, make)

    async def handle(connection: AsyncConnection, events: Sequence[Event], now: datetime) -> Sequence[Sequence[Event]]:
        return await get()(connection, events, now)

    return handle


def _batch_handler(
    name: str, spec: ConsumerSpec, source: AgreementSource, monitor: Monitor | None
) -> BatchHandler | None:
    if monitor is not None:
        return metrics.timed_batch(name, monitor.batch_handler)
    if spec.make_batch_handler is None:
        return None
    return metrics.timed_batch(name, versioned_batch_handler(source, spec.make_batch_handler))


def crm_token(config: CrmSyncConfig) -> str:
    """The CRM token from COXSWAIN_CRM_TOKEN, else from COXSWAIN_CRM_TOKEN_FILE; refuses to start without one."""
    if config.crm_token is not None and config.crm_token.get_secret_value().strip():
        return config.crm_token.get_secret_value().strip()
    if config.crm_token_file is not None:
        try:
            token = config.crm_token_file.read_text().strip()
        except OSError as exc:
            raise SystemExit(
                f"crm-sync refuses to start: cannot read COXSWAIN_CRM_TOKEN_FILE: {exc.strerror}"
            ) from None
        if token:
            return token
    raise SystemExit("crm-sync refuses to start: no CRM token; set COXSWAIN_CRM_TOKEN or COXSWAIN_CRM_TOKEN_FILE")


def require_crm_owners(agreement: Agreement, kind: CrmKind) -> None:
    """Every rep who can get a lead must have an owner id in the CRM, or nothing starts."""
    missing = unmapped_reps(agreement, kind)
    if missing:
        raise SystemExit(
            f"crm-sync refuses to start: agreement {agreement.version}: rep(s) {', '.join(missing)} have no "
            f"{kind} owner id; set roster[].crm.{kind}_owner_id for each"
        )


def crm_consumer_config(consumer: ConsumerConfig, crm: CrmSyncConfig) -> ConsumerConfig:
    """A batch is one transaction held open while the CRM is called for each of its records (and
    a poll must come back within Kafka's max.poll.interval): crm-sync takes at most
    COXSWAIN_CRM_MAX_BATCH records at a time."""
    return consumer.model_copy(update={"consumer_max_batch": min(consumer.consumer_max_batch, crm.crm_max_batch)})


async def run_crm_sync() -> None:
    """``coxswain run crm-sync``: the consumer loop with a HubSpot client (docs/integrators.md#hubspot)."""
    from services.crm_sync import service as crm_sync
    from services.crm_sync.hubspot import HubSpotClient

    config = CrmSyncConfig()
    client = HubSpotClient(config, crm_token(config))
    sync = crm_sync.HubSpotSync(client, config.crm_connection)
    database = DatabaseConfig()
    idle = database.database_idle_in_transaction_seconds
    if idle:
        # HTTP requests run inside the consumer's transaction, with a statement before each one:
        # the longest idle stretch is one request (or one second of a wait).
        idle = max(idle, config.crm_request_timeout_seconds + 5)
    spec = ConsumerSpec(crm_sync.ACCEPTS, lambda agreement: crm_sync.make_handler(agreement, sync))
    try:
        await run_consumer(
            crm_sync.consumer_name(config.crm_connection),
            spec=spec,
            database=database.model_copy(update={"database_idle_in_transaction_seconds": idle}),
            check=lambda agreement: require_crm_owners(agreement, config.crm_kind),
            consumer=crm_consumer_config(ConsumerConfig(), config),
        )
    finally:
        await client.aclose()


async def run_consumer(
    name: str,
    *,
    spec: ConsumerSpec | None = None,
    database: DatabaseConfig | None = None,
    check: Callable[[Agreement], None] | None = None,
    consumer: ConsumerConfig | None = None,
) -> None:
    spec = spec or CONSUMERS[name]
    kafka, database = KafkaConfig(), database or DatabaseConfig()
    try:
        require_safe_configuration(DeploymentConfig(), database, kafka, AdminConfig())
    except InsecureConfiguration as exc:
        raise SystemExit(f"{name} refuses to start: {exc}") from None
    report_tokens = _report_tokens(ReportingConfig()) if name == "reporting" else None
    stop = stop_on_signals()
    tracing.configure(name.replace("_", "-"))
    engine = create_engine(database)
    # The version activated in the database, else COXSWAIN_AGREEMENT_FILE; polled for changes.
    source = agreement_source(engine)
    await _open_database(engine, database, source)
    agreement = source.current
    if check is not None:
        try:
            check(agreement)
        except SystemExit:
            await engine.dispose()
            raise
    publisher = await _start_publisher(kafka, stop)
    relay = outbox_relay(engine, publisher)
    sla_config = SlaConfig()
    monitor = (
        Monitor(lambda: source.current, sla_config, engine, utc_now, CollectorRegistry())
        if name == "sla_monitor"
        else None
    )
    service = ConsumerService(
        name=name,
        accepts=spec.accepts,
        handler=metrics.timed(
            name, monitor.handler if monitor is not None else versioned_handler(source, spec.make_handler)
        ),
        engine=engine,
        kafka=kafka,
        config=consumer or ConsumerConfig(),
        clock=utc_now,
        batch_handler=_batch_handler(name, spec, source, monitor),
    )
    log.info("%s running under agreement %s", name, agreement.version)
    metrics.serve(ObservabilityConfig().metrics_port)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(relay.run(stop, metrics.outbox_published))
            group.create_task(metrics.sample_outbox(engine, stop))
            group.create_task(source.run(stop))
            group.create_task(retention.run(engine, kafka, RetentionConfig(), utc_now, stop))
            if name == "scoring":
                timers = scoring_timers.run_timer(engine, lambda: source.current, ScoringConfig(), utc_now, stop)
                group.create_task(timers)
            if name == "reporting":
                group.create_task(_serve_reporting(engine, lambda: source.current, report_tokens, stop))
            if name == "router":
                group.create_task(router.run_retry(engine, lambda: source.current, RouterConfig(), utc_now, stop))
            group.create_task(_retry("kafka consumer", lambda: service.run(stop), stop))
            group.create_task(outages.watch({"kafka": publisher.ping, "postgres": health.database_check(engine)}, stop))
            probes = HealthConfig()
            if probes.health_port:
                checks = {"database": health.database_check(engine), "kafka": publisher.ping}
                group.create_task(health.serve(probes.health_host, probes.health_port, checks, stop))
            if monitor is not None:
                port = ObservabilityConfig().metrics_port or sla_config.sla_default_metrics_port
                group.create_task(monitor.run(stop, port))
    finally:
        await publisher.stop()
        await engine.dispose()
        tracing.shutdown()


def intake_app() -> tuple[FastAPI, IntakeConfig]:
    from services.admin.api import create_admin_router
    from services.intake import adapters, hubspot_activities
    from services.intake.app import create_app
    from services.intake.signatures import SecretsError, load_secrets

    config, kafka, database = IntakeConfig(), KafkaConfig(), DatabaseConfig()
    try:
        require_safe_configuration(DeploymentConfig(), database, kafka, AdminConfig(), load_secrets(config))
        tokens = token_table(AdminConfig())
    except (InsecureConfiguration, SecretsError, TokenTableError) as exc:
        raise SystemExit(f"intake refuses to start: {exc}") from None
    engine = create_engine(database)
    publishers: list[Publisher] = []

    async def kafka_ready() -> None:
        if not publishers:
            raise ConnectionError("not connected to Kafka yet")
        await publishers[0].ping()

    source = agreement_source(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _open_database(engine, database, source)
        stop = asyncio.Event()

        async def relay_when_connected() -> None:
            # Webhooks are accepted while Kafka is away (they wait in the outbox): connect in the background.
            publisher = await _start_publisher(kafka, stop)
            publishers.append(publisher)
            await outbox_relay(engine, publisher).run(stop, metrics.outbox_published)

        relay = asyncio.create_task(relay_when_connected())
        watcher = asyncio.create_task(
            outages.watch({"kafka": kafka_ready, "postgres": health.database_check(engine)}, stop)
        )
        sampler = asyncio.create_task(metrics.sample_outbox(engine, stop))
        poll = asyncio.create_task(source.run(stop))
        try:
            yield
        finally:
            stop.set()
            if not publishers:
                relay.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await relay
            with contextlib.suppress(Exception):
                await sampler
            with contextlib.suppress(Exception):
                await watcher
            with contextlib.suppress(Exception):
                await poll
            for publisher in publishers:
                await publisher.stop()
            await engine.dispose()
            tracing.shutdown()

    app = create_app(config, engine, utc_now, lifespan=lifespan, readiness_checks={"kafka": kafka_ready})
    senders = SendersConfig()
    adapters.register(app, config, senders, engine, utc_now)
    try:
        hubspot_activities.register(
            app, config, senders, HubSpotActivitiesConfig(), engine, utc_now, lambda: source.current
        )
    except ValueError as exc:
        raise SystemExit(f"intake refuses to start: {exc}") from None
    app.include_router(create_admin_router(engine, tokens, lambda: source.current, utc_now))
    metrics.instrument(app)
    if tracing.configure("intake"):
        app.add_middleware(tracing.WebhookSpans)
    return app, config


def http_server(app: FastAPI, host: str, port: int, lifespan: Literal["on", "off"] = "on") -> uvicorn.Server:
    """Every HTTP app runs with the same server settings: uvloop, httptools, no access log."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan=lifespan,
        )
    )


def _report_tokens(config: ReportingConfig) -> TokenTable | None:
    """The tokens that may read reports, when reports need one; refuses to start when none could."""
    if not config.reports_require_token:
        return None
    try:
        tokens = token_table(AdminConfig())
    except TokenTableError as exc:
        raise SystemExit(f"reporting refuses to start: {exc}") from None
    if not any("reports:read" in token.scopes for token in tokens.tokens):
        raise SystemExit(
            "reporting refuses to start: COXSWAIN_REPORTS_REQUIRE_TOKEN is on but no token has scope "
            "'reports:read'; add one to COXSWAIN_TOKENS or set COXSWAIN_ADMIN_TOKEN"
        )
    return tokens


async def _serve_reporting(
    engine: AsyncEngine, agreement: Callable[[], Agreement], tokens: TokenTable | None, stop: asyncio.Event
) -> None:
    """The reporting API, dashboard and scorecards share the process (and the engine) of the reporting consumer."""
    from services.reporting import scorecard as reporting_scorecard
    from services.reporting.app import create_reporting_app

    config = ReportingConfig()
    app = create_reporting_app(
        engine, agreement, utc_now, config.reporting_timezone, cadence=config.scorecard_cadence, tokens=tokens
    )
    scorecards = asyncio.create_task(reporting_scorecard.run(engine, agreement, config, utc_now, stop))
    metrics.instrument(app)
    server = http_server(app, config.reporting_host, config.reporting_port, lifespan="off")

    async def stop_server() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_server())
    try:
        await server.serve()
    finally:
        watcher.cancel()
        if not stop.is_set():
            scorecards.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scorecards
    log.info("reporting served: host=%s port=%s", config.reporting_host, config.reporting_port)


def run_intake() -> None:
    app, config = intake_app()
    http_server(app, config.intake_host, config.intake_port).run()


def roster_api_app() -> tuple[FastAPI, RosterApiConfig]:
    """The roster API: reps, pools, out-of-office, pause, account owners, assignment records."""
    from services.roster.app import create_roster_app

    config, database = RosterApiConfig(), DatabaseConfig()
    try:
        require_safe_configuration(DeploymentConfig(), database, KafkaConfig(), AdminConfig())
        tokens = token_table(AdminConfig())
    except (InsecureConfiguration, TokenTableError) as exc:
        raise SystemExit(f"roster-api refuses to start: {exc}") from None
    engine = create_engine(database)
    source = agreement_source(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _open_database(engine, database, source)
        stop = asyncio.Event()
        poll = asyncio.create_task(source.run(stop))
        watcher = asyncio.create_task(outages.watch({"postgres": health.database_check(engine)}, stop))
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await poll
            with contextlib.suppress(Exception):
                await watcher
            await engine.dispose()

    app = create_roster_app(engine, tokens, lambda: source.current, utc_now, lifespan=lifespan)
    metrics.instrument(app)
    return app, config


def run_roster_api() -> None:
    app, config = roster_api_app()
    http_server(app, config.roster_api_host, config.roster_api_port).run()


async def run_shadow(agreement: Agreement) -> None:
    """A candidate agreement in shadow: reads the input topics, publishes to shadow.decisions.v1,
    touches no table (so it needs no database)."""
    from services.shadow import service as shadow

    kafka = KafkaConfig()
    stop = stop_on_signals()
    publisher = await _start_publisher(kafka, stop)
    try:
        await shadow.run(agreement, kafka, publisher, stop)
    finally:
        await publisher.stop()
