"""The live dashboard: one static page that polls ``/v1/reports/summary`` and draws it.

No build step and no third-party assets: plain DOM and inline SVG, so it works offline and
behind a strict content security policy. Text from the data is set with ``textContent`` only.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Coxswain - sales and marketing SLA</title>
<style>
  :root { --bg:#0f172a; --panel:#111c33; --ink:#e2e8f0; --dim:#94a3b8; --line:#1e293b; --ok:#22c55e; --bad:#ef4444; --accent:#38bdf8; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
  header { display:flex; align-items:baseline; gap:16px; padding:14px 20px; border-bottom:1px solid var(--line); }
  header h1 { font-size:18px; margin:0; }
  header .meta { color:var(--dim); font-size:12px; }
  main { display:grid; grid-template-columns: repeat(3, 1fr); gap:14px; padding:14px 20px; }
  section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 14px; min-height:120px; }
  section.wide { grid-column: span 2; }
  section.full { grid-column: span 3; }
  h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--dim); margin:0 0 10px; }
  .bar { display:grid; grid-template-columns: 90px 1fr 110px; align-items:center; gap:8px; margin:4px 0; }
  .bar .track { background:var(--line); height:18px; border-radius:3px; overflow:hidden; }
  .bar .fill { background:var(--accent); height:100%; }
  .bar .num { text-align:right; font-variant-numeric: tabular-nums; }
  .kpis { display:flex; gap:18px; flex-wrap:wrap; }
  .kpi .v { font-size:24px; font-weight:600; font-variant-numeric: tabular-nums; }
  .kpi .l { color:var(--dim); font-size:12px; }
  table { border-collapse:collapse; width:100%; font-variant-numeric: tabular-nums; }
  th, td { padding:3px 6px; text-align:right; border-bottom:1px solid var(--line); font-size:12px; }
  th:first-child, td:first-child { text-align:left; }
  .heat td.cell { text-align:center; color:#0b1220; font-weight:600; min-width:34px; }
  .empty { color:var(--dim); font-style:italic; }
  .behind { color:var(--bad); } .ontrack { color:var(--ok); }
  svg text { fill: var(--dim); font-size:11px; }
</style>
</head>
<body>
<header>
  <h1>Coxswain &middot; sales &amp; marketing SLA</h1>
  <span class="meta" id="range"></span>
  <span class="meta" id="updated">loading&hellip;</span>
  <span class="meta"><a href="/scorecard" style="color:var(--accent)">scorecard</a></span>
</header>
<main>
  <section class="wide" id="funnel"><h2>Funnel</h2><div class="body"></div></section>
  <section id="speed"><h2>Speed to lead</h2><div class="body"></div></section>
  <section class="wide" id="heatmap"><h2>SLA attainment per rep</h2><div class="body"></div></section>
  <section id="pacing"><h2>Marketing pacing (MQLs)</h2><div class="body"></div></section>
  <section class="full" id="breaches"><h2>Breach timeline</h2><div class="body"></div></section>
  <section id="rejections"><h2>SAL rejection reasons</h2><div class="body"></div></section>
  <section class="wide" id="closedloop"><h2>Closed loop by source and campaign</h2><div class="body"></div></section>
</main>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const hours = Number(params.get("hours") || 24);
const refresh = Number(params.get("refresh") || 5);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = String(text);
  return node;
}
function body(id) { const b = document.querySelector("#" + id + " .body"); b.replaceChildren(); return b; }
function pct(x) { return x === null || x === undefined ? "-" : (x * 100).toFixed(1) + "%"; }
function secs(x) { if (x === null || x === undefined) return "-"; return x < 1 ? (x * 1000).toFixed(0) + " ms" : x < 120 ? x.toFixed(1) + " s" : (x / 60).toFixed(1) + " min"; }
function heat(share) { const hue = Math.round(120 * share); return "hsl(" + hue + ", 70%, 55%)"; }

function drawFunnel(f) {
  const b = body("funnel");
  const top = Math.max(1, ...f.stages.map(s => s.entered));
  for (const s of f.stages) {
    const row = el("div", {class: "bar", "data-stage": s.stage});
    row.append(el("span", {}, s.stage.toUpperCase()));
    const track = el("div", {class: "track"});
    track.append(el("div", {class: "fill", style: "width:" + (100 * s.entered / top).toFixed(1) + "%"}));
    row.append(track, el("span", {class: "num"}, s.entered + (s.conversion === null ? "" : "  (" + pct(s.conversion) + ")")));
    b.append(row);
  }
  const detours = f.detours.map(d => d.stage + " " + d.entered).join(" | ");
  b.append(el("div", {class: "meta"}, "detours: " + detours));
}

function drawSpeed(s) {
  const b = body("speed");
  const k = el("div", {class: "kpis"});
  const add = (v, l) => { const d = el("div", {class: "kpi"}); d.append(el("div", {class: "v"}, v), el("div", {class: "l"}, l)); k.append(d); };
  add(secs(s.system_seconds.p50), "system p50 (received to routed)");
  add(secs(s.system_seconds.p95), "system p95");
  add(secs(s.human_seconds.p50), "human p50 (routed to first touch)");
  add(secs(s.human_seconds.p90), "human p90");
  add(String(s.routed), "routed");
  add(String(s.untouched), "not yet touched");
  b.append(k);
}

function drawHeatmap(sla) {
  const b = body("heatmap");
  if (!sla.heatmap.length) { b.append(el("div", {class: "empty"}, "no SLA clock decided in this range yet")); return; }
  const buckets = [...new Set(sla.heatmap.map(c => c.bucket))].sort();
  const reps = Object.keys(sla.by_rep).sort();
  const table = el("table", {class: "heat"});
  const head = el("tr");
  head.append(el("th", {}, "rep"));
  for (const bucket of buckets) head.append(el("th", {}, bucket.length > 10 ? bucket.slice(11, 16) : bucket.slice(5)));
  head.append(el("th", {}, "met"), el("th", {}, "breached"), el("th", {}, "attainment"));
  table.append(head);
  const cells = new Map(sla.heatmap.map(c => [c.rep + "|" + c.bucket, c]));
  for (const rep of reps) {
    const tr = el("tr", {"data-rep": rep});
    tr.append(el("td", {}, rep));
    for (const bucket of buckets) {
      const c = cells.get(rep + "|" + bucket);
      const td = el("td", {class: "cell"}, c ? pct(c.attainment).replace(".0%", "%") : "");
      if (c) { td.style.background = heat(c.attainment); td.title = c.met + " met, " + c.breached + " breached"; }
      tr.append(td);
    }
    const total = sla.by_rep[rep];
    tr.append(el("td", {}, total.met), el("td", {}, total.breached), el("td", {}, pct(total.attainment)));
    table.append(tr);
  }
  b.append(table);
  b.append(el("div", {class: "meta"}, "overall " + pct(sla.overall.attainment) + " of " + (sla.overall.met + sla.overall.breached) + " decided clocks"));
}

function drawBreaches(sla, since, until) {
  const b = body("breaches");
  const list = sla.breaches;
  const reps = [...new Set(Object.keys(sla.by_rep))].sort();
  const width = 1200, row = 18, height = Math.max(40, reps.length * row + 28);
  const chart = svg("svg", {viewBox: "0 0 " + width + " " + height, width: "100%", height: height, role: "img"});
  const t0 = Date.parse(since), t1 = Date.parse(until);
  const x = t => 80 + (width - 100) * Math.min(1, Math.max(0, (Date.parse(t) - t0) / (t1 - t0)));
  reps.forEach((rep, i) => {
    chart.append(svg("text", {x: 4, y: 16 + i * row}, rep));
    chart.append(svg("line", {x1: 80, x2: width - 20, y1: 12 + i * row, y2: 12 + i * row, stroke: "#1e293b"}));
  });
  for (const breach of list) {
    const i = reps.indexOf(breach.rep);
    const dot = svg("circle", {cx: x(breach.at), cy: 12 + Math.max(i, 0) * row, r: 4, fill: breach.tier === "hot" ? "#ef4444" : "#f59e0b", class: "breach"});
    dot.append(svg("title", {}, breach.at + " " + breach.rep + " " + breach.tier + " " + breach.milestone));
    chart.append(dot);
  }
  chart.append(svg("text", {x: 80, y: height - 4}, new Date(t0).toISOString().slice(0, 16).replace("T", " ")));
  chart.append(svg("text", {x: width - 130, y: height - 4}, new Date(t1).toISOString().slice(0, 16).replace("T", " ")));
  b.append(el("div", {class: "meta"}, list.length + " breach(es) in range; red = hot, amber = warm/cold"));
  b.append(chart);
}

function drawPacing(p) {
  const b = body("pacing");
  const k = el("div", {class: "kpis"});
  const kpi = el("div", {class: "kpi"});
  kpi.append(el("div", {class: "v", id: "mql-count"}, p.mqls), el("div", {class: "l"}, "MQLs in range"));
  k.append(kpi);
  b.append(k);
  if (!p.targets.length) b.append(el("div", {class: "empty"}, "no MQL target in the agreement (marketing.mql_targets)"));
  for (const t of p.targets) {
    const line = el("div", {class: "bar"});
    line.append(el("span", {}, t.target_id));
    const track = el("div", {class: "track"});
    track.append(el("div", {class: "fill", style: "width:" + Math.min(100, 100 * t.actual / Math.max(1, t.target)).toFixed(1) + "%"}));
    line.append(track, el("span", {class: "num " + (t.behind ? "behind" : "ontrack")}, t.actual + " / " + t.target));
    b.append(line);
    b.append(el("div", {class: "meta"}, "expected by now " + t.expected.toFixed(1) + " (" + pct(t.elapsed_share) + " of the " + t.period + "), pacing " + pct(t.pacing)));
  }
  if (p.daily.length > 1) {
    const top = Math.max(1, ...p.daily.map(d => d.mqls));
    const chart = svg("svg", {viewBox: "0 0 300 60", width: "100%", height: 60});
    const w = 300 / p.daily.length;
    p.daily.forEach((d, i) => {
      const h = 50 * d.mqls / top;
      const bar = svg("rect", {x: i * w + 1, y: 52 - h, width: Math.max(2, w - 2), height: h, fill: "#38bdf8"});
      bar.append(svg("title", {}, d.day + ": " + d.mqls));
      chart.append(bar);
    });
    b.append(chart);
  }
}

function drawRejections(r) {
  const b = body("rejections");
  b.append(el("div", {class: "meta"}, r.accepted + " accepted, " + r.rejected + " rejected (" + pct(r.rejection_rate) + ")"));
  if (!r.reasons.length) { b.append(el("div", {class: "empty"}, "no rejection in range")); return; }
  const table = el("table");
  for (const reason of r.reasons) { const tr = el("tr"); tr.append(el("td", {}, reason.reason), el("td", {}, reason.count)); table.append(tr); }
  b.append(table);
}

function drawClosedLoop(c) {
  const b = body("closedloop");
  if (!c.rows.length) { b.append(el("div", {class: "empty"}, "no opportunity or deal in range")); return; }
  const table = el("table");
  const head = el("tr");
  for (const h of ["source", "campaign", "opportunities", "won", "lost", "won amount"]) head.append(el("th", {}, h));
  table.append(head);
  for (const r of c.rows) {
    const tr = el("tr");
    tr.append(el("td", {}, r.source), el("td", {}, r.campaign), el("td", {}, r.opportunities), el("td", {}, r.won), el("td", {}, r.lost), el("td", {}, r.won_amount.toLocaleString("en-US")));
    table.append(tr);
  }
  b.append(table);
}

async function load() {
  const until = new Date();
  const since = new Date(until.getTime() - hours * 3600 * 1000);
  const period = hours <= 0.5 ? "minute" : hours <= 48 ? "hour" : "day";
  const query = new URLSearchParams({since: since.toISOString(), until: until.toISOString(), period: period});
  for (const key of ["source", "campaign", "persona"]) if (params.get(key)) query.set(key, params.get(key));
  const response = await fetch("/v1/reports/summary?" + query.toString());
  if (!response.ok) throw new Error("summary: HTTP " + response.status);
  const s = await response.json();
  document.getElementById("range").textContent = hours < 1 ? "last " + Math.round(hours * 60) + " min" : "last " + hours + " h";
  drawFunnel(s.funnel);
  drawSpeed(s.speed_to_lead);
  drawHeatmap(s.sla);
  drawBreaches(s.sla, s.since, s.until);
  drawPacing(s.pacing);
  drawRejections(s.sal_rejections);
  drawClosedLoop(s.closed_loop);
  const updated = document.getElementById("updated");
  updated.textContent = "updated " + new Date().toLocaleTimeString() + ", refreshing every " + refresh + " s";
  document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
}

async function tick() {
  try { await load(); } catch (error) { document.getElementById("updated").textContent = "update failed: " + error.message; }
  setTimeout(tick, refresh * 1000);
}
tick();
</script>
</body>
</html>
"""
