"""Scoring as the composition root runs it: the batch-aware handler per agreement version, and
the timer loop that re-evaluates leads as their scores decay."""

from __future__ import annotations

from coxswain.runtime.service import ConsumerSpec, Process, Task, per_agreement
from services.scoring import service, timers


def _tasks(process: Process) -> tuple[Task, ...]:
    config = process.settings.scoring
    return (lambda stop: timers.run_timer(process.engine, process.agreement, config, process.clock, stop),)


SPEC = ConsumerSpec(service.ACCEPTS, per_agreement(service.make_handler, service.make_batch_handler, _tasks))
