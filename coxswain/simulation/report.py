"""What a simulation tells both sides: the baseline and the candidate agreement, side by side.

Pure: ``compare`` turns two engines' results into a ``Comparison``; ``terminal`` and ``html``
render it; ``guards`` checks it against a policy.
"""

from __future__ import annotations

import html as escape
import math
import textwrap
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from coxswain.core.agreement import OWNER_POOL, Agreement, MqlTarget
from coxswain.core.business_time import BusinessCalendar
from coxswain.core.sla import period_bounds
from coxswain.simulation.engine import Assignment, Results
from schemas.events import ActivityRecordedV1, LeadReceivedV1, Stage


@dataclass(frozen=True)
class Share:
    pool_id: str
    rep_id: str
    leads: int
    share: float
    target: float


@dataclass(frozen=True)
class Coverage:
    """The days the input covers: from the local midnight before its first lead event to the one
    after its last. Follow-ups trickle in for weeks after the last lead arrives; a period that
    only they reach holds almost no MQLs, and pacing it would read like an alarm."""

    first: datetime
    last: datetime

    def days(self, zone: tzinfo) -> tuple[datetime, datetime]:
        return _midnight(self.first, zone, 0), _midnight(self.last, zone, 1)

    def whole_iso_week(self, week: str) -> bool:
        """Whether the input covers every UTC day of an ISO week (``week_of``'s labels)."""
        year, number = week.split("-W")
        monday = datetime.combine(date.fromisocalendar(int(year), int(number), 1), time(), UTC)
        start, end = self.days(UTC)
        return start <= monday and monday + timedelta(days=7) <= end


def _midnight(at: datetime, zone: tzinfo, days_after: int) -> datetime:
    day = at.astimezone(zone).date() + timedelta(days=days_after)
    return datetime.combine(day, time(), zone).astimezone(UTC)


@dataclass(frozen=True)
class PeriodPace:
    """MQLs in one pacing period against its target, pro-rated to the share of the period's
    business time that the input covers (``seen``; 1 for a complete period)."""

    start: datetime
    end: datetime
    actual: int
    expected: float
    seen: float

    @property
    def ratio(self) -> float:
        return self.actual / self.expected if self.expected else 0.0


@dataclass(frozen=True)
class Pace:
    """Pacing of one MQL target over the complete periods of the input; the best-covered
    partial period, labelled so, only when no period is complete."""

    key: str
    period: str
    target: int
    complete: tuple[PeriodPace, ...]
    partial: PeriodPace | None

    @property
    def label(self) -> str:
        if self.complete:
            plural = "" if len(self.complete) == 1 else "s"
            return f"MQL pacing {self.key}: mean of {len(self.complete)} complete {self.period}{plural} (lowest)"
        if self.partial is None:
            return f"MQL pacing {self.key}"
        part = self.partial
        return f"MQL pacing {self.key}: partial {self.period} from {part.start:%Y-%m-%d} ({part.seen:.0%} of it seen)"

    def summary(self) -> str:
        if self.complete:
            mean = sum(p.actual for p in self.complete) / len(self.complete)
            lowest = min(p.actual for p in self.complete)
            return f"{mean:,.0f} of {self.target:,} ({mean / self.target:.0%}; {lowest:,})"
        if self.partial is None:
            return "no period in the input"
        return f"{self.partial.actual:,} of {self.partial.expected:,.0f} pro-rated ({self.partial.ratio:.0%})"


def periods(target: MqlTarget, calendar: BusinessCalendar, coverage: Coverage) -> Iterator[tuple[datetime, datetime]]:
    """Every period of the target's kind that the covered days touch."""
    start, end = coverage.days(calendar.zone)
    begin, after = period_bounds(target.period, start, calendar.zone)
    while begin < end:
        yield begin, after
        begin, after = after, period_bounds(target.period, after, calendar.zone)[1]


def pace(target: MqlTarget, calendar: BusinessCalendar, coverage: Coverage, mqls: Sequence[datetime]) -> Pace:
    """``mqls``: the instants leads became MQL, sorted."""
    covered_from, covered_to = coverage.days(calendar.zone)
    complete: list[PeriodPace] = []
    partial: PeriodPace | None = None
    for start, end in periods(target, calendar, coverage):
        business = calendar.diff(start, end)
        seen_time = calendar.diff(max(start, covered_from), min(end, covered_to))
        seen = seen_time / business if business > timedelta(0) else 0.0
        actual = bisect_left(mqls, end) - bisect_left(mqls, start)
        found = PeriodPace(start, end, actual, target.count * seen, seen)
        if seen >= 1.0:
            complete.append(found)
        elif seen > 0 and (partial is None or seen > partial.seen):
            partial = found
    return Pace(target.key, target.period, target.count, tuple(complete), None if complete else partial)


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
    pacing: tuple[Pace, ...]
    assignments: int
    parked: int
    rejected: int


# Why a lead's route differs, in the order they are told apart (``change_kind``).
CHANGE_KINDS = {
    "qualification": "routed by one side only (qualification changed)",
    "rule": "another rule or pool",
    "owner": "another account or domain owner",
    "rotation": "another turn in the same rotation",
    "later": "same first rep, a later reassignment differs",
}

ROTATION_NOTE = (
    "Weighted rotation hands out turns in order, so one lead more or fewer ahead of a lead, or a "
    "changed weight, moves every later turn: most individual assignments in a rotation change "
    "while each rep's share moves as intended; the leads that follow an account's or a domain's "
    "earlier lead move with it. Judge rotation by the shares, and the agreement's intent by the "
    "leads that changed rule or pool."
)


@dataclass(frozen=True)
class Lead:
    """How a person reading the report knows a lead: from its first intake event."""

    email: str | None = None
    company: str | None = None
    source: str = ""

    @property
    def name(self) -> str:
        return self.email or self.company or ""


@dataclass(frozen=True)
class RouteChange:
    lead_id: uuid.UUID
    baseline: str
    candidate: str
    kind: str = "rotation"
    lead: Lead = Lead()
    rule: str = ""  # the rule that routed the lead first: "a", or "a -> b" when the sides differ

    @property
    def who(self) -> str:
        return self.lead.name or str(self.lead_id)


@dataclass
class Comparison:
    baseline: Side
    candidate: Side
    leads: int
    inputs: int
    route_changes: int
    routed_leads: int
    changes: list[RouteChange] = field(default_factory=list)  # the first N, for the terminal
    listed: list[RouteChange] = field(default_factory=list)  # the first LISTED, for the HTML table
    change_kinds: Mapping[str, int] = field(default_factory=dict)
    coverage: Coverage | None = None
    leads_per_second: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def mql_change_pct(self) -> float:
        return _pct(self.baseline.mql, self.candidate.mql)

    @property
    def route_change_pct(self) -> float:
        return 100.0 * self.route_changes / self.routed_leads if self.routed_leads else 0.0

    def kind_pct(self, kind: str) -> float:
        """Leads whose route changes for that reason (``CHANGE_KINDS``), in % of routed leads."""
        return 100.0 * self.change_kinds.get(kind, 0) / self.routed_leads if self.routed_leads else 0.0

    def week_label(self, week: str) -> str:
        """An ISO week, marked when the input covers only some of its days."""
        partial = self.coverage is not None and not self.coverage.whole_iso_week(week)
        return f"{week} (partial)" if partial else week


# The HTML report lists this many route changes (sortable and filterable in the page).
LISTED = 2000


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


def side(
    results: Results, agreement: Agreement, delays: Mapping[str, Sequence[float]], coverage: Coverage | None
) -> Side:
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
    paces: list[Pace] = []
    if coverage is not None:
        mqls = sorted(c.at for c in results.stage_changes if c.to_stage is Stage.mql)
        for goal in agreement.marketing.mql_targets:
            calendar = agreement.calendar(goal.calendar or agreement.sla.calendar)
            paces.append(pace(goal, calendar, coverage, mqls))
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
        pacing=tuple(paces),
        assignments=len(results.assignments),
        parked=results.parked,
        rejected=len(results.rejected),
    )


def routes(results: Results) -> dict[uuid.UUID, list[Assignment]]:
    """Each lead's route: its assignments, in order."""
    found: dict[uuid.UUID, list[Assignment]] = defaultdict(list)
    for assignment in results.assignments:
        found[assignment.lead_id].append(assignment)
    return found


def route_text(route: Sequence[Assignment]) -> str:
    return " > ".join(f"{a.rep_id}@{a.pool_id}" for a in route) or "(not routed)"


def first_rules(old: Sequence[Assignment], new: Sequence[Assignment]) -> str:
    rules = list(dict.fromkeys(route[0].rule_id for route in (old, new) if route))
    return " -> ".join(rules)


def change_kind(old: Sequence[Assignment], new: Sequence[Assignment]) -> str:
    """Which ``CHANGE_KINDS`` a changed route is, from the first assignment of each side."""
    if not old or not new:
        return "qualification"
    before, after = old[0], new[0]
    if (before.rep_id, before.pool_id) == (after.rep_id, after.pool_id):
        return "later"
    if before.matched_by in OWNER_MATCHES or after.matched_by in OWNER_MATCHES:
        return "owner"
    if (before.rule_id, before.pool_id) != (after.rule_id, after.pool_id):
        return "rule"
    return "rotation"


OWNER_MATCHES = frozenset({"account_owner", "open_domain_lead"})


def known_leads(inputs: Sequence[object], wanted: set[uuid.UUID]) -> tuple[dict[uuid.UUID, Lead], Coverage | None]:
    """Who the ``wanted`` leads are (their first intake event), and the days the leads cover."""
    found: dict[uuid.UUID, Lead] = {}
    first = last = None
    for event in inputs:
        if not isinstance(event, LeadReceivedV1):
            continue
        at = event.occurred_at
        first = at if first is None or at < first else first
        last = at if last is None or at > last else last
        if event.lead_id in wanted and event.lead_id not in found:
            attributes = event.attributes
            found[event.lead_id] = Lead(
                str(attributes.email) if attributes.email else None, attributes.company, event.source
            )
    return found, (Coverage(first, last) if first is not None and last is not None else None)


def compare(
    baseline: tuple[Results, Agreement],
    candidate: tuple[Results, Agreement],
    inputs: Sequence[object],
    first: int = 20,
) -> Comparison:
    delays = response_delays(baseline[0], inputs, baseline[1])
    old, new = routes(baseline[0]), routes(candidate[0])
    none: list[Assignment] = []
    differing = [
        lead for lead in old.keys() | new.keys() if route_text(old.get(lead, none)) != route_text(new.get(lead, none))
    ]
    # In the order the leads were first routed by either side: how a reader scans a period.
    differing.sort(key=lambda lead: (min(a.at for a in [*old.get(lead, none), *new.get(lead, none)]), str(lead)))
    kind_of = {lead: change_kind(old.get(lead, none), new.get(lead, none)) for lead in differing}
    shown = differing[: max(first, LISTED)]
    people, coverage = known_leads(inputs, set(shown))
    changed = [
        RouteChange(
            lead,
            route_text(old.get(lead, none)),
            route_text(new.get(lead, none)),
            kind_of[lead],
            people.get(lead, Lead()),
            first_rules(old.get(lead, none), new.get(lead, none)),
        )
        for lead in shown
    ]
    kinds = Counter(kind_of.values())
    return Comparison(
        baseline=side(baseline[0], baseline[1], delays, coverage),
        candidate=side(candidate[0], candidate[1], delays, coverage),
        leads=baseline[0].leads,
        inputs=baseline[0].inputs,
        route_changes=len(differing),
        routed_leads=len(old.keys() | new.keys()),
        changes=changed[:first],
        listed=changed[:LISTED],
        change_kinds={kind: kinds[kind] for kind in CHANGE_KINDS if kinds[kind]},
        coverage=coverage,
    )


# ---------------------------------------------------------------------- guards


GUARDS = {
    "max_mql_change_pct": "MQL count change (%)",
    "min_fairness": "fairness index (Jain)",
    "min_predicted_attainment": "predicted SLA attainment",
    "max_route_change_pct": "leads whose route changes (%)",
    "max_rule_change_pct": "leads routed by another rule or pool (%)",
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
    rule_pct = comparison.kind_pct("rule")
    if "max_rule_change_pct" in policy and rule_pct > policy["max_rule_change_pct"]:
        crossed.append(
            f"{rule_pct:.1f}% of routed leads go by another rule or pool (max {policy['max_rule_change_pct']:g}%)"
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
    for kind, count in comparison.change_kinds.items():
        table.append((f"  {CHANGE_KINDS[kind]}", "", f"{count} ({comparison.kind_pct(kind):.1f}%)"))
    for week in sorted(b.by_week.keys() | c.by_week.keys()):
        bw, cw = b.by_week.get(week, (0, 0)), c.by_week.get(week, (0, 0))
        table.append((f"MQL/SQL week {comparison.week_label(week)}", f"{bw[0]}/{bw[1]}", f"{cw[0]}/{cw[1]}"))
    for source in sorted(b.by_source.keys() | c.by_source.keys()):
        bs, cs = b.by_source.get(source, (0, 0)), c.by_source.get(source, (0, 0))
        table.append((f"MQL/SQL source {source}", f"{bs[0]}/{bs[1]}", f"{cs[0]}/{cs[1]}"))
    paced = {goal.key: goal for goal in c.pacing}
    for goal in b.pacing:
        after = paced.get(goal.key)
        table.append((goal.label, goal.summary(), after.summary() if after else "-"))
    before = {(s.pool_id, s.rep_id): s for s in b.shares}
    after_shares = {(s.pool_id, s.rep_id): s for s in c.shares}
    for pool_rep in [*before, *(k for k in after_shares if k not in before)]:
        table.append(
            (f"share {pool_rep[0]}/{pool_rep[1]}", _share(before.get(pool_rep)), _share(after_shares.get(pool_rep)))
        )
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
        lines += [
            f"  {change.who} ({change.lead.source or 'unknown source'}, rule {change.rule}), {CHANGE_KINDS[change.kind]}: "
            f"{change.baseline}  ->  {change.candidate}"
            for change in comparison.changes
        ]
    if comparison.change_kinds.get("rotation"):
        lines += ["", *textwrap.wrap(f"note: {ROTATION_NOTE}", 100)]
    lines.append("")
    lines += [f"GUARD CROSSED: {sentence}" for sentence in crossed] or ["all guards hold"]
    return "\n".join(lines)


# ---------------------------------------------------------------------- HTML
#
# Charts are inline SVG laid out from the text they carry: horizontal bars, one row per label,
# so a label of any length has its own line and a margin as wide as the longest one; an axis
# with round values under the bars. Widths of text are estimated generously per character
# (the report has no font metrics); tests/e2e/test_simulation_report.py measures the rendered
# page and fails on any label that overlaps another or leaves its chart.

LABEL_FONT, VALUE_FONT = 11, 9
LABEL_CHAR, VALUE_CHAR, TITLE_CHAR = 7.0, 6.0, 8.0  # px per character, on the wide side
BAR, BAR_GAP, GROUP_GAP, PLOT_WIDTH = 11, 2, 10, 300
COLOURS = ("#8c9bab", "#2f6fdf")


def ticks(top: float, percent: bool) -> list[float]:
    """Round axis values from 0 past ``top``: four or five steps of 1, 2, 2.5 or 5 times a power of ten."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if not percent:
        step = max(step, 1.0)  # counts are whole
    return [n * step for n in range(math.ceil(top / step - 1e-9) + 1)]


def _value(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.3g}%"
    return f"{value:,.0f}" if value == int(value) else f"{value:g}"


def _bars(
    title: str,
    series: Mapping[str, tuple[float, float]],
    percent: bool = False,
    legend: tuple[str, str] = ("baseline", "candidate"),
) -> str:
    """Two bars per label (``legend`` names them), as inline SVG with an axis under them."""
    labels = list(series)
    top = max((max(pair) for pair in series.values()), default=0.0)
    axis = ticks(top, percent)
    scale = PLOT_WIDTH / axis[-1]
    left = max((len(label) for label in labels), default=0) * LABEL_CHAR + 12
    values_width = max(len(_value(axis[-1], percent)), 4) * VALUE_CHAR + 8
    width = max(left + PLOT_WIDTH + values_width, len(title) * TITLE_CHAR + 8)
    pitch = 2 * BAR + BAR_GAP + GROUP_GAP
    plot_top = 44
    plot_bottom = plot_top + max(len(labels), 1) * pitch
    height = plot_bottom + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" role="img" '
        f'aria-label="{escape.escape(title)}">',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{escape.escape(title)}</text>',
    ]
    x = 4.0
    for name, colour in zip(legend, COLOURS, strict=True):
        parts.append(f'<rect x="{x:.0f}" y="24" width="10" height="10" fill="{colour}"/>')
        parts.append(
            f'<text class="legend" x="{x + 14:.0f}" y="33" font-size="{LABEL_FONT}">{escape.escape(name)}</text>'
        )
        x += 14 + len(name) * LABEL_CHAR + 16
    for value in axis:
        at = left + value * scale
        parts.append(f'<line x1="{at:.1f}" y1="{plot_top}" x2="{at:.1f}" y2="{plot_bottom}" stroke="#e3e3e3"/>')
        parts.append(
            f'<text class="tick" x="{at:.1f}" y="{plot_bottom + 16}" font-size="{VALUE_FONT + 1}" '
            f'text-anchor="middle" fill="#555">{_value(value, percent)}</text>'
        )
    parts.append(f'<line x1="{left}" y1="{plot_top}" x2="{left}" y2="{plot_bottom}" stroke="#999"/>')
    if not labels:
        parts.append(f'<text x="{left + 8}" y="{plot_top + 18}" font-size="{LABEL_FONT}">no data</text>')
    for row, label in enumerate(labels):
        y = plot_top + row * pitch + GROUP_GAP / 2
        parts.append(
            f'<text class="label" x="{left - 6}" y="{y + BAR + 4:.1f}" font-size="{LABEL_FONT}" '
            f'text-anchor="end">{escape.escape(label)}</text>'
        )
        for n, (value, colour) in enumerate(zip(series[label], COLOURS, strict=True)):
            top_of_bar = y + n * (BAR + BAR_GAP)
            length = value * scale
            shown = _value(value, percent)
            parts.append(
                f'<rect x="{left}" y="{top_of_bar:.1f}" width="{length:.1f}" height="{BAR}" fill="{colour}">'
                f"<title>{escape.escape(label)}, {escape.escape(legend[n])}: {shown}</title></rect>"
            )
            parts.append(
                f'<text class="value" x="{left + length + 4:.1f}" y="{top_of_bar + BAR - 2:.1f}" '
                f'font-size="{VALUE_FONT}" fill="#333">{shown}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


SORT_AND_FILTER = """
const table = document.getElementById("changes");
const body = table.tBodies[0];
const filter = document.getElementById("change-filter");
const kind = document.getElementById("change-kind");
const count = document.getElementById("change-count");
function apply() {
  const words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
  let shown = 0;
  for (const row of body.rows) {
    const text = row.textContent.toLowerCase();
    const keep = (!kind.value || row.dataset.kind === kind.value) && words.every(w => text.includes(w));
    row.hidden = !keep;
    shown += keep;
  }
  count.textContent = `${shown} of ${body.rows.length} shown`;
}
filter.addEventListener("input", apply);
kind.addEventListener("change", apply);
for (const [column, header] of [...table.tHead.rows[0].cells].entries()) {
  header.addEventListener("click", () => {
    const down = header.getAttribute("aria-sort") === "ascending";
    for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
    header.setAttribute("aria-sort", down ? "descending" : "ascending");
    const rows = [...body.rows].sort((a, b) =>
      a.cells[column].dataset.key.localeCompare(b.cells[column].dataset.key, undefined, {numeric: true}));
    if (down) rows.reverse();
    body.append(...rows);
  });
}
apply();
"""


def _cell(text: str, key: str | None = None, code: bool = False) -> str:
    shown = f"<code>{escape.escape(text)}</code>" if code else escape.escape(text)
    return f'<td data-key="{escape.escape(key if key is not None else text)}">{shown}</td>'


def _changes_table(comparison: Comparison) -> str:
    listed = comparison.listed
    header = "".join(
        f'<th scope="col" title="Sort by {name}">{name}</th>'
        for name in ("#", "lead", "company", "source", "rule", "why", "baseline", "candidate")
    )
    body = "".join(
        f'<tr data-kind="{change.kind}">'
        + _cell(str(n), f"{n:06d}")
        + _cell(change.lead.email or str(change.lead_id), code=change.lead.email is None)
        + _cell(change.lead.company or "")
        + _cell(change.lead.source)
        + _cell(change.rule)
        + _cell(CHANGE_KINDS[change.kind])
        + _cell(change.baseline)
        + _cell(change.candidate)
        + "</tr>"
        for n, change in enumerate(listed, start=1)
    )
    options = "".join(
        f'<option value="{kind}">{escape.escape(CHANGE_KINDS[kind])} ({count})</option>'
        for kind, count in comparison.change_kinds.items()
    )
    kinds = "".join(
        f"<tr><th>{escape.escape(CHANGE_KINDS[kind])}</th><td>{count}</td><td>{comparison.kind_pct(kind):.1f}%</td></tr>"
        for kind, count in comparison.change_kinds.items()
    )
    more = (
        f" The first {len(listed)} in the order they were routed are listed."
        if len(listed) < comparison.route_changes
        else ""
    )
    note = f'<p class="note">{escape.escape(ROTATION_NOTE)}</p>' if comparison.change_kinds.get("rotation") else ""
    return f"""<h2>Route changes</h2>
<p>{comparison.route_changes} of {comparison.routed_leads} routed leads ({comparison.route_change_pct:.1f}%) go to
another rep or another pool under the candidate.{more}</p>
{note}
<table class="kinds"><tr><th>why the route changes</th><td><b>leads</b></td><td><b>of routed</b></td></tr>{kinds}</table>
<div class="filters"><input id="change-filter" type="search" size="44" placeholder="Filter: email, company, source, rule, rep, pool"
 aria-label="Filter route changes"> <select id="change-kind" aria-label="Only one kind of change"><option value="">every
kind of change</option>{options}</select> <span id="change-count"></span> <span class="hint">Click a column to sort.</span></div>
<table id="changes"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>
<script>{SORT_AND_FILTER}</script>"""


SUB = ' class="sub"'  # a row that breaks down the one above it


def html(comparison: Comparison, crossed: Sequence[str]) -> str:
    b, c = comparison.baseline, comparison.candidate
    table = "".join(
        f"<tr><th{SUB if name.startswith(' ') else ''}>{escape.escape(name.strip())}</th>"
        f"<td>{escape.escape(old)}</td><td>{escape.escape(new)}</td></tr>"
        for name, old, new in rows(comparison)
    )
    weeks = {
        comparison.week_label(w): (b.by_week.get(w, (0, 0))[0], c.by_week.get(w, (0, 0))[0])
        for w in sorted(b.by_week.keys() | c.by_week.keys())
    }
    sources = {
        s: (b.by_source.get(s, (0, 0))[0], c.by_source.get(s, (0, 0))[0])
        for s in sorted(b.by_source.keys() | c.by_source.keys())
    }
    old_shares = {(s.pool_id, s.rep_id): s.share for s in b.shares}
    shares = {f"{s.pool_id}/{s.rep_id}": (old_shares.get((s.pool_id, s.rep_id), 0.0), s.share) for s in c.shares}
    targets = {f"{s.pool_id}/{s.rep_id}": (s.target, s.share) for s in c.shares if s.pool_id != OWNER_POOL}
    verdict = (
        "".join(f'<p class="bad">Guard crossed: {escape.escape(s)}</p>' for s in crossed)
        or '<p class="good">All guards hold.</p>'
    )
    charts = "".join(
        f'<div class="chart">{svg}</div>'
        for svg in (
            _bars("MQLs per week", weeks),
            _bars("MQLs per source", sources),
            _bars("Share of each pool's leads per rep", shares, percent=True),
            _bars("Candidate: each rep's target share and actual share", targets, True, ("target", "actual")),
        )
    )
    covered = comparison.coverage
    period = f", leads received {covered.first:%Y-%m-%d} to {covered.last:%Y-%m-%d}" if covered else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Coxswain simulation: {escape.escape(b.version)} vs {escape.escape(c.version)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; font-size: 13px; }}
th {{ text-align: left; font-weight: normal; }}
#changes td {{ text-align: left; }} #changes th {{ cursor: pointer; font-weight: bold; }}
#changes th[aria-sort=ascending]::after {{ content: " \\25B2"; }} #changes th[aria-sort=descending]::after {{ content: " \\25BC"; }}
.chart {{ display: inline-block; vertical-align: top; margin: 8px 24px 8px 0; }}
.bad {{ color: #b00020; font-weight: bold; }} .good {{ color: #1b7f3a; font-weight: bold; }}
th.sub {{ padding-left: 28px; }} .note {{ max-width: 60em; color: #444; }} .hint {{ color: #777; font-size: 12px; }}
footer {{ margin-top: 32px; color: #777; font-size: 12px; }}
</style></head><body>
<h1>Agreement simulation</h1>
<p>Baseline <b>{escape.escape(b.version)}</b> vs candidate <b>{escape.escape(c.version)}</b> over {comparison.leads:,} leads
({comparison.inputs:,} inputs{period}).</p>
{verdict}
{charts}
<h2>Side by side</h2>
<table><tr><th></th><td><b>baseline</b></td><td><b>candidate</b></td></tr>{table}</table>
{_changes_table(comparison)}
<footer>Replayed on one core at {comparison.leads_per_second:,.0f} leads/s ({comparison.cpu_seconds:.1f} s of CPU for
both agreements).</footer>
</body></html>
"""
