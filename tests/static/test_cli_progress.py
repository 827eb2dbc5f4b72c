"""Progress of long CLI operations goes to stderr and only to a terminal: what a command prints on
stdout (a result line, a report, a JSON line) is the same with or without one."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from coxswain.progress import progress

ROOT = Path(__file__).resolve().parents[2]
ANSI = "\x1b["


def coxswain(*args: str, stderr_tty: bool = False) -> tuple[int, str, str]:
    """Run the CLI with stdout on a pipe and stderr on a pipe or a pseudo-terminal."""
    env = {**os.environ, "COLUMNS": "100"}
    if not stderr_tty:
        done = subprocess.run(
            [sys.executable, "-m", "coxswain_app", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "coxswain_app", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=follower
    )
    os.close(follower)
    terminal = bytearray()
    while True:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(timeout=60), stdout, terminal.decode(errors="replace")


def test_a_bar_is_drawn_only_on_a_terminal() -> None:
    pipe = io.StringIO()
    with progress("copying", total=3, stream=pipe) as advance:
        for _ in range(3):
            advance(1)
    assert pipe.getvalue() == ""

    terminal = io.StringIO()
    with progress("copying", total=3, stream=terminal, force=True) as advance:
        for _ in range(3):
            advance(1)
    drawn = terminal.getvalue()
    assert "copying" in drawn and "3/3" in drawn


def test_generate_prints_the_same_result_line_with_and_without_a_terminal(tmp_path: Path) -> None:
    piped = tmp_path / "piped.jsonl"
    code, stdout, stderr = coxswain("generate", "--out", str(piped), "--leads", "300", "--days", "3")
    assert code == 0, stderr
    lines = piped.read_bytes().splitlines()
    assert stdout == f"wrote {len(lines)} lines for 300 leads to {piped}\n"
    assert stderr == "", "no progress without a terminal"

    on_terminal = tmp_path / "terminal.jsonl"
    code, stdout, terminal = coxswain(
        "generate", "--out", str(on_terminal), "--leads", "300", "--days", "3", stderr_tty=True
    )
    assert code == 0, terminal
    assert stdout == f"wrote {len(lines)} lines for 300 leads to {on_terminal}\n", "stdout is the result only"
    assert "generating" in terminal and "300/300 leads" in terminal, "the terminal counts the leads made"
    assert re.search(r"[\d,]+ leads/s", terminal), "and their rate"
    assert on_terminal.read_bytes() == piped.read_bytes(), "the same stream either way"


def test_simulate_report_is_unchanged_by_a_terminal(tmp_path: Path) -> None:
    stream = tmp_path / "leads.jsonl"
    assert coxswain("generate", "--out", str(stream), "--leads", "200", "--days", "2")[0] == 0
    agreement = str(ROOT / "examples" / "agreement.yaml")
    args = ("simulate", "--candidate", agreement, "--baseline", agreement, "--events", str(stream))

    code, piped, stderr = coxswain(*args)
    assert code == 0, stderr
    assert ANSI not in piped and stderr == ""
    code, on_terminal, terminal = coxswain(*args, stderr_tty=True)
    assert code == 0, terminal
    inputs = re.search(r"leads, (\d+) inputs", on_terminal)
    assert inputs is not None
    # The baseline's replay is counted in this process, up to every input, with a rate.
    assert f"{int(inputs[1]):,}/{int(inputs[1]):,} inputs" in terminal
    assert re.search(r"[\d,]+ inputs/s", terminal)
    # The throughput line carries timings; everything else is the same report.
    assert [line for line in on_terminal.splitlines() if not line.startswith("throughput:")] == [
        line for line in piped.splitlines() if not line.startswith("throughput:")
    ]
    assert any(line.startswith("throughput:") for line in piped.splitlines())


def test_a_machine_readable_last_line_stays_last_and_whole() -> None:
    """The contract bench and chaos keep: whatever a progress block wrote, stdout ends in one JSON line."""
    code = (
        "import sys, orjson\n"
        "from coxswain.progress import progress\n"
        "with progress('phases', total=2, force=True) as advance:\n"
        "    print('table', flush=True)\n"
        "    advance(1); advance(1)\n"
        "sys.stdout.write(orjson.dumps({'ok': True}).decode() + '\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["table", '{"ok":true}']
    assert orjson.loads(done.stdout.splitlines()[-1]) == {"ok": True}
    assert "phases" in done.stderr and "2/2" in done.stderr


@pytest.mark.parametrize(("touch", "late"), [("0.9", "0.5"), ("-0.1", "0"), ("1.5", "0")])
def test_demo_traffic_refuses_shares_that_do_not_add_up(touch: str, late: str) -> None:
    code, stdout, stderr = coxswain(
        "demo", "traffic", "--secret", "x", "--touch-share", touch, "--late-share", late, "--count", "1"
    )
    assert code == 2 and stdout == ""
    assert "touch shares" in stderr
