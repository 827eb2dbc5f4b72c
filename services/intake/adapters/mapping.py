"""Declarative field mapping: any sender's JSON document -> the fields of a lead event.

Pure: a mapping and a parsed document in, the event's fields (and the names of the attributes
that had to be left out) out. The HubSpot and Marketo adapters are built-in mappings; any other
form or tool gets one in the senders file (``COXSWAIN_SENDERS_FILE``, see docs/senders.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping as AbstractMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coxswain.core.documents import one_of
from schemas.events import EngagementType, LeadAttributes

# Every field of the lead, derived from the event contract: a new lead field is one line there.
_CONTACT_FIELD_CHECK, _CONTACT_FIELD_SCHEMA = one_of(tuple(LeadAttributes.model_fields))
ContactField = Annotated[str, _CONTACT_FIELD_CHECK, _CONTACT_FIELD_SCHEMA]

# Senders type country names; the lead model wants ISO 3166-1 alpha-2. A mapping may add more.
COUNTRY_NAMES = {
    "united states": "US",
    "united states of america": "US",
    "usa": "US",
    "u.s.": "US",
    "u.s.a.": "US",
    "canada": "CA",
    "united kingdom": "GB",
    "uk": "GB",
    "great britain": "GB",
    "england": "GB",
    "germany": "DE",
    "deutschland": "DE",
    "france": "FR",
    "netherlands": "NL",
    "the netherlands": "NL",
    "spain": "ES",
    "italy": "IT",
    "ireland": "IE",
    "australia": "AU",
    "india": "IN",
    "japan": "JP",
    "brazil": "BR",
    "mexico": "MX",
    "sweden": "SE",
    "switzerland": "CH",
}


class MappingError(ValueError):
    """The document cannot become a lead event; the message says which field and why."""


class FieldSpec(BaseModel):
    """Where a value comes from: a dotted ``path`` in the document (list items by index) or a
    constant ``value``; ``map`` translates values (case-insensitive), ``default`` fills a gap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    value: str | int | float | None = None
    map: dict[str, str] = Field(default_factory=dict)
    default: str | int | float | None = None

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, data: object) -> object:
        return {"path": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.path is None) == (self.value is None):
            raise ValueError("give exactly one of path or value")
        return self


class SenderMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    auth: Literal["standard_webhooks", "shared_secret"] = Field(
        default="standard_webhooks",
        description="standard_webhooks: webhook-id/-timestamp/-signature; shared_secret: a static header.",
    )
    secret_header: str = Field(default="x-coxswain-token", description="The header carrying the shared secret.")
    items: str | None = Field(default=None, description="Path of a list of records, for senders that batch.")
    type: FieldSpec = FieldSpec(value=EngagementType.form_submit.value)
    external_id: FieldSpec | None = None
    occurred_at: FieldSpec | None = None
    contact: dict[ContactField, FieldSpec] = Field(default_factory=dict)

    def extended(self, override: SenderMapping | None) -> SenderMapping:
        """The built-in mapping with a senders-file entry laid over it (contact fields merge)."""
        if override is None:
            return self
        given = override.model_fields_set
        update: dict[str, Any] = {name: getattr(override, name) for name in given if name != "contact"}
        update["contact"] = {**self.contact, **override.contact}
        return self.model_copy(update=update)


class SendersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, SenderMapping] = Field(default_factory=dict)


def load_senders(path: Path | None) -> dict[str, SenderMapping]:
    if path is None:
        return {}
    try:
        document = yaml.safe_load(path.read_text()) or {}
        return SendersFile.model_validate(document).sources
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot read senders file: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors(include_url=False)
        )
        raise MappingError(f"{path}: {problems}") from None


@dataclass(frozen=True)
class MappedEvent:
    type: EngagementType
    external_id: str | None
    occurred_at: datetime | None
    contact: LeadAttributes
    ignored: tuple[str, ...]


_MISSING = object()


def lookup(document: Any, path: str) -> Any:
    current = document
    for part in path.split("."):
        if isinstance(current, AbstractMapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def resolve(spec: FieldSpec, document: Any) -> Any:
    raw = spec.value if spec.path is None else lookup(document, spec.path)
    if isinstance(raw, str):
        raw = raw.strip()
    if raw is _MISSING or raw is None or raw == "":
        raw = spec.default
    if raw is not None and spec.map:
        translated = {key.casefold(): value for key, value in spec.map.items()}.get(str(raw).casefold())
        raw = translated if translated is not None else raw
    return raw


def company_size(value: Any) -> Any:
    """HubSpot's employee ranges ("25-50", "1000+") and "1,200" count by their lower bound."""
    if isinstance(value, str):
        match = re.match(r"^\s*([0-9][0-9,]*)", value)
        if match:
            return int(match.group(1).replace(",", ""))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def country(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if re.fullmatch(r"[A-Za-z]{2}", value):
        return value.upper()
    return COUNTRY_NAMES.get(value.casefold(), value)


def timestamp(value: Any) -> datetime:
    """ISO 8601, or epoch milliseconds (HubSpot) / seconds; a time without a zone is UTC."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        number = float(value)
        moment = datetime.fromtimestamp(number / 1000 if number > 1e11 else number, tz=UTC)
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise ValueError(f"not a time: {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def domain(value: Any) -> Any:
    """A website ("https://www.acme.com/about") names the company's domain ("acme.com")."""
    if not isinstance(value, str):
        return value
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", value.strip().casefold()).split("/", 1)[0].split(":", 1)[0]
    return host.removeprefix("www.")


COERCE = {"company_size": company_size, "country": country, "company_domain": domain}


def contact_attributes(values: dict[str, Any]) -> tuple[LeadAttributes, tuple[str, ...]]:
    """Validate the attributes; a value that does not fit the lead model is left out, not fatal,
    because a sender's template cannot be fixed per request. The caller reports what was left out."""
    candidate = {name: COERCE.get(name, lambda v: v)(value) for name, value in values.items()}
    ignored: list[str] = []
    while True:
        try:
            return LeadAttributes.model_validate(candidate), tuple(sorted(ignored))
        except ValidationError as exc:
            bad = {str(error["loc"][0]) for error in exc.errors(include_url=False) if error["loc"]}
            if not bad & set(candidate):
                raise MappingError(f"contact does not validate: {exc.errors(include_url=False)[0]['msg']}") from None
            for name in bad & set(candidate):
                candidate.pop(name)
                ignored.append(name)


def apply(mapping: SenderMapping, record: Any, type_override: str | None = None) -> MappedEvent:
    raw_type = type_override or resolve(mapping.type, record)
    try:
        engagement = EngagementType(str(raw_type))
    except ValueError:
        allowed = ", ".join(e.value for e in EngagementType)
        raise MappingError(f"event type {raw_type!r} is not one of: {allowed}") from None
    external = resolve(mapping.external_id, record) if mapping.external_id else None
    occurred = resolve(mapping.occurred_at, record) if mapping.occurred_at else None
    try:
        occurred_at = timestamp(occurred) if occurred is not None else None
    except (ValueError, OverflowError, OSError):
        raise MappingError(f"occurred_at {occurred!r} is not an ISO 8601 time or epoch seconds/milliseconds") from None
    values = {name: resolve(spec, record) for name, spec in mapping.contact.items()}
    contact, ignored = contact_attributes({name: value for name, value in values.items() if value is not None})
    return MappedEvent(
        type=engagement,
        external_id=str(external)[:256] if external is not None else None,
        occurred_at=occurred_at,
        contact=contact,
        ignored=ignored,
    )


def records(mapping: SenderMapping, document: Any) -> list[Any]:
    if mapping.items is None:
        return [document]
    found = lookup(document, mapping.items)
    if not isinstance(found, list) or not found:
        raise MappingError(f"{mapping.items!r} is not a non-empty list in the body")
    return found
