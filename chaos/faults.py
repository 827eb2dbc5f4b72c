"""The fault injector: SIGKILL each service, restart the broker and the database, at random moments.

Moments are points of the load (fractions of leads acknowledged), drawn from a seeded RNG so a
run can be repeated. Faults run one at a time; a killed service is restarted after a short
random pause, like a supervisor would.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chaos.infra import SERVICES, Infra, ServiceProcess
from chaos.ledger import REQUIRED_FAULTS, RESTORE_FAULTS

log = logging.getLogger("chaos")


@dataclass(frozen=True)
class Planned:
    at_progress: float
    fault: str


def plan_faults(rng: random.Random, extra_kills: int) -> list[Planned]:
    faults = [*REQUIRED_FAULTS, *(f"kill:{rng.choice(SERVICES)}" for _ in range(extra_kills))]
    rng.shuffle(faults)
    moments = sorted(rng.uniform(0.05, 0.9) for _ in faults)
    return [Planned(moment, fault) for moment, fault in zip(moments, faults, strict=True)]


def plan_restore(rng: random.Random) -> list[Planned]:
    """A base backup early in the load, the database lost and restored from it later, and one
    service killed in between so the restore meets a consumer group in motion too."""
    backup, restore = RESTORE_FAULTS
    return [
        Planned(rng.uniform(0.1, 0.25), backup),
        Planned(rng.uniform(0.3, 0.45), f"kill:{rng.choice(SERVICES)}"),
        Planned(rng.uniform(0.55, 0.75), restore),
    ]


@dataclass
class Injector:
    infra: Infra
    services: dict[str, ServiceProcess]
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    injected: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    async def run(self, plan: list[Planned], progress: Callable[[], float]) -> None:
        for planned in plan:
            while progress() < planned.at_progress:  # noqa: ASYNC110 - progress is a counter, not an event
                await asyncio.sleep(0.05)
            began = time.monotonic()
            await self.inject(planned.fault)
            self.injected.append(planned.fault)
            self.timeline.append(
                f"t+{began - self.started:.1f}s {planned.fault} at {planned.at_progress:.0%} of load "
                f"({time.monotonic() - began:.1f}s)"
            )
            log.info("fault injected: %s", self.timeline[-1])

    async def inject(self, fault: str) -> None:
        kind, target = fault.split(":", 1)
        if kind == "kill":
            service = self.services[target]
            await asyncio.to_thread(service.kill)
            await asyncio.sleep(self.rng.uniform(0.2, 2.0))
            service.start()
        elif fault == "backup:postgres":
            await self.infra.script("pitr.sh", "base")
        elif fault == "restore:postgres":
            # The disaster: the server and its data directory gone. What comes back is the last
            # base backup plus every WAL record streamed since (nothing acknowledged is missing).
            await self.infra.script("pitr.sh", "lose")
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            await self.infra.script("pitr.sh", "restore")
        elif target == "kafka":
            await self.infra.kill_kafka()
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            await self.infra.start_kafka()
        elif target == "postgres":
            await self.infra.stop_postgres()
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            await self.infra.start_postgres()
        else:
            raise ValueError(f"unknown fault {fault!r}")
