"""The pure pieces of the benchmark: percentiles, rates, the result line and the table."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
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
    "latency_curve",
    "scale_out",
    "takeover",
    "half_throughput",
)
CURVE_POINT_KEYS = ("offered_per_s", "p50_ms", "p99_ms", "max_ms", "baseline_p50_ms", "baseline_p99_ms")
TAKEOVER_KEYS = ("kill_to_partitions_s", "p99_ms", "max_ms")
# The latency at half of what the pipeline sustained (``e2e_leads_per_s``, 50 leads per webhook),
# against the p99 at 5 leads/s of the same run: issue 14 asks for at most 3x. One point per shape,
# its leads sent ``leads_per_webhook`` to a webhook.
HALF_THROUGHPUT_KEYS = (
    "leads_per_webhook",
    "sustained_per_s",
    "offered_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "p99_over_p99_at_5",
)
SCALE_OUT_KEYS = (
    "instances",
    "leads_per_s",
    "leads_per_s_one_instance",
    "leads_per_s_one_instance_after",
    "relay_published_by_instance",
    "decisions_by_instance",
)
# A lead's stamps in the order it passes them; each hop is the time from one to the next, so the
# hops from ``accepted_202`` on add up to the end-to-end latency. The two commit stamps are there
# when the cluster keeps commit times (``--hops`` starts it so); without them each merges with the
# hop after it, and ``hop_table`` names both in the merged hop's label.
STAMPS = (
    ("intake_received", "intake: request received -> its statement committed (handler, group commit)"),
    ("intake_committed", "intake: committed -> 202 seen by the client (commit flush, answer)"),
    ("accepted_202", "intake relay: 202 -> leads.received record created (outbox pickup)"),
    ("received_record", "scoring fetch: record created -> scoring batch began (Kafka, fetch timers)"),
    ("scoring_began", "scoring: batch began -> its transaction committed (statements, the core)"),
    ("scoring_committed", "scoring relay: committed -> leads.qualified record created (flush, notify, publish)"),
    (
        "qualified_record",
        "router fetch: record created -> router batch began (Kafka, fetch timers; 0 when routed in scoring)",
    ),
    (
        "router_began",
        "router: batch began -> leads.routed record created (transaction, commit, relay; ~0 when routed in scoring)",
    ),
    ("routed_record", "watcher: record created -> seen by a consumer (Kafka, fetch)"),
    ("routed_seen", ""),
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


def curve_point(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of one offered load's latencies (NaN when nothing arrived)."""
    if not latencies_ms:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms),
    }


def hop_breakdown(stamps: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Per hop (time between consecutive ``STAMPS``, in ms): p50, p99 and mean over the leads.

    Means add up (to the mean end-to-end time); percentiles of hops do not, but show the tails.
    """
    names = [name for name, _ in STAMPS if all(name in lead for lead in stamps)]
    hops: dict[str, Any] = {}
    for start, end in itertools.pairwise(names):
        values = [(lead[end] - lead[start]) * 1000 for lead in stamps]
        hops[f"{start}->{end}"] = {
            "p50_ms": percentile(values, 50) if values else math.nan,
            "p99_ms": percentile(values, 99) if values else math.nan,
            "mean_ms": sum(values) / len(values) if values else math.nan,
        }
    total = [(lead["routed_seen"] - lead["accepted_202"]) * 1000 for lead in stamps]
    return {"leads": len(stamps), "hops": hops, "e2e_mean_ms": sum(total) / len(total) if total else math.nan}


def hop_table(breakdown: Mapping[str, Any]) -> str:
    names = [name for name, _ in STAMPS]
    labels = dict(STAMPS)
    rows: list[tuple[str, Any, str]] = []
    for hop_name, hop in breakdown["hops"].items():
        # A hop whose end stamp was missing spans the ones it merged: say all of them.
        start, end = hop_name.split("->")
        label = " + ".join(labels[name] for name in names[names.index(start) : names.index(end)])
        rows.append((start, hop["p50_ms"], f"p99 {hop['p99_ms']:.1f}, mean {hop['mean_ms']:.1f}: {label}"))
    rows.append(("202 -> routed seen (mean)", breakdown["e2e_mean_ms"], f"{breakdown['leads']} leads"))
    return table(rows)


def prometheus_value(page: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``, from a Prometheus text page."""
    total = 0.0
    for line in page.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            total += float(value)
    return total


def cpu_seconds(stat: str, children: bool = False) -> float:
    """User + system CPU seconds from a ``/proc/<pid>/stat`` line (and of reaped children if asked)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14-17 of proc(5), counted from 1 with pid and comm: utime, stime, cutime, cstime.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


# The JVM's just-in-time compiler threads, by the name Linux gives them (``comm``, 15 characters).
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")


def jit_seconds(threads: Sequence[tuple[str, str]]) -> float:
    """CPU seconds the JIT compiler threads of a JVM used, from each thread's ``comm`` and
    ``/proc/<pid>/task/<tid>/stat``."""
    return sum(cpu_seconds(stat) for comm, stat in threads if comm.strip().startswith(JIT_THREADS))


def machine_ticks(proc_stat: str) -> tuple[int, int]:
    """Busy and total clock ticks of all CPUs together, from the first line of ``/proc/stat``."""
    fields = [int(value) for value in proc_stat.splitlines()[0].split()[1:9]]
    # user nice system idle iowait irq softirq steal; guest time is already inside user.
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def cpu_budget(
    before: Mapping[str, float],
    after: Mapping[str, float],
    load_seconds: float,
    machine: tuple[int, int],
    wall_seconds: float,
    leads: int,
) -> dict[str, Any]:
    """Where the CPU of a latency point went: our processes in cores and ms per lead, the load
    generator and watcher, and how busy the whole machine was (other tenants included)."""
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    busy, total = machine
    return {
        "wall_s": wall_seconds,
        "pipeline_cores": sum(used.values()) / wall_seconds if wall_seconds > 0 else math.nan,
        "load_cores": load_seconds / wall_seconds if wall_seconds > 0 else math.nan,
        "machine_busy": busy / total if total > 0 else math.nan,
        "ms_per_lead": {name: seconds * 1000 / leads for name, seconds in sorted(used.items())} if leads else {},
    }


def cpu_table(points: Mapping[str, Mapping[str, Any]], cores: int) -> str:
    """One row per offered load, named by its key ("100/s"): cores our processes used, and the
    biggest users per lead."""
    rows: list[tuple[str, Any, str]] = []
    for load, point in points.items():
        budget = point.get("cpu")
        if not budget:
            continue
        biggest = sorted(budget["ms_per_lead"].items(), key=lambda item: -item[1])
        rows.append(
            (
                f"pipeline cores at {load}",
                budget["pipeline_cores"],
                f"load generator + watcher {budget['load_cores']:.2f}; machine {budget['machine_busy']:.0%} busy "
                f"of {cores} cores; ms per lead: " + ", ".join(f"{name} {ms:.1f}" for name, ms in biggest),
            )
        )
    return table(rows) if rows else ""


def target_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Issue 14's targets against a run's results: (target, what the run measured, verdict), the
    verdict "met", "missed" or "not measured" (a phase left out, or nothing arrived)."""
    curve = {point["offered_per_s"]: point for point in results.get("latency_curve", [])}
    nan = math.nan

    def at(rate: float, key: str) -> float:
        return float(curve.get(rate, {}).get(key, nan))

    def verdict(value: float, holds: bool) -> str:
        return "not measured" if math.isnan(value) else "met" if holds else "missed"

    rows: list[tuple[str, str, str]] = []
    for rate, key, limit in ((100, "p50_ms", 20.0), (100, "p99_ms", 50.0), (200, "p99_ms", 100.0)):
        value = at(rate, key)
        rows.append((f"{key[:3]} <= {limit:g} ms at {rate} leads/s", f"{value:.0f} ms", verdict(value, value <= limit)))
    for half in results.get("half_throughput", []) or [{}]:
        factor = float(half.get("p99_over_p99_at_5", nan))
        rows.append(
            (
                "p99 at half the sustained throughput <= 3x the p99 at 5 leads/s"
                + (f" ({half_shape(half)})" if half else ""),
                f"{factor:.1f}x ({float(half.get('p99_ms', nan)):.0f} ms at {float(half.get('offered_per_s', nan)):.0f}"
                f" leads/s, {at(5, 'p99_ms'):.0f} ms at 5)",
                verdict(factor, factor <= 3),
            )
        )
    share = ratio(float(results.get("e2e_leads_per_s", nan)), float(results.get("relay_baseline_per_s", nan)))
    rows.append(("e2e_leads_per_s >= 25% of relay_baseline_per_s", f"{share:.0%}", verdict(share, share >= 0.25)))
    scale = results.get("scale_out")
    if scale is None:
        rows.append(("two instances: each >= 20% of the work, not slower", "", "not measured"))
    else:
        shares = [
            part / sum(parts) if sum(parts) else nan
            for parts in (scale["relay_published_by_instance"], scale["decisions_by_instance"])
            for part in parts
        ]
        one, after = one_instance(scale), one_instance_after(scale)
        faster = float(scale["leads_per_s"]) >= one
        least = min(shares)
        rows.append(
            (
                "two instances: each >= 20% of the work, not slower",
                f"least share {least:.0%}; {float(scale['leads_per_s']):.0f} against {one:.0f} leads/s"
                + (
                    ""
                    if after is None
                    else f" (one instance {float(scale['leads_per_s_one_instance']):.0f} before, {after:.0f} after)"
                ),
                verdict(least, least >= 0.2 and faster),
            )
        )
    return rows


def one_instance(scale: Mapping[str, Any]) -> float:
    """What one instance did while the two were measured: the mean of its figures before and after
    the two-instance phase, which takes an even drift of the machine's speed out of the comparison
    (``Bench.one_instance_again``); the figure before alone when there is none after."""
    before = float(scale["leads_per_s_one_instance"])
    after = one_instance_after(scale)
    return before if after is None else (before + after) / 2


def one_instance_after(scale: Mapping[str, Any]) -> float | None:
    """One instance's figure after the two (phase 3g), or None: a run without it (an older bench's,
    or one whose phase measured nothing) is judged against the figure before alone."""
    after = scale.get("leads_per_s_one_instance_after")
    return float(after) if after is not None and math.isfinite(float(after)) else None


def half_shape(half: Mapping[str, Any]) -> str:
    """How a half-throughput point's leads were sent."""
    leads = half["leads_per_webhook"]
    return "one lead a webhook" if leads == 1 else f"{leads} leads a webhook"


def autovacuum_during(
    tables: Sequence[tuple[str, datetime | None, datetime | None]],
    running: Sequence[str],
    began: datetime,
    ended: datetime,
) -> list[str]:
    """What autovacuum did while a phase ran: each table whose last automatic vacuum or analyse
    ended between ``began`` and ``ended`` (``pg_stat_user_tables``: name, last_autovacuum,
    last_autoanalyze), then each worker still at work when the phase ended (the query of an
    autovacuum worker in ``pg_stat_activity``, "autovacuum: VACUUM public.outbox").

    A round costs PostgreSQL up to a second of CPU, which a 5 s phase on two cores notices: the
    two-instance comparison must say which of its phases one fell in."""
    done = []
    for name, vacuumed, analysed in tables:
        kinds = [kind for kind, at in (("vacuum", vacuumed), ("analyse", analysed)) if at and began <= at <= ended]
        if kinds:
            done.append(f"{name} ({' and '.join(kinds)})")
    at_work = [query.removeprefix("autovacuum: ").strip() + " (at work at the end)" for query in running if query]
    return sorted(done) + at_work


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else math.nan


def result_line(results: Mapping[str, Any]) -> str:
    """The machine-readable last line: exactly the documented keys, in their documented order."""
    missing = [key for key in RESULT_KEYS if key not in results]
    extra = sorted(set(results) - set(RESULT_KEYS))
    if missing or extra:
        raise ValueError(f"result keys differ: missing {missing}, unexpected {extra}")
    return orjson.dumps({key: _rounded(results[key]) for key in RESULT_KEYS}).decode()


def _rounded(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
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


def statements_table(statements: Sequence[Mapping[str, Any]], items: int) -> str:
    """pg_stat_statements rows (``calls``, ``exec_ms``, ``plan_ms``, ``rows``, ``buffers``,
    ``query``) as a table: each statement's share of the database's time, its cost per call and per
    item, and its text on one line. A plan gone wrong shows as a statement whose time per call is
    out of line. The pages a call visits (``buffers``, from the cache or read) are its work however
    busy the machine was, where its time is not."""
    total = sum(row["exec_ms"] + row["plan_ms"] for row in statements) or 1.0
    lines = [f"{'share':>6} {'calls':>8} {'ms/call':>8} {'plan ms':>8} {'ms/item':>8} {'buf/call':>9}  statement"]
    for row in statements:
        spent = row["exec_ms"] + row["plan_ms"]
        calls = max(row["calls"], 1)
        query = " ".join(str(row["query"]).split())
        lines.append(
            f"{spent / total:>6.0%} {row['calls']:>8,} {row['exec_ms'] / calls:>8.3f} {row['plan_ms'] / calls:>8.3f} "
            f"{spent / max(items, 1):>8.3f} {row['buffers'] / calls:>9,.0f}  {query[:100]}"
        )
    return "\n".join(lines)
