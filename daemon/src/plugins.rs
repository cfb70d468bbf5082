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
//! the next run to show ([`take_warnings`]); the hook requests (`key`,
//! `weights`) a run asks through [`crate::hooks`] — to the daemon's
//! plugins, or, in the no-daemon engine, to hook plugins started for that
//! one question ([`install_hooks`]) — each bounded by its timeout, its
//! answer checked (a key-stable plugin's material remembered for its life).
//! Never: blocks, slows or fails a run (the bus never waits for the host;
//! a plugin that crashes, hangs, writes garbage or floods is cut off and
//! restarted later; a hook that fails is an answer of its own, which the
//! engine turns into an uncached run or ignored weights), keeps more than
//! [`QUEUE_BYTES`] per plugin or [`STDERR_LINES`] of its stderr, or runs a
//! plugin without hooks in the no-daemon engine.

use crate::bus::{Bus, LineQueue};
use crate::hooks::{Answer, Answers, HookTask, Hooks};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use vx_proto::live::SubscribeParams;
use vx_proto::plugins::{
    HOOK_KEY, HOOK_WEIGHTS, INITIALIZE, PROTOCOL, PluginInfo, PluginList, PluginState,
};
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
/// The hooks a plugin may declare.
const HOOK_KINDS: &[&str] = &[HOOK_KEY, HOOK_WEIGHTS];
/// The default time a plugin has to answer a hook request.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer to a hook request (a line); longer is a flood.
const MAX_ANSWER: usize = 4 << 20;
/// Longest key material a plugin may give one task.
pub const MAX_MATERIAL: usize = 4 << 10;
/// Largest weight (expected cost, ms) a plugin may give a task; larger
/// weights are cut to it.
pub const MAX_WEIGHT_MS: u64 = 24 * 3600 * 1000;

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
    /// The hooks vx calls on it (`key`, `weights`): declared in `vx.toml`
    /// so that every engine, the no-daemon one too, knows which plugins a
    /// key depends on without starting any.
    pub hooks: Vec<String>,
    /// How long it has to answer a hook request.
    pub hook_timeout: Duration,
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
    #[serde(default)]
    hooks: Vec<String>,
    #[serde(default)]
    hook_timeout_ms: Option<u64>,
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
        if let Some(bad) = p.hooks.iter().find(|h| !HOOK_KINDS.contains(&h.as_str())) {
            return Err(err(format!(
                "unknown hook `{bad}` (one of: {})",
                HOOK_KINDS.join(", ")
            )));
        }
        let mut hooks = p.hooks.clone();
        hooks.sort();
        hooks.dedup();
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
            hooks,
            hook_timeout: p
                .hook_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(HOOK_TIMEOUT),
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
    /// It said its key material depends only on the request's task fields.
    key_stable: bool,
}

struct Plugin {
    def: PluginDef,
    root: PathBuf,
    status: Mutex<Status>,
    outbox: LineQueue,
    delivered: AtomicU64,
    dropped: AtomicU64,
    stop: CancellationToken,
    /// Hook requests waiting for their answer, by request id.
    pending: Mutex<HashMap<u64, mpsc::Sender<serde_json::Value>>>,
    next_id: AtomicU64,
    /// A key-stable plugin's material per task, for the life of one
    /// process of it (the `starts` it was given in).
    key_memo: Mutex<(u32, HashMap<HookTask, Option<String>>)>,
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
    /// The daemon's stop token (for plugins a hook request starts).
    stop: Mutex<Option<CancellationToken>>,
    /// Held while a plugin wants task events: runs then publish every
    /// task's lifecycle (also the hits of a changes-only run).
    watching: Mutex<Option<crate::bus::Watching>>,
    bus: Mutex<Option<Arc<Bus>>>,
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
        if let Ok(mut s) = h.stop.lock() {
            *s = Some(stop.clone());
        }
        if let Ok(mut b) = h.bus.lock() {
            *b = Some(bus.clone());
        }
        tokio::spawn(async move {
            h.sync(&root, &stop);
            let mut n = 0;
            'subscribe: loop {
                n += 1;
                let inbox = Arc::new(LineQueue::default());
                // Passive: the host holds a `Watching` of its own while a
                // plugin wants task events (`sync`).
                let mut sub = bus.subscribe(
                    Id::Str(format!("plugins-{n}")),
                    SubscribeParams {
                        passive: true,
                        ..SubscribeParams::default()
                    },
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
                        _ = inbox.notified() => {}
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
        let wants_tasks = defs.iter().any(|d| d.events.iter().any(|e| e != "run"));
        if let (Ok(mut w), Ok(b)) = (self.watching.lock(), self.bus.lock())
            && let Some(bus) = b.as_ref()
        {
            match (wants_tasks, w.is_some()) {
                (true, false) => *w = Some(bus.watching()),
                (false, true) => *w = None,
                _ => {}
            }
        }
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
                    key_stable: false,
                }),
                outbox: LineQueue::default(),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                stop: stop.child_token(),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(2),
                key_memo: Mutex::new((0, HashMap::new())),
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
        // Hook requests in flight get no answer from this life (cleared
        // after `last_error` is set: their askers report it).
        let drop_pending = |p: &Arc<Plugin>| {
            if let Ok(mut w) = p.pending.lock() {
                w.clear();
            }
        };
        if p.stop.is_cancelled() {
            drop_pending(&p);
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
            drop_pending(&p);
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
        drop_pending(&p);
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
        #[serde(default)]
        key_stable: bool,
    }
    #[derive(Deserialize)]
    struct Reply {
        id: Id,
        #[serde(default)]
        result: Option<Hello>,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let ans: Reply = match serde_json::from_slice(&line) {
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
        s.key_stable = hello.key_stable;
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
            _ = p.outbox.notified() => {}
            r = read_line(&mut out, &mut line) => match r {
                Ok(0) | Err(_) => {
                    let st = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return format!("exited ({st}){}", said(&err_lines));
                }
                Ok(n) => {
                    if n > MAX_ANSWER {
                        return format!("wrote a line over {} MiB (a flood)", MAX_ANSWER >> 20);
                    }
                    // An answer to a hook request may be long; anything
                    // else over MAX_LINE is a flood.
                    if let Some((id, v)) = answer_of(&line)
                        && let Some(tx) = p.pending.lock().ok().and_then(|mut w| w.remove(&id))
                    {
                        let _ = tx.send(v);
                        line.clear();
                        continue;
                    }
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
    let room = (MAX_ANSWER as u64 + 1).saturating_sub(buf.len() as u64);
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

/// A line that answers a request (no `method`, a numeric `id`): the id
/// and the message.
fn answer_of(line: &[u8]) -> Option<(u64, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_slice(line.trim_ascii()).ok()?;
    if v.get("method").is_some() {
        return None;
    }
    let id = v.get("id")?.as_u64()?;
    Some((id, v))
}

/// The `result` of an answer to `method`, or why there is none.
fn result_of(v: serde_json::Value, method: &str) -> Result<serde_json::Value, String> {
    if v.get("jsonrpc").and_then(|j| j.as_str()) != Some("2.0") {
        return Err(format!(
            "answered the {method} request with garbage (not JSON-RPC 2.0)"
        ));
    }
    if let Some(e) = v.get("error") {
        let e = e.to_string();
        return Err(format!(
            "refused the {method} request: {}",
            e.chars().take(300).collect::<String>()
        ));
    }
    match v.get("result") {
        Some(r) => Ok(r.clone()),
        None => Err(format!(
            "answered the {method} request with garbage (no result)"
        )),
    }
}

/// A `key` result: `{"material": {"<task id>": "<string>" | null}}`.
/// Tasks it leaves out (or gives `null`) get no material from it.
fn parse_key(r: &serde_json::Value, tasks: &[HookTask]) -> Answer<String> {
    let garbage = |why: String| Err(format!("answered the key request with garbage ({why})"));
    let Some(m) = r.get("material").and_then(|m| m.as_object()) else {
        return garbage("no `material` object".into());
    };
    let mut out = HashMap::with_capacity(m.len());
    for t in tasks {
        match m.get(&t.id) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s.len() <= MAX_MATERIAL => {
                out.insert(t.id.clone(), s.clone());
            }
            Some(serde_json::Value::String(_)) => {
                return garbage(format!(
                    "the material of {} is over {} KiB",
                    t.id,
                    MAX_MATERIAL >> 10
                ));
            }
            Some(_) => return garbage(format!("the material of {} is not a string", t.id)),
        }
    }
    Ok(out)
}

/// A `weights` result: `{"weights": {"<task id>": <ms>}}` (non-negative
/// integers, cut to [`MAX_WEIGHT_MS`]).
fn parse_weights(r: &serde_json::Value, tasks: &[HookTask]) -> Answer<u64> {
    let garbage = |why: String| Err(format!("answered the weights request with garbage ({why})"));
    let Some(m) = r.get("weights").and_then(|m| m.as_object()) else {
        return garbage("no `weights` object".into());
    };
    let mut out = HashMap::with_capacity(m.len());
    for t in tasks {
        match m.get(&t.id) {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(w) => {
                    out.insert(t.id.clone(), w.min(MAX_WEIGHT_MS));
                }
                None => {
                    return garbage(format!(
                        "the weight of {} is not a non-negative integer",
                        t.id
                    ));
                }
            },
        }
    }
    Ok(out)
}

/// What one plugin answered to its declared hooks (`None`: not declared).
type HookResults = (Option<Answer<String>>, Option<Answer<u64>>);

fn failed(d: &PluginDef, why: &str) -> HookResults {
    let has = |h: &str| d.hooks.iter().any(|x| x == h);
    (
        has(HOOK_KEY).then(|| Err(why.to_string())),
        has(HOOK_WEIGHTS).then(|| Err(why.to_string())),
    )
}

/// The plugins as the process's hook answerer: the daemon's long-lived
/// plugins when the host runs, else (`vxd --stdio`) each hook plugin
/// started for the one question and stopped after it.
struct PluginHooks;

/// Registers the plugins as the process's hook answerer
/// ([`crate::hooks::install`]); the server calls it in both engines.
pub fn install_hooks() {
    crate::hooks::install(Box::new(PluginHooks));
}

impl Hooks for PluginHooks {
    fn ask(&self, root: &Path, tasks: &[HookTask]) -> Answers {
        let defs = match load(root) {
            Ok(d) => d,
            // Which plugins key what is unknown: nothing may be cached.
            Err(e) => {
                return Answers {
                    keys: vec![("[[plugins]]".into(), Err(e))],
                    weights: Vec::new(),
                };
            }
        };
        let defs: Vec<PluginDef> = defs.into_iter().filter(|d| !d.hooks.is_empty()).collect();
        // The daemon's plugins, found (or started: the host syncs with the
        // config at each run's start, which comes after this question) on
        // this thread, which has the runtime.
        let hosted: Option<Vec<Option<Arc<Plugin>>>> = host().get().map(|h| {
            defs.iter()
                .map(|d| h.plugin_for(root, d))
                .collect::<Vec<_>>()
        });
        let results: Vec<HookResults> = std::thread::scope(|s| {
            let handles: Vec<_> = defs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let hosted = &hosted;
                    s.spawn(move || match hosted {
                        Some(ps) => match &ps[i] {
                            Some(p) => ask_hosted(p, tasks),
                            None => failed(d, "is not running (see `vx plugins`)"),
                        },
                        None => ask_oneshot(root, d, tasks),
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(&defs)
                .map(|(h, d)| h.join().unwrap_or_else(|_| failed(d, "could not be asked")))
                .collect()
        });
        let mut out = Answers::default();
        for (d, (k, w)) in defs.iter().zip(results) {
            if let Some(k) = k {
                out.keys.push((d.name.clone(), k));
            }
            if let Some(w) = w {
                out.weights.push((d.name.clone(), w));
            }
        }
        out.keys.sort_by(|a, b| a.0.cmp(&b.0));
        out.weights.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Host {
    /// The running plugin of `d` at `root`, started now if the host has not
    /// caught up with the config yet.
    fn plugin_for(&self, root: &Path, d: &PluginDef) -> Option<Arc<Plugin>> {
        let find = || {
            self.plugins
                .lock()
                .ok()?
                .get(&d.name)
                .filter(|p| p.root == root && p.def == *d)
                .cloned()
        };
        if let Some(p) = find() {
            return Some(p);
        }
        tokio::runtime::Handle::try_current().ok()?;
        let stop = self.stop.lock().ok()?.clone()?;
        self.sync(root, &stop);
        find()
    }
}

/// One request to a daemon's plugin, waiting (blocking) for its answer.
fn request(
    p: &Plugin,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let timeout = p.def.hook_timeout;
    let id = p.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    if let Ok(mut w) = p.pending.lock() {
        w.insert(id, tx);
    }
    let line = Message::request(Id::Num(id as i64), method, params).encode();
    p.outbox.push(line, usize::MAX);
    let r = rx.recv_timeout(timeout);
    if let Ok(mut w) = p.pending.lock() {
        w.remove(&id);
    }
    match r {
        Ok(v) => result_of(v, method),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "did not answer the {method} request within {} s",
            timeout.as_secs_f64()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let why = p
                .status
                .lock()
                .ok()
                .and_then(|s| s.last_error.clone())
                .unwrap_or_else(|| "it stopped".into());
            Err(format!(
                "ended before answering the {method} request: {why}"
            ))
        }
    }
}

/// Asks a daemon's plugin its declared hooks. A key-stable plugin is asked
/// only about tasks it was not asked about in its current life.
fn ask_hosted(p: &Arc<Plugin>, tasks: &[HookTask]) -> HookResults {
    let d = &p.def;
    let deadline = Instant::now() + d.handshake_timeout + Duration::from_millis(200);
    let (hooks, stable, starts) = loop {
        let Ok(s) = p.status.lock() else {
            return failed(d, "is not running");
        };
        match s.state {
            PluginState::Ready => break (s.hooks.clone(), s.key_stable, s.starts),
            PluginState::Starting if Instant::now() < deadline => {}
            PluginState::Starting => {
                return failed(
                    d,
                    &format!(
                        "did not answer the handshake within {} s",
                        d.handshake_timeout.as_secs_f64()
                    ),
                );
            }
            PluginState::Backoff | PluginState::Disabled => {
                let state = if s.state == PluginState::Disabled {
                    "disabled"
                } else {
                    "restarting after a failure"
                };
                let last = s
                    .last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                return failed(d, &format!("is {state}{last}"));
            }
        }
        drop(s);
        std::thread::sleep(Duration::from_millis(10));
    };
    let undeclared = |h: &str| {
        format!(
            "does not implement the `{h}` hook its [[plugins]] entry declares (its handshake lists: {})",
            if hooks.is_empty() {
                "none".to_string()
            } else {
                hooks.join(", ")
            }
        )
    };
    let has = |h: &str| d.hooks.iter().any(|x| x == h);
    let implements = |h: &str| hooks.iter().any(|x| x == h);
    let key = has(HOOK_KEY).then(|| {
        if !implements(HOOK_KEY) {
            return Err(undeclared(HOOK_KEY));
        }
        if !stable {
            let r = request(p, HOOK_KEY, serde_json::json!({ "tasks": tasks }))?;
            return parse_key(&r, tasks);
        }
        // Key-stable: answered from what this life of it said before.
        let missing: Vec<HookTask> = {
            let Ok(mut m) = p.key_memo.lock() else {
                return Err("is not running".into());
            };
            if m.0 != starts || m.1.len() > 200_000 {
                *m = (starts, HashMap::new());
            }
            tasks
                .iter()
                .filter(|t| !m.1.contains_key(*t))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            let r = request(p, HOOK_KEY, serde_json::json!({ "tasks": missing }))?;
            let got = parse_key(&r, &missing)?;
            if let Ok(mut m) = p.key_memo.lock()
                && m.0 == starts
            {
                for t in missing {
                    let v = got.get(&t.id).cloned();
                    m.1.insert(t, v);
                }
            }
        }
        let m = p
            .key_memo
            .lock()
            .map_err(|_| "is not running".to_string())?;
        Ok(tasks
            .iter()
            .filter_map(|t| m.1.get(t).cloned().flatten().map(|v| (t.id.clone(), v)))
            .collect())
    });
    let weights = has(HOOK_WEIGHTS).then(|| {
        if !implements(HOOK_WEIGHTS) {
            return Err(undeclared(HOOK_WEIGHTS));
        }
        let r = request(p, HOOK_WEIGHTS, serde_json::json!({ "tasks": tasks }))?;
        parse_weights(&r, tasks)
    });
    (key, weights)
}

/// Starts a hook plugin for one question (the no-daemon engine): the
/// handshake, each declared hook's request, then it is killed. Blocking.
fn ask_oneshot(root: &Path, d: &PluginDef, tasks: &[HookTask]) -> HookResults {
    use std::io::{BufRead, Read, Write};
    let mut child = match std::process::Command::new(&d.command)
        .args(&d.args)
        .envs(&d.env)
        .current_dir(root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(d, &format!("could not be started (`{}`): {e}", d.command)),
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return failed(d, "has no stdio pipes");
    };
    let err_lines: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let el = err_lines.clone();
    let errs = std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Ok(mut q) = el.lock() {
                        if q.len() >= STDERR_LINES {
                            q.pop_front();
                        }
                        let l = String::from_utf8_lossy(&buf).trim_end().to_string();
                        q.push_back(l.chars().take(300).collect());
                    }
                }
            }
        }
    });
    let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>, String>>(16);
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stdout);
        loop {
            let mut buf = Vec::new();
            match (&mut r)
                .take(MAX_ANSWER as u64 + 1)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => break,
                Ok(n) if n > MAX_ANSWER => {
                    let _ = tx.send(Err(format!(
                        "wrote a line over {} MiB (a flood)",
                        MAX_ANSWER >> 20
                    )));
                    break;
                }
                Ok(_) => {
                    if tx.send(Ok(buf)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    // The answer to request `id` within `timeout`; `log` lines are logged.
    let answer = |id: u64, method: &str, timeout: Duration| -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(if method == INITIALIZE {
                        format!(
                            "did not answer the handshake within {} s",
                            timeout.as_secs_f64()
                        )
                    } else {
                        format!(
                            "did not answer the {method} request within {} s",
                            timeout.as_secs_f64()
                        )
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("exited before answering the {method} request"));
                }
            };
            if line.trim_ascii().is_empty() {
                continue;
            }
            if let Some(e) = check_output(&d.name, &line) {
                return Err(e);
            }
            match answer_of(&line) {
                Some((got, v)) if got == id => return result_of(v, method),
                Some(_) => {
                    return Err(format!(
                        "answered the {method} request with garbage (another id): {}",
                        shown(&line)
                    ));
                }
                None => {} // a `log` notification
            }
        }
    };
    let mut send = |id: u64, method: &str, params: serde_json::Value| -> Result<(), String> {
        let line = Message::request(Id::Num(id as i64), method, params).encode();
        stdin
            .write_all(&line)
            .and_then(|_| {
                if line.ends_with(b"\n") {
                    Ok(())
                } else {
                    stdin.write_all(b"\n")
                }
            })
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("could not be sent the {method} request ({e})"))
    };
    let result = (|| -> Result<HookResults, String> {
        send(
            1,
            INITIALIZE,
            serde_json::json!({
                "protocol": PROTOCOL,
                "vx_version": env!("CARGO_PKG_VERSION"),
                "name": d.name,
                "root": root.to_string_lossy(),
                "events": [],
            }),
        )?;
        let hello = answer(1, INITIALIZE, d.handshake_timeout)?;
        if hello.get("protocol").and_then(|p| p.as_u64()) != Some(PROTOCOL as u64) {
            return Err(format!(
                "speaks plugin protocol {}, this vx speaks {PROTOCOL}",
                hello.get("protocol").unwrap_or(&serde_json::Value::Null)
            ));
        }
        let hooks: Vec<String> = hello
            .get("hooks")
            .and_then(|h| serde_json::from_value(h.clone()).ok())
            .unwrap_or_default();
        let mut out: HookResults = (None, None);
        let mut id = 1;
        for h in &d.hooks {
            id += 1;
            let r = if !hooks.contains(h) {
                Err(format!(
                    "does not implement the `{h}` hook its [[plugins]] entry declares (its handshake lists: {})",
                    if hooks.is_empty() {
                        "none".to_string()
                    } else {
                        hooks.join(", ")
                    }
                ))
            } else {
                send(id, h, serde_json::json!({ "tasks": tasks }))
                    .and_then(|_| answer(id, h, d.hook_timeout))
            };
            if h == HOOK_KEY {
                out.0 = Some(r.and_then(|r| parse_key(&r, tasks)));
            } else {
                out.1 = Some(r.and_then(|r| parse_weights(&r, tasks)));
            }
        }
        Ok(out)
    })();
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(r) => r,
        Err(e) => {
            // Let the stderr reader catch the last lines (never joined: a
            // grandchild may hold the pipe).
            std::thread::sleep(Duration::from_millis(50));
            drop(errs);
            failed(d, &format!("{e}{}", said(&err_lines)))
        }
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
    fn hooks_parse_and_unknown_hooks_name_the_line() {
        let d = parse(
            "[[plugins]]\nname = \"k\"\ncommand = \"x\"\nhooks = [\"weights\", \"key\", \"key\"]\nhook_timeout_ms = 300\n",
        )
        .expect("valid");
        assert_eq!(d[0].hooks, vec!["key", "weights"]);
        assert_eq!(d[0].hook_timeout, Duration::from_millis(300));
        let e = parse("[[plugins]]\nname = \"k\"\ncommand = \"x\"\nhooks = [\"keys\"]\n")
            .expect_err("unknown hook");
        assert!(
            e.starts_with("vx.toml:1: plugin `k`: unknown hook `keys` (one of: key, weights)"),
            "{e}"
        );
    }

    fn tasks() -> Vec<HookTask> {
        ["a#build", "b#build"]
            .into_iter()
            .map(|id| HookTask {
                id: id.into(),
                project: id[..1].into(),
                task: "build".into(),
                dir: id[..1].into(),
                command: "make".into(),
            })
            .collect()
    }

    #[test]
    fn hook_answers_are_checked_by_table() {
        let t = tasks();
        let key = |s: &str| parse_key(&serde_json::from_str(s).expect("json"), &t);
        let ok = key(r#"{"material":{"a#build":"node-20","b#build":null,"zz#x":"ignored"}}"#)
            .expect("valid");
        assert_eq!(ok.len(), 1);
        assert_eq!(ok["a#build"], "node-20");
        for bad in [
            r#"{}"#,
            r#"{"material":[]}"#,
            r#"{"material":{"a#build":3}}"#,
        ] {
            assert!(
                key(bad).is_err_and(|e| e.contains("garbage")),
                "{bad} must be garbage"
            );
        }
        let long = format!(
            r#"{{"material":{{"a#build":"{}"}}}}"#,
            "x".repeat(MAX_MATERIAL + 1)
        );
        assert!(key(&long).is_err());
        let w = |s: &str| parse_weights(&serde_json::from_str(s).expect("json"), &t);
        let ok = w(r#"{"weights":{"a#build":1500,"b#build":99999999999}}"#).expect("valid");
        assert_eq!(ok["a#build"], 1500);
        assert_eq!(ok["b#build"], MAX_WEIGHT_MS);
        for bad in [
            r#"{"weights":{"a#build":-1}}"#,
            r#"{"weights":{"a#build":"1"}}"#,
            r#"{"w":{}}"#,
        ] {
            assert!(w(bad).is_err_and(|e| e.contains("garbage")), "{bad}");
        }
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
        assert!(result_of(v(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#), "key").is_ok());
        assert!(
            result_of(
                v(r#"{"jsonrpc":"2.0","id":2,"error":{"code":1,"message":"no"}}"#),
                "key"
            )
            .is_err_and(|e| e.starts_with("refused the key request"))
        );
        assert!(result_of(v(r#"{"id":2,"result":{}}"#), "key").is_err());
        assert_eq!(
            answer_of(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#).map(|a| a.0),
            Some(7)
        );
        assert!(answer_of(br#"{"jsonrpc":"2.0","method":"log","params":{}}"#).is_none());
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
