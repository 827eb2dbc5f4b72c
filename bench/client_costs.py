"""What a statement and a transaction cost the client process, by the layers they pass through.

    python -m bench.client_costs postgresql+asyncpg://coxswain:coxswain@127.0.0.1:15432/coxswain [--calls 3000]

A lead sent alone is its own transaction and statements in every service on its way (docs/benchmarks-history.md,
7 December), so what each costs a process's CPU, apart from PostgreSQL's own work, bounds what
the pipeline can carry one lead at a time. The same small statement (an ``unnest`` of four uuids, as
the services send arrays) is run four ways, each many times after a warm-up, and the process's CPU
time per call is printed:

- asyncpg's prepared statement, the driver alone;
- SQLAlchemy's ``AsyncConnection.execute(text(...))`` on a connection already checked out, the
  way every service sends its statements;
- the statement with a pooled connection checked out and returned around it (autocommit), the way
  a relay's pass or an inbox look-up runs;
- the statement in a transaction (``engine.begin()``): checkout, BEGIN, the statement, COMMIT,
  return, the way a consumer's batch runs.

The differences between lines are the layers' costs. Wall time per call is printed too, but on a
loaded machine it measures the machine.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import uvloop
from sqlalchemy import text

from coxswain.db.database import create_engine
from coxswain.settings import DatabaseConfig

_SQL = "SELECT count(*) FROM unnest(CAST({} AS uuid[])) AS u(i) WHERE i IS NOT NULL"
WARM_UP = 200


@dataclass(frozen=True)
class Cost:
    way: str
    cpu_us: float
    wall_us: float


async def _timed(way: str, call: Callable[[], Awaitable[object]], calls: int) -> Cost:
    for _ in range(WARM_UP):
        await call()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    return Cost(way, (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6)


async def measure(url: str, calls: int) -> list[Cost]:
    """The four ways, in the order of the module's docstring."""
    # The services' own engine settings (pool, parameters hidden from errors, orjson for JSONB).
    engine = create_engine(DatabaseConfig(database_url=url))
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    ids = [uuid.uuid4() for _ in range(4)]
    statement = text(_SQL.format(":ids"))
    costs: list[Cost] = []
    try:
        async with engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            prepared = await driver.prepare(_SQL.format("$1"))
            costs.append(await _timed("asyncpg prepared statement", lambda: prepared.fetch(ids), calls))

            async def on_open_connection() -> object:
                return (await connection.execute(statement, {"ids": ids})).all()

            costs.append(await _timed("SQLAlchemy execute, connection open", on_open_connection, calls))
            await connection.rollback()

        async def checked_out() -> object:
            async with autocommit.connect() as connection:
                return (await connection.execute(statement, {"ids": ids})).all()

        async def in_transaction() -> object:
            async with engine.begin() as connection:
                return (await connection.execute(statement, {"ids": ids})).all()

        costs.append(await _timed("checked out and returned (autocommit)", checked_out, calls))
        costs.append(await _timed("in a transaction (engine.begin)", in_transaction, calls))
    finally:
        await engine.dispose()
    return costs


def report(costs: list[Cost]) -> str:
    width = max(len(cost.way) for cost in costs)
    lines = [f"{'way':<{width}}  client CPU µs/call  wall µs/call"]
    lines += [f"{cost.way:<{width}}  {cost.cpu_us:>18.0f}  {cost.wall_us:>12.0f}" for cost in costs]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="a SQLAlchemy asyncpg URL of a PostgreSQL to run the statement on")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    # On uvloop, as the services run.
    print(report(uvloop.run(measure(args.url, args.calls))))


if __name__ == "__main__":
    main()
