"""Erasing a person's values from stored documents (coxswain/core/privacy.py)."""

from __future__ import annotations

from typing import Any

from coxswain.core.privacy import ERASED, Person, scrub

ANA = Person.of([{"email": "Ana.Lima@Example.com", "first_name": "Ana", "last_name": "Lima", "title": "VP Sales"}])


def test_the_person_is_every_value_under_a_personal_key_however_deep() -> None:
    found = Person.of([{"contact": {"email": "a@b.example", "phone": "+1 555 0100"}, "company": "Acme"}, {"title": ""}])
    assert found.values == frozenset({"a@b.example", "+1 555 0100"})


def test_personal_keys_become_null_and_the_rest_stays() -> None:
    stored = {
        "type": "demo_request",
        "contact": {"email": "ana.lima@example.com", "first_name": "Ana", "company": "Acme", "country": "BR"},
        "touches": [["demo_request", "2026-12-01T10:00:00Z"]],
    }
    assert scrub(stored, ANA) == {
        "type": "demo_request",
        "contact": {"email": None, "first_name": None, "company": "Acme", "country": "BR"},
        "touches": [["demo_request", "2026-12-01T10:00:00Z"]],
    }


def test_the_persons_values_elsewhere_are_erased_in_any_case() -> None:
    stored: dict[str, Any] = {
        "reason": "owner of ANA.LIMA@example.com is away",
        "summary": ["Lead Lima breached", "ana"],
        "rep": "Anabel",
    }
    assert scrub(stored, ANA) == {
        "reason": f"owner of {ERASED} is away",
        "summary": [f"Lead {ERASED} breached", ERASED],
        "rep": "Anabel",  # "Ana" is too short to look for inside other words
    }


def test_a_document_without_the_person_is_returned_as_it_was() -> None:
    stored = {"contact": {"company": "Acme"}, "owners": ["ben"], "load": 2, "missing": None}
    assert scrub(stored, ANA) is stored
    assert scrub([stored, 3, None], ANA) == [stored, 3, None]
