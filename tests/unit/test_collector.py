"""Every service process runs with the collector set for a long-lived service (see
``coxswain/runtime/collector.py``): its youngest generation collected every 10,000 objects, not
CPython's 700, which at load meant full collections of 50 to 200 ms that freed nothing."""

from __future__ import annotations

import subprocess
import sys

import orjson

from coxswain.runtime.collector import YOUNG_GENERATION_THRESHOLD

# A fresh interpreter: this one may have run a service's command already. Each command is asked
# for its help, which runs the `run` group's callback as a real start does, then stops.
PROBE = """
import gc, sys, orjson
from typer.testing import CliRunner
from coxswain_app.cli import app, run_app
seen = {}
commands = [c.name for c in run_app.registered_commands] + ["db upgrade", "agreement validate"]
for command in commands:
    gc.set_threshold(700, 10, 10)
    result = CliRunner().invoke(app, [*command.split(), "--help"] if " " in command else ["run", command, "--help"])
    assert result.exit_code == 0, (command, result.output)
    seen[command] = gc.get_threshold()
sys.stdout.write(orjson.dumps(seen).decode())
"""


def test_every_service_process_collects_its_youngest_generation_less_often_and_nothing_else_changes() -> None:
    found = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    thresholds = {command: tuple(values) for command, values in orjson.loads(found.stdout).items()}

    services = {command for command in thresholds if " " not in command}
    assert {"intake", "scoring", "router", "sla-monitor", "reporting", "crm-sync", "roster-api"} <= services
    for command in services:
        assert thresholds[command] == (YOUNG_GENERATION_THRESHOLD, 10, 10), command
    # One-off commands are not long-lived: CPython's own settings.
    assert thresholds["db upgrade"] == (700, 10, 10)
    assert thresholds["agreement validate"] == (700, 10, 10)
