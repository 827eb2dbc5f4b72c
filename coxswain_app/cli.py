"""``coxswain``: one command line for every process type and every operator task."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coxswain.core.agreement import Agreement, AgreementError, load_agreement

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

app = typer.Typer(help="Coxswain: the sales-marketing agreement as running software.", no_args_is_help=True)
run_app = typer.Typer(help="Run one service as a long-lived process.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
agreement_app = typer.Typer(help="The sales-marketing agreement file.", no_args_is_help=True)
schemas_app = typer.Typer(help="Event contracts: JSON Schema and AsyncAPI documents.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo traffic and a live view of the topics.", no_args_is_help=True)
shadow_app = typer.Typer(help="A candidate agreement deciding beside the one in force.", no_args_is_help=True)
maintenance_app = typer.Typer(help="Retention: prune what no longer needs keeping.", no_args_is_help=True)
privacy_app = typer.Typer(help="Erase or export what is stored about a person.", no_args_is_help=True)
for sub, name in (
    (run_app, "run"),
    (db_app, "db"),
    (topics_app, "topics"),
    (agreement_app, "agreement"),
    (schemas_app, "schemas"),
    (demo_app, "demo"),
    (shadow_app, "shadow"),
    (privacy_app, "privacy"),
    (maintenance_app, "maintenance"),
):
    app.add_typer(sub, name=name)


def _logging(level: str = "INFO") -> None:
    """key=value lines, or one JSON object per line with COXSWAIN_LOG_FORMAT=json."""
    from coxswain.runtime.telemetry import configure_logging
    from coxswain.settings import ObservabilityConfig

    configure_logging(level, ObservabilityConfig().log_format)


@run_app.callback()
def _service_process() -> None:
    """Every ``coxswain run <service>`` process: the collector set for a long-lived service."""
    from coxswain.runtime.collector import tune_for_service

    tune_for_service()


def _run(coroutine: object) -> None:
    import uvloop

    uvloop.run(coroutine)  # type: ignore[arg-type]


@run_app.command("intake")
def run_intake() -> None:
    """Webhook intake (HTTP): COXSWAIN_INTAKE_HOST / COXSWAIN_INTAKE_PORT."""
    from coxswain_app.wiring import run_intake as serve

    _logging()
    serve()


def _consumer(name: str) -> None:
    from coxswain_app.wiring import run_consumer

    _logging()
    _run(run_consumer(name))


@run_app.command("scoring")
def run_scoring() -> None:
    """Scoring: leads.received.v1 + crm.activities.v1 -> scored, stage changes, qualified."""
    _consumer("scoring")


@run_app.command("crm-sync")
def run_crm_sync() -> None:
    """CRM write-back: leads.routed.v1 -> HubSpot contact owner + one task per assignment."""
    from coxswain_app.wiring import run_crm_sync as serve

    _logging()
    _run(serve())


@run_app.command("router")
def run_router() -> None:
    """Router: leads.qualified.v1 -> leads.routed.v1."""
    _consumer("router")


@run_app.command("shadow")
def run_shadow(agreement: Annotated[Path, typer.Option(help="The candidate agreement to run in shadow")]) -> None:
    """Decide with a candidate agreement beside the live stack; publish to shadow.decisions.v1 only."""
    from coxswain_app.wiring import run_shadow as serve

    candidate = _load_or_exit(agreement)
    _logging()
    _run(serve(candidate))


@run_app.command("roster-api")
def run_roster_api() -> None:
    """Roster API (HTTP, bearer COXSWAIN_ADMIN_TOKEN): reps, pools, out-of-office, accounts; COXSWAIN_ROSTER_API_PORT."""
    from coxswain_app.wiring import run_roster_api as serve

    _logging()
    serve()


@run_app.command("sla-monitor")
def run_sla_monitor() -> None:
    """SLA monitor: arms deadlines from leads.routed.v1, stops them on responses, fires breaches."""
    _consumer("sla_monitor")


@run_app.command("reporting")
def run_reporting() -> None:
    """Reporting: stores every fact; serves the reports API and the live dashboard (COXSWAIN_REPORTING_PORT)."""
    _consumer("reporting")


@db_app.command("upgrade")
def db_upgrade(revision: str = "heads") -> None:
    """Apply migrations (run this before starting a new release)."""
    from coxswain.db.database import upgrade
    from coxswain.settings import DatabaseConfig

    _logging()
    upgrade(DatabaseConfig(), revision)
    typer.echo(f"database upgraded to {revision}")


@db_app.command("check")
def db_check() -> None:
    """Exit non-zero when the database schema is not at this release's head."""
    from coxswain.db.database import SchemaOutOfDate, create_engine, require_current_schema
    from coxswain.settings import DatabaseConfig

    config = DatabaseConfig()

    async def check() -> None:
        engine = create_engine(config)
        try:
            await require_current_schema(engine, config)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except SchemaOutOfDate as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo("database schema is current")


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic Coxswain uses (and its dead-letter topic) if missing."""
    from coxswain.runtime.kafka import create_topics
    from coxswain.settings import KafkaConfig

    _logging("WARNING")
    created = asyncio.run(create_topics(KafkaConfig()))
    typer.echo(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else ""))


@topics_app.command("list")
def topics_list() -> None:
    """Print the topic table: name, event, key."""
    from schemas.events import ALL_EVENTS

    for event in ALL_EVENTS:
        typer.echo(f"{event.topic:28} {event.__name__:22} key=lead_id  dlq={event.topic}.dlq")


def _load_or_exit(file: Path) -> Agreement:
    try:
        return load_agreement(file)
    except AgreementError as exc:
        for problem in exc.problems:
            typer.echo(f"{exc.source}: {problem}", err=True)
        raise typer.Exit(1) from None


@topics_app.command("manifest")
def topics_manifest(
    cluster: Annotated[str, typer.Option(help="Strimzi Kafka cluster name (strimzi.io/cluster label)")] = "coxswain",
    replicas: int = 3,
    retention_days: int = 7,
    dlq_retention_days: int = 30,
) -> None:
    """Print every topic and its DLQ as Strimzi KafkaTopic resources (deploy/k8s/topics.yaml)."""
    import re

    import yaml

    from coxswain.runtime.kafka import all_topics
    from coxswain.settings import KafkaConfig

    partitions = KafkaConfig().kafka_topic_partitions
    documents = [
        {
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaTopic",
            "metadata": {"name": re.sub(r"[^a-z0-9.-]", "-", topic), "labels": {"strimzi.io/cluster": cluster}},
            "spec": {
                "topicName": topic,
                "partitions": partitions,
                "replicas": replicas,
                "config": {
                    "retention.ms": (dlq_retention_days if topic.endswith(".dlq") else retention_days) * 86_400_000,
                    "min.insync.replicas": min(2, replicas),
                    "cleanup.policy": "delete",
                },
            },
        }
        for topic in all_topics()
    ]
    typer.echo("# Generated by `coxswain topics manifest`; keys are lead ids, so partitions keep each lead in order.")
    typer.echo(yaml.safe_dump_all(documents, sort_keys=False), nl=False)


@agreement_app.command("validate")
def agreement_validate(
    file: Annotated[Path, typer.Argument(help="Agreement YAML file")],
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too")] = False,
) -> None:
    """Check an agreement file; print every problem with its path in the document, then warnings
    for rules that can never fire."""
    from coxswain.core.agreement_checks import agreement_warnings

    agreement = _load_or_exit(file)
    warnings = agreement_warnings(agreement)
    for warning in warnings:
        typer.echo(f"{file}: warning: {warning}", err=True)
    typer.echo(
        f"{file}: agreement {agreement.name!r} version {agreement.version} is valid"
        + (f" ({len(warnings)} warning(s))" if warnings else "")
    )
    if strict and warnings:
        raise typer.Exit(1)


@agreement_app.command("diff")
def agreement_diff(
    old: Annotated[Path, typer.Argument(help="The agreement in force")],
    new: Annotated[Path, typer.Argument(help="The proposed agreement")],
) -> None:
    """What changes between two agreements, rule by rule (+ added, - removed, ~ changed).

    Exit 0 when they are the same, 1 when they differ or do not load."""
    from coxswain.core.agreement_checks import diff_agreements

    before, after = _load_or_exit(old), _load_or_exit(new)
    changes = diff_agreements(before, after)
    for change in changes:
        typer.echo(str(change))
    if not changes:
        typer.echo(f"{old} and {new} are the same agreement")
        return
    typer.echo(f"{len(changes)} change(s)", err=True)
    raise typer.Exit(1)


def _database(action: str, work: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from coxswain.db.database import SchemaOutOfDate, create_engine, require_current_schema
    from coxswain.settings import DatabaseConfig

    config = DatabaseConfig()

    async def run() -> None:
        engine = create_engine(config)
        try:
            await require_current_schema(engine, config)
            await work(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except SchemaOutOfDate as exc:
        typer.echo(f"cannot {action}: {exc}", err=True)
        raise typer.Exit(1) from None
    except (OSError, SQLAlchemyError) as exc:
        typer.echo(f"cannot {action}: the database is unreachable ({type(exc).__name__}: {exc})", err=True)
        raise typer.Exit(1) from None


@agreement_app.command("activate")
def agreement_activate(file: Annotated[Path, typer.Argument(help="Agreement YAML file")]) -> None:
    """Store the agreement in the database (its version must be new, or identical) and put it in
    force; running services pick it up within COXSWAIN_AGREEMENT_POLL_SECONDS."""
    from coxswain.runtime import agreements, audit
    from coxswain.runtime.consumer import utc_now

    agreement = _load_or_exit(file)

    async def work(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            stored, created = await agreements.store(connection, agreement, utc_now())
            await agreements.activate(connection, agreement.version, utc_now())
            stored_outcome: audit.Outcome = "done" if created else "unchanged"
            for action, outcome in (("agreement.store", stored_outcome), ("agreement.activate", "done")):
                await audit.record(
                    connection, token=CLI_ACTOR, action=action, target=stored.version, outcome=outcome, at=utc_now()
                )
        typer.echo(
            f"agreement version {stored.version} {'stored and ' if created else ''}activated (sha256 {stored.sha256[:12]})"
        )

    try:
        _database("activate the agreement", work)
    except agreements.VersionConflict as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from None


# Who the audit trail names for an action taken with the CLI: it needs database access, not a token.
CLI_ACTOR = "cli"

Email = Annotated[str | None, typer.Option("--email", help="The person's email address.")]
LeadId = Annotated[str | None, typer.Option("--lead-id", help="Any of the person's lead ids (aliases included).")]


def _person_query(email: str | None, lead_id: str | None) -> tuple[str | None, uuid.UUID | None]:
    """Exactly one of --email and --lead-id, checked; exit code 2 otherwise, as for any usage error."""
    if (email is None) == (lead_id is None):
        typer.echo("give exactly one of --email and --lead-id", err=True)
        raise typer.Exit(2)
    if lead_id is None:
        return email, None
    try:
        return None, uuid.UUID(lead_id)
    except ValueError:
        typer.echo(f"--lead-id {lead_id!r} is not a UUID", err=True)
        raise typer.Exit(2) from None


def _privacy(action: str, by_email: str | None, work: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    try:
        _database(action, work)
    except _NotFound:
        typer.echo("nobody is stored under that " + ("email" if by_email else "lead id"), err=True)
        raise typer.Exit(3) from None


@privacy_app.command("erase")
def privacy_erase(email: Email = None, lead_id: LeadId = None) -> None:
    """Erase the person's personal data from every table (counts, stages, owners and SLA figures
    stay) and publish leads.erased.v1. Exit code 3 when nobody is stored under that email or id."""
    from coxswain.runtime.consumer import utc_now
    from services.admin import privacy

    by_email, by_id = _person_query(email, lead_id)

    async def work(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            erased = await privacy.erase_audited(
                connection, email=by_email, lead_id=by_id, token=CLI_ACTOR, now=utc_now()
            )
        if erased is None:
            raise _NotFound()
        typer.echo(
            f"lead {erased.found.lead_id} erased: {erased.rows_changed} stored rows changed; leads.erased.v1 staged"
        )

    _privacy("erase", by_email, work)


@privacy_app.command("export")
def privacy_export(
    email: Email = None,
    lead_id: LeadId = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Everything stored about the person, as JSON. Exit code 3 when nobody is stored under it."""
    from coxswain.runtime.consumer import utc_now
    from services.admin import privacy

    by_email, by_id = _person_query(email, lead_id)

    async def work(engine: AsyncEngine) -> None:
        async with engine.begin() as connection:
            exported = await privacy.export_audited(
                connection, email=by_email, lead_id=by_id, token=CLI_ACTOR, now=utc_now()
            )
        if exported is None:
            raise _NotFound()
        found, document = exported
        if output is None:
            typer.echo(document.decode())
        else:
            output.write_bytes(document + b"\n")
            typer.echo(f"lead {found.lead_id} exported to {output}", err=True)

    _privacy("export", by_email, work)


@maintenance_app.command("prune")
def maintenance_prune() -> None:
    """One retention pass now (every service also runs one each COXSWAIN_PRUNE_EVERY_SECONDS):
    dedupe records older than COXSWAIN_INBOX_RETENTION_DAYS, which must outlive the topics'
    retention.ms by a day (exit code 1 otherwise), and delivered SLA alerts."""
    from aiokafka.errors import KafkaError

    from coxswain.core.retention import RetentionTooShort
    from coxswain.runtime import retention
    from coxswain.runtime.consumer import utc_now
    from coxswain.settings import KafkaConfig, RetentionConfig

    config = RetentionConfig()

    async def work(engine: AsyncEngine) -> None:
        pruned = await retention.prune(engine, config, lambda: retention.topic_retention(KafkaConfig()), utc_now())
        if pruned is None:
            typer.echo("another process is pruning right now; nothing done")
            return
        if pruned.window is None:
            typer.echo("a topic keeps events for ever (retention.ms -1): dedupe records are kept for ever too")
        for table, count in pruned.rows.items():
            typer.echo(f"{table}: {count} rows pruned")

    try:
        _database("prune", work)
    except RetentionTooShort as exc:
        typer.echo(f"cannot prune: {exc}", err=True)
        raise typer.Exit(1) from None
    except KafkaError as exc:
        # The window is checked against the topics' real retention: without Kafka, no pass.
        typer.echo(f"cannot prune: Kafka is unreachable ({type(exc).__name__}: {exc})", err=True)
        raise typer.Exit(1) from None


class _NotFound(Exception):
    pass


@agreement_app.command("list")
def agreement_list() -> None:
    """Every stored version; the one activated last is in force."""
    from coxswain.runtime import agreements

    async def work(engine: AsyncEngine) -> None:
        async with engine.connect() as connection:
            stored = await agreements.versions(connection)
        activations = sorted((row.activated_at, row.version) for row in stored if row.activated_at is not None)
        in_force = activations[-1][1] if activations else None
        for row in stored:
            marker = "*" if row.version == in_force else " "
            activated = row.activated_at.isoformat() if row.activated_at else "never activated"
            typer.echo(
                f"{marker} {row.version:24} sha256={row.sha256[:12]} created={row.created_at.isoformat()} {activated}"
            )
        if not stored:
            typer.echo("no agreement stored; services use COXSWAIN_AGREEMENT_FILE")

    _database("list agreements", work)


@schemas_app.command("generate")
def schemas_generate(
    check: Annotated[bool, typer.Option(help="Fail instead of writing when the files differ")] = False,
) -> None:
    """Write schemas/jsonschema/*.json and schemas/asyncapi.yaml from the event models."""
    from coxswain.contracts import write_documents

    stale = write_documents(check=check)
    if check and stale:
        typer.echo("out of date: " + ", ".join(stale) + " (run `coxswain schemas generate`)", err=True)
        raise typer.Exit(1)
    typer.echo("schemas are current" if check else f"wrote {len(stale)} changed file(s)")


@demo_app.command("traffic")
def demo_traffic(
    url: str = "http://127.0.0.1:8080",
    source: str = "webform",
    secret: Annotated[str, typer.Option(envvar="COXSWAIN_DEMO_SECRET")] = "",
    rate: Annotated[float, typer.Option(min=0.01, help="Leads per second")] = 2.0,
    count: Annotated[int, typer.Option(min=0, help="Leads to send, then wait for the reps; 0: until stopped")] = 0,
    touch_share: Annotated[float, typer.Option(help="Share of routed leads touched before the deadline")] = 0.7,
    late_share: Annotated[float, typer.Option(help="Share touched only after it (a breach)")] = 0.15,
    seed: int = 7,
    crm_source: Annotated[str, typer.Option(help="Source the scripted CRM posts activities as")] = "crm",
    campaign: Annotated[str | None, typer.Option(help="One campaign for every lead (default: a mix)")] = None,
    settle: Annotated[float, typer.Option(min=0, help="With COUNT: end after this long without a routing")] = 15.0,
    hubspot_url: Annotated[
        str | None, typer.Option(help="A local HubSpot (`coxswain demo crm hubspot`) reps log first calls in")
    ] = None,
    salesforce_url: Annotated[
        str | None, typer.Option(help="A local Salesforce (`coxswain demo crm salesforce`) reps log first calls in")
    ] = None,
    crm_token: Annotated[str, typer.Option(envvar="COXSWAIN_DEMO_CRM_TOKEN", help="The local CRMs' token")] = "",
    crm_share: Annotated[
        float, typer.Option(min=0, max=0.5, help="Share of routed leads whose first touch is a call in each CRM")
    ] = 0.35,
) -> None:
    """Post signed demo leads; a scripted CRM has the assigned reps touch most in time, some late and
    some never, accept or reject them, and win or lose a few deals. Runs until stopped or COUNT."""
    from coxswain.progress import progress
    from coxswain_app.demo import Mix, crm_links, run_traffic

    _logging()
    try:
        mix = Mix(touch_share, late_share)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    links = crm_links(crm_token, hubspot_url, salesforce_url, crm_share)
    with progress("demo leads", total=count or None) as advance:
        asyncio.run(
            run_traffic(
                url, source, secret, rate, count, mix, seed, crm_source, campaign, settle, on_sent=advance, links=links
            )
        )


@demo_app.command("crm")
def demo_crm(
    kind: Annotated[str, typer.Argument(help="hubspot or salesforce")],
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8093,
    token: Annotated[str, typer.Option(envvar="COXSWAIN_DEMO_CRM_TOKEN", help="The Bearer token it accepts")] = "",
    webhook_url: Annotated[
        str | None, typer.Option(help="HubSpot: where logged calls are posted (intake's /hubspot/crm-events)")
    ] = None,
    webhook_secret: Annotated[
        str | None, typer.Option(envvar="COXSWAIN_DEMO_HUBSPOT_CLIENT_SECRET", help="HubSpot: the app's client secret")
    ] = None,
) -> None:
    """A local HubSpot or Salesforce (the API subset crm-sync and intake use, in memory) whose owners /
    users are the reps' crm ids in COXSWAIN_AGREEMENT_FILE; GET /demo/records lists what it holds."""
    from coxswain.core.agreement import load_agreement
    from coxswain.core.crm_sync import CrmKind, owner_ids
    from coxswain.demo_crm.process import serve_until_stopped
    from coxswain.settings import AgreementConfig

    if kind not in ("hubspot", "salesforce"):
        typer.echo(f"unknown CRM {kind!r}: hubspot or salesforce", err=True)
        raise typer.Exit(2)
    if not token:
        typer.echo("a token is needed: --token or COXSWAIN_DEMO_CRM_TOKEN", err=True)
        raise typer.Exit(2)
    _logging()
    crm: CrmKind = "hubspot" if kind == "hubspot" else "salesforce"
    owners = set(owner_ids(load_agreement(AgreementConfig().agreement_file), crm).values())
    asyncio.run(serve_until_stopped(kind, owners, token, port, webhook_url, webhook_secret))


@demo_app.command("tail")
def demo_tail(
    topics: Annotated[list[str] | None, typer.Argument(help="Topics to follow")] = None,
) -> None:
    """Follow topics from the start and print one line per fact (default: routed and breaches)."""
    from coxswain_app.demo import tail

    asyncio.run(tail(topics or ["leads.routed.v1", "sla.breached.v1", "sla.met.v1"]))


@shadow_app.command("report")
def shadow_report(
    since: Annotated[str, typer.Option(help="Start of the period, ISO-8601 with a time zone")],
    until: Annotated[str | None, typer.Option(help="End of the period (default: now)")] = None,
    version: Annotated[str | None, typer.Option(help="Only this candidate version's decisions")] = None,
    examples: Annotated[int, typer.Option(min=0)] = 10,
) -> None:
    """Compare the shadow decisions with the live ones (assignments, stage facts) for a period."""
    from datetime import UTC, datetime

    from services.shadow.report import report

    try:
        start = datetime.fromisoformat(since)
        end = datetime.fromisoformat(until) if until else datetime.now(UTC)
    except ValueError as exc:
        typer.echo(f"--since/--until: {exc}", err=True)
        raise typer.Exit(2) from None
    if start.tzinfo is None or end.tzinfo is None:
        typer.echo("--since/--until need a time zone (e.g. 2026-01-05T00:00:00+00:00)", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(report(start, end, version, examples))
    except (OSError, ConnectionError) as exc:
        typer.echo(f"cannot read the shadow topic or the database: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("generate")
def generate_stream(
    out: Annotated[Path, typer.Option(help="JSON Lines file to write")],
    leads: Annotated[int, typer.Option(min=1, help="How many people")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Over how many days")] = 30,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD")] = "2026-01-05",
    seed: Annotated[int, typer.Option(help="Same seed, same stream")] = 7,
) -> None:
    """Write a synthetic B2B lead stream (the format `coxswain simulate --events` reads)."""
    from datetime import date

    from coxswain.simulation.generate import StreamSpec, write_stream

    try:
        first = date.fromisoformat(start)
    except ValueError:
        typer.echo(f"--start {start!r} is not a date (YYYY-MM-DD)", err=True)
        raise typer.Exit(2) from None
    from coxswain.progress import progress

    try:
        with progress("generating", total=leads, unit="leads") as made:
            written = write_stream(StreamSpec(leads=leads, start=first, days=days, seed=seed), out, made)
    except OSError as exc:
        typer.echo(f"cannot write {out}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {written} lines for {leads} leads to {out}")


@app.command("simulate")
def simulate(
    candidate: Annotated[Path, typer.Option(help="The proposed agreement")],
    baseline: Annotated[
        Path | None, typer.Option(help="Default: the active agreement (database), else COXSWAIN_AGREEMENT_FILE")
    ] = None,
    events: Annotated[Path | None, typer.Option(help="JSON Lines stream (coxswain generate)")] = None,
    from_db: Annotated[bool, typer.Option("--from-db", help="Replay intake_events in received order")] = False,
    from_kafka: Annotated[
        bool, typer.Option("--from-kafka", help="Replay the input topics from the earliest offset, no group")
    ] = False,
    policy: Annotated[Path | None, typer.Option(help="YAML guards; exit 1 when one is crossed")] = None,
    html: Annotated[Path | None, typer.Option(help="Write an HTML report with charts here")] = None,
    first: Annotated[int, typer.Option(min=0, help="How many route changes to list")] = 20,
    decisions: Annotated[Path | None, typer.Option(help="Write the candidate's decisions as JSON Lines")] = None,
    received_after: Annotated[
        str | None, typer.Option(help="With --from-db: only events received after this ISO-8601 instant")
    ] = None,
) -> None:
    """Replay past leads through a candidate agreement beside the baseline, in process."""
    from datetime import datetime

    from coxswain.simulation.run import Request, execute

    after = None
    if received_after is not None:
        try:
            after = datetime.fromisoformat(received_after)
        except ValueError:
            typer.echo(f"--received-after {received_after!r} is not an ISO-8601 instant", err=True)
            raise typer.Exit(2) from None
        if after.tzinfo is None:
            typer.echo("--received-after needs a time zone (e.g. 2026-01-05T00:00:00+00:00)", err=True)
            raise typer.Exit(2)
    from coxswain.progress import progress

    request = Request(candidate, baseline, events, from_db, from_kafka, policy, html, first, decisions, after)
    with progress("replaying", unit="inputs") as replayed:
        outcome = execute(request, replayed)
        replayed.finish()
    typer.echo(outcome.text, err=outcome.code == 2)
    raise typer.Exit(outcome.code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
