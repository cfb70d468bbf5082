//! `plugins` — the daemon's plugins: long-lived child processes, in any
//! language, that speak JSON-RPC 2.0 over their stdin/stdout
//! (`docs/plugins.md`) and receive the run and task lifecycle from the
//! event bus.
//!
//! Owns: the `[[plugins]]` entries of the root `vx.toml` (errors name the
//! file and line), one supervisor per plugin (start, the versioned
//! `initialize` handshake within its timeout, delivery of the notifications
//! it asked for through a bounded queue, restart with backoff when it dies,
//! disabled after [`MAX_FAILURES`] failures in a row), its state for
//! `plugins.list`, and the one-line warnings a failing plugin leaves for
//! the next run to show ([`take_warnings`]).
//! Never: blocks, slows or fails a run (the bus never waits for the host;
//! a plugin that crashes, hangs, writes garbage or floods is cut off and
//! restarted later), keeps more than [`QUEUE_BYTES`] per plugin or
//! [`STDERR_LINES`] of its stderr, or runs plugins in the no-daemon engine.

use crate::bus::{Bus, Queue};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vx_proto::live::SubscribeParams;
use vx_proto::plugins::{INITIALIZE, PROTOCOL, PluginInfo, PluginList, PluginState};
use vx_proto::{Id, Message};

/// Bytes of notifications queued for one plugin; beyond, they are dropped
/// (and the plugin is warned about once per run).
pub const QUEUE_BYTES: usize = 1 << 20;
/// Lines of a plugin's stderr kept for its error messages.
pub const STDERR_LINES: usize = 8;
/// Failures in a row after which a plugin is disabled.
pub const MAX_FAILURES: u32 = 5;
/// The default handshake timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line a plugin may write; longer is a flood.
const MAX_LINE: usize = 64 << 10;
/// Lines a plugin may write per second; more is a flood.
const MAX_LINES_PER_SEC: u32 = 200;
/// How long a write to a plugin's stdin may take (it must read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Warnings kept for the next run.
const MAX_WARNINGS: usize = 16;

/// The event kinds a plugin may ask for.
const EVENT_KINDS: &[&str] = &["run", "task", "output"];

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDef {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// `run` (run.started / run.finished), `task` (task events but
    /// output), `output` (output lines).
    pub events: Vec<String>,
    pub handshake_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    handshake_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RawRoot {
    #[serde(default)]
    plugins: Vec<toml::Spanned<RawPlugin>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The `[[plugins]]` of the root `vx.toml` at `root` (none without one).
/// Errors read `vx.toml:LINE: what`.
pub fn load(root: &Path) -> Result<Vec<PluginDef>, String> {
    let path = root.join("vx.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    parse(&text)
}

fn parse(text: &str) -> Result<Vec<PluginDef>, String> {
    let raw: RawRoot = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        format!("vx.toml:{line}: {}", e.message().trim())
    })?;
    let mut out: Vec<PluginDef> = Vec::new();
    for p in raw.plugins {
        let line = line_of(text, p.span().start);
        let p = p.into_inner();
        let err = |m: String| format!("vx.toml:{line}: plugin `{}`: {m}", p.name);
        if p.name.trim().is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err("a name is letters, digits, `-`, `_` or `.`".into()));
        }
        if out.iter().any(|o| o.name == p.name) {
            return Err(err("declared twice".into()));
        }
        if p.command.trim().is_empty() {
            return Err(err("`command` is empty".into()));
        }
        let events = p
            .events
            .clone()
            .unwrap_or_else(|| vec!["run".into(), "task".into()]);
        if let Some(bad) = events.iter().find(|e| !EVENT_KINDS.contains(&e.as_str())) {
            return Err(err(format!(
                "unknown event kind `{bad}` (one of: {})",
                EVENT_KINDS.join(", ")
            )));
        }
        out.push(PluginDef {
            name: p.name.clone(),
            command: p.command.clone(),
            args: p.args.clone(),
            env: p.env.clone(),
            events,
            handshake_timeout: p
                .handshake_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(HANDSHAKE_TIMEOUT),
        });
    }
    Ok(out)
}

/// Whether a bus line is of an event kind in `events`.
fn kind_of(v: &serde_json::Value) -> Option<&'static str> {
    match v.get("method")?.as_str()? {
        vx_proto::live::RUN_STARTED | vx_proto::live::RUN_FINISHED => Some("run"),
        vx_proto::live::EVENTS_EVENT => {
            match v.pointer("/params/event/type").and_then(|t| t.as_str()) {
                Some("task_output") => Some("output"),
                Some(_) => Some("task"),
                None => None,
            }
        }
        _ => None,
    }
}

/// A bounded byte queue with a wake-up.
#[derive(Default)]
struct Outbox {
    q: Mutex<(VecDeque<Vec<u8>>, usize)>,
    notify: Notify,
}

impl Outbox {
    fn push(&self, line: Vec<u8>, limit: usize) -> bool {
        let Ok(mut g) = self.q.lock() else {
            return false;
        };
        if g.1 + line.len() > limit {
            return false;
        }
        g.1 += line.len();
        g.0.push_back(line);
        drop(g);
        self.notify.notify_one();
        true
    }

    fn pop(&self) -> Option<Vec<u8>> {
        let mut g = self.q.lock().ok()?;
        let l = g.0.pop_front()?;
        g.1 -= l.len();
        Some(l)
    }

    fn clear(&self) -> usize {
        self.q
            .lock()
            .map(|mut g| {
                let n = g.0.len();
                *g = Default::default();
                n
            })
            .unwrap_or(0)
    }
}

impl Queue for Outbox {
    fn offer(&self, line: Vec<u8>, limit: usize) -> bool {
        self.push(line, limit)
    }

    fn force(&self, line: Vec<u8>) {
        self.push(line, usize::MAX);
    }
}

struct Status {
    state: PluginState,
    version: Option<String>,
    protocol: Option<u32>,
    hooks: Vec<String>,
    pid: Option<u32>,
    starts: u32,
    last_error: Option<String>,
    /// The run whose notifications it missed (warned once per run).
    missed_run: Option<String>,
}

struct Plugin {
    def: PluginDef,
    root: PathBuf,
    status: Mutex<Status>,
    outbox: Outbox,
    delivered: AtomicU64,
    dropped: AtomicU64,
    stop: CancellationToken,
}

impl Plugin {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s)
        }
    }

    fn info(&self) -> PluginInfo {
        let s = self.status.lock();
        let (state, version, protocol, hooks, pid, starts, last_error) = match &s {
            Ok(s) => (
                s.state,
                s.version.clone(),
                s.protocol,
                s.hooks.clone(),
                s.pid,
                s.starts,
                s.last_error.clone(),
            ),
            Err(_) => (PluginState::Disabled, None, None, Vec::new(), None, 0, None),
        };
        let mut command = vec![self.def.command.clone()];
        command.extend(self.def.args.iter().cloned());
        PluginInfo {
            name: self.def.name.clone(),
            command,
            state,
            version,
            protocol,
            hooks,
            events: self.def.events.clone(),
            pid,
            starts,
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_error,
        }
    }

    /// Queues one bus line for it (when it asked for its kind).
    fn offer(&self, kind: &str, run_id: Option<&str>, line: &[u8]) {
        if !self.def.events.iter().any(|e| e == kind) {
            return;
        }
        let ready = self
            .status
            .lock()
            .map(|s| matches!(s.state, PluginState::Ready | PluginState::Starting))
            .unwrap_or(false);
        if ready && self.outbox.push(line.to_vec(), QUEUE_BYTES) {
            return;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if ready && let Some(run) = run_id {
            let first = self
                .status
                .lock()
                .map(|mut s| {
                    let first = s.missed_run.as_deref() != Some(run);
                    s.missed_run = Some(run.to_string());
                    first
                })
                .unwrap_or(false);
            if first {
                warn_about(
                    &self.def.name,
                    format!(
                        "plugin {} is not keeping up: its queue is full ({} KiB); it misses the rest of run {run}",
                        self.def.name,
                        QUEUE_BYTES >> 10
                    ),
                );
            }
        }
    }
}

/// The daemon's plugin host (see the module doc).
#[derive(Default)]
pub struct Host {
    plugins: Mutex<BTreeMap<String, Arc<Plugin>>>,
    config_error: Mutex<Option<String>>,
}

fn host() -> &'static OnceLock<Arc<Host>> {
    static H: OnceLock<Arc<Host>> = OnceLock::new();
    &H
}

/// Warnings not shown yet, at most one per plugin (by key).
fn warnings() -> &'static Mutex<Vec<(String, String)>> {
    static W: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Logs `msg` and keeps it for the next run, unless a warning about `key`
/// (a plugin's name) is already waiting: one warning per plugin per run.
fn warn_about(key: &str, msg: String) {
    tracing::warn!("{msg}");
    if let Ok(mut w) = warnings().lock()
        && w.len() < MAX_WARNINGS
        && !w.iter().any(|(k, _)| k == key)
    {
        w.push((key.to_string(), msg));
    }
}

fn warn(msg: String) {
    warn_about("", msg)
}

/// The plugin warnings not shown yet (the server shows them in the next
/// run that settles).
pub fn take_warnings() -> Vec<String> {
    warnings()
        .lock()
        .map(|mut w| {
            std::mem::take(&mut *w)
                .into_iter()
                .map(|(_, m)| m)
                .collect()
        })
        .unwrap_or_default()
}

/// `plugins.list`.
pub fn list() -> PluginList {
    match host().get() {
        None => PluginList {
            hosted: false,
            plugins: Vec::new(),
            config_error: None,
        },
        Some(h) => PluginList {
            hosted: true,
            plugins: h
                .plugins
                .lock()
                .map(|p| p.values().map(|p| p.info()).collect())
                .unwrap_or_default(),
            config_error: h.config_error.lock().ok().and_then(|e| e.clone()),
        },
    }
}

impl Host {
    /// Starts the process's host on `bus`: it reads `[[plugins]]` from the
    /// root `vx.toml` of `root` now and of each run's workspace as runs
    /// start, and stops every plugin when `stop` is cancelled.
    pub fn spawn(bus: Arc<Bus>, root: PathBuf, stop: CancellationToken) {
        let h = host().get_or_init(|| Arc::new(Host::default())).clone();
        tokio::spawn(async move {
            h.sync(&root, &stop);
            let mut n = 0;
            'subscribe: loop {
                n += 1;
                let inbox = Arc::new(Outbox::default());
                let mut sub = bus.subscribe(
                    Id::Str(format!("plugins-{n}")),
                    SubscribeParams::default(),
                    inbox.clone(),
                );
                loop {
                    while let Some(line) = inbox.pop() {
                        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                            continue;
                        };
                        if v["method"] == vx_proto::live::EVENTS_RESYNC {
                            warn("the plugin host fell behind the event bus; plugins miss the runs in progress".into());
                            continue 'subscribe;
                        }
                        if v["method"] == vx_proto::live::RUN_STARTED
                            && let Some(r) = v.pointer("/params/root").and_then(|r| r.as_str())
                        {
                            h.sync(Path::new(r), &stop);
                        }
                        let Some(kind) = kind_of(&v) else { continue };
                        let run = v.pointer("/params/run_id").and_then(|r| r.as_str());
                        let plugins: Vec<Arc<Plugin>> = h
                            .plugins
                            .lock()
                            .map(|p| p.values().cloned().collect())
                            .unwrap_or_default();
                        for p in plugins {
                            p.offer(kind, run, &line);
                        }
                    }
                    tokio::select! {
                        _ = inbox.notify.notified() => {}
                        _ = sub.ended() => {}
                        _ = stop.cancelled() => break 'subscribe,
                    }
                }
            }
            if let Ok(p) = h.plugins.lock() {
                for p in p.values() {
                    p.stop.cancel();
                }
            }
        });
    }

    /// Brings the running plugins in line with the root `vx.toml`.
    fn sync(&self, root: &Path, stop: &CancellationToken) {
        let defs = match load(root) {
            Ok(d) => {
                if let Ok(mut e) = self.config_error.lock() {
                    *e = None;
                }
                d
            }
            Err(e) => {
                warn(format!("plugins not (re)started: {}: {e}", root.display()));
                if let Ok(mut c) = self.config_error.lock() {
                    *c = Some(e);
                }
                return;
            }
        };
        let Ok(mut running) = self.plugins.lock() else {
            return;
        };
        running.retain(|name, p| {
            let keep = p.root == root && defs.iter().any(|d| d == &p.def && &d.name == name);
            if !keep {
                p.stop.cancel();
            }
            keep
        });
        for d in defs {
            if running.contains_key(&d.name) {
                continue;
            }
            let p = Arc::new(Plugin {
                def: d.clone(),
                root: root.to_path_buf(),
                status: Mutex::new(Status {
                    state: PluginState::Starting,
                    version: None,
                    protocol: None,
                    hooks: Vec::new(),
                    pid: None,
                    starts: 0,
                    last_error: None,
                    missed_run: None,
                }),
                outbox: Outbox::default(),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                stop: stop.child_token(),
            });
            running.insert(d.name.clone(), p.clone());
            tokio::spawn(supervise(p));
        }
    }
}

/// Runs a plugin until it is stopped: restarts it with backoff when it
/// fails, disables it after [`MAX_FAILURES`] failures in a row.
async fn supervise(p: Arc<Plugin>) {
    let mut failures = 0u32;
    loop {
        let began = Instant::now();
        let err = tokio::select! {
            e = run_once(&p) => e,
            _ = p.stop.cancelled() => return,
        };
        if p.stop.is_cancelled() {
            return;
        }
        // A plugin that served a minute starts its count afresh.
        if began.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures += 1;
        let lost = p.outbox.clear();
        p.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        let name = &p.def.name;
        if failures >= MAX_FAILURES {
            warn_about(
                name,
                format!("plugin {name} is disabled after {failures} failures in a row: {err}"),
            );
            p.set(|s| {
                s.state = PluginState::Disabled;
                s.pid = None;
                s.last_error = Some(err);
            });
            return;
        }
        let delay = Duration::from_secs(1 << (failures - 1).min(5));
        warn_about(
            name,
            format!(
                "plugin {name} {err}; restarting it in {} s",
                delay.as_secs()
            ),
        );
        p.set(|s| {
            s.state = PluginState::Backoff;
            s.pid = None;
            s.last_error = Some(err);
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = p.stop.cancelled() => return,
        }
    }
}

/// `: its stderr said: ...` (the last lines), or nothing.
fn said(stderr: &Mutex<VecDeque<String>>) -> String {
    let lines: Vec<String> = stderr
        .lock()
        .map(|l| l.iter().cloned().collect())
        .unwrap_or_default();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": its stderr said: {}", lines.join(" | "))
    }
}

fn shown(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    format!("{s:?}")
}

/// One life of the plugin; returns why it ended (a sentence fragment
/// after "plugin NAME").
async fn run_once(p: &Arc<Plugin>) -> String {
    let d = &p.def;
    let mut cmd = tokio::process::Command::new(&d.command);
    cmd.args(&d.args)
        .envs(&d.env)
        .current_dir(&p.root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    p.set(|s| {
        s.state = PluginState::Starting;
        s.starts += 1;
    });
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return format!("could not be started (`{}`): {e}", d.command),
    };
    p.set(|s| s.pid = child.id());
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return "has no stdio pipes".into();
    };
    let err_lines: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let el = err_lines.clone();
    let name = d.name.clone();
    tokio::spawn(async move {
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut r)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = String::from_utf8_lossy(&buf).trim_end().to_string();
                    tracing::info!(plugin = %name, "stderr: {l}");
                    if let Ok(mut q) = el.lock() {
                        if q.len() >= STDERR_LINES {
                            q.pop_front();
                        }
                        q.push_back(l.chars().take(300).collect());
                    }
                }
            }
        }
    });
    let mut out = BufReader::new(stdout);
    let mut line = Vec::new();
    // The handshake.
    let hello = Message::request(
        Id::Num(1),
        INITIALIZE,
        serde_json::json!({
            "protocol": PROTOCOL,
            "vx_version": env!("CARGO_PKG_VERSION"),
            "name": d.name,
            "root": p.root.to_string_lossy(),
            "events": d.events,
        }),
    )
    .encode();
    if let Err(e) = write(&mut stdin, &hello).await {
        let st = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_default();
        return format!(
            "could not be sent the handshake ({e}; it exited: {st}){}",
            said(&err_lines)
        );
    }
    let secs = d.handshake_timeout.as_secs_f64();
    let read = tokio::time::timeout(d.handshake_timeout, read_line(&mut out, &mut line)).await;
    match read {
        Err(_) => {
            return format!(
                "did not answer the handshake within {secs} s{}",
                said(&err_lines)
            );
        }
        Ok(Err(e)) => return format!("broke its stdout during the handshake: {e}"),
        Ok(Ok(0)) => {
            let st = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            // Let the stderr reader catch the last lines.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return format!("exited before the handshake ({st}){}", said(&err_lines));
        }
        Ok(Ok(_)) => {}
    }
    #[derive(Deserialize)]
    struct Hello {
        protocol: u32,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        hooks: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Answer {
        id: Id,
        #[serde(default)]
        result: Option<Hello>,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let ans: Answer = match serde_json::from_slice(&line) {
        Ok(a) => a,
        Err(_) => {
            return format!(
                "answered the handshake with garbage (not a JSON-RPC response): {}",
                shown(&line)
            );
        }
    };
    let hello = match (ans.id, ans.result, ans.error) {
        (Id::Num(1), Some(h), None) => h,
        (_, _, Some(e)) => return format!("refused the handshake: {e}"),
        _ => {
            return format!(
                "answered the handshake with garbage (no result for request 1): {}",
                shown(&line)
            );
        }
    };
    if hello.protocol != PROTOCOL {
        return format!(
            "speaks plugin protocol {}, this vx speaks {PROTOCOL}",
            hello.protocol
        );
    }
    line.clear();
    p.set(|s| {
        s.state = PluginState::Ready;
        s.version = hello.version.clone();
        s.protocol = Some(hello.protocol);
        s.hooks = hello.hooks.clone();
        // `last_error` stays: `vx plugins` shows the last failure.
    });
    tracing::info!(plugin = %d.name, version = ?hello.version, "plugin ready");
    // Serve: notifications out, anything it writes checked.
    let mut window = Instant::now();
    let mut lines = 0u32;
    loop {
        while let Some(l) = p.outbox.pop() {
            if let Err(e) = write(&mut stdin, &l).await {
                // A closed pipe usually means it exited: say so, with why.
                if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(1), child.wait()).await
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return format!("exited ({st}){}", said(&err_lines));
                }
                return format!("stopped reading its notifications ({e})");
            }
            p.delivered.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = p.outbox.notify.notified() => {}
            r = read_line(&mut out, &mut line) => match r {
                Ok(0) | Err(_) => {
                    let st = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return format!("exited ({st}){}", said(&err_lines));
                }
                Ok(n) => {
                    if n > MAX_LINE {
                        return format!("wrote a line over {} KiB (a flood)", MAX_LINE >> 10);
                    }
                    if window.elapsed() > Duration::from_secs(1) {
                        window = Instant::now();
                        lines = 0;
                    }
                    lines += 1;
                    if lines > MAX_LINES_PER_SEC {
                        return format!("wrote more than {MAX_LINES_PER_SEC} lines in a second (a flood)");
                    }
                    if let Some(e) = check_output(&d.name, &line) {
                        return e;
                    }
                    line.clear();
                }
            },
        }
    }
}

/// A line a plugin wrote after the handshake: a `log` notification (its
/// message goes to the daemon log) or a response; anything else is
/// garbage.
fn check_output(name: &str, line: &[u8]) -> Option<String> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return None;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(trimmed) else {
        return Some(format!("wrote garbage (not JSON-RPC): {}", shown(line)));
    };
    if v.get("jsonrpc").and_then(|j| j.as_str()) != Some("2.0") {
        return Some(format!("wrote garbage (not JSON-RPC 2.0): {}", shown(line)));
    }
    if v["method"] == "log" {
        let msg = v
            .pointer("/params/message")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        tracing::info!(plugin = %name, "{}", msg.chars().take(500).collect::<String>());
    }
    None
}

/// Reads the rest of one line into `buf` (at most [`MAX_LINE`] + 1 bytes
/// in all); returns the line's length, 0 at the end of the stream. Cancel
/// safe: a read cut short by `select!` leaves its bytes in `buf`, and the
/// next call continues the line (the caller clears `buf` after a line).
async fn read_line(
    r: &mut BufReader<tokio::process::ChildStdout>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let room = (MAX_LINE as u64 + 1).saturating_sub(buf.len() as u64);
    (&mut *r).take(room).read_until(b'\n', buf).await?;
    Ok(buf.len())
}

async fn write(w: &mut tokio::process::ChildStdin, line: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        w.write_all(line).await?;
        if !line.ends_with(b"\n") {
            w.write_all(b"\n").await?;
        }
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("a write blocked for {} s", WRITE_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_line() {
        let cases: &[(&str, &str)] = &[
            (
                "[workspace]\nmembers = []\n\n[[plugins]]\nname = \"a\"\ncomand = \"x\"\n",
                "vx.toml:6:",
            ),
            (
                "[[plugins]]\nname = \"a\"\ncommand = \"x\"\n\n[[plugins]]\nname = \"a\"\ncommand = \"y\"\n",
                "vx.toml:5: plugin `a`: declared twice",
            ),
            (
                "[[plugins]]\nname = \"a\"\ncommand = \"x\"\nevents = [\"nope\"]\n",
                "vx.toml:1: plugin `a`: unknown event kind `nope`",
            ),
            (
                "[[plugins]]\nname = \"a b\"\ncommand = \"x\"\n",
                "vx.toml:1: plugin `a b`",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text);
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
    }

    #[test]
    fn plugins_parse_with_defaults() {
        let d = parse(
            "[workspace]\nmembers = []\n[[plugins]]\nname = \"p\"\ncommand = \"python3\"\nargs = [\"p.py\"]\nenv = { A = \"1\" }\n",
        )
        .expect("valid");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].events, vec!["run", "task"]);
        assert_eq!(d[0].handshake_timeout, HANDSHAKE_TIMEOUT);
        assert_eq!(d[0].env["A"], "1");
        assert!(parse("[workspace]\n").expect("none").is_empty());
    }

    #[test]
    fn lines_are_sorted_by_kind() {
        let cases = [
            (r#"{"method":"run.started","params":{}}"#, Some("run")),
            (r#"{"method":"run.finished","params":{}}"#, Some("run")),
            (
                r#"{"method":"events.event","params":{"event":{"type":"task_output"}}}"#,
                Some("output"),
            ),
            (
                r#"{"method":"events.event","params":{"event":{"type":"task_started"}}}"#,
                Some("task"),
            ),
            (r#"{"method":"events.subscribed","params":{}}"#, None),
        ];
        for (l, want) in cases {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            assert_eq!(kind_of(&v), want, "{l}");
        }
    }

    #[test]
    fn plugin_output_is_checked() {
        assert!(
            check_output(
                "p",
                b"{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":{\"message\":\"hi\"}}\n"
            )
            .is_none()
        );
        assert!(check_output("p", b"\n").is_none());
        assert!(check_output("p", b"hello\n").is_some_and(|e| e.contains("garbage")));
        assert!(check_output("p", b"{\"a\":1}\n").is_some_and(|e| e.contains("garbage")));
    }
}
