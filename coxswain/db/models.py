"""Tables. PostgreSQL is the source of truth; Kafka carries copies of these facts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, LargeBinary, MetaData, Table, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# Constraint names from a convention, so migrations can refer to them deterministically.
SQLModel.metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _utc(nullable: bool = False) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=nullable))


def _jsonb() -> Any:
    return Field(sa_column=Column(JSONB, nullable=False))


class WebhookInbox(SQLModel, table=True):
    """One row per accepted webhook: a repeated webhook id is answered from here, not stored twice."""

    __tablename__ = "webhook_inbox"
    source: str = Field(primary_key=True, max_length=64)
    webhook_id: str = Field(primary_key=True, max_length=256)
    kind: str = Field(max_length=16)
    event_ids: list[str] = _jsonb()
    lead_ids: list[str] = _jsonb()
    received_at: datetime = _utc()


class IntakeEvent(SQLModel, table=True):
    """Every acknowledged event, as accepted: the ledger that proves nothing acknowledged is lost."""

    __tablename__ = "intake_events"
    event_id: uuid.UUID = Field(primary_key=True)
    lead_id: uuid.UUID = Field(index=True)
    source: str = Field(max_length=64)
    webhook_id: str = Field(max_length=256)
    kind: str = Field(max_length=16)
    payload: dict[str, Any] = _jsonb()
    received_at: datetime = _utc()


class Outbox(SQLModel, table=True):
    """Facts waiting to be published; written in the same transaction as the state change."""

    __tablename__ = "outbox"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    event_id: uuid.UUID = Field(unique=True)
    topic: str = Field(max_length=255)
    key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: list[list[str]] = _jsonb()
    created_at: datetime = _utc()


class Inbox(SQLModel, table=True):
    """Events a consumer has applied; the primary key makes a redelivery a no-op."""

    __tablename__ = "inbox"
    consumer: str = Field(primary_key=True, max_length=64)
    event_id: uuid.UUID = Field(primary_key=True)
    topic: str = Field(max_length=255)
    processed_at: datetime = _utc()


class Lead(SQLModel, table=True):
    __tablename__ = "leads"
    lead_id: uuid.UUID = Field(primary_key=True)
    stage: str = Field(max_length=32)
    source: str = Field(max_length=64)
    attributes: dict[str, Any] = _jsonb()
    touches: list[list[str]] = _jsonb()
    score_total: float
    tier: str | None = Field(default=None, max_length=16)
    agreement_version: str = Field(max_length=64)
    updated_at: datetime = _utc()


class PoolRotation(SQLModel, table=True):
    """Rotation state per pool; locked FOR UPDATE while an assignment is made from it."""

    __tablename__ = "pool_rotation"
    pool_id: str = Field(primary_key=True, max_length=64)
    current: dict[str, int] = _jsonb()
    assigned: dict[str, int] = _jsonb()
    updated_at: datetime = _utc()


class Assignment(SQLModel, table=True):
    __tablename__ = "assignments"
    assignment_id: uuid.UUID = Field(primary_key=True)
    # One assignment per routing decision: the qualified (or reassignment) event that asked for it.
    decision_key: uuid.UUID = Field(unique=True)
    lead_id: uuid.UUID = Field(index=True)
    rep_id: str | None = Field(default=None, max_length=64)
    pool_id: str = Field(max_length=64)
    rule_id: str = Field(max_length=64)
    reason: str
    tier: str = Field(max_length=16)
    agreement_version: str = Field(max_length=64)
    routed_at: datetime = _utc()
    decision: dict[str, Any] = _jsonb()


class Deadline(SQLModel, table=True):
    __tablename__ = "deadlines"
    __table_args__ = (Index("ix_deadlines_armed_due", "due_at", postgresql_where=text("status = 'armed'")),)
    deadline_id: uuid.UUID = Field(primary_key=True)
    assignment_id: uuid.UUID = Field(index=True)
    lead_id: uuid.UUID = Field(index=True)
    rep_id: str = Field(max_length=64)
    milestone: str = Field(max_length=32)
    tier: str = Field(max_length=16)
    armed_at: datetime = _utc()
    due_at: datetime = _utc()
    status: str = Field(max_length=16)
    decided_at: datetime | None = _utc(nullable=True)
    decided_by: uuid.UUID | None = Field(default=None)


def table(name: str) -> Table:
    """The SQLAlchemy table of a model, typed (SQLModel's ``__table__`` is not, to mypy)."""
    return SQLModel.metadata.tables[name]
