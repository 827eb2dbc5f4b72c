"""Erasing a person's values from stored documents (coxswain/core/privacy.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from coxswain.core.privacy import ERASED, Person, forget, scrub
from schemas.events import LeadAttributes, LeadMergedV1, LeadQualifiedV1, LeadScoredV1, Playbook, Stage, Tier

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


NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def qualified(**attributes: Any) -> LeadQualifiedV1:
    return LeadQualifiedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=NOW,
        agreement_version="v1",
        caused_by=uuid.uuid4(),
        tier=Tier.hot,
        score=75.0,
        reason=f"demo request by {attributes.get('email')}",
        attributes=LeadAttributes(**attributes),
        source="webform",
        playbook=Playbook(id="hot-demo", stage=Stage.mql, tier=Tier.hot, talk_track="Call within the hour"),
    )


def test_a_fact_forgets_the_values_it_carries_and_stays_a_valid_fact_of_its_kind() -> None:
    fact = qualified(email="ana.lima@example.com", first_name="Ana", last_name="Lima", title="VP Sales", country="BR")
    forgotten = forget(fact)
    assert type(forgotten) is LeadQualifiedV1
    assert forgotten.attributes == LeadAttributes(country="BR")
    assert forgotten.reason == f"demo request by {ERASED}"
    assert forgotten.model_dump(exclude={"attributes", "reason"}) == fact.model_dump(exclude={"attributes", "reason"})


def test_a_fact_without_personal_values_is_returned_as_it_was() -> None:
    fact = qualified(company="Acme", country="BR")
    assert forget(fact) is fact
    scored = LeadScoredV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=NOW,
        agreement_version="v1",
        caused_by=uuid.uuid4(),
        fit=10,
        engagement=5,
        total=15,
        contributions=(),
    )
    assert forget(scored) is scored


def test_words_of_the_agreement_stay_even_when_the_person_is_named_like_them() -> None:
    # A person called "Hot Mql" whose title is "Lead": the tier, the stage and the talk track's
    # words are the agreement's, not theirs; a validating field is never left broken.
    fact = qualified(email="x@y.example", first_name="Hot", last_name="Mql", title="Lead", company="Lead Works")
    forgotten = forget(fact)
    assert forgotten.tier is Tier.hot
    assert forgotten.playbook is not None
    assert (forgotten.playbook.stage, forgotten.playbook.tier) == (Stage.mql, Tier.hot)
    assert forgotten.attributes.company == f"{ERASED} Works"
    assert (forgotten.attributes.first_name, forgotten.attributes.title) == (None, None)


def test_a_text_the_scrub_makes_too_long_becomes_erased() -> None:
    long_company = "Acme " + "Lima " * 50  # 255 characters, each "Lima" grows by four
    fact = qualified(last_name="Lima", company=long_company.strip())
    forgotten = forget(fact)
    assert forgotten.attributes.company == ERASED
    assert forgotten.attributes.last_name is None


def test_a_merge_fact_forgets_its_email() -> None:
    merged = LeadMergedV1(
        event_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        occurred_at=NOW,
        caused_by=uuid.uuid4(),
        alias_lead_id=uuid.uuid4(),
        rule="email already known",
        source="webform",
        external_id="contact-ana.lima@example.com",
        email="ana.lima@example.com",
    )
    forgotten = forget(merged)
    assert (forgotten.email, forgotten.external_id, forgotten.rule) == (
        None,
        f"contact-{ERASED}",
        "email already known",
    )
