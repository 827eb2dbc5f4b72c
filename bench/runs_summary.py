"""Medians over several bench runs, as the Markdown tables of docs/benchmarks-history.md.

One run on a shared machine says little; the docs quote the median of several. Copy each run's
``.local/bench/run/notes.json`` aside (it is replaced by the next run), then:

    python -m bench.runs_summary run1.json run2.json run3.json
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.stats import one_instance_after


def _median(values: Sequence[float | None]) -> float:
    found = [value for value in values if value is not None]
    return statistics.median(found) if found else float("nan")


def _cell(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"  # NaN is the only value unequal to itself


def curve_table(runs: Sequence[dict[str, Any]]) -> str:
    rates = list(runs[0]["notes"].get("curve", {}))
    lines = [
        "| offered leads/s | p50 ms | p99 ms | max ms | bare chain p50 ms | bare chain p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for rate in rates:
        e2e = [run["notes"].get("curve", {}).get(rate, {}) for run in runs]
        chain = [run["notes"].get("relay_curve", {}).get(rate, {}) for run in runs]
        cells = [_median([point.get(key) for point in e2e]) for key in ("p50_ms", "p99_ms", "max_ms")]
        cells += [_median([point.get(key) for point in chain]) for key in ("p50_ms", "p99_ms")]
        lines.append(f"| {float(rate):g} | " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def hop_table(runs: Sequence[dict[str, Any]], rate: str) -> str:
    breakdowns = [run["notes"]["curve"][rate]["hops"] for run in runs if "hops" in run["notes"]["curve"].get(rate, {})]
    if not breakdowns:
        return f"(no --hops breakdown at {rate}/s)"
    lines = ["| hop | p50 ms | p99 ms | mean ms |", "|---|---|---|---|"]
    for hop in breakdowns[0]["hops"]:
        cells = [_median([b["hops"][hop][key] for b in breakdowns]) for key in ("p50_ms", "p99_ms", "mean_ms")]
        lines.append(f"| {hop} | " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines.append(f"| 202 -> routed seen (mean) | | | {_cell(_median([b['e2e_mean_ms'] for b in breakdowns]))} |")
    return "\n".join(lines)


def scale_table(runs: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| run | leads/s, 1 instance before | leads/s, 2 instances | leads/s, 1 instance after | "
        "relayed by instance | decisions by instance |",
        "|---|---|---|---|---|---|",
    ]
    for index, run in enumerate(runs, 1):
        scale = run["results"].get("scale_out")
        if scale:
            after = one_instance_after(scale)
            lines.append(
                f"| {index} | {_cell(scale['leads_per_s_one_instance'])} | {_cell(scale['leads_per_s'])} | "
                f"{_cell(math.nan if after is None else after)} | "
                f"{scale['relay_published_by_instance']} | {scale['decisions_by_instance']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runs_summary")
    parser.add_argument("notes", nargs="+", help="notes.json of each run")
    args = parser.parse_args(argv)
    runs = [orjson.loads(Path(path).read_bytes()) for path in args.notes]
    print(f"Latency curve, median of {len(runs)} runs\n\n{curve_table(runs)}\n")
    for rate in runs[0]["notes"].get("curve", {}):
        print(f"Hop by hop at {float(rate):g} leads/s, median of the runs' figures\n\n{hop_table(runs, rate)}\n")
    print(f"Scale out\n\n{scale_table(runs)}")


if __name__ == "__main__":
    main()
