"""The bearer-token guard of the admin and roster APIs (scopes in ``coxswain/access.py``): a
missing or malformed header is 401; a wrong token (compared in constant time) or one without the
scope is 403 naming the missing scope, and every refusal goes into the audit trail; with no token
configured the endpoints are disabled (403) rather than open."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from fastapi import HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.access import SCOPES, TokenTable, presented_token
from coxswain.runtime import audit

log = logging.getLogger(__name__)


async def require_scope(
    request: Request, scope: str, tokens: TokenTable, engine: AsyncEngine, clock: Callable[[], datetime]
) -> str:
    """The name of the token that holds ``scope``; otherwise the request is refused (HTTPException)
    and a wrong token or one without the scope goes into the audit trail."""
    assert scope in SCOPES, scope

    async def refused(token: str, reason: str) -> None:
        await audit.record_alone(
            engine,
            token=token,
            action="request",
            target=f"{request.method} {request.url.path}",
            outcome="refused",
            at=clock(),
            detail={"scope": scope, "reason": reason},
        )

    if not tokens.tokens:
        raise HTTPException(403, "the admin API is disabled: set COXSWAIN_ADMIN_TOKEN to enable it")
    header = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": 'Bearer realm="coxswain-admin"'}
    if not header:
        raise HTTPException(401, "missing Authorization header; send 'Authorization: Bearer <token>'", challenge)
    given = presented_token(header)
    if given is None:
        raise HTTPException(401, "Authorization must be 'Bearer <token>'", challenge)
    holder = tokens.holder(given)
    if holder is None:
        log.info("admin request refused: reason=wrong_token path=%s", request.url.path)
        await refused(audit.UNKNOWN_TOKEN, "wrong_token")
        raise HTTPException(403, "the bearer token is not valid for the admin API")
    if scope not in holder.scopes:
        log.info("admin request refused: reason=scope token=%s scope=%s path=%s", holder.name, scope, request.url.path)
        await refused(holder.name, "missing_scope")
        raise HTTPException(403, f"token {holder.name!r} lacks scope {scope!r}")
    request.state.token_name = holder.name  # who acted, for the logs of the action
    return holder.name
