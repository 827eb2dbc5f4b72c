"""The router as the composition root runs it: the batch-aware handler per agreement version,
and the loop that routes parked leads as reps come back."""

from __future__ import annotations

from coxswain.runtime.service import ConsumerSpec, Process, Task, per_agreement
from services.router import service


def _tasks(process: Process) -> tuple[Task, ...]:
    config = process.settings.router
    return (lambda stop: service.run_retry(process.engine, process.agreement, config, process.clock, stop),)


SPEC = ConsumerSpec(
    service.ACCEPTS, per_agreement(service.make_handler, service.make_batch_handler, _tasks), generic_plans=True
)
