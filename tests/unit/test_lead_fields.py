"""A lead field is declared once, in the event contract: the fields a fit rule may test and the
fields a sender may map are read from it, and anything else is refused the way a wrong literal is."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from coxswain.core.agreement import AttributeRule
from schemas.events import LeadAttributes
from services.intake.adapters.mapping import SenderMapping

FIT_TESTABLE = sorted({*LeadAttributes.model_fields, "email_domain", "persona"} - {"email"})


def fit_rule(field: str) -> AttributeRule:
    return AttributeRule.model_validate({"id": "r", "field": field, "match": {"equals": "x"}, "points": 1})


def mapping(field: str) -> SenderMapping:
    return SenderMapping.model_validate({"contact": {field: {"path": "properties.x"}}})


@pytest.mark.parametrize("field", FIT_TESTABLE)
def test_every_lead_field_but_the_email_and_the_derived_ones_may_be_tested_by_a_fit_rule(field: str) -> None:
    assert fit_rule(field).field == field


@pytest.mark.parametrize("field", list(LeadAttributes.model_fields))
def test_every_lead_field_may_be_mapped_by_a_sender(field: str) -> None:
    assert list(mapping(field).contact) == [field]


@pytest.mark.parametrize("build", [fit_rule, mapping])
def test_a_field_the_lead_does_not_have_is_refused_as_a_wrong_literal_naming_the_allowed_ones(build: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        build("shoe_size")
    (error,) = refused.value.errors()
    assert error["type"] == "literal_error"
    assert error["input"] == "shoe_size"
    assert "'company_size'" in error["ctx"]["expected"]
    assert error["msg"] == f"Input should be {error['ctx']['expected']}"


def test_the_json_schemas_list_exactly_the_fields_of_the_lead() -> None:
    fit = AttributeRule.model_json_schema()["properties"]["field"]
    contact = SenderMapping.model_json_schema()["properties"]["contact"]
    assert fit["enum"] == FIT_TESTABLE
    assert contact["propertyNames"]["enum"] == list(LeadAttributes.model_fields)
