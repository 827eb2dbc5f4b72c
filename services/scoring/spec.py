"""Scoring as the composition root runs it: the batch-aware handler per agreement version, and
the timer loop that re-evaluates leads as their scores decay."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from coxswain.runtime.service import ConsumerSpec, Process, Task, Wired, per_agreement
from services.scoring import service, timers


def _tasks(process: Process) -> tuple[Task, ...]:
    config = process.settings.scoring
    return (lambda stop: timers.run_timer(process.engine, process.agreement, config, process.clock, stop),)


def _wire(process: Process) -> Wired:
    # A newly armed timer wakes the timer loops only if it is due before their longest sleep ends.
    wake_within = timedelta(seconds=process.settings.scoring.scoring_timer_max_sleep_seconds)
    handlers = (
        partial(service.make_handler, wake_within=wake_within),
        partial(service.make_batch_handler, wake_within=wake_within),
    )
    return per_agreement(*handlers, _tasks)(process)


SPEC = ConsumerSpec(service.ACCEPTS, _wire, generic_plans=True, claim_locks=service.CLAIM_LOCKS)
