"""What a simulation tells both sides: the baseline and the candidate agreement, side by side.

Pure: ``compare`` turns two engines' results into a ``Comparison``; ``terminal`` and ``html``
render it; ``guards`` checks it against a policy.
"""

from __future__ import annotations

import html as escape
import uuid
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from coxswain.core.agreement import OWNER_POOL, Agreement
from coxswain.core.business_time import BusinessCalendar
from coxswain.core.sla import pacing
from coxswain.simulation.engine import Assignment, Results
from schemas.events import ActivityRecordedV1, Stage


@dataclass(frozen=True)
class Share:
    pool_id: str
    rep_id: str
    leads: int
    share: float
    target: float


@dataclass(frozen=True)
class Side:
    version: str
    mql: int
    sql: int
    by_week: Mapping[str, tuple[int, int]]  # week -> (MQL, SQL)
    by_source: Mapping[str, tuple[int, int]]
    shares: tuple[Share, ...]
    fairness: Mapping[str, float]  # pool -> Jain's index of share/target
    fairness_overall: float
    predicted_attainment: float | None
    simulated_attainment: float | None
    pacing: tuple[tuple[str, int, float, float], ...]  # (target, actual MQLs, expected, ratio)
    assignments: int
    parked: int
    rejected: int


@dataclass(frozen=True)
class RouteChange:
    lead_id: uuid.UUID
    baseline: str
    candidate: str


@dataclass
class Comparison:
    baseline: Side
    candidate: Side
    leads: int
    inputs: int
    route_changes: int
    routed_leads: int
    changes: list[RouteChange] = field(default_factory=list)
    leads_per_second: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def mql_change_pct(self) -> float:
        return _pct(self.baseline.mql, self.candidate.mql)

    @property
    def route_change_pct(self) -> float:
        return 100.0 * self.route_changes / self.routed_leads if self.routed_leads else 0.0


def _pct(old: int, new: int) -> float:
    if old == 0:
        return 0.0 if new == 0 else 100.0
    return 100.0 * (new - old) / old


def week_of(at: datetime) -> str:
    year, week, _ = at.isocalendar()
    return f"{year}-W{week:02d}"


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when every value is equal, 1/n when one takes everything."""
    total, squares = sum(values), sum(v * v for v in values)
    return (total * total) / (len(values) * squares) if squares else 1.0


def response_delays(results: Results, inputs: Sequence[object], agreement: Agreement) -> dict[str, list[float]]:
    """Per rep, the seconds from each baseline assignment to the lead's first response in the input."""
    first: dict[uuid.UUID, datetime] = {}
    for event in inputs:
        if isinstance(event, ActivityRecordedV1) and event.lead_id not in first:
            first[event.lead_id] = event.occurred_at
    delays: dict[str, list[float]] = defaultdict(list)
    seen: set[uuid.UUID] = set()
    for assignment in results.assignments:
        if assignment.lead_id in seen:
            continue
        seen.add(assignment.lead_id)
        responded = first.get(assignment.lead_id)
        if responded is not None and responded >= assignment.at:
            delays[assignment.rep_id].append((responded - assignment.at).total_seconds())
    return {rep: sorted(values) for rep, values in delays.items()}


def predicted_attainment(assignments: Sequence[Assignment], delays: Mapping[str, Sequence[float]]) -> float | None:
    """The mean chance, over assignments, that the rep's historical delay meets the deadline.

    A rep without history is predicted from everybody's delays."""
    everyone = sorted(d for values in delays.values() for d in values)
    if not everyone or not assignments:
        return None
    total = 0.0
    for assignment in assignments:
        history = delays.get(assignment.rep_id) or everyone
        allowed = (assignment.due - assignment.at).total_seconds()
        total += bisect_right(history, allowed) / len(history)
    return total / len(assignments)


def side(results: Results, agreement: Agreement, delays: Mapping[str, Sequence[float]], end: datetime | None) -> Side:
    by_week: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_source: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    mql = sql = 0
    for change in results.stage_changes:
        index = 0 if change.to_stage is Stage.mql else 1 if change.to_stage is Stage.sql else None
        if index is None:
            continue
        by_week[week_of(change.at)][index] += 1
        by_source[change.source][index] += 1
        mql += index == 0
        sql += index == 1
    per_pool: dict[str, Counter[str]] = defaultdict(Counter)
    for assignment in results.assignments:
        per_pool[assignment.pool_id][assignment.rep_id] += 1
    shares: list[Share] = []
    fairness: dict[str, float] = {}
    ratios_all: list[float] = []
    for pool in agreement.routing.pools:
        weights = {member.rep: member.weight for member in pool.members}
        total_weight = sum(weights.values())
        counts = per_pool.get(pool.id, Counter())
        total = sum(counts.values())
        ratios = []
        for rep, weight in weights.items():
            target = weight / total_weight if total_weight else 0.0
            share_of = counts[rep] / total if total else 0.0
            shares.append(Share(pool.id, rep, counts[rep], share_of, target))
            if total and target:
                ratios.append(share_of / target)
        if ratios:
            fairness[pool.id] = jain(ratios)
            ratios_all += ratios
    for pool_id, counts in per_pool.items():
        if pool_id not in {pool.id for pool in agreement.routing.pools}:
            total = sum(counts.values())
            shares += [Share(pool_id, rep, n, n / total, 0.0) for rep, n in sorted(counts.items())]
    decided = [a for a in results.assignments if a.sla in ("met", "breached")]
    simulated = sum(a.sla == "met" for a in decided) / len(decided) if decided else None
    pace: list[tuple[str, int, float, float]] = []
    if end is not None:
        for goal in agreement.marketing.mql_targets:
            calendar: BusinessCalendar = agreement.calendar(goal.calendar or agreement.sla.calendar)
            start = pacing(goal, calendar, end, 0).period_start
            actual = sum(1 for c in results.stage_changes if c.to_stage is Stage.mql and start <= c.at <= end)
            result = pacing(goal, calendar, end, actual)
            pace.append((goal.key, actual, result.expected, result.ratio or 0.0))
    return Side(
        version=agreement.version,
        mql=mql,
        sql=sql,
        by_week={k: (v[0], v[1]) for k, v in sorted(by_week.items())},
        by_source={k: (v[0], v[1]) for k, v in sorted(by_source.items())},
        shares=tuple(shares),
        fairness=fairness,
        fairness_overall=jain(ratios_all) if ratios_all else 1.0,
        predicted_attainment=predicted_attainment(results.assignments, delays),
        simulated_attainment=simulated,
        pacing=tuple(pace),
        assignments=len(results.assignments),
        parked=results.parked,
        rejected=len(results.rejected),
    )


def owners(results: Results) -> dict[uuid.UUID, str]:
    """Each lead's route: the reps it was assigned to, in order."""
    routes: dict[uuid.UUID, list[str]] = defaultdict(list)
    for assignment in results.assignments:
        routes[assignment.lead_id].append(f"{assignment.rep_id}@{assignment.pool_id}")
    return {lead: " > ".join(reps) for lead, reps in routes.items()}


def compare(
    baseline: tuple[Results, Agreement],
    candidate: tuple[Results, Agreement],
    inputs: Sequence[object],
    first: int = 20,
) -> Comparison:
    delays = response_delays(baseline[0], inputs, baseline[1])
    end = baseline[0].last_input
    old, new = owners(baseline[0]), owners(candidate[0])
    changed = [
        RouteChange(lead, old.get(lead, "(not routed)"), new.get(lead, "(not routed)"))
        for lead in sorted(old.keys() | new.keys(), key=str)
        if old.get(lead) != new.get(lead)
    ]
    return Comparison(
        baseline=side(baseline[0], baseline[1], delays, end),
        candidate=side(candidate[0], candidate[1], delays, end),
        leads=baseline[0].leads,
        inputs=baseline[0].inputs,
        route_changes=len(changed),
        routed_leads=len(old.keys() | new.keys()),
        changes=changed[:first],
    )


# ---------------------------------------------------------------------- guards


GUARDS = {
    "max_mql_change_pct": "MQL count change (%)",
    "min_fairness": "fairness index (Jain)",
    "min_predicted_attainment": "predicted SLA attainment",
    "max_route_change_pct": "leads whose route changes (%)",
}


def guards(comparison: Comparison, policy: Mapping[str, float]) -> list[str]:
    """The guards the candidate crosses, each as a sentence."""
    crossed = []
    unknown = sorted(set(policy) - set(GUARDS))
    if unknown:
        raise ValueError(f"unknown guard(s) {', '.join(unknown)}; known: {', '.join(sorted(GUARDS))}")
    candidate = comparison.candidate
    if "max_mql_change_pct" in policy and abs(comparison.mql_change_pct) > policy["max_mql_change_pct"]:
        crossed.append(
            f"MQL count changes by {comparison.mql_change_pct:+.1f}% (max {policy['max_mql_change_pct']:g}%)"
        )
    if "min_fairness" in policy and candidate.fairness_overall < policy["min_fairness"]:
        crossed.append(f"fairness index {candidate.fairness_overall:.3f} is below {policy['min_fairness']:g}")
    attained = candidate.predicted_attainment
    if "min_predicted_attainment" in policy and attained is not None and attained < policy["min_predicted_attainment"]:
        crossed.append(f"predicted SLA attainment {attained:.1%} is below {policy['min_predicted_attainment']:.1%}")
    if "max_route_change_pct" in policy and comparison.route_change_pct > policy["max_route_change_pct"]:
        crossed.append(
            f"{comparison.route_change_pct:.1f}% of routed leads change route (max {policy['max_route_change_pct']:g}%)"
        )
    return crossed


# ---------------------------------------------------------------------- terminal


def _fmt(value: float | None, kind: str = "pct") -> str:
    if value is None:
        return "n/a"
    return f"{value:.1%}" if kind == "pct" else f"{value:.3f}"


def rows(comparison: Comparison) -> list[tuple[str, str, str]]:
    b, c = comparison.baseline, comparison.candidate
    table = [
        ("agreement version", b.version, c.version),
        ("MQLs", str(b.mql), f"{c.mql} ({comparison.mql_change_pct:+.1f}%)"),
        ("SQLs", str(b.sql), f"{c.sql} ({_pct(b.sql, c.sql):+.1f}%)"),
        ("assignments", str(b.assignments), str(c.assignments)),
        ("left unassigned", str(b.parked), str(c.parked)),
        ("fairness (Jain, share/target)", _fmt(b.fairness_overall, "f"), _fmt(c.fairness_overall, "f")),
        ("predicted SLA attainment", _fmt(b.predicted_attainment), _fmt(c.predicted_attainment)),
        ("simulated SLA attainment", _fmt(b.simulated_attainment), _fmt(c.simulated_attainment)),
        ("leads whose route changes", "", f"{comparison.route_changes} ({comparison.route_change_pct:.1f}%)"),
    ]
    for week in sorted(b.by_week.keys() | c.by_week.keys()):
        bw, cw = b.by_week.get(week, (0, 0)), c.by_week.get(week, (0, 0))
        table.append((f"MQL/SQL week {week}", f"{bw[0]}/{bw[1]}", f"{cw[0]}/{cw[1]}"))
    for source in sorted(b.by_source.keys() | c.by_source.keys()):
        bs, cs = b.by_source.get(source, (0, 0)), c.by_source.get(source, (0, 0))
        table.append((f"MQL/SQL source {source}", f"{bs[0]}/{bs[1]}", f"{cs[0]}/{cs[1]}"))
    paced = {key: (actual, expected, ratio) for key, actual, expected, ratio in c.pacing}
    for key, actual, expected, ratio in b.pacing:
        now = paced.get(key)
        paced_after = f"{now[0]} of {now[1]:.0f} ({now[2]:.0%})" if now else "-"
        table.append(
            (f"MQL pacing {key} (actual of pro-rated target)", f"{actual} of {expected:.0f} ({ratio:.0%})", paced_after)
        )
    before = {(s.pool_id, s.rep_id): s for s in b.shares}
    after = {(s.pool_id, s.rep_id): s for s in c.shares}
    for pool_rep in [*before, *(k for k in after if k not in before)]:
        table.append((f"share {pool_rep[0]}/{pool_rep[1]}", _share(before.get(pool_rep)), _share(after.get(pool_rep))))
    return table


def _share(share: Share | None) -> str:
    """Leads, share of the pool's leads, and the target share (the weight's) where there is one."""
    if share is None:
        return "-"
    target = f" of {share.target:.0%} target" if share.pool_id != OWNER_POOL else ""
    return f"{share.leads} ({share.share:.0%}{target})"


def terminal(comparison: Comparison, crossed: Sequence[str]) -> str:
    table = rows(comparison)
    width = [max(len(row[i]) for row in [*table, ("", "baseline", "candidate")]) for i in range(3)]
    lines = [f"{'':{width[0]}}  {'baseline':>{width[1]}}  {'candidate':>{width[2]}}"]
    lines += [f"{a:{width[0]}}  {b:>{width[1]}}  {c:>{width[2]}}" for a, b, c in table]
    if comparison.changes:
        lines.append(f"\nfirst {len(comparison.changes)} of {comparison.route_changes} route changes:")
        lines += [f"  {change.lead_id}  {change.baseline}  ->  {change.candidate}" for change in comparison.changes]
    lines.append("")
    lines += [f"GUARD CROSSED: {sentence}" for sentence in crossed] or ["all guards hold"]
    return "\n".join(lines)


# ---------------------------------------------------------------------- HTML


def _bars(title: str, series: Mapping[str, tuple[float, float]], percent: bool = False) -> str:
    """Grouped bars, baseline and candidate per label, as inline SVG."""
    labels = list(series)
    top = max((max(v) for v in series.values()), default=0.0) or 1.0
    bar, gap, height, left = 14, 12, 180, 40
    width = max(left + len(labels) * (2 * bar + gap) + 40, 8 * len(title) + 10)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 110}" role="img">',
        f'<text x="4" y="14" font-size="13" font-weight="bold">{escape.escape(title)}</text>',
        f'<line x1="{left}" y1="{height + 20}" x2="{width}" y2="{height + 20}" stroke="#999"/>',
    ]
    for i, label in enumerate(labels):
        x = left + i * (2 * bar + gap)
        for j, (value, colour) in enumerate(zip(series[label], ("#8c9bab", "#2f6fdf"), strict=True)):
            h = value / top * height
            shown = f"{value:.0%}" if percent else f"{value:g}"
            parts.append(
                f'<rect x="{x + j * bar}" y="{height + 20 - h:.1f}" width="{bar - 2}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape.escape(label)}: {shown}</title></rect>'
            )
        parts.append(
            f'<text x="{x}" y="{height + 34}" font-size="9" transform="rotate(30 {x} {height + 34})">'
            f"{escape.escape(label[:18])}</text>"
        )
    parts.append(
        f'<text x="{left}" y="30" font-size="10" fill="#555">max {top:.0%}</text>'
        if percent
        else f'<text x="{left}" y="30" font-size="10" fill="#555">max {top:g}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def html(comparison: Comparison, crossed: Sequence[str]) -> str:
    b, c = comparison.baseline, comparison.candidate
    table = "".join(
        f"<tr><th>{escape.escape(name)}</th><td>{escape.escape(old)}</td><td>{escape.escape(new)}</td></tr>"
        for name, old, new in rows(comparison)
    )
    weeks = {
        w: (b.by_week.get(w, (0, 0))[0], c.by_week.get(w, (0, 0))[0])
        for w in sorted(b.by_week.keys() | c.by_week.keys())
    }
    sources = {
        s: (b.by_source.get(s, (0, 0))[0], c.by_source.get(s, (0, 0))[0])
        for s in sorted(b.by_source.keys() | c.by_source.keys())
    }
    old_shares = {(s.pool_id, s.rep_id): s.share for s in b.shares}
    shares = {f"{s.pool_id}/{s.rep_id}": (old_shares.get((s.pool_id, s.rep_id), 0.0), s.share) for s in c.shares}
    targets = {f"{s.pool_id}/{s.rep_id}": (s.target, s.share) for s in c.shares if s.pool_id != OWNER_POOL}
    changes = "".join(
        f"<tr><td><code>{change.lead_id}</code></td><td>{escape.escape(change.baseline)}</td>"
        f"<td>{escape.escape(change.candidate)}</td></tr>"
        for change in comparison.changes
    )
    verdict = (
        "".join(f'<p class="bad">Guard crossed: {escape.escape(s)}</p>' for s in crossed)
        or '<p class="good">All guards hold.</p>'
    )
    charts = "".join(
        f'<div class="chart">{svg}</div>'
        for svg in (
            _bars("MQLs per week (grey: baseline, blue: candidate)", weeks),
            _bars("MQLs per source", sources),
            _bars("Share of each pool's leads per rep", shares, percent=True),
            _bars("Candidate: target share (grey) vs actual (blue)", targets, percent=True),
        )
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Coxswain simulation: {escape.escape(b.version)} vs {escape.escape(c.version)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; font-size: 13px; }}
th {{ text-align: left; font-weight: normal; }}
.chart {{ display: inline-block; vertical-align: top; margin: 8px 16px 8px 0; }}
.bad {{ color: #b00020; font-weight: bold; }} .good {{ color: #1b7f3a; font-weight: bold; }}
</style></head><body>
<h1>Agreement simulation</h1>
<p>Baseline <b>{escape.escape(b.version)}</b> vs candidate <b>{escape.escape(c.version)}</b> over {comparison.leads} leads
({comparison.inputs} inputs), {comparison.leads_per_second:,.0f} leads/s.</p>
{verdict}
{charts}
<h2>Side by side</h2>
<table><tr><th></th><td><b>baseline</b></td><td><b>candidate</b></td></tr>{table}</table>
<h2>Route changes ({comparison.route_changes}, first {len(comparison.changes)})</h2>
<table><tr><th>lead</th><td><b>baseline</b></td><td><b>candidate</b></td></tr>{changes}</table>
</body></html>
"""
