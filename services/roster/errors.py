"""Bad input as one sentence: a 422 whose ``detail`` names each problem with its path, as the
roster API has always answered (not FastAPI's list of error objects)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, get_args

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from coxswain.core.documents import NUL_REFUSED, holds_nul

MAX_PROBLEMS = 20


def _body_model(route: APIRoute) -> str:
    for param in route.dependant.body_params:
        annotation = param.field_info.annotation
        for candidate in (annotation, *get_args(annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                return candidate.__name__
    return "the operation's body"


def _problem(error: dict[str, Any]) -> str:
    where, *path = error["loc"] or ("body",)
    named = ".".join(str(part) for part in path) or "(body)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{named}: {message}" if where == "body" else f"{where} {named}: {message}"


def describe(errors: Sequence[Any], body: Any, model: str) -> str:
    """The sentence for a request FastAPI could not validate."""
    for error in errors:
        if error["type"] == "json_invalid":
            return f"body is not valid JSON: {error['ctx']['error']} (at character {error['loc'][-1]})"
    if holds_nul(body):
        return NUL_REFUSED
    body_errors = [error for error in errors if error["loc"] and error["loc"][0] == "body"]
    if any(tuple(error["loc"]) == ("body",) and error["type"] == "missing" for error in body_errors):
        return f"a JSON body is required ({model})"
    if isinstance(body, bytes):
        return f"the body must be JSON ({model}) sent as Content-Type: application/json"
    problems = "; ".join(_problem(error) for error in errors[:MAX_PROBLEMS])
    return f"body does not match {model}: {problems}" if body_errors else problems


class PreciseErrors(APIRoute):
    """A route that answers a request FastAPI could not validate with ``describe``'s sentence.
    As a route class it goes wherever the router is included, whatever the app's handlers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        model = _body_model(self)

        async def precise(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as exc:
                return JSONResponse({"detail": describe(exc.errors(), exc.body, model)}, status_code=422)

        return precise
