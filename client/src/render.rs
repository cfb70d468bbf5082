//! Rendering: prefixed task lines, the progress line, the summary, plans,
//! DOT graphs and their file formats, `vx ls`. Colour only on a TTY, and
//! never when `NO_COLOR` is set; the progress line only when stdout is a
//! terminal and never with `--json` or in `vx watch`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use vx_proto::{CacheSource, Plan, Prediction, RunEvent, RunSummary, Stream, TaskStatus};

fn colour_enabled(tty: bool) -> bool {
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    match std::env::var("FORCE_COLOR").ok().as_deref() {
        Some("0") | Some("false") => false,
        Some(_) => true,
        None => tty,
    }
}

const PALETTE: &[&str] = &["36", "33", "35", "32", "34", "96", "93", "95"];

/// Flushes stdout (EPIPE is not an error).
pub fn flush() {
    let _ = std::io::stdout().flush();
}

pub fn bytes(n: u64) -> String {
    const U: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

pub struct Ui {
    json: bool,
    /// Whether per-task progress lines are shown (`full`, `new-only`).
    progress: bool,
    colour: bool,
    err_colour: bool,
    colours: HashMap<String, &'static str>,
    out: std::io::BufWriter<std::io::Stdout>,
    /// `vx watch`: cycles are announced, and only cycles that did something
    /// print a summary.
    pub watching: bool,
    /// A `settled` summary was printed (persistent tasks keep running).
    settled: bool,
    /// The current watch cycle's header, printed before its first news.
    pending_header: Option<String>,
    /// The progress line of a run on a terminal (never in pipes, `--json`
    /// or `vx watch`); `None` when it is not shown.
    progress_line: Option<Progress>,
    /// Lines carry the task's name (`--log-prefix`, on unless `none`).
    log_prefix: bool,
    /// Each task's output is held and shown in one block when the task
    /// ends (`--log-order=grouped`), by task id.
    grouped: Option<HashMap<String, Vec<String>>>,
    /// `--output-logs=hash-only`: a hit's line says the logs are suppressed.
    hash_only: bool,
    /// Tasks of this run (cycle) served by the remote cache.
    remote_hits: std::collections::HashSet<String>,
}

/// The state behind the progress line: `[3/12] 2 cached · running: a#build, b#test`.
#[derive(Default)]
struct Progress {
    total: usize,
    done: usize,
    hits: usize,
    /// In start order.
    running: Vec<String>,
    /// Whether the line is on the screen (the cursor is at its end).
    shown: bool,
    /// When it was last drawn (output lines redraw it at most every 50 ms).
    drawn_at: Option<std::time::Instant>,
    /// The run settled or finished: the summary replaced the line.
    over: bool,
}

impl Progress {
    fn update(&mut self, e: &RunEvent) {
        match e {
            RunEvent::RunStarted { tasks, .. } => self.total = *tasks,
            RunEvent::TaskStarted { id, .. } if !self.running.contains(id) => {
                self.running.push(id.clone());
            }
            RunEvent::TaskCacheHit { id, .. } => {
                self.running.retain(|r| r != id);
                self.done += 1;
                self.hits += 1;
            }
            RunEvent::TaskFinished { result } => {
                self.running.retain(|r| *r != result.id);
                if result.status != TaskStatus::Cached {
                    self.done += 1;
                }
            }
            RunEvent::TaskReady { id } => self.running.retain(|r| r != id),
            RunEvent::Settled { .. } => self.over = true,
            _ => {}
        }
    }

    /// The line, at most `width` characters.
    fn line(&self, width: usize) -> String {
        let mut s = format!(
            "[{}/{}] {} cached",
            self.done.min(self.total.max(self.done)),
            self.total.max(self.done),
            self.hits
        );
        if !self.running.is_empty() {
            s.push_str(" · running: ");
            for (i, id) in self.running.iter().enumerate() {
                let more = self.running.len() - i;
                // Leave room for " (+N)".
                if i > 0 && s.chars().count() + id.len() + 12 > width {
                    s.push_str(&format!(" (+{more})"));
                    break;
                }
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(id);
            }
        }
        s.chars().take(width.saturating_sub(1)).collect()
    }
}

/// The terminal's width (80 when it cannot be read).
fn term_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize; a failure leaves it zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        80
    }
}

impl Ui {
    pub fn new(json: bool, progress: bool) -> Self {
        Ui {
            json,
            progress,
            colour: !json && colour_enabled(std::io::stdout().is_terminal()),
            err_colour: colour_enabled(std::io::stderr().is_terminal()),
            colours: HashMap::new(),
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            watching: false,
            settled: false,
            pending_header: None,
            progress_line: (!json && std::io::stdout().is_terminal()).then(Progress::default),
            log_prefix: true,
            grouped: None,
            hash_only: false,
            remote_hits: Default::default(),
        }
    }

    /// `--log-prefix`, `--log-order` and `--output-logs=hash-only`.
    pub fn set_log_style(&mut self, prefix: bool, grouped: bool, hash_only: bool) {
        self.log_prefix = prefix;
        self.grouped = grouped.then(HashMap::new);
        self.hash_only = hash_only;
    }

    /// Prints (and forgets) the held output of task `id`, or of every task.
    fn flush_group(&mut self, id: Option<&str>) {
        let Some(groups) = &mut self.grouped else {
            return;
        };
        let blocks: Vec<Vec<String>> = match id {
            Some(id) => groups.remove(id).into_iter().collect(),
            None => {
                let mut all: Vec<(String, Vec<String>)> = groups.drain().collect();
                all.sort();
                all.into_iter().map(|(_, l)| l).collect()
            }
        };
        for line in blocks.into_iter().flatten() {
            let _ = writeln!(self.out, "{line}");
        }
    }

    /// Erases the progress line (before other output, and for the summary).
    fn clear_progress(&mut self) {
        if let Some(p) = &mut self.progress_line
            && p.shown
        {
            let _ = write!(self.out, "\r\x1b[2K");
            p.shown = false;
        }
    }

    /// Draws the progress line (a run on a terminal, until it settles).
    fn draw_progress(&mut self) {
        if self.watching {
            return;
        }
        let Some(p) = &mut self.progress_line else {
            return;
        };
        if p.over || p.total == 0 {
            return;
        }
        let line = p.line(term_width());
        p.shown = true;
        p.drawn_at = Some(std::time::Instant::now());
        let line = if self.colour {
            format!("\x1b[2m{line}\x1b[0m")
        } else {
            line
        };
        let _ = write!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn prefix(&mut self, id: &str) -> String {
        if !self.log_prefix {
            return String::new();
        }
        let label = id.replacen('#', ":", 1);
        if !self.colour {
            return format!("{label} │ ");
        }
        let n = self.colours.len();
        let c = *self
            .colours
            .entry(id.to_string())
            .or_insert(PALETTE[n % PALETTE.len()]);
        format!("\x1b[{c}m{label}\x1b[0m \x1b[2m│\x1b[0m ")
    }

    fn dim(&self, s: &str) -> String {
        if self.colour {
            format!("\x1b[2m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn event(&mut self, e: RunEvent) {
        if self.json {
            if let Ok(s) = serde_json::to_string(&e) {
                let _ = writeln!(self.out, "{s}");
                let _ = self.out.flush();
            }
            return;
        }
        // What makes a watch cycle worth its header: something ran, was
        // restored, failed or warned.
        let news = matches!(
            e,
            RunEvent::TaskStarted { .. }
                | RunEvent::TaskCacheHit { .. }
                | RunEvent::TaskFinished { .. }
                | RunEvent::TaskReady { .. }
                | RunEvent::Warning { .. }
                | RunEvent::TaskRetry { .. }
        );
        self.clear_progress();
        if let Some(p) = &mut self.progress_line {
            p.update(&e);
        }
        let redraw = match &e {
            RunEvent::Settled { .. } => false,
            // A burst of output redraws the line at most every 50 ms.
            RunEvent::TaskOutput { .. } => self.progress_line.as_ref().is_some_and(|p| {
                p.drawn_at
                    .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(50))
            }),
            _ => true,
        };
        self.event_lines(e, news);
        if redraw {
            self.draw_progress();
        }
    }

    fn event_lines(&mut self, e: RunEvent, news: bool) {
        if news && let Some(h) = self.pending_header.take() {
            let h = self.dim(&h);
            let _ = writeln!(self.out, "{h}");
        }
        match e {
            RunEvent::RunStarted { .. } => {}
            RunEvent::WatchCycle { cycle, changes } => {
                let head = if cycle == 1 {
                    "vx watch: initial run".to_string()
                } else {
                    let mut shown: Vec<&str> = changes.iter().take(3).map(|c| c.as_str()).collect();
                    if changes.len() > 3 {
                        shown.push("…");
                    }
                    format!("vx watch: cycle {cycle} ({} changed)", shown.join(", "))
                };
                if cycle == 1 {
                    let h = self.dim(&head);
                    let _ = writeln!(self.out, "{h}");
                } else {
                    self.pending_header = Some(head);
                }
            }
            RunEvent::Settled { summary } => {
                if self.watching {
                    // Cycles where nothing ran stay silent.
                    if self.pending_header.is_none() {
                        self.pending_header = None;
                        self.summary(&summary);
                        let msg = self.dim("vx watch: watching for changes (Ctrl-C to stop)");
                        let _ = writeln!(self.out, "{msg}");
                    }
                    self.pending_header = None;
                } else {
                    self.summary(&summary);
                    self.settled = true;
                    let msg = self.dim(&format!(
                        "{} persistent task{} running (Ctrl-C to stop)",
                        summary.counts.running,
                        if summary.counts.running == 1 { "" } else { "s" }
                    ));
                    let _ = writeln!(self.out, "{msg}");
                }
                let _ = self.out.flush();
            }
            RunEvent::TaskReady { id } => {
                let p = self.prefix(&id);
                let msg = self.dim("ready");
                let _ = writeln!(self.out, "{p}{msg}");
            }
            RunEvent::TaskStarted { .. } if !self.progress => {}
            RunEvent::TaskStarted {
                id, key, uncached, ..
            } => {
                let p = self.prefix(&id);
                // As the summary's `cache` column: `disabled` is no miss.
                let msg = match key {
                    Some(_) if uncached => "executing (cache disabled)".to_string(),
                    Some(k) => format!("cache miss, executing {}", &k[..k.len().min(16)]),
                    None => "executing".to_string(),
                };
                let msg = self.dim(&msg);
                let _ = writeln!(self.out, "{p}{msg}");
                // Before the task may take the terminal.
                let _ = self.out.flush();
            }
            RunEvent::TaskCacheHit { id, key, source } => {
                if source == CacheSource::Remote {
                    self.remote_hits.insert(id.clone());
                }
                let p = self.prefix(&id);
                let what = match source {
                    CacheSource::UpToDate => "outputs up to date",
                    CacheSource::Remote => "remote, restored",
                    _ => "restored",
                };
                let msg = self.dim(&format!(
                    "cache hit ({what}), {} {}",
                    if self.hash_only {
                        "suppressing logs"
                    } else {
                        "replaying logs"
                    },
                    &key[..key.len().min(16)]
                ));
                let _ = writeln!(self.out, "{p}{msg}");
            }
            RunEvent::TaskOutput {
                id, stream, line, ..
            } => {
                let p = self.prefix(&id);
                let text = match stream {
                    Stream::Stdout | Stream::Stderr => format!("{p}{line}"),
                };
                match &mut self.grouped {
                    Some(groups) => groups.entry(id).or_default().push(text),
                    None => {
                        let _ = writeln!(self.out, "{text}");
                    }
                }
            }
            RunEvent::TaskRetry {
                id,
                attempt,
                of,
                reason,
            } => {
                let _ = self.out.flush();
                eprintln!("vx: retrying {id} (attempt {attempt}/{of}) after {reason}");
            }
            RunEvent::TaskFinished { result } => {
                self.flush_group(Some(&result.id));
                if result.cache == CacheSource::Remote {
                    self.remote_hits.insert(result.id.clone());
                }
                if result.status == TaskStatus::Failed {
                    let p = self.prefix(&result.id);
                    let why = result.error.clone().unwrap_or_else(|| "failed".into());
                    let msg = if self.colour {
                        format!("\x1b[31m✗ failed: {why}\x1b[0m")
                    } else {
                        format!("✗ failed: {why}")
                    };
                    let _ = writeln!(self.out, "{p}{msg}");
                }
            }
            RunEvent::EventsDropped { count } => {
                let _ = self.out.flush();
                eprintln!(
                    "vx: warning: {count} output line{} not shown: this terminal did not keep up (the full logs are in the cache)",
                    if count == 1 { " was" } else { "s were" }
                );
            }
            RunEvent::Warning { message } => {
                let _ = self.out.flush();
                if self.err_colour {
                    eprintln!("\x1b[33mvx: warning:\x1b[0m {message}");
                } else {
                    eprintln!("vx: warning: {message}");
                }
            }
        }
    }

    pub fn summary(&mut self, s: &RunSummary) {
        self.flush_group(None);
        self.clear_progress();
        if let Some(p) = &mut self.progress_line {
            p.over = true;
        }
        if self.json {
            let v = serde_json::json!({"type": "run_finished", "summary": s});
            let _ = writeln!(self.out, "{v}");
            let _ = self.out.flush();
            return;
        }
        if self.settled {
            // The summary was printed when the run settled; say how it ended.
            let failed: Vec<&str> = s
                .tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Failed)
                .map(|t| t.id.as_str())
                .collect();
            let _ = writeln!(
                self.out,
                "  Done:  {}",
                if failed.is_empty() {
                    format!("after {}", duration(s.duration_ms))
                } else {
                    format!("{} failed", failed.join(", "))
                }
            );
            let _ = self.out.flush();
            return;
        }
        let c = &s.counts;
        let mut parts = vec![
            format!("{} total", c.total),
            format!("{} cached", c.cached),
            format!("{} executed", c.executed),
        ];
        let remote = s
            .tasks
            .iter()
            .filter(|t| t.cache == CacheSource::Remote)
            .count()
            .max(std::mem::take(&mut self.remote_hits).len());
        if remote > 0 {
            parts.insert(2, format!("{remote} from the remote cache"));
        }
        if c.failed > 0 {
            parts.push(format!("{} failed", c.failed));
        }
        if c.skipped > 0 {
            parts.push(format!("{} skipped", c.skipped));
        }
        if c.aborted > 0 {
            parts.push(format!("{} aborted", c.aborted));
        }
        if c.running > 0 {
            parts.push(format!("{} running", c.running));
        }
        let _ = writeln!(self.out);
        let _ = writeln!(self.out, " Tasks:  {}", parts.join(" · "));
        let _ = writeln!(self.out, "  Time:  {}", duration(s.duration_ms));
        let failed: Vec<String> = s
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| {
                format!(
                    "{} ({})",
                    t.id,
                    t.error.clone().unwrap_or_else(|| "failed".into())
                )
            })
            .collect();
        if !failed.is_empty() {
            let label = if self.colour {
                "\x1b[31mFailed:\x1b[0m"
            } else {
                "Failed:"
            };
            let _ = writeln!(self.out, "{label}  {}", failed.join(", "));
        }
        if c.total == 0 {
            let _ = writeln!(self.out, "        nothing to run");
        }
        let _ = self.out.flush();
    }
}

pub fn plan_text(plan: &Plan) {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let runnable: Vec<_> = plan
        .tasks
        .iter()
        .filter(|t| t.prediction != Prediction::Group)
        .collect();
    let hits = runnable
        .iter()
        .filter(|t| t.prediction == Prediction::Hit)
        .count();
    let _ = writeln!(
        out,
        "Plan: {} ({} predicted cache {}) in {}",
        plural(runnable.len(), "task"),
        hits,
        if hits == 1 { "hit" } else { "hits" },
        plan.root
    );
    let w = plan
        .tasks
        .iter()
        .map(|t| t.id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    // A run that executes remotely also says where each task would run.
    let placed = plan.tasks.iter().any(|t| t.runs_on.is_some());
    let _ = if placed {
        writeln!(
            out,
            "  {:<w$}  {:<9}  {:<6}  {:<16}  COMMAND",
            "TASK", "CACHE", "WHERE", "KEY"
        )
    } else {
        writeln!(
            out,
            "  {:<w$}  {:<9}  {:<16}  COMMAND",
            "TASK", "CACHE", "KEY"
        )
    };
    for t in &plan.tasks {
        let pred = match t.prediction {
            Prediction::Hit => "hit",
            Prediction::Miss => "miss",
            Prediction::Uncached => "uncached",
            Prediction::Group => "group",
        };
        let key = t
            .key
            .as_deref()
            .map(|k| &k[..k.len().min(16)])
            .unwrap_or("-");
        let cmd = t.command.as_deref().unwrap_or("-");
        let _ = if placed {
            let at = t.runs_on.as_deref().unwrap_or("-");
            writeln!(
                out,
                "  {:<w$}  {:<9}  {:<6}  {:<16}  {cmd}",
                t.id, pred, at, key
            )
        } else {
            writeln!(out, "  {:<w$}  {:<9}  {:<16}  {cmd}", t.id, pred, key)
        };
    }
    for t in &plan.tasks {
        for w in &t.warnings {
            let _ = writeln!(out, "warning: {}: {w}", t.id);
        }
    }
    let _ = out.flush();
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn dot(plan: &Plan) -> String {
    let mut s =
        String::from("digraph vx {\n  rankdir=\"LR\";\n  node [shape=box, style=rounded];\n");
    for t in &plan.tasks {
        let colour = match t.prediction {
            Prediction::Hit => "green",
            Prediction::Miss => "orange",
            Prediction::Uncached => "gray",
            Prediction::Group => "lightgray",
        };
        let pred = format!("{:?}", t.prediction).to_lowercase();
        s.push_str(&format!(
            "  \"{}\" [color={colour}, tooltip=\"{pred}\"];\n",
            dot_escape(&t.id)
        ));
    }
    for t in &plan.tasks {
        for d in &t.deps {
            s.push_str(&format!(
                "  \"{}\" -> \"{}\";\n",
                dot_escape(&t.id),
                dot_escape(d)
            ));
        }
    }
    s.push_str("}\n");
    s
}

/// `--graph=FILE`: the format follows the extension — `.dot`/`.gv` (or none)
/// DOT, `.json` the plan, `.html` a page (an SVG when Graphviz `dot` is
/// installed, else a list), `.png`/`.svg`/`.pdf`/`.jpg`/`.gif` rendered by `dot`.
pub fn graph_file(file: &str, plan: &Plan) -> Result<(), String> {
    let ext = std::path::Path::new(file)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bytes: Vec<u8> = match ext.as_str() {
        "" | "dot" | "gv" => dot(plan).into_bytes(),
        "json" => serde_json::to_vec_pretty(plan).map_err(|e| e.to_string())?,
        "html" | "htm" => graph_html(plan).into_bytes(),
        "png" | "svg" | "pdf" | "jpg" | "jpeg" | "gif" => {
            run_dot(&ext, &dot(plan)).map_err(|e| format!("--graph={file}: {e}"))?
        }
        other => {
            return Err(format!(
                "--graph={file}: unknown format `.{other}`; use .dot, .json, .html, or .png/.svg/.pdf (rendered by Graphviz `dot`)"
            ));
        }
    };
    std::fs::write(file, bytes).map_err(|e| format!("cannot write {file}: {e}"))
}

/// Renders DOT with Graphviz: `dot -T<format>`.
fn run_dot(format: &str, dot_text: &str) -> Result<Vec<u8>, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("dot")
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "rendering .{format} needs Graphviz `dot`, which is not on PATH: install graphviz (e.g. `apt install graphviz`), or write .dot, .json or .html"
                )
            } else {
                format!("cannot run Graphviz `dot`: {e}")
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(dot_text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("Graphviz `dot` failed: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "Graphviz `dot -T{format}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained page: the graph as SVG when `dot` is installed, and
/// always the tasks with what they wait for, and the DOT source.
fn graph_html(plan: &Plan) -> String {
    let dot_text = dot(plan);
    let mut s = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vx task graph</title></head><body>\n",
    );
    s.push_str(&format!(
        "<h1>vx task graph</h1>\n<p>{}</p>\n",
        html_escape(&plan.root)
    ));
    if let Ok(svg) = run_dot("svg", &dot_text) {
        s.push_str(&String::from_utf8_lossy(&svg));
    }
    s.push_str("<ul>\n");
    for t in &plan.tasks {
        let pred = format!("{:?}", t.prediction).to_lowercase();
        let deps = if t.deps.is_empty() {
            String::new()
        } else {
            format!(
                " → {}",
                t.deps
                    .iter()
                    .map(|d| html_escape(d))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        s.push_str(&format!(
            "<li><code>{}</code> ({pred}){deps}</li>\n",
            html_escape(&t.id)
        ));
    }
    s.push_str("</ul>\n<details><summary>DOT</summary><pre>");
    s.push_str(&html_escape(&dot_text));
    s.push_str("</pre></details>\n</body></html>\n");
    s
}

pub fn daemon_status(s: &vx_proto::DaemonStatus) {
    println!(
        "daemon:      running (pid {}, vxd {}, protocol {})",
        s.pid, s.version, s.protocol
    );
    println!("workspace:   {}", s.root);
    println!("socket:      {}", s.socket);
    println!(
        "uptime:      {} (idle {}, exits after {} idle)",
        duration(s.uptime_ms),
        duration(s.idle_ms),
        duration(s.idle_timeout_ms)
    );
    println!("projects:    {} ({})", s.projects, plural(s.tasks, "task"));
    println!(
        "files:       {} indexed, {} watches, {} full rescans",
        s.files_indexed, s.watches, s.rescans
    );
    println!("memory:      {}", bytes(s.rss_bytes));
    println!(
        "runs served: {} ({} replayed; {} connections now)",
        s.runs_served, s.runs_replayed, s.connections
    );
    println!("log:         {}", s.log_file);
    if let Some(u) = s.endpoints.get("http") {
        println!("http:        {u} (`vx ui` for the dashboard)");
    }
    if let Some(u) = s.endpoints.get("worker") {
        println!("workers:     {u} (`vx worker --connect {u}`; see docs/distributed.md)");
    }
}

/// `vx ls`: each project (by name) with its directory and tasks; with
/// `json`, `{root, projects: [{name, dir, deps, tasks: [{name, command,
/// cache, persistent, depends_on}]}]}`.
pub fn ls(g: &vx_proto::live::Graph, json: bool) {
    let tasks_of = |p: &str| -> Vec<&vx_proto::live::GraphTask> {
        let mut ts: Vec<_> = g.tasks.iter().filter(|t| t.project == p).collect();
        ts.sort_by(|a, b| a.task.cmp(&b.task));
        ts
    };
    let deps_of = |id: &str| -> Vec<String> {
        g.edges
            .iter()
            .filter(|e| e.from == id)
            .map(|e| e.to.clone())
            .collect()
    };
    let mut projects: Vec<&vx_proto::live::GraphProject> = g.projects.iter().collect();
    projects.sort_by(|a, b| a.name.cmp(&b.name));
    if json {
        let v = serde_json::json!({
            "root": g.root,
            "projects": projects.iter().map(|p| {
                let ts = tasks_of(&p.name);
                serde_json::json!({
                    "name": p.name,
                    "dir": p.dir,
                    "deps": p.deps,
                    "tasks": ts.iter().map(|t| serde_json::json!({
                        "name": t.task,
                        "command": t.command,
                        "cache": t.cache,
                        "persistent": t.persistent,
                        "depends_on": deps_of(&t.id),
                    })).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    let n_tasks = g.tasks.len();
    println!("{} in {}", plural(projects.len(), "project"), g.root);
    for p in projects {
        println!("{} ({})", p.name, p.dir);
        let ts = tasks_of(&p.name);
        let width = ts.iter().map(|t| t.task.len()).max().unwrap_or(0);
        for t in ts {
            let what = match &t.command {
                Some(c) => c.clone(),
                None => format!("(group: {})", deps_of(&t.id).join(", ")),
            };
            println!("  {:width$}  {what}", t.task);
        }
    }
    if n_tasks == 0 {
        println!("no tasks: add `[tasks.<name>]` with a `command` to a project's vx.toml");
    }
}

/// `vx: error:` — red on a terminal (stderr), plain under `NO_COLOR` or in a pipe.
pub fn error_prefix() -> &'static str {
    if colour_enabled(std::io::stderr().is_terminal()) {
        "\x1b[1;31mvx: error:\x1b[0m"
    } else {
        "vx: error:"
    }
}

/// `1 task`, `2 tasks`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn progress_line_counts_and_fits_the_width() {
        let mut p = Progress::default();
        p.update(&RunEvent::RunStarted {
            run_id: "r".into(),
            root: "/w".into(),
            tasks: 12,
            concurrency: 4,
            traceparent: None,
            parent_span_id: None,
        });
        for id in ["a#build", "b#build", "c#build", "d#build"] {
            p.update(&RunEvent::TaskStarted {
                id: id.into(),
                key: None,
                command: "true".into(),
                uncached: false,
                traceparent: None,
                worker: None,
            });
        }
        p.update(&RunEvent::TaskCacheHit {
            id: "a#build".into(),
            key: "k".into(),
            source: CacheSource::Local,
        });
        assert_eq!(
            p.line(200),
            "[1/12] 1 cached · running: b#build, c#build, d#build"
        );
        let short = p.line(40);
        assert!(short.chars().count() < 40, "{short}");
        assert!(
            short.starts_with("[1/12] 1 cached · running: b#build"),
            "{short}"
        );
        assert!(short.contains("(+"), "{short}");
    }

    #[test]
    fn plural_counts() {
        assert_eq!(plural(1, "task"), "1 task");
        assert_eq!(plural(0, "run"), "0 runs");
        assert_eq!(plural(2, "cycle"), "2 cycles");
    }
}
