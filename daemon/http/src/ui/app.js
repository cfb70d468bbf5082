// vx insights: the dashboard's script. Every figure comes from the daemon's
// method catalogue (POST /rpc) and its event stream (GET /events); nothing
// is loaded from anywhere else. Text from the workspace (task names, logs)
// is only ever set as textContent, never as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const TOKEN = params.get("token") || sessionStorage.getItem("vx-token") || "";
sessionStorage.setItem("vx-token", TOKEN);
let ROOT = "";
const SVGNS = "http://www.w3.org/2000/svg";

// ---- helpers ---------------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of kids) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of kids) if (c) e.append(c);
  return e;
}

function dur(ms) {
  if (ms === undefined || ms === null) return "–";
  if (ms < 1000) return ms + "ms";
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + "s";
  const m = Math.floor(ms / 60000);
  return m + "m" + Math.round((ms % 60000) / 1000) + "s";
}

function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function ago(ts) {
  const s = Math.max(0, (Date.now() - ts) / 1000);
  if (s < 60) return Math.round(s) + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

function pct(x) { return (x * 100).toFixed(0) + "%"; }

function hitRate(c) {
  const n = c.cached + c.executed;
  return n ? c.cached / n : 0;
}

let rpcId = 0;
async function rpc(method, p) {
  const r = await fetch("/rpc", {
    method: "POST",
    headers: { "Authorization": "Bearer " + TOKEN, "Content-Type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params: p || {} }),
  });
  if (r.status === 401) throw new Error("the token is missing or wrong: open the URL `vx ui` prints");
  const m = await r.json();
  if (m.error) throw new Error(method + ": " + m.error.message);
  return m.result;
}

// The colour of a task's bar: by status, and by cache source for hits.
function colour(status, cache) {
  if (status === "failed") return "var(--fail)";
  if (status === "skipped") return "var(--skip)";
  if (status === "aborted") return "var(--abort)";
  if (status === "running") return "var(--run)";
  if (status === "cached") return cache === "up-to-date" ? "var(--uptodate)" : "var(--cached)";
  if (cache === "disabled") return "var(--off)";
  return "var(--ok)";
}

function legend() {
  const items = [["executed", "var(--ok)"], ["uncached", "var(--off)"], ["cache hit", "var(--cached)"],
    ["up to date", "var(--uptodate)"], ["failed", "var(--fail)"], ["skipped", "var(--skip)"], ["aborted", "var(--abort)"]];
  return el("div", { class: "legend" }, ...items.map(([t, c]) => el("span", {}, el("i", { style: "background:" + c }), t)));
}

function setMain(...kids) {
  const m = document.getElementById("main");
  m.replaceChildren(...kids);
}

function fail(e) {
  setMain(el("p", { class: "muted", id: "error", text: String(e.message || e) }));
}

// ---- the live view (SSE) ---------------------------------------------------

const live = { runs: new Map(), listeners: new Set(), source: null };

function liveRun(id, info) {
  let r = live.runs.get(id);
  if (!r) {
    r = { id, argv: [], tasks: new Map(), finished: null, total: 0, started_at: Date.now() };
    live.runs.set(id, r);
  }
  Object.assign(r, info || {});
  return r;
}

function onBusMessage(m) {
  const p = m.params || {};
  if (m.method === "run.started") {
    liveRun(p.run_id, { argv: p.argv, total: p.tasks, started_at: p.started_at, finished: null });
  } else if (m.method === "run.finished") {
    liveRun(p.run_id, { finished: p });
  } else if (m.method === "events.event") {
    const r = liveRun(p.run_id);
    const e = p.event || {};
    if (e.type === "task_started") r.tasks.set(e.id, "running");
    else if (e.type === "task_ready") r.tasks.set(e.id, "ready");
    else if (e.type === "task_cache_hit") r.tasks.set(e.id, "cached");
    else if (e.type === "task_finished") r.tasks.set(e.result.id, e.result.status);
  } else if (m.method === "events.resync") {
    loadActive();
  }
  // Keep the last few finished runs only.
  const done = [...live.runs.values()].filter((r) => r.finished);
  for (const r of done.slice(0, Math.max(0, done.length - 3))) live.runs.delete(r.id);
  for (const f of live.listeners) f(m);
}

async function loadActive() {
  try {
    const a = await rpc("runs.active");
    for (const r of a.runs) {
      const lr = liveRun(r.run_id, { argv: r.argv, total: r.counts.total, started_at: r.started_at });
      for (const t of r.tasks) lr.tasks.set(t.id, t.state);
    }
    for (const f of live.listeners) f(null);
  } catch (e) { /* shown by the connection pill */ }
}

function connectLive() {
  const pill = document.getElementById("conn");
  const es = new EventSource("/events?token=" + encodeURIComponent(TOKEN));
  live.source = es;
  es.onopen = () => { pill.textContent = "live"; pill.dataset.state = "live"; loadActive(); };
  es.onerror = () => { pill.textContent = "reconnecting"; pill.dataset.state = "down"; };
  es.onmessage = (ev) => {
    try { onBusMessage(JSON.parse(ev.data)); } catch (e) { /* not JSON: ignore */ }
  };
}

function renderLive(box) {
  const runs = [...live.runs.values()].reverse();
  if (!runs.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No run in progress. Start one with `vx run`; it shows here as it runs." }));
    return;
  }
  box.replaceChildren(...runs.map((r) => {
    const tasks = [...r.tasks.entries()];
    const done = tasks.filter(([, s]) => !["running", "ready"].includes(s)).length;
    const state = r.finished ? (r.finished.ok ? "ok" : "failed") : "running";
    return el("div", { class: "live-run", "data-run-id": r.id, "data-state": state },
      el("div", {},
        el("span", { class: "pill", "data-state": state, text: state }), " ",
        el("span", { class: "mono", text: (r.argv || []).join(" ") }), " ",
        el("span", { class: "muted", text: `${done}/${r.total || tasks.length} done` }),
        r.finished ? el("a", { href: "#/run/" + r.id, text: " timeline →" }) : null),
      el("div", { class: "live-tasks" }, ...tasks.map(([id, s]) =>
        el("span", { class: "task", "data-task": id, "data-state": s, title: s, text: id + " · " + s }))));
  }));
}

// ---- views -----------------------------------------------------------------

async function home() {
  const [list, info] = await Promise.all([
    rpc("history.runs", { cwd: ROOT, limit: 100 }),
    rpc("workspace.info", { cwd: ROOT }),
  ]);
  const liveBox = el("div", { id: "live" });
  renderLive(liveBox);
  const refresh = (m) => {
    renderLive(liveBox);
    if (m && m.method === "run.finished" && location.hash.replace(/^#\/?/, "") === "") {
      setTimeout(() => route(), 300);
    }
  };
  live.listeners.clear();
  live.listeners.add(refresh);

  const rows = list.runs.map((r) => el("tr", {
    class: "run", "data-run-id": r.run_id, onclick: () => { location.hash = "#/run/" + r.run_id; },
  },
  el("td", {}, el("span", { class: "pill", "data-state": r.ok ? "ok" : "failed", text: r.ok ? "ok" : "failed" })),
  el("td", { class: "mono" }, el("a", { href: "#/run/" + r.run_id, text: r.run_id })),
  el("td", { class: "mono", text: r.argv.slice(1).join(" ") }),
  el("td", { class: "num", text: r.counts.total }),
  el("td", { class: "num", text: r.counts.cached }),
  el("td", { class: "num", text: r.counts.executed }),
  el("td", { class: "num", text: r.counts.failed }),
  el("td", { class: "num", text: pct(hitRate(r.counts)) }),
  el("td", { class: "num", text: dur(r.duration_ms) }),
  el("td", { class: "muted", text: ago(r.started_at) })));
  const runs = list.runs.length
    ? el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ...["status", "run", "command", "tasks", "cached", "executed", "failed", "hit rate", "duration", "started"]
        .map((h, i) => el("th", { class: i >= 3 && i <= 8 ? "num" : "", text: h })))),
      el("tbody", {}, ...rows))
    : el("p", { id: "runs", class: "muted", text: "No recorded runs yet." });

  // Cache size over time: sampled by this page (cache.stats) on each visit
  // and after each run, kept in this browser (the engine records no series).
  const stats = await rpc("cache.stats", { cwd: ROOT }).catch(() => null);
  const key = "vx-cache-series:" + ROOT;
  let series = [];
  try { series = JSON.parse(localStorage.getItem(key) || "[]"); } catch (e) { series = []; }
  if (stats) {
    series.push({ t: Date.now(), bytes: stats.blob_bytes, entries: stats.entries });
    series = series.slice(-500);
    localStorage.setItem(key, JSON.stringify(series));
  }
  const hits = list.runs.slice().reverse().map((r) => ({ t: r.started_at, v: hitRate(r.counts) }));

  const flaky = info.flaky.length
    ? el("table", { id: "flaky" },
      el("thead", {}, el("tr", {}, ...["task", "mode", "runs", "failures", "retried"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...info.flaky.map((f) => el("tr", {},
        el("td", { class: "mono" }, el("a", { href: "#/task/" + encodeURIComponent(f.task), text: f.task })),
        el("td", { text: f.failure_mode }),
        el("td", { class: "num", text: f.total }),
        el("td", { class: "num", text: f.failures }),
        el("td", { class: "num", text: f.retried })))))
    : el("p", { id: "flaky", class: "muted", text: "No flaky task in the recorded history." });

  setMain(
    el("h2", {}, "Live ", el("small", { text: "runs in progress, as they happen" })),
    el("div", { class: "panel" }, liveBox),
    el("h2", {}, "Recent runs ", el("small", { text: `${info.history_runs} recorded · ${info.runs_last_24h} in the last 24 h` })),
    el("div", { class: "panel" }, runs),
    el("div", { class: "grid" },
      el("div", {},
        el("h2", {}, "Hit rate over time ", el("small", { text: "per run" })),
        el("div", { class: "panel" }, lineChart(hits, (v) => pct(v), "hit-rate", 1))),
      el("div", {},
        el("h2", {}, "Cache size over time ", el("small", { text: `${info.cache_entries} entries · ${bytes(info.cache_bytes)} now` })),
        el("div", { class: "panel" }, lineChart(series.map((s) => ({ t: s.t, v: s.bytes })), bytes, "cache-size")))),
    el("h2", {}, "Flaky tasks"),
    el("div", { class: "panel" }, flaky));
}

// A small line chart of {t, v} points.
function lineChart(points, fmt, id, fixedMax) {
  const W = 560, H = 120, P = 28;
  const s = svg("svg", { id, width: "100%", viewBox: `0 0 ${W} ${H}`, role: "img" });
  if (points.length < 1) {
    s.append(svg("text", { x: P, y: H / 2, text: "no data yet" }));
    return s;
  }
  const max = fixedMax || Math.max(...points.map((p) => p.v), 1);
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const x = (t) => P + (t1 === t0 ? (W - 2 * P) / 2 : ((t - t0) / (t1 - t0)) * (W - 2 * P));
  const y = (v) => H - P + 8 - (v / max) * (H - P - 8);
  s.append(svg("line", { x1: P, y1: y(0), x2: W - P, y2: y(0), stroke: "#262b36" }));
  s.append(svg("text", { x: 2, y: y(max) + 4, text: fmt(max) }));
  s.append(svg("polyline", {
    fill: "none", stroke: "#4c8dff", "stroke-width": 2,
    points: points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "),
  }));
  for (const p of points) {
    s.append(svg("circle", { cx: x(p.t), cy: y(p.v), r: 2.5, fill: "#4c8dff" },
      svg("title", { text: `${new Date(p.t).toLocaleString()}: ${fmt(p.v)}` })));
  }
  return s;
}

async function runPage(runId) {
  const r = await rpc("history.run", { cwd: ROOT, run_id: runId });
  const log = el("pre", { id: "log", class: "muted", text: "Click a bar for its task's log." });
  const logTitle = el("h2", { id: "log-title", text: "Log" });
  const showLog = async (t) => {
    logTitle.textContent = "Log of " + t.id;
    log.textContent = "loading…";
    try {
      const l = await rpc("task.log", { cwd: ROOT, task: t.id, run_id: r.run_id });
      log.textContent = l.log || "(empty log)";
      log.dataset.task = t.id;
    } catch (e) {
      log.textContent = String(e.message || e);
    }
  };
  setMain(
    el("h2", {}, "Run ", el("span", { class: "mono", text: r.run_id }), " ",
      el("span", { class: "pill", "data-state": r.ok ? "ok" : "failed", text: r.ok ? "ok" : "failed (exit " + r.exit_code + ")" })),
    el("p", { class: "muted" },
      el("span", { class: "mono", text: r.argv.join(" ") }),
      ` · ${r.counts.total} tasks · ${r.counts.cached} cached · ${r.counts.executed} executed · ${r.counts.failed} failed · ${dur(r.duration_ms)} · concurrency ${r.concurrency}`),
    el("div", { class: "panel" }, timeline(r, showLog), legend()),
    logTitle, log);
}

// One lane per concurrency slot; tasks without a slot (cache hits restored
// before a slot was taken) go on extra lanes, packed greedily.
function lanesOf(tasks) {
  const lanes = [];
  const sorted = tasks.slice().sort((a, b) => a.start_ms - b.start_ms || a.id.localeCompare(b.id));
  const placed = [];
  for (const t of sorted.filter((t) => t.slot !== undefined && t.slot !== null)) {
    placed.push([t, t.slot]);
  }
  const base = placed.reduce((m, [, l]) => Math.max(m, l + 1), 0);
  const free = [];
  for (const t of sorted.filter((t) => t.slot === undefined || t.slot === null)) {
    let i = free.findIndex((end) => end <= t.start_ms);
    if (i < 0) { i = free.length; free.push(0); }
    free[i] = Math.max(t.end_ms, t.start_ms + 1);
    placed.push([t, base + i]);
  }
  for (const [t, l] of placed) (lanes[l] = lanes[l] || []).push(t);
  return { placed, count: Math.max(lanes.length, 1), slotted: base };
}

function timeline(r, onPick) {
  const tasks = r.tasks;
  const { placed, count, slotted } = lanesOf(tasks);
  const t0 = Math.min(...tasks.map((t) => t.start_ms), Infinity);
  const t1 = Math.max(...tasks.map((t) => t.end_ms), t0 + 1);
  const W = 1100, L = 70, LH = 22, H = count * LH + 26;
  const span = Math.max(t1 - t0, 1);
  const x = (t) => L + ((t - t0) / span) * (W - L - 10);
  const s = svg("svg", { id: "timeline", width: "100%", viewBox: `0 0 ${W} ${H}`, "data-tasks": tasks.length });
  for (let i = 0; i < count; i++) {
    s.append(svg("text", { x: 4, y: i * LH + 15, text: i < slotted ? "slot " + i : "restored" }));
    s.append(svg("line", { x1: L, y1: i * LH + LH, x2: W - 10, y2: i * LH + LH, stroke: "#262b36" }));
  }
  for (let k = 0; k <= 4; k++) {
    s.append(svg("text", { x: L + (k / 4) * (W - L - 10) - (k === 4 ? 40 : 0), y: H - 4, text: dur(Math.round((k / 4) * span)) }));
  }
  for (const [t, lane] of placed) {
    const w = Math.max(x(t.end_ms) - x(t.start_ms), 3);
    const bar = svg("rect", {
      class: "bar", "data-task": t.id, "data-status": t.status, "data-cache": t.cache,
      x: x(t.start_ms).toFixed(1), y: lane * LH + 3, width: w.toFixed(1), height: LH - 6, rx: 2,
      fill: colour(t.status, t.cache), onclick: () => onPick(t),
    }, svg("title", { text: `${t.id}\nkey ${t.key || "–"}\n${t.status} · ${t.cache} · ${dur(t.duration_ms)}` }));
    s.append(bar);
    if (w > 60) {
      s.append(svg("text", { x: x(t.start_ms) + 4, y: lane * LH + 15, "pointer-events": "none", style: "fill:#0f1115", text: t.id }));
    }
  }
  return s;
}

async function taskPage(task) {
  const [h, why] = await Promise.all([
    rpc("history.task", { cwd: ROOT, task, limit: 100 }),
    rpc("history.why", { cwd: ROOT, task }).catch((e) => ({ error: String(e.message || e) })),
  ]);
  const rows = h.rows.slice().sort((a, b) => a.started_at - b.started_at);
  const st = h.stats;
  const stat = (label, v, id) => el("div", { id }, el("b", { text: v }), el("span", { class: "muted", text: label }));
  const statsBox = st
    ? el("div", { class: "stats", id: "stats" },
      stat("runs", st.total, "stat-total"),
      stat("p50", dur(st.p50_ms), "stat-p50"),
      stat("p99", dur(st.p99_ms), "stat-p99"),
      stat("hit rate", pct(st.hit_rate), "stat-hit-rate"),
      stat("success rate", pct(st.success_rate), "stat-success"),
      stat("failure mode", st.failure_mode, "stat-failure-mode"))
    : el("p", { class: "muted", id: "stats", text: "No statistics yet." });
  const whyBox = why.error
    ? el("p", { class: "muted", id: "why", text: why.error })
    : el("div", { id: "why" },
      el("p", { class: "muted", text: why.compared
        ? `key ${(why.previous_key || "").slice(0, 12)} → ${(why.key || "").slice(0, 12)}`
        : "Fewer than two recorded keys to compare." }),
      why.changes.length
        ? el("ul", { class: "changes" }, ...why.changes.map((c) =>
          el("li", { class: "mono", text: `${c.kind} ${c.component}${c.name ? " " + c.name : ""}` })))
        : el("p", { class: "muted", text: why.compared ? "The key did not change." : "" }),
      ...why.advice.map((a) => el("p", { class: "muted", text: a })));
  setMain(
    el("h2", {}, "Task ", el("span", { class: "mono", id: "task-name", text: task })),
    el("div", { class: "panel" }, statsBox),
    el("h2", {}, "Duration ", el("small", { text: "over its recorded runs, oldest first" })),
    el("div", { class: "panel" }, sparkline(rows)),
    el("h2", {}, "Why the key changed ", el("small", { text: "its last two recorded keys" })),
    el("div", { class: "panel" }, whyBox),
    el("h2", {}, "History"),
    el("div", { class: "panel" }, el("table", { id: "task-history" },
      el("thead", {}, el("tr", {}, ...["run", "status", "cache", "duration", "attempts", "started"].map((x) => el("th", { text: x })))),
      el("tbody", {}, ...rows.slice().reverse().map((r) => el("tr", { class: "row", "data-run-id": r.run_id },
        el("td", { class: "mono" }, el("a", { href: "#/run/" + r.run_id, text: r.run_id })),
        el("td", {}, el("span", { class: "pill", "data-state": r.task.status, text: r.task.status })),
        el("td", { text: r.task.cache }),
        el("td", { class: "num", text: dur(r.task.duration_ms) }),
        el("td", { class: "num", text: r.task.attempts }),
        el("td", { class: "muted", text: ago(r.started_at) })))))));
}

function sparkline(rows) {
  const W = 560, H = 60, P = 4;
  const s = svg("svg", { id: "sparkline", width: "100%", viewBox: `0 0 ${W} ${H}`, "data-points": rows.length });
  if (!rows.length) { s.append(svg("text", { x: 4, y: 30, text: "no runs yet" })); return s; }
  const max = Math.max(...rows.map((r) => r.task.duration_ms), 1);
  const x = (i) => P + (rows.length === 1 ? (W - 2 * P) / 2 : (i / (rows.length - 1)) * (W - 2 * P));
  const y = (v) => H - P - (v / max) * (H - 2 * P);
  s.append(svg("polyline", {
    fill: "none", stroke: "#39c5cf", "stroke-width": 1.5,
    points: rows.map((r, i) => `${x(i).toFixed(1)},${y(r.task.duration_ms).toFixed(1)}`).join(" "),
  }));
  rows.forEach((r, i) => s.append(svg("circle", { class: "point", cx: x(i), cy: y(r.task.duration_ms), r: 2.5, fill: colour(r.task.status, r.task.cache) },
    svg("title", { text: `${r.run_id}: ${dur(r.task.duration_ms)} (${r.task.status})` }))));
  return s;
}

// ---- routing ---------------------------------------------------------------

async function route() {
  const h = location.hash.replace(/^#\/?/, "");
  try {
    if (h.startsWith("run/")) { live.listeners.clear(); await runPage(decodeURIComponent(h.slice(4))); }
    else if (h.startsWith("task/")) { live.listeners.clear(); await taskPage(decodeURIComponent(h.slice(5))); }
    else await home();
    document.body.dataset.view = h.split("/")[0] || "home";
  } catch (e) {
    fail(e);
  }
}

async function boot() {
  try {
    const r = await fetch("/version", { headers: { "Authorization": "Bearer " + TOKEN } });
    if (r.status === 401) throw new Error("The token is missing or wrong: open the URL `vx ui` prints.");
    const v = await r.json();
    ROOT = v.root;
    document.getElementById("root").textContent = v.root + " · vx " + v.version;
  } catch (e) {
    fail(e);
    return;
  }
  connectLive();
  window.addEventListener("hashchange", route);
  await route();
}

boot();
