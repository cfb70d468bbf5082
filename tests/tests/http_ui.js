// Drives the insights dashboard in headless Chromium (playwright-core,
// Debian's /usr/bin/chromium) for tests/tests/http_ui.rs. It asserts on the
// rendered DOM and talks to the Rust test over stdin/stdout lines:
//   -> "ready-live"      the page shows the live view; start the run
//   -> "saw-running"     the slow task shows as running; open its gate
//   -> "ok"              every check passed
// Screenshots go to SHOTS (a directory under the target dir).
// Inputs (env): URL (with token), PLAYWRIGHT (the playwright-core dir),
// CHROMIUM, SHOTS, RUNS (runs recorded), RUN_ID and RUN_TASKS (a run and
// its task count), TASK (a task with history) and TASK_ROWS, SLOW (the
// live run's slow task), LOG_TEXT (a line of TASK's log).
"use strict";

const { chromium } = require(process.env.PLAYWRIGHT);
const readline = require("readline");
const path = require("path");

const rl = readline.createInterface({ input: process.stdin });
const lines = [];
let waiting = null;
rl.on("line", (l) => { if (waiting) { const w = waiting; waiting = null; w(l); } else lines.push(l); });
function nextLine() {
  return new Promise((res) => { if (lines.length) res(lines.shift()); else waiting = res; });
}

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

const T = 60000;

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const shot = (name) => page.screenshot({ path: path.join(process.env.SHOTS, name), fullPage: true });

  // Recent runs.
  await page.goto(process.env.URL);
  await page.waitForSelector("#runs tr.run", { timeout: T });
  const runs = await page.$$eval("#runs tr.run", (rs) => rs.map((r) => r.dataset.runId));
  check(runs.length === Number(process.env.RUNS), `runs listed: ${runs.length} vs ${process.env.RUNS}`);
  check(runs.includes(process.env.RUN_ID), "the run is listed");
  await page.waitForSelector("#conn[data-state=live]", { timeout: T });
  await shot("home.png");

  // A run's timeline: one bar per task it ran, hover text, click → log.
  await page.click(`#runs tr.run[data-run-id="${process.env.RUN_ID}"] a`);
  await page.waitForSelector("svg#timeline rect.bar", { timeout: T });
  const bars = await page.$$eval("svg#timeline rect.bar", (bs) => bs.map((b) => b.dataset.task));
  check(bars.length === Number(process.env.RUN_TASKS), `bars: ${bars.length} vs ${process.env.RUN_TASKS}`);
  check(new Set(bars).size === bars.length, "one bar per task");
  const title = await page.$eval(`svg#timeline rect.bar[data-task="${process.env.TASK}"] title`, (t) => t.textContent);
  check(title.includes(process.env.TASK) && /key [0-9a-f]{64}/.test(title) && /\d+(ms|\.\d+s)/.test(title), "hover shows key and duration: " + title);
  await page.click(`svg#timeline rect.bar[data-task="${process.env.TASK}"]`);
  await page.waitForFunction((t) => {
    const l = document.querySelector("pre#log");
    return l && l.dataset.task && l.textContent.includes(t);
  }, process.env.LOG_TEXT, { timeout: T });
  await shot("timeline.png");

  // The task page: history rows, sparkline, statistics, why.
  await page.goto(process.env.URL + "#/task/" + encodeURIComponent(process.env.TASK));
  await page.waitForSelector("#task-history tr.row", { timeout: T });
  const rows = await page.$$eval("#task-history tr.row", (rs) => rs.length);
  check(rows === Number(process.env.TASK_ROWS), `history rows: ${rows} vs ${process.env.TASK_ROWS}`);
  const points = await page.$$eval("#sparkline circle.point", (ps) => ps.length);
  check(points === rows, `sparkline points: ${points}`);
  const p50 = await page.$eval("#stat-p50 b", (b) => b.textContent);
  check(/\d/.test(p50), "p50 shown: " + p50);
  const mode = await page.$eval("#stat-failure-mode b", (b) => b.textContent);
  check(mode.length > 0, "failure mode shown");
  const why = await page.$eval("#why", (w) => w.textContent);
  check(/changed file|added file|removed file/.test(why), "why lists the changed input: " + why);
  await shot("task.png");

  // The live view: a task changes state while a run is in progress.
  await page.goto(process.env.URL + "#/");
  await page.waitForSelector("#live", { timeout: T });
  await page.waitForSelector("#conn[data-state=live]", { timeout: T });
  console.log("ready-live");
  const slow = `#live .task[data-task="${process.env.SLOW}"]`;
  await page.waitForSelector(`${slow}[data-state=running]`, { timeout: T });
  await shot("live-running.png");
  console.log("saw-running");
  await page.waitForSelector(`${slow}[data-state=success]`, { timeout: T });
  await page.waitForSelector(`#live .live-run[data-state=ok]`, { timeout: T });
  await shot("live-done.png");
  // The finished run joins the list.
  await page.waitForFunction((n) => document.querySelectorAll("#runs tr.run").length === n, Number(process.env.RUNS) + 1, { timeout: T });
  await shot("dashboard.png");

  check(errors.length === 0, "no script errors: " + errors.join("; "));
  await browser.close();
  console.log("ok");
  process.exit(0);
})().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
