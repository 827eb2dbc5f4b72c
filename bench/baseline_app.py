"""The intake baseline: a bare FastAPI endpoint that parses the same body and answers 202.

Served exactly as the intake is (one uvicorn process, uvloop, httptools, no access log), so the
difference between the two is what the intake does per request: verify the signature, validate,
and commit the events, the inbox row and the outbox rows.
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


def create_app() -> FastAPI:
    app = FastAPI(title="bench baseline")

    @app.post("/v1/webhooks/{source}/events", status_code=202)
    async def events(source: str, request: Request) -> Response:
        document = orjson.loads(await request.body())
        count = len(document["events"]) if isinstance(document, dict) and "events" in document else 1
        return Response(orjson.dumps({"source": source, "events": count}), 202, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_app")
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(),
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    )
    server.run()


if __name__ == "__main__":
    main()
