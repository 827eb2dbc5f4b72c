"""The admin API's request and response bodies, as its OpenAPI document shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coxswain.core.agreement import Agreement


class StoredVersion(BaseModel):
    version: str
    sha256: str
    created_at: datetime
    activated_at: datetime | None
    created: bool = Field(default=False, description="False when this exact version was already stored.")
    warnings: list[str] = Field(default_factory=list, description="Rules that can never fire, and the like.")


class PersonQuery(BaseModel):
    """Exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, min_length=3, max_length=320)
    lead_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _one(self) -> PersonQuery:
        if (self.email is None) == (self.lead_id is None):
            raise ValueError("give exactly one of email and lead_id")
        return self


class ErasureDone(BaseModel):
    lead_id: uuid.UUID
    aliases: list[uuid.UUID]
    rows_changed: int = Field(description="Stored rows that held one of the person's values.")
    event_id: uuid.UUID = Field(description="The LeadErasedV1 fact staged for leads.erased.v1.")


class PersonExport(BaseModel):
    lead_id: uuid.UUID
    aliases: list[uuid.UUID]
    tables: dict[str, list[dict[str, Any]]] = Field(description="Every stored row of the person, by table.")


class AuditEntry(BaseModel):
    at: datetime
    token: str = Field(description="The name of the token that acted; `?` for a token that matched none.")
    action: str = Field(
        description="`agreement.store`, `agreement.activate`, `lead.read`, `rep.change`, ...; `request` for a refusal."
    )
    target: str
    outcome: str = Field(description="done, unchanged, refused, not_found, conflict or invalid.")
    detail: dict[str, Any]
    event_id: uuid.UUID = Field(description="The id of the same fact on admin.audit.v1.")


class Problem(BaseModel):
    path: str
    message: str


class AgreementInvalid(BaseModel):
    detail: str
    problems: list[Problem] = Field(description="Each problem with its path in the document.")


def agreement_outline() -> dict[str, Any]:
    """The agreement document's top-level sections, for the request body of POST /v1/admin/agreements.
    The sections' own shape is docs/agreement.md; the service checks the whole document and a 422
    lists every problem with its path."""
    return {
        "type": "object",
        "description": "An agreement (docs/agreement.md); the YAML body is the same document.",
        "required": sorted(name for name, field in Agreement.model_fields.items() if field.is_required()),
        "properties": {
            name: {"description": field.description} if field.description else {"title": name}
            for name, field in Agreement.model_fields.items()
        },
    }


# ----------------------------------------------------------------------------- a lead explained


class Score(BaseModel):
    at: datetime
    agreement_version: str
    fit: float
    engagement: float
    total: float
    contributions: list[dict[str, Any]] = Field(description="Every rule's value now, after decay.")
    mql: dict[str, float] = Field(description="MQL entry and exit thresholds.")
    sql: dict[str, Any] | None


class Reevaluation(BaseModel):
    due_at: datetime
    stage: str
    timer_id: uuid.UUID


class Owner(BaseModel):
    rep_id: str | None
    pool_id: str
    rule_id: str
    reason: str
    tier: str
    agreement_version: str
    routed_at: datetime
    assignment_id: uuid.UUID


class SlaClock(BaseModel):
    deadline_id: uuid.UUID
    assignment_id: uuid.UUID
    rep_id: str
    milestone: str
    tier: str
    status: str
    armed_at: datetime
    due_at: datetime
    decided_at: datetime | None
    responded_by: str | None
    superseded_by: uuid.UUID | None
    reassignments: int
    paged: bool


class Refusal(BaseModel):
    event_id: uuid.UUID
    at: datetime
    activity_id: str
    activity: str
    rep_id: str | None
    refusal: str
    reason: str
    agreement_version: str | None


class TimelineEntry(BaseModel):
    at: datetime
    kind: str = Field(description="A fact's kind (LeadReceivedV1, LeadScoredV1, ...), SlaArmed or SlaDecided.")
    summary: str
    event_id: uuid.UUID | None = None
    caused_by: uuid.UUID | None = None
    assignment_id: uuid.UUID | None = None
    agreement_version: str | None = None
    detail: dict[str, Any] | None = Field(default=None, description="The fact's payload.")


class LeadExplained(BaseModel):
    lead_id: uuid.UUID
    aliases: list[uuid.UUID] = Field(description="Provisional ids identity resolution folded into the lead.")
    stage: str
    stage_definition: dict[str, Any] | None
    persona: str | None
    tier: str | None
    attributes: dict[str, Any]
    score: Score
    decay_protected: bool
    held_until: datetime | None
    recycled_until: datetime | None
    next_reevaluation: Reevaluation | None
    playbook: dict[str, Any] | None
    owner: Owner | None
    sla: list[SlaClock]
    refusals: list[Refusal]
    timeline: list[TimelineEntry]
