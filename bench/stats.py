"""The pure pieces of the benchmark: percentiles, rates, the result line and the table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

CLOCK_TICKS = 100  # sysconf(_SC_CLK_TCK) on Linux

RESULT_KEYS: tuple[str, ...] = (
    "intake_rps",
    "intake_baseline_rps",
    "intake_batch_events_per_s",
    "e2e_leads_per_s",
    "relay_baseline_per_s",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "sla_open_deadlines",
    "sla_fire_lag_p99_ms",
    "sla_fire_rate_per_s",
)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``pct`` percent of values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {pct}")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def sustained_rate(arrivals: Sequence[float], low: float = 0.1, high: float = 0.9) -> float:
    """Items per second between the ``low`` and ``high`` quantiles of arrival times.

    Ramp-up (consumers joining, caches warming) and the tail (the last stragglers) are left out,
    so the figure is the rate the pipeline sustains, not the rate of a run's first and last item.
    """
    if len(arrivals) < 2:
        raise ValueError("a rate needs at least two arrivals")
    ordered = sorted(arrivals)
    first, last = int(low * (len(ordered) - 1)), int(high * (len(ordered) - 1))
    if last <= first:
        first, last = 0, len(ordered) - 1
    span = ordered[last] - ordered[first]
    if span <= 0:
        return math.inf
    return (last - first) / span


def cpu_seconds(stat: str, children: bool = False) -> float:
    """User + system CPU seconds from a ``/proc/<pid>/stat`` line (and of reaped children if asked)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14-17 of proc(5), counted from 1 with pid and comm: utime, stime, cutime, cstime.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else math.nan


def result_line(results: Mapping[str, float | int]) -> str:
    """The machine-readable last line: exactly the documented keys, in their documented order."""
    missing = [key for key in RESULT_KEYS if key not in results]
    extra = sorted(set(results) - set(RESULT_KEYS))
    if missing or extra:
        raise ValueError(f"result keys differ: missing {missing}, unexpected {extra}")
    return orjson.dumps({key: _rounded(results[key]) for key in RESULT_KEYS}).decode()


def _rounded(value: float | int) -> float | int | None:
    if isinstance(value, int):
        return value
    if math.isnan(value) or math.isinf(value):
        return None
    return round(value, 1)


def table(rows: Sequence[tuple[str, Any, str]]) -> str:
    """A plain-text table of (measure, value, note)."""
    cells = [(name, _cell(value), note) for name, value, note in rows]
    width_name = max(len("measure"), *(len(name) for name, _, _ in cells))
    width_value = max(len("value"), *(len(value) for _, value, _ in cells))
    lines = [f"{'measure':<{width_name}}  {'value':>{width_value}}  note", "-" * (width_name + width_value + 30)]
    lines += [f"{name:<{width_name}}  {value:>{width_value}}  {note}".rstrip() for name, value, note in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
