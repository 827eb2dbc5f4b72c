"""Intake's HTTP-side input: the batch bodies and ``Problem``, an answer with a status. The single
items and the events made of them are in ``coxswain.core.intake``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coxswain.core.intake import ActivityIn, LeadEventIn


class LeadBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[LeadEventIn] = Field(min_length=1)


class ActivityBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    activities: list[ActivityIn] = Field(min_length=1)


class Problem(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers
