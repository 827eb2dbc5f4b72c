"""Erasing a person: which of their values are personal, and stored data with those values gone.

Pure: the shell (``services/admin/privacy.py``) loads every stored value that belongs to the
person's leads, passes it through ``scrub`` and writes back what changed. A value is erased when
it sits under a personal key (``email``, ``first_name``, ...) anywhere in a document (it becomes
null, which every model reading it back accepts), or when it is, or contains, one of the person's
own values (their email inside a reason text, their name in an alert: replaced by ``[erased]``). Everything else stays as it was, so counts, stages, scores, owners, SLA clocks and
timestamps, and with them every report, read the same after an erasure.

``forget`` applies the same rules to one fact (an event model) that a consumer applies after its
lead was erased: a fact published before the erasure and applied late must not write the
person's values back.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from schemas.events import Event

ERASED = "[erased]"
# Keys whose values identify a person, wherever they appear (lead attributes, webhook payloads,
# facts, routing requests, alerts). Company, domain, country, seniority and the like describe
# the account, not the person, and stay: reports slice by them.
PERSONAL_KEYS = frozenset({"email", "first_name", "last_name", "title", "phone", "mobile_phone", "full_name"})
# Shorter values are not searched for inside other text: "Al" would erase half of every document.
MIN_SEARCHED_LENGTH = 4

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Person:
    """The values that identify one person, as stored (compared without regard to case)."""

    values: frozenset[str]

    @classmethod
    def of(cls, documents: Iterable[Mapping[str, Any]]) -> Person:
        """The personal values found in ``documents`` (a lead's attributes, its webhook payloads)."""
        found: set[str] = set()
        for document in documents:
            found.update(_personal_values(document))
        return cls(frozenset(value for value in found if value.strip()))

    def pattern(self) -> re.Pattern[str] | None:
        searched = sorted((v for v in self.values if len(v) >= MIN_SEARCHED_LENGTH), key=len, reverse=True)
        if not searched:
            return None
        return re.compile("|".join(re.escape(value) for value in searched), re.IGNORECASE)


def _personal_values(document: Any) -> Iterable[str]:
    if isinstance(document, Mapping):
        for key, value in document.items():
            if key in PERSONAL_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _personal_values(value)
    elif isinstance(document, list):
        for item in document:
            yield from _personal_values(item)


def scrub(document: Any, person: Person) -> Any:
    """``document`` with the person's values erased; the same object when nothing changed."""
    return _scrub(document, person, {value.casefold() for value in person.values}, person.pattern())


def _scrub(document: Any, person: Person, exact: set[str], pattern: re.Pattern[str] | None) -> Any:
    if isinstance(document, Mapping):
        changed = False
        out: dict[str, Any] = {}
        for key, value in document.items():
            if key in PERSONAL_KEYS and isinstance(value, str):
                new: Any = None
            else:
                new = _scrub(value, person, exact, pattern)
            changed = changed or new is not value
            out[key] = new
        return out if changed else document
    if isinstance(document, list):
        items = [_scrub(item, person, exact, pattern) for item in document]
        return items if any(new is not old for new, old in zip(items, document, strict=True)) else document
    if isinstance(document, str):
        if document.casefold() in exact:
            return ERASED
        if pattern is not None and pattern.search(document):
            return pattern.sub(ERASED, document)
    return document


def forget(event: E) -> E:
    """``event`` without the personal values it carries itself (the rules of ``scrub``); the same
    object when it carries none. The result is a valid event of the same type: a value the schema
    keeps to a vocabulary (a stage, a tier, a country code) is a word of the agreement even when it
    reads like the person's name, so it stays; a text the scrub made too long becomes ``[erased]``."""
    document = event.model_dump(mode="json")
    person = Person.of([document])
    scrubbed = scrub(document, person)
    if scrubbed is document:
        return event
    scrubbed = copy.deepcopy(scrubbed)
    while True:
        try:
            return type(event).model_validate(scrubbed)
        except ValidationError as exc:
            restored = [_restore(scrubbed, document, error["loc"], error["type"]) for error in exc.errors()]
            if not any(restored):
                raise


def _restore(scrubbed: Any, original: Any, loc: Sequence[int | str], error_type: str) -> bool:
    """Put back the original value where validation failed (``[erased]`` for a text now too long);
    whether anything changed. ``loc`` may end in names of union members, which are not keys."""
    parent: Any = None
    key: int | str | None = None
    for step in loc:
        inner = _child(original, step)
        if inner is _MISSING:
            break
        parent, key, scrubbed, original = scrubbed, step, _child(scrubbed, step), inner
    if parent is None or key is None:
        return False
    replacement = ERASED if error_type == "string_too_long" else original
    if scrubbed == replacement:
        return False
    parent[key] = replacement
    return True


_MISSING = object()


def _child(document: Any, step: int | str) -> Any:
    if isinstance(document, dict) and isinstance(step, str) and step in document:
        return document[step]
    if isinstance(document, list) and isinstance(step, int) and 0 <= step < len(document):
        return document[step]
    return _MISSING
