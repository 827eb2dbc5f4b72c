"""What the README tells a new user to type must match what the project has."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.readme import section_blocks

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def commands(block: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_two_commands_are_two() -> None:
    [block] = section_blocks(README, "The two commands")

    assert commands(block) == ["make run", "make test"]


def test_run_it_by_hand_is_shell_a_reader_can_copy() -> None:
    blocks = section_blocks(README, "Run it by hand")

    script = "\n".join(blocks)
    assert len(blocks) >= 5, blocks
    for needed in ("deploy/local/stack.sh up", "coxswain db upgrade", "deploy/local/stack.sh down"):
        assert needed in script, needed
    # Ports and the state directory come from variables with defaults, so a test can move them.
    for variable in ("COXSWAIN_STATE_DIR", "KAFKA_PORT", "PG_PORT", "COXSWAIN_INTAKE_PORT"):
        assert f"${{{variable}:-" in script, variable


def test_blocks_end_at_the_next_heading_of_the_same_level_and_fences_hide_headings() -> None:
    markdown = "\n".join(
        [
            "## A",
            "```sh",
            "# a comment, not a heading",
            "echo a",
            "```",
            "```json",
            "{}",
            "```",
            "### A.1",
            "~~~sh",
            "echo a1",
            "~~~",
            "## B",
            "```sh",
            "echo b",
            "```",
        ]
    )

    assert section_blocks(markdown, "A") == ["# a comment, not a heading\necho a\n", "echo a1\n"]
    assert section_blocks(markdown, "B") == ["echo b\n"]
    with pytest.raises(LookupError):
        section_blocks(markdown, "C")
