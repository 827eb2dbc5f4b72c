"""Engine, migrations and the schema check every service runs before it starts."""

from __future__ import annotations

from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coxswain.settings import DatabaseConfig

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaOutOfDate(RuntimeError):
    pass


def create_engine(config: DatabaseConfig) -> AsyncEngine:
    return _engine(config, config.database_pool_size, {})


# The outbox is a queue: a few hundred live rows, and a heap and indexes that grow to the rows of
# a minute between two autovacuum runs and shrink again when one truncates it. PostgreSQL plans a
# prepared statement once for all executions (a generic plan) after its first five; planned while
# the outbox was a few pages, the relay's delete by id kept scanning the whole heap once it had
# grown to thousands of pages (docs/benchmarks-history.md, 5 December, afternoon). The relay's statements
# are planned at every execution, against the outbox as it is then; that costs about a tenth of a
# millisecond each, a few times a second.
RELAY_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
# The relay's connections: its lease renewals, its reads and deletes (one at a time), its listener.
RELAY_POOL_SIZE = 3


def create_relay_engine(config: DatabaseConfig) -> AsyncEngine:
    """The engine of a process's outbox relay, apart from the one its service's work uses."""
    return _engine(config, RELAY_POOL_SIZE, RELAY_SETTINGS)


# The batches of a consumer on a lead's way (scoring, which routes inline, and the router): their
# statements look rows up by the keys of the batch's leads, reps and pools, which arrive as arrays
# of one or two at a few leads per second. With such values PostgreSQL's custom plans look cheaper
# than the generic one, so it keeps planning them again at every call, and for the largest
# (the routing state, the reps a run names, the identities with their leads) planning took longer
# than running: 0.2 to 0.4 ms each, nearly a millisecond of every batch on the loop each lead waits
# for (docs/benchmarks-history.md, 6 December, morning). Their generic plans are the same index lookups
# by key whatever the values. Only for these connections: where a parameter's value decides how
# many rows match (a time range; a status a partial index covers only when the planner sees it, as
# in the SLA monitor's timer loop), a plan made without the values can be far off, and PostgreSQL's
# own choice stays right.
BATCH_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
# One batch (or its look-up in the inbox) at a time: one connection, and as many again in
# overflow, as every engine here has.
BATCH_POOL_SIZE = 1


def create_batch_engine(config: DatabaseConfig) -> AsyncEngine:
    """The engine of the batches of a consumer on a lead's way, apart from the one its process's
    other work uses (timers, retention, its agreement, health)."""
    return _engine(config, BATCH_POOL_SIZE, BATCH_SETTINGS)


def _engine(config: DatabaseConfig, pool_size: int, settings: dict[str, str]) -> AsyncEngine:
    return create_async_engine(
        config.database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=config.database_pool_pre_ping,
        # Statement parameters carry lead attributes (emails, names): keep them out of error
        # messages, which end up in logs.
        hide_parameters=True,
        # JSONB parameters (lead attributes, facts, decisions) are encoded with orjson, not the
        # standard library's encoder, which showed up in the consumers' profiles.
        json_serializer=_json_text,
        # A process frozen inside a transaction (a GC or VM pause, SIGSTOP) would hold its row and
        # advisory locks, and stall every instance that needs them, for as long as it is frozen.
        connect_args={
            "server_settings": {
                "idle_in_transaction_session_timeout": str(int(config.database_idle_in_transaction_seconds * 1000)),
                **settings,
            }
        },
    )


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def alembic_config(config: DatabaseConfig) -> Config:
    alembic = Config()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    alembic.set_main_option("sqlalchemy.url", config.database_url)
    return alembic


def upgrade(config: DatabaseConfig, revision: str = "heads") -> None:
    command.upgrade(alembic_config(config), revision)


def head_revisions(config: DatabaseConfig) -> frozenset[str]:
    return frozenset(ScriptDirectory.from_config(alembic_config(config)).get_heads())


async def current_revisions(engine: AsyncEngine) -> frozenset[str]:
    async with engine.connect() as connection:
        exists = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return frozenset()
        rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
        return frozenset(str(row.version_num) for row in rows)


async def require_current_schema(engine: AsyncEngine, config: DatabaseConfig) -> None:
    """Services never migrate on start; they refuse to run against a schema they do not expect."""
    current, heads = await current_revisions(engine), head_revisions(config)
    if current != heads:
        raise SchemaOutOfDate(
            f"database schema is at revision {', '.join(sorted(current)) or '(none)'} but this release needs "
            f"{', '.join(sorted(heads))}; run `coxswain db upgrade` first"
        )
