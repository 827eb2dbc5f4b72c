"""The README's "Run it by hand" section, run as a new user would: its shell blocks, in order, in one
bash, on a fresh state directory. The lead it sends must be routed, and its stop block must leave
nothing running.

The commands are read from README.md, never copied here: a broken command fails this test. Ports
and the state directory are moved through the variables the README reads with defaults
(``${KAFKA_PORT:-19092}`` ...), clear of the session's stack (tests/support/infra.py: base + 92,
93, 432) and of a developer's ``make run``. Whatever the script leaves behind is stopped by PID:
every process of its session, then Kafka and PostgreSQL with ``deploy/local/stack.sh down``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coxswain.core.agreement import load_agreement
from tests.support.readme import section_blocks

ROOT = Path(__file__).resolve().parents[2]
PORT_BASE = int(os.environ.get("COXSWAIN_TEST_PORT_BASE", "29000"))
PORTS = {
    "KAFKA_PORT": PORT_BASE + 192,
    "KAFKA_CONTROLLER_PORT": PORT_BASE + 193,
    "PG_PORT": PORT_BASE + 532,
    "COXSWAIN_INTAKE_PORT": PORT_BASE + 180,
    "COXSWAIN_ROSTER_API_PORT": PORT_BASE + 181,
}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ROUTED = re.compile(rf"^lead ({UUID}) routed to (\S+) \(pool (\S+)\): (.+)$", re.MULTILINE)
ACCEPTED = re.compile(rf'"lead_id"\s*:\s*"({UUID})"')
TIMEOUT = 420


def readme_script() -> str:
    blocks = section_blocks((ROOT / "README.md").read_text(), "Run it by hand")
    assert blocks, "README.md: no ```sh blocks under 'Run it by hand'"
    # As a careful reader would: stop at the first command that fails.
    return "set -euo pipefail\n" + "\n".join(blocks)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def session_members(session: int) -> list[int]:
    """PIDs of the live processes in ``session`` (the script's bash leads it; its children inherit it)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "pid (comm)": state, ppid, pgrp, session; zombies are already gone.
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(entry.name))
    return members


def stop_session(session: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 20
        while session_members(session) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A fresh state directory; PostgreSQL runs as the postgres user when we are root, so it must
    be able to enter it (mkdtemp makes it 0700)."""
    path = Path(tempfile.mkdtemp(prefix="coxswain-by-hand-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_readme_by_hand_commands_route_a_lead_and_stop_everything(state_dir: Path) -> None:
    script = readme_script()
    agreement_file = state_dir / "my-agreement.yaml"
    env = {key: value for key, value in os.environ.items() if not key.startswith("COXSWAIN_")}
    env |= {name: str(port) for name, port in PORTS.items()}
    env |= {
        "COXSWAIN_STATE_DIR": str(state_dir),
        "COXSWAIN_AGREEMENT_FILE": str(agreement_file),
        # The SLA monitor's default /metrics port (9102) may be taken by another stack on this machine.
        "COXSWAIN_SLA_DEFAULT_METRICS_PORT": "0",
    }
    for name, port in PORTS.items():
        assert not port_open(port), f"{name} {port} is already in use: set COXSWAIN_TEST_PORT_BASE"

    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    session = process.pid
    left_running: list[int] = []
    left_open: list[str] = []
    try:
        try:
            output, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_session(session)
            output, _ = process.communicate()
            pytest.fail(f"the README's commands did not finish within {TIMEOUT}s:\n{output[-6000:]}")
        # Before our own clean-up: what the README's stop block left behind.
        left_running = session_members(session)
        left_open = [f"{name} {port}" for name, port in PORTS.items() if port_open(port)]
    finally:
        stop_session(session)
        subprocess.run([str(ROOT / "deploy" / "local" / "stack.sh"), "down"], env=env, cwd=ROOT, check=False)

    def logs() -> str:
        return "".join(
            f"\n--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(state_dir.glob("by-hand/*.log"))
        )

    assert process.returncode == 0, f"a README command failed (exit {process.returncode}):\n{output[-6000:]}{logs()}"

    # What the reader sees: the webhook accepted with a lead id, then that lead with its rep.
    accepted = ACCEPTED.search(output)
    routed = ROUTED.search(output)
    assert accepted is not None, output[-3000:]
    assert routed is not None, output[-3000:] + logs()
    lead_id, rep_id, pool_id, reason = routed.groups()
    assert lead_id == accepted.group(1)
    agreement = load_agreement(agreement_file)  # the reader's own copy, as the services read it
    assert rep_id in {rep.id for rep in agreement.roster}
    assert rep_id in {member.rep for member in agreement.pool(pool_id).members}
    assert reason.strip()

    # The README's stop block stops what the README started.
    assert left_running == [], f"still running after the README's stop block: {left_running}"
    assert left_open == [], f"still listening after the README's stop block: {left_open}"
    # And nothing of ours outlives the test, whatever the README did.
    assert session_members(session) == []
    assert [port for port in PORTS.values() if port_open(port)] == []
