"""A consumer process imports only the services it runs: starting is most of a SIGKILLed
consumer's takeover (issue 14 asks for its partitions to be served again within 2 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coxswain_app.wiring import CONSUMERS

# What each consumer's process must not load, besides the other services' own modules.
NOT_NEEDED = {
    "router": ["services.reporting", "services.sla_monitor", "services.scoring", "coxswain.db.models"],
    "scoring": ["services.reporting", "services.sla_monitor", "coxswain.db.models"],
    "sla_monitor": ["services.reporting", "services.router", "services.scoring", "coxswain.db.models"],
}


@pytest.mark.parametrize("name", sorted(NOT_NEEDED))
def test_a_consumers_process_does_not_import_the_services_it_does_not_run(name: str) -> None:
    # A fresh interpreter: this one has imported everything the other tests needed.
    probe = (
        "import sys\n"
        "from coxswain_app import cli, wiring\n"
        f"spec = wiring.CONSUMERS[{name!r}]\n"
        "assert spec.accepts\n"
        f"print(' '.join(m for m in {NOT_NEEDED[name]!r} if m in sys.modules))\n"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.split() == []


def test_every_consumer_is_still_listed_and_its_spec_built_once() -> None:
    assert list(CONSUMERS) == ["scoring", "router", "sla_monitor", "reporting"]
    assert len(CONSUMERS) == 4
    assert all(CONSUMERS[name] is CONSUMERS[name] for name in CONSUMERS)
    assert "reporting" in CONSUMERS and "crm_sync" not in CONSUMERS
    with pytest.raises(KeyError):
        CONSUMERS["crm_sync"]
