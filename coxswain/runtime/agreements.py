"""Agreement versions in PostgreSQL, and the agreement in force for a running service.

A version is stored once (its normalised document and that document's SHA-256) and never
changes; storing the same version with other content is refused. The version activated last is
in force. Every service loads it at start and polls for a newer activation, so a new agreement
takes effect without a restart; with no activated version the service uses
COXSWAIN_AGREEMENT_FILE.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coxswain.core.agreement import Agreement, AgreementError, load_agreement, parse_agreement
from coxswain.runtime import outages
from coxswain.runtime.waiting import sleep_or_stop

log = logging.getLogger(__name__)

ACTIVATION_LOCK = 0x636F7861  # advisory lock key: "coxa"


class VersionConflict(ValueError):
    pass


@dataclass(frozen=True)
class StoredAgreement:
    version: str
    sha256: str
    created_at: datetime
    activated_at: datetime | None


def normalised(agreement: Agreement) -> dict[str, Any]:
    """The document as the loader understood it: durations, defaults and all, in plain JSON."""
    document: dict[str, Any] = agreement.model_dump(mode="json", by_alias=True)
    return document


def digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def store(connection: AsyncConnection, agreement: Agreement, now: datetime) -> tuple[StoredAgreement, bool]:
    """Store a version; (row, True) when new, (row, False) when the identical version exists."""
    document = normalised(agreement)
    sha = digest(document)
    inserted = await connection.scalar(
        text(
            "INSERT INTO agreements (version, document, sha256, created_at) "
            "VALUES (:v, CAST(:d AS jsonb), :s, :now) ON CONFLICT (version) DO NOTHING RETURNING 1"
        ),
        {"v": agreement.version, "d": orjson.dumps(document).decode(), "s": sha, "now": now},
    )
    row = (
        await connection.execute(
            text("SELECT version, sha256, created_at, activated_at, document FROM agreements WHERE version = :v"),
            {"v": agreement.version},
        )
    ).one()
    if row.sha256 != sha and not _same_agreement(row.document, row.version, sha):
        raise VersionConflict(
            f"version {agreement.version!r} is already stored with different content (sha256 {row.sha256[:12]}…); "
            "a version never changes: give the new agreement a new version"
        )
    stored = StoredAgreement(row.version, row.sha256, row.created_at, row.activated_at)
    return stored, inserted is not None


def _same_agreement(stored: dict[str, Any], version: str, sha: str) -> bool:
    """The stored document read by this release: a release that adds an optional setting changes
    every normalised document (the new default is in it), not the agreement a version means."""
    try:
        return digest(normalised(parse_agreement(stored, source=f"agreements[{version}]"))) == sha
    except AgreementError:
        return False


async def activate(connection: AsyncConnection, version: str, now: datetime) -> StoredAgreement | None:
    """Put ``version`` in force: it becomes the latest activation even if this clock lags another's."""
    await connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ACTIVATION_LOCK})
    row = (
        await connection.execute(
            text(
                "UPDATE agreements SET activated_at = GREATEST(CAST(:now AS timestamptz), "
                "(SELECT max(activated_at) FROM agreements) + interval '1 microsecond') WHERE version = :v "
                "RETURNING version, sha256, created_at, activated_at"
            ),
            {"v": version, "now": now},
        )
    ).one_or_none()
    return None if row is None else StoredAgreement(row.version, row.sha256, row.created_at, row.activated_at)


async def versions(connection: AsyncConnection) -> list[StoredAgreement]:
    rows = await connection.execute(
        text("SELECT version, sha256, created_at, activated_at FROM agreements ORDER BY created_at, version")
    )
    return [StoredAgreement(row.version, row.sha256, row.created_at, row.activated_at) for row in rows]


async def active(connection: AsyncConnection) -> tuple[str, dict[str, Any]] | None:
    """(sha256, document) of the version activated last, or None when none ever was."""
    row = (
        await connection.execute(
            text(
                "SELECT sha256, document FROM agreements WHERE activated_at IS NOT NULL "
                "ORDER BY activated_at DESC, version LIMIT 1"
            )
        )
    ).one_or_none()
    return None if row is None else (row.sha256, row.document)


async def active_sha(connection: AsyncConnection) -> str | None:
    value = await connection.scalar(
        text("SELECT sha256 FROM agreements WHERE activated_at IS NOT NULL ORDER BY activated_at DESC, version LIMIT 1")
    )
    return None if value is None else str(value)


async def stored_agreement(connection: AsyncConnection, version: str) -> Agreement | None:
    document = await connection.scalar(text("SELECT document FROM agreements WHERE version = :v"), {"v": version})
    return None if document is None else parse_agreement(document, source=f"agreements[{version}]")


class AgreementSource:
    """The agreement in force for this process; ``current`` changes when another one is activated."""

    def __init__(self, engine: AsyncEngine, fallback_file: Path, poll_seconds: float = 2.0) -> None:
        self._engine = engine
        self._fallback_file = fallback_file
        self._poll = poll_seconds
        self._sha: str | None = None
        self._current: Agreement | None = None

    @property
    def current(self) -> Agreement:
        if self._current is None:
            raise RuntimeError("AgreementSource.refresh() must run before the agreement is used")
        return self._current

    async def refresh(self) -> bool:
        """Load the active version if it changed; True when the agreement in force changed.

        A stored version that no longer loads keeps the previous agreement in force (and is
        logged); at start, with nothing in force yet, it is an error the operator must fix.
        """
        async with self._engine.connect() as connection:
            sha = await active_sha(connection)
            if sha is not None and sha == self._sha:
                return False
            found = await active(connection) if sha is not None else None
        if found is None:
            if self._current is not None and self._sha is None:
                return False
            agreement = load_agreement(self._fallback_file)
            origin = f"file {self._fallback_file}"
        else:
            sha, document = found
            try:
                agreement = parse_agreement(document, source="agreements (active version)")
            except AgreementError:
                if self._current is None:
                    raise
                log.exception("active agreement does not load; keeping version=%s", self._current.version)
                self._sha = sha
                return False
            origin = "database"
        changed = self._current is None or self._current != agreement
        self._current, self._sha = agreement, sha
        log.info("agreement in force: version=%s sha256=%s from=%s", agreement.version, (sha or "-")[:12], origin)
        return changed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_or_stop(stop, self._poll)
            if stop.is_set():
                return
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("agreement poll failed, retrying: %s", type(exc).__name__, extra=outages.about(exc))
