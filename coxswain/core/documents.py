"""What a parsed document (a JSON request body, an agreement) may not hold to be stored.

PostgreSQL's text and JSONB cannot store the NUL character (``\\u0000``): a document holding one
would fail in the database (a 500 for an API) instead of being refused with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

NUL_REFUSED = "body holds a NUL character (\\u0000), which no field may contain"


def holds_nul(document: Any) -> bool:
    """Whether any string of a parsed JSON document (keys included) holds a NUL."""
    if isinstance(document, str):
        return "\x00" in document
    if isinstance(document, dict):
        return any(holds_nul(key) or holds_nul(value) for key, value in document.items())
    if isinstance(document, list):
        return any(holds_nul(item) for item in document)
    return False


def one_of(names: Sequence[str]) -> tuple[AfterValidator, WithJsonSchema]:
    """Validation and JSON Schema of a string that must be one of ``names``, for name lists derived
    from a model (the lead's fields) rather than written out again as a ``Literal``. A wrong value
    fails exactly as a ``Literal`` would (``literal_error``, same message and context), so every
    place that words validation errors treats both alike."""
    allowed = tuple(names)
    expected = " or ".join((", ".join(repr(name) for name in allowed[:-1]), repr(allowed[-1])))

    def known(value: str) -> str:
        if value not in allowed:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    check: Callable[[str], str] = known
    return AfterValidator(check), WithJsonSchema({"type": "string", "enum": list(allowed)})
