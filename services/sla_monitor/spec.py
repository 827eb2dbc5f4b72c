"""The SLA monitor as the composition root runs it. Its handlers and its timer loop share one
:class:`Monitor` (the metrics registry and the instance name that claims timers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from coxswain.runtime.service import ConsumerSpec, Process, Wired
from services.sla_monitor import service
from services.sla_monitor.monitor import Monitor


def wire(process: Process) -> Wired:
    config = process.settings.sla
    monitor = Monitor(process.agreement, config, process.engine, process.clock, CollectorRegistry())
    port = process.settings.observability.metrics_port or config.sla_default_metrics_port
    return Wired(monitor.handler, monitor.batch_handler, (lambda stop: monitor.run(stop, port),))


# Off the lead's path to a rep: a deadline counts from the routing decision's own time, not from
# when the monitor reads it, so a clock armed a quarter second later ends at the same instant.
SPEC = ConsumerSpec(service.ACCEPTS, wire, gather_ms=250)
