"""The soak run's pure pieces: windows, percentiles, /proc parsing, the verdict and the tables.

Times are seconds since the load started; memory is in bytes; a table's size is its row count and
``pg_total_relation_size`` summed over its partitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class TableSize:
    rows: int
    bytes: int


@dataclass(frozen=True)
class Sample:
    """One look at the stack: resident memory of each process and the size of each table."""

    at: float
    rss: Mapping[str, int]
    tables: Mapping[str, TableSize]


@dataclass(frozen=True)
class Lead:
    """One lead as the load generator saw it."""

    sent_at: float  # its webhook first posted
    acknowledged: bool  # answered 202
    qualifies: bool  # so it must be routed
    latency_ms: float | None  # the 202 -> its leads.routed.v1 record seen; None: not seen (yet)


@dataclass(frozen=True)
class Window:
    index: int  # from 0; window 0 is the warm-up
    start: float
    end: float
    samples: int
    rss_max: dict[str, int]  # the highest reading of each process in the window
    rss_last: dict[str, int]
    tables_last: dict[str, TableSize]
    rows_max: dict[str, int]
    outbox_max: int | None  # the backlog, sampled more often than the tables
    outbox_last: int | None
    sent: int  # leads whose webhook was first posted in the window
    acknowledged: int
    routed: int
    unrouted: int  # of those sent in the window: qualifying, acknowledged, never seen routed
    p50_ms: float | None  # webhook -> routed, over the leads sent in the window that were routed
    p99_ms: float | None
    max_ms: float | None

    def peak_rows(self, table: str) -> int | None:
        """The most rows seen in ``table``; the outbox's from its more frequent backlog samples too."""
        values = [value for value in (self.rows_max.get(table),) if value is not None]
        if table == "outbox" and self.outbox_max is not None:
            values.append(self.outbox_max)
        return max(values) if values else None


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Tolerance:
    """How much a figure may rise from its reference and still count as flat (the larger allowance wins)."""

    rss_fraction: float = 0.20
    rss_bytes: int = 30 * MIB
    rows_fraction: float = 0.10
    rows_slack: int = 100

    def rss_allowed(self, reference: int) -> int:
        return max(math.floor(reference * (1 + self.rss_fraction)), reference + self.rss_bytes)

    def rows_allowed(self, peak: int) -> int:
        return max(math.floor(peak * (1 + self.rows_fraction)), peak + self.rows_slack)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest rank: the smallest value with at least ``pct`` percent of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {pct}")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def window_bounds(duration: float, length: float) -> list[tuple[float, float]]:
    """Consecutive windows of ``length`` covering ``duration``; a remainder under half a window joins the last."""
    if duration <= 0 or length <= 0:
        raise ValueError("duration and window length must be positive")
    count = max(1, math.floor(duration / length + 0.5))
    bounds = [(index * length, (index + 1) * length) for index in range(count)]
    return [*bounds[:-1], (bounds[-1][0], duration)]


def aggregate(
    bounds: Sequence[tuple[float, float]],
    samples: Sequence[Sample],
    outbox: Sequence[tuple[float, int]],
    leads: Iterable[Lead],
) -> list[Window]:
    """Each window's figures from the samples taken in it and the leads sent in it ([start, end))."""
    sent: list[list[Lead]] = [[] for _ in bounds]
    for lead in leads:
        index = _window_index(bounds, lead.sent_at)
        if index is not None:
            sent[index].append(lead)
    windows = []
    for index, (start, end) in enumerate(bounds):
        inside = sorted((s for s in samples if start <= s.at < end), key=lambda s: s.at)
        backlog = [rows for at, rows in sorted(outbox) if start <= at < end]
        ours = sent[index]
        latencies = [lead.latency_ms for lead in ours if lead.latency_ms is not None]
        rss_max: dict[str, int] = {}
        rows_max: dict[str, int] = {}
        for sample in inside:
            for name, value in sample.rss.items():
                rss_max[name] = max(rss_max.get(name, value), value)
            for name, size in sample.tables.items():
                rows_max[name] = max(rows_max.get(name, size.rows), size.rows)
        windows.append(
            Window(
                index=index,
                start=start,
                end=end,
                samples=len(inside),
                rss_max=rss_max,
                rss_last=dict(inside[-1].rss) if inside else {},
                tables_last=dict(inside[-1].tables) if inside else {},
                rows_max=rows_max,
                outbox_max=max(backlog) if backlog else None,
                outbox_last=backlog[-1] if backlog else None,
                sent=len(ours),
                acknowledged=sum(1 for lead in ours if lead.acknowledged),
                routed=len(latencies),
                unrouted=sum(1 for lead in ours if lead.qualifies and lead.acknowledged and lead.latency_ms is None),
                p50_ms=percentile(latencies, 50) if latencies else None,
                p99_ms=percentile(latencies, 99) if latencies else None,
                max_ms=max(latencies) if latencies else None,
            )
        )
    return windows


def _window_index(bounds: Sequence[tuple[float, float]], at: float) -> int | None:
    for index, (start, end) in enumerate(bounds):
        if start <= at < end:
            return index
    return None


def memory_checks(windows: Sequence[Window], processes: Iterable[str], tolerance: Tolerance) -> list[Check]:
    """Memory is flat when each process's highest reading in the last window is within the
    tolerance of its highest reading in the second window (the first is the warm-up)."""
    processes = list(processes)
    if len(windows) < 3:
        return [
            Check(
                f"memory flat: {name}",
                False,
                f"needs 3 windows (warm-up, reference, last), the run had {len(windows)}",
            )
            for name in processes
        ]
    reference, last = windows[1], windows[-1]
    checks = []
    for name in processes:
        before, after = reference.rss_max.get(name), last.rss_max.get(name)
        if before is None or after is None:
            checks.append(Check(f"memory flat: {name}", False, "not sampled in the second or the last window"))
            continue
        allowed = tolerance.rss_allowed(before)
        checks.append(
            Check(
                f"memory flat: {name}",
                after <= allowed,
                f"{_mib(after)} MiB in window {last.index + 1}, {_mib(before)} MiB in window 2, "
                f"allowed {_mib(allowed)} MiB",
            )
        )
    return checks


def bounded_checks(
    windows: Sequence[Window], tables: Iterable[str], settled_after: float, tolerance: Tolerance
) -> list[Check]:
    """A table is bounded when, once retention has had time to act (windows starting at or after
    ``settled_after``), the last window's peak row count is within the tolerance of the highest
    peak of the settled windows before it: it has stopped growing with the traffic."""
    tables = list(tables)
    settled = [window for window in windows if window.start >= settled_after]
    if len(settled) < 2:
        return [
            Check(
                f"bounded: {name}",
                False,
                f"needs 2 windows starting after {settled_after / 60:g} min (retention and a pass), "
                f"the run had {len(settled)}",
            )
            for name in tables
        ]
    last, earlier = settled[-1], settled[:-1]
    checks = []
    for name in tables:
        peaks = [peak for peak in (window.peak_rows(name) for window in earlier) if peak is not None]
        now = last.peak_rows(name)
        if not peaks or now is None:
            checks.append(Check(f"bounded: {name}", False, "not sampled in the settled windows"))
            continue
        allowed = tolerance.rows_allowed(max(peaks))
        checks.append(
            Check(
                f"bounded: {name}",
                now <= allowed,
                f"{now:,} rows at most in window {last.index + 1}, earlier settled peak {max(peaks):,} "
                f"(windows {earlier[0].index + 1}-{earlier[-1].index + 1}), allowed {allowed:,}",
            )
        )
    return checks


def delivery_check(windows: Sequence[Window], duplicates: int) -> Check:
    """Every lead sent was acknowledged, every qualifying one was routed, and none twice."""
    sent = sum(window.sent for window in windows)
    acknowledged = sum(window.acknowledged for window in windows)
    unrouted = sum(window.unrouted for window in windows)
    return Check(
        "every lead acknowledged and routed once",
        sent == acknowledged and unrouted == 0 and duplicates == 0,
        f"{sent:,} sent, {acknowledged:,} acknowledged, {unrouted} qualifying not routed, {duplicates} routed twice",
    )


def rate_check(windows: Sequence[Window], rate: float, held: float = 0.9) -> Check:
    """The load was what it claims: every window sent at least ``held`` of ``rate`` times its
    length. A window that fell short (the machine or the stack could not keep up) makes bounded
    tables and flat memory weaker evidence, so the verdict does not pass on it."""
    short = [w for w in windows if w.sent < held * rate * (w.end - w.start)]
    sent = ", ".join(f"{w.sent:,}" for w in windows)
    return Check(
        f"rate held ({held:.0%} of {rate:g}/s in every window)",
        bool(windows) and not short,
        f"sent per window: {sent}"
        + "".join(f"; window {w.index + 1} short: {w.sent / (w.end - w.start):.1f}/s" for w in short),
    )


def trend_mib_per_hour(samples: Sequence[Sample], process: str, after: float) -> float | None:
    """Least-squares slope of a process's memory over the samples taken after ``after``."""
    points = [(s.at, s.rss[process]) for s in samples if s.at >= after and process in s.rss]
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return slope * 3600 / MIB


def vm_rss(status: str) -> int | None:
    """Resident bytes from the text of ``/proc/<pid>/status`` (None for a kernel thread or a zombie)."""
    return _kib_field(status, "VmRSS:")


def pss(smaps_rollup: str) -> int | None:
    """Proportional set size in bytes from ``/proc/<pid>/smaps_rollup``: shared pages divided among
    the processes that map them, so summing it over PostgreSQL's processes counts shared buffers once."""
    return _kib_field(smaps_rollup, "Pss:")


def rss_anon(status: str) -> int | None:
    """Resident anonymous bytes (``RssAnon`` of ``/proc/<pid>/status``): a process's own heap and
    stacks, without mapped files and shared memory. For PostgreSQL that is each backend's own
    memory without the shared buffers, a cache of fixed size (``shared_buffers``) that fills up
    with the data and that every backend's RSS counts again."""
    return _kib_field(status, "RssAnon:")


def _kib_field(text: str, name: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(name):
            return int(line.split()[1]) * 1024
    return None


def parent_pid(stat: str) -> int:
    """The parent's pid from ``/proc/<pid>/stat`` (the command name may hold spaces and parentheses)."""
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def window_report(window: Window, processes: Sequence[str], tables: Sequence[str]) -> str:
    """What one window looked like, as printed when it closes."""
    lines = [
        f"window {window.index + 1} ({_clock(window.start)}-{_clock(window.end)}, {window.samples} samples): "
        f"sent {window.sent:,}, acknowledged {window.acknowledged:,}, routed {window.routed:,}"
        f" ({window.unrouted} qualifying not routed), webhook->routed p50 {_ms(window.p50_ms)} "
        f"p99 {_ms(window.p99_ms)} max {_ms(window.max_ms)}",
        "  RSS MiB (max): " + ", ".join(f"{name} {_mib(window.rss_max.get(name))}" for name in processes),
        "  rows (max) / MiB: "
        + ", ".join(
            f"{name} {_rows(window.rows_max.get(name))}/{_mib(_bytes(window.tables_last.get(name)))}" for name in tables
        ),
        f"  outbox backlog: max {_rows(window.outbox_max)}, last {_rows(window.outbox_last)}",
    ]
    return "\n".join(lines)


def summary_tables(windows: Sequence[Window], processes: Sequence[str], tables: Sequence[str]) -> str:
    """One table of memory per window and process, one of rows, backlog and latency per window."""
    memory = _grid(
        ["window", *processes],
        [[_label(w), *(_mib(w.rss_max.get(name)) for name in processes)] for w in windows],
    )
    rows = _grid(
        ["window", *tables, "outbox max", "sent", "routed", "p50 ms", "p99 ms"],
        [
            [
                _label(w),
                *(_rows(w.rows_max.get(name)) for name in tables),
                _rows(w.outbox_max),
                f"{w.sent:,}",
                f"{w.routed:,}",
                _ms(w.p50_ms),
                _ms(w.p99_ms),
            ]
            for w in windows
        ],
    )
    sizes = _grid(
        ["window", *tables],
        [[_label(w), *(_mib(_bytes(w.tables_last.get(name))) for name in tables)] for w in windows],
    )
    return (
        f"RSS MiB, highest sample per window\n{memory}\n\nrows, highest sample per window\n{rows}\n\n"
        f"MiB on disk (table, indexes, TOAST), last sample of each window\n{sizes}"
    )


def verdict_lines(checks: Sequence[Check]) -> str:
    return "\n".join(f"{'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}" for check in checks)


@dataclass(frozen=True)
class Result:
    windows: Sequence[Window]
    checks: Sequence[Check]
    settings: Mapping[str, Any]
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def headline(self) -> dict[str, Any]:
        """The last line of output: the verdict and each window's figures, memory in MiB."""
        return {
            "passed": self.passed,
            "settings": dict(self.settings),
            "failed": [check.name for check in self.checks if not check.passed],
            "windows": [
                {
                    "window": w.index + 1,
                    "start_s": round(w.start),
                    "end_s": round(w.end),
                    "sent": w.sent,
                    "acknowledged": w.acknowledged,
                    "routed": w.routed,
                    "unrouted": w.unrouted,
                    "p50_ms": _round(w.p50_ms),
                    "p99_ms": _round(w.p99_ms),
                    "outbox_max": w.outbox_max,
                    "rss_mib": {name: _round(value / MIB) for name, value in sorted(w.rss_max.items())},
                    "rows": dict(sorted(w.rows_max.items())),
                }
                for w in self.windows
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _grid(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *body]) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _label(window: Window) -> str:
    return f"{window.index + 1} ({_clock(window.start)}-{_clock(window.end)})"


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def _bytes(size: TableSize | None) -> int | None:
    return None if size is None else size.bytes


def _rows(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
