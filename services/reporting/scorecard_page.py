"""The scorecard as a page: server-rendered HTML, no script, every value from the data escaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

STYLE = """
  :root { --bg:#0f172a; --panel:#111c33; --ink:#e2e8f0; --dim:#94a3b8; --line:#1e293b; --ok:#22c55e; --bad:#ef4444; --none:#94a3b8; --accent:#38bdf8; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
  header { display:flex; align-items:baseline; flex-wrap:wrap; gap:16px; padding:14px 20px; border-bottom:1px solid var(--line); }
  header h1 { font-size:18px; margin:0; }
  .meta { color:var(--dim); font-size:12px; }
  a { color:var(--accent); }
  main { display:grid; grid-template-columns: repeat(2, 1fr); gap:14px; padding:14px 20px; }
  section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
  section.full { grid-column: span 2; }
  h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--dim); margin:0 0 10px; }
  h3 { font-size:12px; color:var(--dim); margin:12px 0 4px; font-weight:600; }
  .verdict { display:inline-block; padding:2px 10px; border-radius:999px; font-weight:700; font-size:13px; }
  .verdict.met { background:var(--ok); color:#052e16; }
  .verdict.missed { background:var(--bad); color:#450a0a; }
  .verdict.no_data { background:var(--none); color:#0f172a; }
  .kpis { display:flex; gap:18px; flex-wrap:wrap; margin:10px 0; }
  .kpi .v { font-size:22px; font-weight:600; font-variant-numeric: tabular-nums; }
  .kpi .l { color:var(--dim); font-size:12px; }
  table { border-collapse:collapse; width:100%; font-variant-numeric: tabular-nums; }
  th, td { padding:3px 6px; text-align:right; border-bottom:1px solid var(--line); font-size:12px; }
  th:first-child, td:first-child { text-align:left; }
  td.bad { color:var(--bad); } td.ok { color:var(--ok); }
  .empty { color:var(--dim); font-style:italic; }
  nav a { margin-right:10px; }
"""

VERDICT_TEXT = {"met": "met", "missed": "missed", "no_data": "no data"}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _cell(value: Any, css: str = "") -> str:
    return f'<td class="{css}">{escape(str(value))}</td>' if css else f"<td>{escape(str(value))}</td>"


def _table(headers: Sequence[str], rows: Iterable[str], empty: str, name: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<div class="empty" data-empty="{escape(name)}">{escape(empty)}</div>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table data-table="{escape(name)}"><tr>{head}</tr>{body}</table>'


def _verdict(side: str, verdict: str) -> str:
    return (
        f'<span class="verdict {escape(verdict)}" data-side="{escape(side)}" data-verdict="{escape(verdict)}">'
        f"{escape(VERDICT_TEXT.get(verdict, verdict))}</span>"
    )


def _kpi(value: str, label: str) -> str:
    return f'<div class="kpi"><div class="v">{escape(value)}</div><div class="l">{escape(label)}</div></div>'


def _attainment_rows(rows: Sequence[dict[str, Any]], target: float, kind: str) -> list[str]:
    out = []
    for row in rows:
        attained = row["attainment"]
        css = "" if attained is None else "ok" if attained >= target - 1e-9 else "bad"
        out.append(
            f'<tr data-{kind}="{escape(row["key"])}">'
            + _cell(row["key"])
            + _cell(row["met"])
            + _cell(row["breached"])
            + _cell(pct(attained), css)
            + "</tr>"
        )
    return out


def sales_section(sales: dict[str, Any]) -> str:
    target = float(sales["attainment_target"])
    overall = sales["overall"]
    system, human = sales["system_seconds"], sales["human_seconds"]
    kpis = "".join(
        (
            _kpi(pct(overall["attainment"]), f"SLA attainment (target {pct(target)})"),
            _kpi(str(overall["met"]), "met in time"),
            _kpi(str(sales["breaches"]), "breaches"),
            _kpi(str(sales["routed"]), "leads routed"),
            _kpi(str(sales["untouched"]), "not touched"),
        )
    )
    speed = "".join(
        (
            _kpi(secs(system["p50"]), "system p50 (received to routed)"),
            _kpi(secs(system["p90"]), "system p90"),
            _kpi(secs(human["p50"]), "human p50 (routed to first touch)"),
            _kpi(secs(human["p90"]), "human p90"),
        )
    )
    headers = ("", "met", "breached", "attainment")
    reasons = [
        f'<tr data-reason="{escape(r["reason"])}">' + _cell(r["reason"]) + _cell(r["count"]) + "</tr>"
        for r in sales["rejection_reasons"]
    ]
    return (
        '<section id="sales"><h2>Sales: follow every lead up in time '
        + _verdict("sales", sales["verdict"])
        + "</h2>"
        + f'<div class="kpis">{kpis}</div>'
        + "<h3>Per rep</h3>"
        + _table(("rep", *headers[1:]), _attainment_rows(sales["by_rep"], target, "rep"), "no clock decided", "reps")
        + "<h3>Per team</h3>"
        + _table(("team", *headers[1:]), _attainment_rows(sales["by_team"], target, "team"), "none", "teams")
        + "<h3>Per tier</h3>"
        + _table(("tier", *headers[1:]), _attainment_rows(sales["by_tier"], target, "tier"), "none", "tiers")
        + "<h3>Speed to lead</h3>"
        + f'<div class="kpis">{speed}</div>'
        + f"<h3>SAL: {int(sales['sal_accepted'])} accepted, {int(sales['sal_rejected'])} rejected</h3>"
        + _table(("rejection reason", "count"), reasons, "no rejection", "reasons")
        + "</section>"
    )


def marketing_section(marketing: dict[str, Any]) -> str:
    kpis = _kpi(str(marketing["mqls"]), "MQLs") + _kpi(str(marketing["leads"]), "new leads")
    targets = [
        f'<tr data-target="{escape(t["target_id"])}">'
        + _cell(t["target_id"])
        + _cell(f"{t['target']} per {t['period']}")
        + _cell(f"{float(t['expected']):.1f}")
        + _cell(t["actual"])
        + _cell(pct(t["attainment"]), "ok" if t["met"] else "bad")
        + "</tr>"
        for t in marketing["targets"]
    ]
    sources = [
        f'<tr data-source="{escape(s["source"])}">'
        + _cell(s["source"])
        + _cell(s["leads"])
        + _cell(s["mqls"])
        + "</tr>"
        for s in marketing["by_source"]
    ]
    return (
        '<section id="marketing"><h2>Marketing: deliver the agreed MQL volume '
        + _verdict("marketing", marketing["verdict"])
        + "</h2>"
        + f'<div class="kpis">{kpis}</div>'
        + "<h3>Targets, pro-rated to this period's business time</h3>"
        + _table(
            ("target", "agreed", "expected", "MQLs", "attainment"),
            targets,
            "no MQL target in the agreement (marketing.mql_targets)",
            "targets",
        )
        + "<h3>By source</h3>"
        + _table(("source", "new leads", "MQLs"), sources, "no lead in this period", "sources")
        + "</section>"
    )


def _nav(periods: Sequence[dict[str, Any]], current: str | None) -> str:
    links = ['<a href="/scorecard/current">running period</a>', '<a href="/dashboard">live dashboard</a>']
    for p in periods[:12]:
        name = escape(p["period"])
        links.append(name if p["period"] == current else f'<a href="/scorecard/{name}">{name}</a>')
    return "<nav>" + " ".join(links) + "</nav>"


def page(
    card: dict[str, Any] | None,
    periods: Sequence[dict[str, Any]],
    provisional: bool = False,
    missing: str | None = None,
) -> str:
    if card is None:
        title = "Coxswain scorecard"
        if missing is not None:
            note = f"No scorecard was issued for {escape(missing)}."
        else:
            note = "No scorecard has been issued yet: the first one comes when the current period closes."
        head = f'<h1>Scorecard</h1><span class="meta">{note}</span>'
        body = (
            f'<section class="full"><div class="empty" id="none">{note} The running period is shown under '
            '<a href="/scorecard/current">running period</a>.</div></section>'
        )
    else:
        name = escape(card["period"])
        title = f"Coxswain scorecard {card['period']}"
        state = (
            "running period, figures so far (not issued)"
            if provisional
            else f"issued {escape(str(card.get('occurred_at', '')))}"
        )
        head = (
            f'<h1>Scorecard <span id="period">{name}</span></h1>'
            f'<span class="meta">{escape(card["cadence"])} from {escape(card["period_start"])} '
            f"to {escape(card['period_end'])} ({escape(card['timezone'])})</span>"
            f'<span class="meta">agreement {escape(card["agreement_version"])}; {state}</span>'
        )
        body = sales_section(card["sales"]) + marketing_section(card["marketing"])
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header>{head}{_nav(periods, None if card is None else card['period'])}</header>"
        f"<main>{body}</main></body></html>"
    )
