"""Summarise py-spy's raw (collapsed-stack) output: where a process spent its samples.

    python -m bench.profile_summary .local/bench/run/profiles/e2e-throughput-scoring.txt [--top 25]

Prints the functions with the most samples on the stack (inclusive) and at the top of it (self),
as shares of all samples. Frames are ``function (file:line)``; the line is dropped so that a
function's samples add up wherever in it they fell.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append(([_LINE.sub(")", frame) for frame in frames.split(";")], int(count)))
    return stacks


def summarise(stacks: list[tuple[list[str], int]]) -> tuple[int, Counter[str], Counter[str]]:
    total = sum(count for _, count in stacks)
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return total, inclusive, own


def _short(frame: str) -> str:
    return frame.replace(str(Path.cwd()) + "/", "").replace(".venv/lib/python3.11/site-packages/", "")


def report(path: Path, top: int) -> str:
    total, inclusive, own = summarise(parse(path.read_text(errors="replace").splitlines()))
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "  inclusive:"]
    lines += [f"    {count / total:6.1%}  {_short(frame)}" for frame, count in inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"    {count / total:6.1%}  {_short(frame)}" for frame, count in own.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.files:
        print(report(path, args.top))


if __name__ == "__main__":
    main()
