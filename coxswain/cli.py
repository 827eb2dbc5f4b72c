"""``coxswain``: one command line for every process type and every operator task."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from coxswain.core.agreement import AgreementError, load_agreement

app = typer.Typer(help="Coxswain: the sales-marketing agreement as running software.", no_args_is_help=True)
run_app = typer.Typer(help="Run one service as a long-lived process.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
agreement_app = typer.Typer(help="The sales-marketing agreement file.", no_args_is_help=True)
schemas_app = typer.Typer(help="Event contracts: JSON Schema and AsyncAPI documents.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo traffic and a live view of the topics.", no_args_is_help=True)
for sub, name in (
    (run_app, "run"),
    (db_app, "db"),
    (topics_app, "topics"),
    (agreement_app, "agreement"),
    (schemas_app, "schemas"),
    (demo_app, "demo"),
):
    app.add_typer(sub, name=name)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _run(coroutine: object) -> None:
    import uvloop

    uvloop.run(coroutine)  # type: ignore[arg-type]


@run_app.command("intake")
def run_intake() -> None:
    """Webhook intake (HTTP): COXSWAIN_INTAKE_HOST / COXSWAIN_INTAKE_PORT."""
    from coxswain.wiring import run_intake as serve

    _logging()
    serve()


def _consumer(name: str) -> None:
    from coxswain.wiring import run_consumer

    _logging()
    _run(run_consumer(name))


@run_app.command("scoring")
def run_scoring() -> None:
    """Scoring: leads.received.v1 + crm.activities.v1 -> scored, stage changes, qualified."""
    _consumer("scoring")


@run_app.command("router")
def run_router() -> None:
    """Router: leads.qualified.v1 -> leads.routed.v1."""
    _consumer("router")


@run_app.command("sla-monitor")
def run_sla_monitor() -> None:
    """SLA monitor: arms deadlines from leads.routed.v1, stops them on responses, fires breaches."""
    _consumer("sla_monitor")


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


@agreement_app.command("validate")
def agreement_validate(file: Annotated[Path, typer.Argument(help="Agreement YAML file")]) -> None:
    """Check an agreement file; print every problem with its path in the document."""
    try:
        agreement = load_agreement(file)
    except AgreementError as exc:
        for problem in exc.problems:
            typer.echo(f"{exc.source}: {problem}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{file}: agreement {agreement.name!r} version {agreement.version} is valid")


@schemas_app.command("generate")
def schemas_generate(
    check: Annotated[bool, typer.Option(help="Fail instead of writing when the files differ")] = False,
) -> None:
    """Write schemas/jsonschema/*.json and schemas/asyncapi.yaml from the event models."""
    from schemas.generate import write_documents

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
    rate: float = 2.0,
    count: int = 0,
    touch_share: float = 0.5,
    seed: int = 7,
) -> None:
    """Post signed demo leads (and first touches for some) until stopped or COUNT is reached."""
    from coxswain.demo import run_traffic

    _logging()
    asyncio.run(run_traffic(url, source, secret, rate, count, touch_share, seed))


@demo_app.command("tail")
def demo_tail(
    topics: Annotated[list[str] | None, typer.Argument(help="Topics to follow")] = None,
) -> None:
    """Follow topics from the start and print one line per fact (default: routed and breaches)."""
    from coxswain.demo import tail

    asyncio.run(tail(topics or ["leads.routed.v1", "sla.breached.v1", "sla.met.v1"]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
