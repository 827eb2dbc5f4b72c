"""The stacks that chaos, soak and the bench start for themselves: ports they can always bind, and
an error that says why when a stack does not come up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.run import port_base as bench_port_base
from chaos.infra import Infra, InfraError, Ports
from chaos.run import options as chaos_options
from chaos.soak.run import options as soak_options

# Linux's default ip_local_port_range: a client's connection takes its local port from here, and a
# port held that way (even in TIME_WAIT) cannot be bound by a broker or a database starting later.
EPHEMERAL_FIRST = 32768
# The highest offset any of these stacks adds to its base (PostgreSQL at +432, per-process ports
# below that), with room to spare.
PORTS_SPAN = 1000


def test_every_stack_started_by_a_make_target_listens_below_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CHAOS_PORT_BASE", "SOAK_PORT_BASE", "COXSWAIN_BENCH_PORT_BASE"):
        monkeypatch.delenv(name, raising=False)
    bases = {
        "chaos": chaos_options([]).port_base,
        "chaos restore": chaos_options(["--scenario", "restore"]).port_base,
        "soak": soak_options([]).port_base,
        "bench": bench_port_base(),
    }
    above = {name: base for name, base in bases.items() if base + PORTS_SPAN > EPHEMERAL_FIRST}
    assert not above, f"default port bases reaching into the ephemeral range: {above}"


async def test_a_stack_script_that_fails_is_quoted_in_the_error(tmp_path: Path) -> None:
    infra = Infra(tmp_path, Ports(24500), tmp_path / "agreement.yaml", "secret")
    env = dict(os.environ)
    await infra._run(["sh", "-c", "echo postgres: ready"], env, "postgres.sh start")
    script = "echo 'kafka: starting'; echo 'kafka: ERROR: port 24592 is used by another process' >&2; exit 1"

    with pytest.raises(InfraError) as failed:
        await infra._run(["sh", "-c", script], env, "kafka.sh start")

    message = str(failed.value)
    assert message.startswith("kafka.sh start failed with exit code 1")
    assert "kafka: ERROR: port 24592 is used by another process" in message
    assert "postgres: ready" not in message  # only what the failing script said
    assert "postgres: ready" in (tmp_path / "logs" / "infra.log").read_text()  # the log keeps it all
