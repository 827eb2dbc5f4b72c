"""Who may do what through the HTTP APIs: named bearer tokens, each with scopes.

Pure: ``parse_tokens`` reads a token table (JSON) and ``TokenTable.holder`` finds the token a
request carries. The services' guards (``services/admin/api.py``) turn the answer into 401/403.

``COXSWAIN_ADMIN_TOKEN`` stays what it always was, one token that opens everything: it is the
token named ``admin`` with every scope. More tokens, each with only the scopes its holder needs,
come from ``COXSWAIN_TOKENS`` or a mounted file (``COXSWAIN_TOKENS_FILE``), e.g.::

    {"roster-bot": {"token": "…", "scopes": ["roster:write"]},
     "revops":     {"token": "…", "scopes": ["agreements:write", "leads:read"]}}
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

SCOPES: Mapping[str, str] = {
    "agreements:write": "store, activate and list agreement versions (/v1/admin/agreements)",
    "roster:write": "read and change reps, pools, accounts and assignments (the roster API)",
    "leads:read": "read a lead's personal data and its routing explanation (/v1/leads/{lead_id})",
    "reports:read": "reports, scorecards and the dashboard, when they require a token",
    "privacy:erase": "erase or export a person's data",
    "audit:read": "read the audit trail of admin actions (/v1/admin/audit)",
}
ADMIN = "admin"  # the name COXSWAIN_ADMIN_TOKEN goes by, with every scope


def presented_token(authorization: str | None, basic: bool = False) -> str | None:
    """The token an ``Authorization`` header presents: ``Bearer <token>``, or with ``basic`` also
    HTTP Basic with the token as the password (a browser asks for it; the user name is ignored).
    None when there is no header or it is malformed."""
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given:
        return given
    if basic and scheme.lower() == "basic" and given:
        try:
            decoded = base64.b64decode(given, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2]
        return password or None
    return None


class TokenTableError(ValueError):
    """The token table cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes
    scopes: frozenset[str]


@dataclass(frozen=True)
class TokenTable:
    tokens: tuple[Token, ...] = ()

    @classmethod
    def of(cls, admin_token: str | None, more: Iterable[Token] = ()) -> TokenTable:
        """``COXSWAIN_ADMIN_TOKEN`` (if set) as ``admin`` with every scope, then ``more``."""
        admin = () if not admin_token else (Token(ADMIN, admin_token.encode(), frozenset(SCOPES)),)
        tokens = (*admin, *more)
        names = [token.name for token in tokens]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice == ADMIN:
            raise TokenTableError(
                f"the token name {ADMIN!r} is COXSWAIN_ADMIN_TOKEN's; give the other one another name"
            )
        if twice is not None:
            raise TokenTableError(f"the token name {twice!r} is given twice (COXSWAIN_TOKENS and COXSWAIN_TOKENS_FILE)")
        _distinct(tokens)
        return cls(tokens)

    def holder(self, given: str) -> Token | None:
        """The token ``given`` is, compared with every configured one in constant time (no early
        exit, so the time taken does not say how many tokens there are before the match)."""
        candidate = given.encode()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(candidate, token.secret):
                found = token
        return found


def _distinct(tokens: Iterable[Token]) -> None:
    seen: dict[bytes, str] = {}
    for token in tokens:
        if token.secret in seen:
            raise TokenTableError(f"tokens {seen[token.secret]!r} and {token.name!r} are the same secret")
        seen[token.secret] = token.name


def parse_tokens(text: str | bytes, where: str) -> tuple[Token, ...]:
    """The tokens of a JSON table ``{name: {"token": ..., "scopes": [...]}}``; ``where`` names
    the variable or file in every message."""
    try:
        document: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise TokenTableError(f"{where}: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise TokenTableError(f'{where}: expected an object {{"name": {{"token": ..., "scopes": [...]}}}}')
    tokens = []
    for name, entry in document.items():
        if not isinstance(entry, dict) or set(entry) != {"token", "scopes"}:
            raise TokenTableError(f"{where}: {name!r} needs exactly 'token' and 'scopes'")
        secret, scopes = entry["token"], entry["scopes"]
        if not isinstance(secret, str) or not secret.strip():
            raise TokenTableError(f"{where}: {name!r} has an empty token")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise TokenTableError(f'{where}: {name!r} needs a list of scopes, e.g. ["roster:write"]')
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise TokenTableError(
                f"{where}: {name!r} has unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}"
            )
        tokens.append(Token(name, secret.strip().encode(), frozenset(scopes)))
    _distinct(tokens)
    return tuple(tokens)
