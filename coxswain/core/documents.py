"""What a parsed document (a JSON request body, an agreement) may not hold to be stored.

PostgreSQL's text and JSONB cannot store the NUL character (``\\u0000``): a document holding one
would fail in the database (a 500 for an API) instead of being refused with a reason.
"""

from __future__ import annotations

from typing import Any

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
