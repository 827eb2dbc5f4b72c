"""Engine, migrations and the schema check every service runs before it starts."""

from __future__ import annotations

from pathlib import Path

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
    return create_async_engine(
        config.database_url,
        pool_size=config.database_pool_size,
        max_overflow=config.database_pool_size,
        pool_pre_ping=True,
    )


def alembic_config(config: DatabaseConfig) -> Config:
    alembic = Config()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    alembic.set_main_option("sqlalchemy.url", config.database_url)
    return alembic


def upgrade(config: DatabaseConfig, revision: str = "head") -> None:
    command.upgrade(alembic_config(config), revision)


def head_revision(config: DatabaseConfig) -> str | None:
    return ScriptDirectory.from_config(alembic_config(config)).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        exists = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return None
        revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        return None if revision is None else str(revision)


async def require_current_schema(engine: AsyncEngine, config: DatabaseConfig) -> None:
    """Services never migrate on start; they refuse to run against a schema they do not expect."""
    current, head = await current_revision(engine), head_revision(config)
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at revision {current or '(none)'} but this release needs {head}; "
            "run `coxswain db upgrade` first"
        )
