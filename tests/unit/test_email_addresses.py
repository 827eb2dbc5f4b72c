"""Email addresses in the contracts (``Email``, schemas/events.py): accepted, normalised and refused
exactly as pydantic's ``EmailStr`` does, though the plain form skips the full validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import EmailStr, TypeAdapter, ValidationError

from schemas.events import Email, LeadAttributes

CONTRACT: TypeAdapter[str] = TypeAdapter(Email)
PYDANTIC: TypeAdapter[str] = TypeAdapter(EmailStr)


def outcome(adapter: TypeAdapter[str], address: Any) -> str:
    try:
        return "accepted " + adapter.validate_python(address)
    except ValidationError as refused:
        return "refused " + "; ".join(f"{error['type']}: {error['msg']}" for error in refused.errors())


# Near the edges of the plain form: characters a dot-atom may and may not hold, labels with dashes,
# Punycode, upper case, numbers, the special-use names, the length limits.
LOCAL_PARTS = st.one_of(
    st.text(alphabet="abcXYZ019._+-!#$%&'*/=?^`{|}~\"(), <>@\\é\n", max_size=12),
    st.sampled_from(["postmaster", "Postmaster", "INFO", "a" * 64, "a" * 65, ".a", "a.", "a..b", ""]),
)
LABELS = st.one_of(
    st.text(alphabet="abz09-", max_size=8),
    st.sampled_from(["xn--bcher-kva", "ab--cd", "-a", "a-", "A", "Example", "x" * 63, "x" * 64, "é", "com", "COM"]),
    st.sampled_from(["1", "9a", "test", "local", "localhost", "invalid", "onion", "arpa", "[127.0.0.1]"]),
)


@given(local=LOCAL_PARTS, labels=st.lists(LABELS, max_size=5))
@settings(max_examples=4000, deadline=None)
def test_any_address_meets_the_same_outcome_as_with_pydantics_email_type(local: str, labels: list[str]) -> None:
    address = f"{local}@{'.'.join(labels)}"
    assert outcome(CONTRACT, address) == outcome(PYDANTIC, address)


@pytest.mark.parametrize(
    "address",
    [
        "ann@example.com",
        "Ann.Lee+webinar@mail.example.co.uk",
        "a@b.1c",
        "Bench@Example.COM",  # the host name is lower-cased
        "Postmaster@example.com",  # and so is this mailbox
        "a@xn--bcher-kva.example",  # Punycode comes back as Unicode
        "ann@bücher.example",
        "Ann Lee <ann@example.com>",
        " ann@example.com ",
        "a@" + ".".join(["x" * 63] * 3) + "." + "y" * 61,  # 253 characters after the @-sign
        "a@" + ".".join(["x" * 63] * 3) + "." + "y" * 62,  # 254
        "a" * 64 + "@" + ".".join(["x" * 63] * 2) + "." + "y" * 60,  # 254 in all
        "a" * 64 + "@" + ".".join(["x" * 63] * 2) + "." + "y" * 61,  # 255
        "ann@example",
        "ann@example.test",
        "ann@ab--cd.example.com",
        "ann@example.123",
        "ann..lee@example.com",
        "ann@-example.com",
        "ann@example.com\n",
        "ann@[127.0.0.1]",
        12,
        None,
    ],
)
def test_addresses_at_the_edges_meet_the_same_outcome_as_with_pydantics_email_type(address: Any) -> None:
    assert outcome(CONTRACT, address) == outcome(PYDANTIC, address)


def test_a_lead_with_an_address_that_is_no_email_is_refused_with_the_validators_reason() -> None:
    with pytest.raises(ValidationError, match=r"value is not a valid email address: .* should have a period"):
        LeadAttributes.model_validate({"email": "ann@example"})
    assert LeadAttributes.model_validate({"email": "Ann@Example.com"}).email == "Ann@example.com"


def test_the_contract_describes_the_address_as_pydantic_does() -> None:
    assert CONTRACT.json_schema() == PYDANTIC.json_schema() == {"type": "string", "format": "email"}
