"""The roster API's request and response bodies, as its OpenAPI document shows them."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coxswain.core.agreement import CrmIds
from coxswain.core.documents import NUL_REFUSED, holds_nul
from coxswain.core.roster import AbsencePeriod
from services.roster.repository import AssignmentRecord, HolderRecord, WaitingRecord

REP_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_ACCOUNTS = 10_000


class Body(BaseModel):
    """A request body: unknown fields are refused, and so is a NUL anywhere (PostgreSQL text and
    JSONB cannot hold one), before any field is read."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, document: Any) -> Any:
        if holds_nul(document):
            raise ValueError(NUL_REFUSED)
        return document


class RepSettings(Body):
    """Any of these; a field given as null clears the setting (e.g. capacity: null = unlimited)."""

    name: str | None = Field(default=None, min_length=1, max_length=128)
    timezone: str | None = Field(default=None, description="IANA time zone; daily caps count days here.")
    calendar: str | None = Field(default=None, description="A calendar of the agreement; null: always available.")
    capacity: int | None = Field(default=None, ge=1, le=100_000, description="Most open load, weighted by tier.")
    daily_cap: int | None = Field(default=None, ge=1, le=100_000)
    started_on: date | None = Field(default=None, description="First working day; the ramp counts from here.")
    ramp_weeks: int | None = Field(default=None, ge=0, le=52)
    crm: CrmIds | None = Field(
        default=None,
        description="Who the rep is in each CRM crm-sync writes to (replaces the agreement's ids as a whole; null "
        "clears them). A rep without an id for a CRM gets no leads written there (docs/integrators.md).",
    )


class RepCreate(RepSettings):
    id: str = Field(pattern=REP_ID.pattern)
    name: str = Field(min_length=1, max_length=128)


class PauseIn(Body):
    reason: str | None = Field(default=None, max_length=200)


class AbsenceIn(Body, AbsencePeriod):
    """An absence as the core defines it (its bounds in order), checked for NULs like every body."""


class MemberIn(Body):
    weight: int = Field(ge=1, le=100)


class AccountIn(Body):
    domain: str = Field(min_length=1, max_length=300)
    owner_rep_id: str | None = Field(description="null removes the account's owner (and the account).")
    external_id: str | None = Field(default=None, max_length=256, description="The CRM's account id.")


class AccountsIn(Body):
    accounts: list[AccountIn] = Field(min_length=1, max_length=MAX_ACCOUNTS)


class OutOfOffice(BaseModel):
    id: str | None = Field(description="Set for periods added at runtime (DELETE them by id); null: the agreement's.")
    start: datetime
    end: datetime
    reason: str | None


class RepView(BaseModel):
    """A rep's settings in force (agreement and runtime changes), availability now, and load."""

    id: str
    name: str
    timezone: str
    calendar: str | None
    capacity: int | None
    daily_cap: int | None
    started_on: date | None
    ramp_weeks: int
    paused: bool
    pause_reason: str | None
    out_of_office: list[OutOfOffice]
    crm: CrmIds = Field(description="The rep's ids in the CRMs crm-sync writes to, as in force now.")
    overridden: list[str] = Field(description="The settings changed at runtime, over the agreement's.")
    unavailable_because: str | None = Field(description="Why the rep takes no lead now; null when available.")
    open_load: int
    open_leads: int
    assigned_today: int


class PoolMemberView(BaseModel):
    rep: str
    weight: int
    effective_weight: float = Field(description="The weight after a new hire's ramp.")


class PoolView(BaseModel):
    id: str
    members: list[PoolMemberView]


class RosterView(BaseModel):
    agreement_version: str
    revision: int = Field(description="Bumped by every roster change.")
    reps: list[RepView]
    pools: list[PoolView]


class AbsenceView(BaseModel):
    id: uuid.UUID
    start: datetime
    end: datetime
    reason: str | None


class AccountsSynced(BaseModel):
    upserted: int
    removed: int
    unknown_owners: list[str] = Field(description="Owners that are not in the roster.")
    note: str | None


class LeadAssignments(BaseModel):
    lead_id: uuid.UUID
    holder: HolderRecord | None = Field(description="Who holds the lead now; null while it waits.")
    assignments: list[AssignmentRecord] = Field(description="Every assignment, oldest first, with its decision.")
    unassigned: WaitingRecord | None = Field(description="Why the lead waits for a rep; null when it does not.")
