"""A file that is not what a command reads (not UTF-8, binary, far too large) is refused with a
message that says which file and where in it, and the command's documented exit code for bad
input: 1 for ``agreement validate`` and ``agreement diff`` (docs/agreement.md), 2 for
``simulate`` (docs/simulator.md; 1 there means a guard was crossed). Never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coxswain.core.agreement import MAX_AGREEMENT_BYTES
from coxswain.simulation.generate import StreamSpec, write_stream
from coxswain.simulation.inputs import MAX_LINE_BYTES, BadInput, read_stream, split_stream
from coxswain_app.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agreement.yaml"
runner = CliRunner()


def bad_agreement(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """An agreement file of ``kind`` and what the message about it must say after ``path: ``."""
    text = EXAMPLE.read_bytes()
    assert text.endswith(b"\n")
    path = tmp_path / f"{kind}.yaml"
    if kind == "latin-1":
        # The example with a comment saved in Latin-1, as an editor on another machine might.
        path.write_bytes(text + b"# caf\xe9\n")
        line = text.count(b"\n") + 1
        return (
            path,
            f"line {line}, column 6 (byte {len(text) + 5}): byte 0xe9 is not UTF-8 text; save the agreement as UTF-8",
        )
    if kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
        return path, "line 3, column 1 (byte 8): a NUL byte: this is a binary file, not agreement YAML"
    assert kind == "oversized"
    # Valid YAML all the same: the limit is on size, not a parse that happens to fail.
    padding = b"# padding\n" * (MAX_AGREEMENT_BYTES // 10 + 1)
    path.write_bytes(text + padding)
    return path, f"(document): larger than {MAX_AGREEMENT_BYTES:,} bytes, the most an agreement may hold"


KINDS = ["latin-1", "binary", "oversized"]


def coxswain(*args: str, one_core: bool = False) -> subprocess.CompletedProcess[str]:
    """The real command line, so its stderr is what a person sees (a traceback would be there)."""
    return subprocess.run(
        [sys.executable, "-m", "coxswain_app", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=(lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None,
    )


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "leads.jsonl"
    write_stream(StreamSpec(leads=150, start=date(2026, 1, 5), days=2, seed=7), path)
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_validate_locates_a_file_that_is_no_agreement_text(tmp_path: Path, kind: str) -> None:
    path, expected = bad_agreement(tmp_path, kind)

    result = runner.invoke(app, ["agreement", "validate", str(path)])

    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr == f"{path}: {expected}\n"
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", KINDS)
def test_diff_locates_a_file_that_is_no_agreement_text_on_either_side(tmp_path: Path, kind: str) -> None:
    path, expected = bad_agreement(tmp_path, kind)

    for old, new in ((EXAMPLE, path), (path, EXAMPLE)):
        result = runner.invoke(app, ["agreement", "diff", str(old), str(new)])

        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.stderr == f"{path}: {expected}\n"
        assert result.stdout == ""


@pytest.mark.parametrize("kind", KINDS)
def test_simulate_refuses_such_a_candidate_as_bad_input(tmp_path: Path, kind: str, stream: Path) -> None:
    path, expected = bad_agreement(tmp_path, kind)

    done = coxswain("simulate", "--candidate", str(path), "--baseline", str(EXAMPLE), "--events", str(stream))

    assert done.returncode == 2, done.stderr  # 2: bad input; 1 would claim a guard was crossed
    assert done.stderr == f"candidate {path} does not load:\n  {expected}\n"
    assert "Traceback" not in done.stdout + done.stderr


def test_simulate_locates_a_policy_that_is_not_utf8(tmp_path: Path, stream: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(b"min_fairness: 0.8\n# \xabguards\xbb\n")

    done = coxswain(
        "simulate", "--candidate", str(EXAMPLE), "--baseline", str(EXAMPLE), "--events", str(stream),
        "--policy", str(policy),
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert done.stderr == f"policy {policy}: line 2, column 3 (byte 20): byte 0xab is not UTF-8 text\n"
    assert "Traceback" not in done.stdout + done.stderr


def bad_stream(tmp_path: Path, stream: Path, kind: str, where: str) -> tuple[Path, str]:
    """The good stream with one bad line first or last (last is past the share this process reads
    on two cores, so a forked reader finds it), and what the message must say."""
    lines = stream.read_bytes()
    bad = {
        "latin-1": b'{"at": "caf\xe9"}\n',
        "binary": b"\x00\x01\x02\x03 PK\x03\x04\n",
        "oversized": b'{"at": "' + b"x" * MAX_LINE_BYTES + b'"}\n',
    }[kind]
    path = tmp_path / f"{kind}-{where}.jsonl"
    path.write_bytes(bad + lines if where == "first" else lines + bad)
    number, offset = (1, 0) if where == "first" else (lines.count(b"\n") + 1, len(lines))
    expected = {
        "latin-1": f"byte 0xe9 at column 12 (byte {offset + 11} of the file) is not UTF-8 text",
        "binary": f"a NUL byte at column 1 (byte {offset} of the file): this is a binary file, not a JSON Lines stream",
        "oversized": f"the line starting at byte {offset} is longer than {MAX_LINE_BYTES:,} bytes",
    }[kind]
    return path, f"{path}:{number}: {expected}"


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("kind", KINDS)
def test_simulate_locates_a_stream_line_that_is_no_json_text(
    tmp_path: Path, stream: Path, kind: str, where: str
) -> None:
    path, expected = bad_stream(tmp_path, stream, kind, where)

    done = coxswain("simulate", "--candidate", str(EXAMPLE), "--baseline", str(EXAMPLE), "--events", str(path))

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected), done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_simulate_on_one_core_locates_the_same_line(tmp_path: Path, stream: Path, kind: str) -> None:
    path, expected = bad_stream(tmp_path, stream, kind, "last")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(EXAMPLE.read_text().replace("enter: 60", "enter: 65", 1))

    done = coxswain(
        "simulate", "--candidate", str(candidate), "--baseline", str(EXAMPLE), "--events", str(path), one_core=True
    )

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected), done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_stream_line_is_never_read_whole_past_the_limit(tmp_path: Path) -> None:
    """A file without a newline (a disk image, /dev/zero) costs one line's worth of memory."""
    path = tmp_path / "no-newline.jsonl"
    path.write_bytes(b"7" * (MAX_LINE_BYTES * 16))

    tracemalloc.start()
    try:
        with pytest.raises(BadInput, match=r"no-newline.jsonl:1: the line starting at byte 0 is longer"):
            read_stream(path)
        head, tail = split_stream(path, 0.03)  # where two cores cut it: the end, a MiB at a time
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 * MAX_LINE_BYTES
    assert head.end == tail.start == path.stat().st_size
