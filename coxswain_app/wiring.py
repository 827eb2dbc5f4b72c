"""The composition root: the one place that builds concrete adapters and hands them to services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import TokenTableError
from coxswain.core.agreement import Agreement
from coxswain.core.crm_sync import ID_NAME, ROSTER_FIELD, CrmKind, unmapped_reps
from coxswain.db.database import create_batch_engine, create_engine, create_relay_engine, require_current_schema
from coxswain.runtime import health, metrics, outages, retention, tracing
from coxswain.runtime.agreements import AgreementSource
from coxswain.runtime.consumer import ConsumerService, Unavailable, one_at_a_time, utc_now
from coxswain.runtime.http import http_server
from coxswain.runtime.kafka import Publisher
from coxswain.runtime.outages import is_connection_error
from coxswain.runtime.outbox import OutboxRelay
from coxswain.runtime.service import ConsumerSpec, Process, Task, Wired, handing_over, versioned_handler
from coxswain.security import InsecureConfiguration, require_safe_configuration, token_table
from coxswain.settings import (
    AgreementConfig,
    ConsumerConfig,
    CrmSyncConfig,
    DatabaseConfig,
    IntakeConfig,
    KafkaConfig,
    OutboxConfig,
    RosterApiConfig,
    Settings,
)

# The HTTP apps' modules (FastAPI, uvicorn, the intake, admin and reporting apps) are imported
# by the functions that build them: a consumer process never loads them, and a restarted
# consumer is back in its group (and routing) that much sooner (docs/operations.md).
if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

H = TypeVar("H")


def routing_in_scoring(scoring: ConsumerSpec, router: ConsumerSpec, router_name: str = "router") -> ConsumerSpec:
    """Scoring that routes the leads it qualifies in its own transaction (COXSWAIN_SCORING_ROUTES_INLINE):
    the router's batch handler applied to its ``leads.qualified.v1`` facts, the router's inbox claimed
    for them, so a lead reaches its rep without waiting for one more relay, Kafka hop and consumer
    transaction (docs/event-path.md). Every other fact of scoring's the router accepts goes the same
    way (stage changes and judged activities, which may free a rep's capacity): otherwise every
    lead's move to MQL would still cost the router a transaction of its own to learn that it frees
    nothing. The router's tasks (the parked leads' retries) stay in its process."""

    def wire(process: Process) -> Wired:
        own = scoring.wire(process)
        if not process.settings.scoring.scoring_routes_inline or own.batch_handler is None:
            return own
        routing = router.wire(process).batch_handler
        assert routing is not None, "the router has a batch handler"
        fused = handing_over(
            own.batch_handler,
            router_name,
            tuple(kind for kinds in router.accepts.values() for kind in kinds),
            metrics.timed_batch(router_name, routing),
        )
        return Wired(one_at_a_time(fused), fused, own.tasks)

    return replace(scoring, wire=wire)


# How long the router's records gather when scoring routes inline. What it still has to do itself
# (a fact whose hand-over fell back, a reassignment the SLA monitor asked for after its own quarter
# second of gathering) waits at most this much longer; what it reads only to skip (nearly every
# record) costs one fetch, one inbox look-up and one offset in ten a second instead of one per lead
# (docs/event-path.md).
ROUTER_GATHER_MS_WHEN_SCORING_ROUTES = 100


def routed_in_scoring(router: ConsumerSpec) -> ConsumerSpec:
    """The router when scoring routes inline: nearly every record it reads was applied for it in
    scoring's transaction, so a batch is looked up in its inbox before a transaction is opened,
    and its records gather briefly, since the lead they decide is no longer waiting on it."""

    def wire(process: Process) -> Wired:
        wired = router.wire(process)
        if not process.settings.scoring.scoring_routes_inline:
            return wired
        return replace(wired, skip_applied=True, gather_ms=ROUTER_GATHER_MS_WHEN_SCORING_ROUTES)

    return replace(router, wire=wire)


def _scoring() -> ConsumerSpec:
    from services.router import spec as router
    from services.scoring import spec as scoring

    return routing_in_scoring(scoring.SPEC, router.SPEC)


def _router() -> ConsumerSpec:
    from services.router import spec as router

    return routed_in_scoring(router.SPEC)


def _sla_monitor() -> ConsumerSpec:
    from services.sla_monitor import spec as sla_monitor

    return sla_monitor.SPEC


def _reporting() -> ConsumerSpec:
    from services.reporting import spec as reporting

    return reporting.SPEC


class _Specs(Mapping[str, ConsumerSpec]):
    """Each consumer service's spec, its modules imported when it is first asked for. A process
    imports only the services it runs (the router does not load reporting's tables or the SLA
    monitor's pager client), and starting is most of a SIGKILLed consumer's takeover."""

    def __init__(self, loaders: Mapping[str, Callable[[], ConsumerSpec]]) -> None:
        self._loaders = loaders
        self._loaded: dict[str, ConsumerSpec] = {}

    def __getitem__(self, name: str) -> ConsumerSpec:
        if name not in self._loaded:
            self._loaded[name] = self._loaders[name]()
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


CONSUMERS: Mapping[str, ConsumerSpec] = _Specs(
    {"scoring": _scoring, "router": _router, "sla_monitor": _sla_monitor, "reporting": _reporting}
)


def outbox_relay(
    engine: AsyncEngine,
    publisher: Publisher,
    config: OutboxConfig | None = None,
    on_leads_way: bool = False,
    instance: str | None = None,
) -> OutboxRelay:
    """The process's relay: a standby where the process's own loop is on a lead's way to its rep
    (``on_leads_way``), unless ``COXSWAIN_OUTBOX_RELAY_STANDBY`` says otherwise. Publishing other
    services' rows there would put them in the way of the lead's own batch, and the lead's rows
    behind that batch; the relays of the processes off the way (gathering their records) have the
    loop to spare."""
    config = config or OutboxConfig()
    standby = on_leads_way if config.outbox_relay_standby is None else config.outbox_relay_standby
    return OutboxRelay(
        engine,
        publisher,
        lease_seconds=config.outbox_lease_seconds,
        failpoint=config.outbox_failpoint,
        standby=standby,
        instance=instance,
    )


def consumer_relay(
    engine: AsyncEngine, publisher: Publisher, settings: Settings, service: ConsumerService
) -> OutboxRelay:
    """A consumer process's relay: a consumer that fetches each record as it arrives is on a
    lead's way (scoring, crm-sync; the router when scoring does not route inline), one that lets
    its records gather is not."""
    return outbox_relay(
        engine,
        publisher,
        settings.outbox,
        on_leads_way=service.gather_ms == 0,
        instance=settings.kafka.kafka_instance_id,
    )


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


def agreement_source(engine: AsyncEngine, config: AgreementConfig | None = None) -> AgreementSource:
    config = config or AgreementConfig()
    return AgreementSource(engine, config.agreement_file, config.agreement_poll_seconds)


def crm_token(config: CrmSyncConfig) -> str | None:
    """The CRM token from COXSWAIN_CRM_TOKEN, else from COXSWAIN_CRM_TOKEN_FILE; refuses to start without one.

    None for Salesforce with a connected app's client id and secret: the token comes from the
    client-credentials flow."""
    if config.crm_kind == "salesforce" and (config.crm_salesforce_client_id or config.crm_salesforce_client_secret):
        if not (config.crm_salesforce_client_id and config.crm_salesforce_client_secret):
            raise SystemExit(
                "crm-sync refuses to start: set both COXSWAIN_CRM_SALESFORCE_CLIENT_ID and "
                "COXSWAIN_CRM_SALESFORCE_CLIENT_SECRET for the client-credentials flow"
            )
        return None
    if config.crm_kind == "salesforce" and "hubapi.com" in config.crm_base_url:
        raise SystemExit(
            "crm-sync refuses to start: COXSWAIN_CRM_BASE_URL must be the Salesforce org's instance URL "
            "(https://<my-domain>.my.salesforce.com)"
        )
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
            f"{kind} {ID_NAME[kind]}; set roster[].crm.{ROSTER_FIELD[kind]} for each"
        )


def crm_connection(config: CrmSyncConfig) -> str:
    """COXSWAIN_CRM_CONNECTION, else the CRM's kind (``hubspot``, ``salesforce``)."""
    return config.crm_connection if "crm_connection" in config.model_fields_set else config.crm_kind


def crm_consumer_config(consumer: ConsumerConfig, crm: CrmSyncConfig) -> ConsumerConfig:
    """A batch is one transaction held open while the CRM is called for each of its records (and
    a poll must come back within Kafka's max.poll.interval): crm-sync takes at most
    COXSWAIN_CRM_MAX_BATCH records at a time."""
    # A batch may wait out a CRM's rate limit for each record (crm_max_wait_seconds), so the
    # watchdog gives crm-sync's loop that long per record before it calls it stalled.
    longest_batch = crm.crm_max_batch * (crm.crm_max_wait_seconds + crm.crm_request_timeout_seconds)
    return consumer.model_copy(
        update={
            "consumer_max_batch": min(consumer.consumer_max_batch, crm.crm_max_batch),
            "consumer_stall_seconds": max(consumer.consumer_stall_seconds, min(longest_batch, 3600.0)),
        }
    )


async def run_crm_sync(settings: Settings | None = None) -> None:
    """``coxswain run crm-sync``: the consumer loop with the client of COXSWAIN_CRM_KIND
    (docs/integrators.md#hubspot, docs/integrators.md#salesforce)."""
    from services.crm_sync import service as crm_sync
    from services.crm_sync.hubspot import HubSpotClient
    from services.crm_sync.salesforce import SalesforceClient

    settings = settings or Settings()
    config = settings.crm_sync
    token = crm_token(config)
    client: crm_sync.CrmClient
    if config.crm_kind == "salesforce":
        salesforce = SalesforceClient(config, token)
        if token is None:
            try:
                await salesforce.renew()
            except Unavailable as exc:
                await salesforce.aclose()
                raise SystemExit(f"crm-sync refuses to start: {exc}") from None
        client = salesforce
    else:
        assert token is not None
        client = HubSpotClient(config, token)
    connection = crm_connection(config)
    sync = crm_sync.CrmSync(client, connection)

    def wire(process: Process) -> Wired:
        tasks: tuple[Task, ...] = ()
        if isinstance(client, SalesforceClient) and config.crm_salesforce_poll_seconds > 0:
            from services.crm_sync.poller import SalesforcePoller

            poller = SalesforcePoller(client, process.engine, config, connection, process.agreement)
            tasks = (poller.run,)
        handler = versioned_handler(process.agreement, lambda agreement: crm_sync.make_handler(agreement, sync))
        return Wired(handler, None, tasks)

    idle = settings.database.database_idle_in_transaction_seconds
    if idle:
        # HTTP requests run inside the consumer's transaction, with a statement before each one:
        # the longest idle stretch is one request (or one second of a wait).
        idle = max(idle, config.crm_request_timeout_seconds + 5)
    # The connector's own slices: a longer idle-in-transaction limit and smaller batches.
    settings.database = settings.database.model_copy(update={"database_idle_in_transaction_seconds": idle})
    settings.consumer = crm_consumer_config(settings.consumer, config)
    try:
        await run_consumer(
            crm_sync.consumer_name(connection),
            spec=ConsumerSpec(crm_sync.ACCEPTS, wire),
            settings=settings,
            check=lambda agreement: require_crm_owners(agreement, config.crm_kind),
        )
    finally:
        await client.aclose()


async def run_consumer(
    name: str,
    *,
    spec: ConsumerSpec | None = None,
    settings: Settings | None = None,
    check: Callable[[Agreement], None] | None = None,
) -> None:
    """One consumer service in its process: every service runs the same way, from its spec."""
    spec = spec or CONSUMERS[name]
    settings = settings or Settings()
    kafka, database = settings.kafka, settings.database
    try:
        require_safe_configuration(settings.deployment, database, kafka, settings.admin)
    except InsecureConfiguration as exc:
        raise SystemExit(f"{name} refuses to start: {exc}") from None
    stop = stop_on_signals()
    tracing.configure(name.replace("_", "-"))
    engine = create_engine(database)
    # The version activated in the database, else COXSWAIN_AGREEMENT_FILE; polled for changes.
    source = agreement_source(engine, settings.agreement)
    try:
        wired = spec.wire(Process(name, engine, lambda: source.current, utc_now, settings))
        await _open_database(engine, database, source)
        if check is not None:
            check(source.current)
    except BaseException:
        await engine.dispose()
        raise
    agreement = source.current
    publisher = await _start_publisher(kafka, stop)
    relay_engine = create_relay_engine(database)
    batch_engine = consumer_engine(spec, database, engine)
    service = consumer_service(name, spec, wired, batch_engine, settings)
    relay = consumer_relay(relay_engine, publisher, settings, service)
    log.info("%s running under agreement %s", name, agreement.version)
    metrics.serve(settings.observability.metrics_port)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(relay.run(stop, metrics.outbox_published))
            group.create_task(metrics.sample_outbox(engine, stop))
            group.create_task(source.run(stop))
            group.create_task(retention.run(engine, kafka, settings.retention, utc_now, stop))
            for task in wired.tasks:
                group.create_task(_run_task(task, stop))
            group.create_task(_retry("kafka consumer", lambda: service.run(stop), stop))
            group.create_task(outages.watch({"kafka": publisher.ping, "postgres": health.database_check(engine)}, stop))
            if settings.health.health_port:
                checks = {
                    "database": health.database_check(engine),
                    "kafka": publisher.ping,
                    "consumer": service.check,
                }
                group.create_task(health.serve(settings.health.health_host, settings.health.health_port, checks, stop))
    finally:
        await publisher.stop()
        await relay_engine.dispose()
        if batch_engine is not engine:
            await batch_engine.dispose()
        await engine.dispose()
        tracing.shutdown()


def consumer_engine(spec: ConsumerSpec, database: DatabaseConfig, engine: AsyncEngine) -> AsyncEngine:
    """Where the consumer's batches run: connections of their own with generic plans when its spec
    asks for them (``ConsumerSpec.generic_plans``), else the process's engine."""
    return create_batch_engine(database) if spec.generic_plans else engine


def consumer_service(
    name: str,
    spec: ConsumerSpec,
    wired: Wired,
    engine: AsyncEngine,
    settings: Settings,
    clock: Callable[[], datetime] = utc_now,
) -> ConsumerService:
    """The consumer of a service as wired for this process (its Kafka loop not started)."""
    return ConsumerService(
        name=name,
        accepts=spec.accepts,
        handler=metrics.timed(name, wired.handler),
        engine=engine,
        kafka=settings.kafka,
        config=settings.consumer,
        clock=clock,
        batch_handler=None if wired.batch_handler is None else metrics.timed_batch(name, wired.batch_handler),
        gather_ms=spec.gather_ms if wired.gather_ms is None else wired.gather_ms,
        skip_applied=wired.skip_applied,
        claim_locks=spec.claim_locks,
    )


async def _run_task(task: Task, stop: asyncio.Event) -> None:
    await task(stop)


def intake_app(settings: Settings | None = None) -> tuple[FastAPI, IntakeConfig]:
    from services.admin.api import create_admin_router
    from services.intake import adapters, hubspot_activities
    from services.intake.app import create_app
    from services.intake.signatures import SecretsError, load_secrets

    settings = settings or Settings()
    config, kafka, database = settings.intake, settings.kafka, settings.database
    try:
        require_safe_configuration(settings.deployment, database, kafka, settings.admin, load_secrets(config))
        tokens = token_table(settings.admin)
    except (InsecureConfiguration, SecretsError, TokenTableError) as exc:
        raise SystemExit(f"intake refuses to start: {exc}") from None
    engine = create_engine(database)
    relay_engine = create_relay_engine(database)
    publishers: list[Publisher] = []

    async def kafka_ready() -> None:
        if not publishers:
            raise ConnectionError("not connected to Kafka yet")
        await publishers[0].ping()

    source = agreement_source(engine, settings.agreement)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _open_database(engine, database, source)
        stop = asyncio.Event()

        async def relay_when_connected() -> None:
            # Webhooks are accepted while Kafka is away (they wait in the outbox): connect in the background.
            publisher = await _start_publisher(kafka, stop)
            publishers.append(publisher)
            await outbox_relay(relay_engine, publisher, settings.outbox, on_leads_way=True).run(
                stop, metrics.outbox_published
            )

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
            await relay_engine.dispose()
            await engine.dispose()
            tracing.shutdown()

    app = create_app(config, engine, utc_now, lifespan=lifespan, readiness_checks={"kafka": kafka_ready})
    adapters.register(app, config, settings.senders, engine, utc_now)
    try:
        hubspot_activities.register(
            app, config, settings.senders, settings.hubspot_activities, engine, utc_now, lambda: source.current
        )
    except ValueError as exc:
        raise SystemExit(f"intake refuses to start: {exc}") from None
    app.include_router(create_admin_router(engine, tokens, lambda: source.current, utc_now))
    metrics.instrument(app)
    if tracing.configure("intake"):
        app.add_middleware(tracing.WebhookSpans)
    return app, config


def run_intake() -> None:
    app, config = intake_app()
    http_server(app, config.intake_host, config.intake_port).run()


def roster_api_app(settings: Settings | None = None) -> tuple[FastAPI, RosterApiConfig]:
    """The roster API: reps, pools, out-of-office, pause, account owners, assignment records."""
    from services.roster.app import create_roster_app

    settings = settings or Settings()
    config, database = settings.roster_api, settings.database
    try:
        require_safe_configuration(settings.deployment, database, settings.kafka, settings.admin)
        tokens = token_table(settings.admin)
    except (InsecureConfiguration, TokenTableError) as exc:
        raise SystemExit(f"roster-api refuses to start: {exc}") from None
    engine = create_engine(database)
    source = agreement_source(engine, settings.agreement)

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
