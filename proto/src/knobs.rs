//! Every `VX_*` environment variable vx reads or sets, declared once.
//!
//! Owns: [`KNOBS`], the one table of knobs (name, kind, default, who reads
//! it, one line of documentation), a named constant per knob, typed getters
//! and the markdown table `docs/cli.md` embeds (checked by a test; rewrite it
//! with `VX_BLESS=1 cargo test -p vx-proto knobs`).
//!
//! The scope says where a knob's value comes from:
//! - [`Scope::Client`]: the `vx` process's own environment.
//! - [`Scope::Run`]: the request's environment (the `env` map the client
//!   sends with `run.start`, `cache.*` …), read with [`Knob::get`]. The
//!   daemon never reads one from its own environment: it removes every run
//!   knob from it at start ([`run_knobs`]).
//! - [`Scope::Daemon`]: the engine process's own environment, read once at
//!   start with [`Knob::get_process`].
//! - [`Scope::Task`]: set by vx in each task's environment; never read.
//! - [`Scope::Test`]: test hooks, left out of the documentation.
//!
//! Never: a `"VX_…"` string literal outside this file (a test in this
//! module greps `client/`, `daemon/` and `proto/` for one); never a
//! dependency beyond `std` (the client and the engine both link this).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

/// What a knob's value looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0` or `1` (anything non-empty other than `0` counts as on).
    Bool,
    /// A whole number of milliseconds.
    Millis,
    /// A duration with a unit: `250ms`, `30s`, `5m`, `3h`.
    Duration,
    /// A whole number.
    Count,
    /// A file or directory path.
    Path,
    /// Free text.
    Text,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
}

/// Who reads a knob, and from which environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The `vx` client, from its own environment.
    Client,
    /// The engine, from the request's environment (the invoking client's),
    /// under a daemon as without one.
    Run,
    /// The engine process, from its own environment at start.
    Daemon,
    /// Set by vx in every task's environment.
    Task,
    /// Test hooks; not documented.
    Test,
}

/// One environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    pub name: &'static str,
    pub kind: Kind,
    /// The default, as text (`""`: unset means off / not applicable).
    pub default: &'static str,
    pub scope: Scope,
    /// One line for `docs/cli.md`.
    pub doc: &'static str,
}

macro_rules! knobs {
    ($($id:ident = $name:literal, $kind:expr, $default:literal, $scope:ident, $doc:literal;)*) => {
        $(
            #[doc = $doc]
            pub const $id: Knob = Knob {
                name: $name,
                kind: $kind,
                default: $default,
                scope: Scope::$scope,
                doc: $doc,
            };
        )*
        /// Every knob, in documentation order.
        pub const KNOBS: &[Knob] = &[$($id),*];
    };
}

knobs! {
    DAEMON = "VX_DAEMON", Kind::Bool, "", Client,
        "`0`: never use the daemon; `1`: use it even when `CI` is set";
    DAEMON_BIN = "VX_DAEMON_BIN", Kind::Path, "", Client,
        "path of the `vxd` binary (default: next to `vx`, else on `PATH`)";
    HELLO_TIMEOUT_MS = "VX_HELLO_TIMEOUT_MS", Kind::Millis, "3000", Client,
        "how long a daemon has to answer the client's hello before it is reported as not responding and bypassed";
    DAEMON_IDLE_TIMEOUT = "VX_DAEMON_IDLE_TIMEOUT", Kind::Duration, "3h", Daemon,
        "idle time before the daemon exits (`250ms`, `30s`, `5m`, `3h`)";
    LOG = "VX_LOG", Kind::Text, "warn", Daemon,
        "engine log filter (`tracing` syntax; the daemon's default is `info`, into `.vx/daemon.log`)";
    HTTP = "VX_HTTP", Kind::Bool, "1", Daemon,
        "`0`: the daemon serves no HTTP (dashboard, JSON-RPC, WebSocket, SSE, metrics) on loopback; see docs/http.md";
    WORKER_TOKEN = "VX_WORKER_TOKEN", Kind::Text, "", Daemon,
        "the token `vx worker` / `vxd worker` sends its coordinator when `--token` is not given (keeps it out of `ps`); see docs/distributed.md";
    CACHE_DIR = "VX_CACHE_DIR", Kind::Path, ".vx/cache", Run,
        "cache directory relative to the workspace root, `~/…` or absolute (`[workspace] cache_dir` wins); refused like `cache_dir` when it is `/`, the workspace, `$HOME`, a parent of them, or holds/is inside a project. A daemon serving another cache hands the command to the no-daemon engine";
    CACHE_LOCK_TIMEOUT_MS = "VX_CACHE_LOCK_TIMEOUT_MS", Kind::Millis, "3000", Run,
        "how long a foreground run waits for a cache held by a vx process that does not share it (an older vx) before it runs uncached; vx processes of this version share the cache and never wait";
    KILL_GRACE_MS = "VX_KILL_GRACE_MS", Kind::Millis, "2000", Run,
        "grace between SIGTERM and SIGKILL when a task is stopped";
    READY_NOTICE_MS = "VX_READY_NOTICE_MS", Kind::Millis, "10000", Run,
        "after this long without readiness a persistent task gets a notice";
    HISTORY = "VX_HISTORY", Kind::Bool, "1", Run,
        "`0`: this run neither reads nor writes the run history (structural scheduling, nothing recorded)";
    HISTORY_MAX_RUNS = "VX_HISTORY_MAX_RUNS", Kind::Count, "200", Run,
        "runs kept in the run history (applied when a run is recorded)";
    HISTORY_MAX_AGE_DAYS = "VX_HISTORY_MAX_AGE_DAYS", Kind::Count, "30", Run,
        "days a run is kept in the run history (applied when a run is recorded)";
    SCHEDULE = "VX_SCHEDULE", Kind::Choice(&["history", "structural"]), "history", Run,
        "`structural`: ignore history durations and order ready tasks by transitive dependents only";
    REPLAY = "VX_REPLAY", Kind::Bool, "1", Run,
        "`0`: under the daemon, never answer this run by replaying an identical earlier run's answer (`docs/caching.md`, \"Repeat runs under the daemon\"); it is computed afresh";
    TIMING = "VX_TIMING", Kind::Bool, "0", Run,
        "`1`: print the engine's stage timings to stderr (a daemon writes them to `.vx/daemon.log`)";
    RUN_TASK = "VX_RUN_TASK", Kind::Text, "", Task,
        "the running task's id (`project#task`)";
    RUN_WORKSPACE = "VX_RUN_WORKSPACE", Kind::Path, "", Task,
        "the workspace root of the running task";
    REMOTE_CACHE_URL = "VX_REMOTE_CACHE_URL", Kind::Text, "", Run,
        "the remote cache's base URL (wins over `TURBO_API` and `[remote_cache] url`); `off`: no remote cache for this run";
    REMOTE_CACHE_TOKEN = "VX_REMOTE_CACHE_TOKEN", Kind::Text, "", Run,
        "the remote cache's bearer token (wins over `TURBO_TOKEN` and `[remote_cache] token_env`)";
    REMOTE_CACHE_TEAM = "VX_REMOTE_CACHE_TEAM", Kind::Text, "", Run,
        "the team (turbo's `slug`; `team_…` goes as `teamId`) (wins over `TURBO_TEAM` and `[remote_cache] team`)";
    REMOTE_CACHE_SIGNATURE_KEY = "VX_REMOTE_CACHE_SIGNATURE_KEY", Kind::Text, "", Run,
        "sign uploads and verify downloads with this HMAC-SHA256 key (turbo's `x-artifact-tag`; wins over `TURBO_REMOTE_CACHE_SIGNATURE_KEY`)";
    REMOTE_CACHE_READ_ONLY = "VX_REMOTE_CACHE_READ_ONLY", Kind::Bool, "0", Run,
        "`1`: read the remote cache, never upload (like `TURBO_REMOTE_CACHE_READ_ONLY`)";
    REMOTE_ONLY = "VX_REMOTE_ONLY", Kind::Bool, "0", Run,
        "`1`: look tasks up in the remote cache only, not the local one (like `TURBO_REMOTE_ONLY`)";
    REMOTE_CACHE_TIMEOUT_MS = "VX_REMOTE_CACHE_TIMEOUT_MS", Kind::Millis, "30000", Run,
        "timeout of one remote cache request; past it the request is a miss";
    REAPI_ENDPOINT = "VX_REAPI_ENDPOINT", Kind::Text, "", Run,
        "a Bazel Remote Execution API server used as the remote cache, `grpc://HOST:PORT` or `grpcs://HOST:PORT` (wins over `[remote_execution] endpoint`); `off`: none for this run";
    REAPI_INSTANCE_NAME = "VX_REAPI_INSTANCE_NAME", Kind::Text, "", Run,
        "the REAPI instance name (wins over `[remote_execution] instance_name`)";
    REAPI_TOKEN = "VX_REAPI_TOKEN", Kind::Text, "", Run,
        "a bearer token sent to the REAPI server as `authorization: Bearer …` (wins over `[remote_execution] token_env`)";
    REAPI_HEADERS = "VX_REAPI_HEADERS", Kind::Text, "", Run,
        "gRPC metadata for the REAPI server, `name=value` pairs separated by commas or newlines (over `[remote_execution] headers`)";
    REAPI_TLS_CA_CERT = "VX_REAPI_TLS_CA_CERT", Kind::Path, "", Run,
        "a PEM file of CA certificates the REAPI server's certificate may chain to (wins over `[remote_execution.tls] ca_cert`)";
    REAPI_EXECUTE = "VX_REAPI_EXECUTE", Kind::Bool, "0", Run,
        "`1`: execute cached tasks on the REAPI server (`Execute`), `0`: never (wins over `[remote_execution] execute`)";
    REAPI_QUEUE_TIMEOUT_MS = "VX_REAPI_QUEUE_TIMEOUT_MS", Kind::Millis, "600000", Run,
        "how long a remotely executed task may wait queued for a worker before the run gives up remote execution and runs it here";
    CACHE_SERVER_BIN = "VX_CACHE_SERVER_BIN", Kind::Path, "", Client,
        "path of the `vx-cache-server` binary `vx cache serve` runs (default: next to `vx`, else on `PATH`)";
    WALK_THREADS = "VX_WALK_THREADS", Kind::Count, "", Test,
        "threads of the workspace walk (default: the cores, at most 8)";
    TEST_HOOKS = "VX_TEST_HOOKS", Kind::Bool, "0", Test,
        "`1`: the engine answers the `test.*` methods";
    DAEMON_VERSION_OVERRIDE = "VX_DAEMON_VERSION_OVERRIDE", Kind::Text, "", Test,
        "the version the daemon reports (exercises the replace path)";
    E2E_DAEMON = "VX_E2E_DAEMON", Kind::Bool, "0", Test,
        "`1`: the end-to-end tests (`tests/`) go through the daemon";
    TEST_RECORD_DELAY_MS = "VX_TEST_RECORD_DELAY_MS", Kind::Millis, "", Test,
        "a pause inside a run's history write transaction, before its commit (the tests that read or kill a writer mid-record)";
    BLESS = "VX_BLESS", Kind::Bool, "0", Test,
        "`1`: the documentation test rewrites the generated table in `docs/cli.md`";
}

/// The knobs a request carries: the engine reads them from the request's
/// environment, and the daemon removes them from its own at start.
pub fn run_knobs() -> impl Iterator<Item = &'static Knob> {
    KNOBS.iter().filter(|k| k.scope == Scope::Run)
}

/// Looks a knob up by name.
pub fn by_name(name: &str) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.name == name)
}

impl Knob {
    /// The value in a request's environment; `None` when unset or empty.
    pub fn get<'a>(&self, env: &'a BTreeMap<String, String>) -> Option<&'a str> {
        env.get(self.name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value in this process's own environment; `None` when unset or
    /// empty (or not UTF-8). Not for run knobs (a debug assertion): those
    /// come from the request.
    pub fn get_process(&self) -> Option<String> {
        debug_assert!(
            self.scope != Scope::Run,
            "{} is read from the request, not the process",
            self.name
        );
        std::env::var(self.name).ok().filter(|v| !v.is_empty())
    }

    /// [`Knob::get_process`] for a path (any bytes).
    pub fn get_process_os(&self) -> Option<OsString> {
        debug_assert!(
            self.scope != Scope::Run,
            "{} is read from the request, not the process",
            self.name
        );
        std::env::var_os(self.name).filter(|v| !v.is_empty())
    }

    /// A run knob from this process's own environment, for the one engine
    /// whose environment *is* its request's: `vxd --stdio`, started by its
    /// only client with that client's environment. Under a daemon it is
    /// always `None`: the daemon removes every run knob from its
    /// environment at start (see [`run_knobs`]).
    pub fn inherited_os(&self) -> Option<OsString> {
        std::env::var_os(self.name).filter(|v| !v.is_empty())
    }

    /// A [`Kind::Millis`] or [`Kind::Count`] value from a request's
    /// environment (surrounding blanks allowed); `None` when unset or not
    /// a whole number.
    pub fn number(&self, env: &BTreeMap<String, String>) -> Option<u64> {
        self.get(env).and_then(parse_number)
    }

    /// [`Knob::number`] as milliseconds.
    pub fn millis(&self, env: &BTreeMap<String, String>) -> Option<Duration> {
        self.number(env).map(Duration::from_millis)
    }

    /// Whether a [`Kind::Bool`] knob is on: set, non-empty and not `0`.
    pub fn on(&self, env: &BTreeMap<String, String>) -> bool {
        self.get(env).is_some_and(|v| v != "0")
    }

    /// Whether a [`Kind::Bool`] knob is set to `0`.
    pub fn off(&self, env: &BTreeMap<String, String>) -> bool {
        self.get(env) == Some("0")
    }

    /// Whether the knob is set to exactly `value`.
    pub fn is(&self, env: &BTreeMap<String, String>, value: &str) -> bool {
        self.get(env) == Some(value)
    }
}

/// A whole number, surrounding blanks allowed.
pub fn parse_number(v: &str) -> Option<u64> {
    v.trim().parse().ok()
}

fn kind_text(k: Kind) -> String {
    match k {
        Kind::Bool => "`0`/`1`".into(),
        Kind::Millis => "ms".into(),
        Kind::Duration => "duration".into(),
        Kind::Count => "number".into(),
        Kind::Path => "path".into(),
        Kind::Text => "text".into(),
        Kind::Choice(c) => c
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(" \\| "),
    }
}

fn scope_text(s: Scope) -> &'static str {
    match s {
        Scope::Client => "client",
        Scope::Run => "run",
        Scope::Daemon => "engine process",
        Scope::Task => "task (set by vx)",
        Scope::Test => "test",
    }
}

/// The markdown table of every documented knob, as `docs/cli.md` holds it
/// between `<!-- knobs:start -->` and `<!-- knobs:end -->`.
pub fn markdown() -> String {
    let mut s =
        String::from("| variable | values | default | read by | effect |\n|---|---|---|---|---|\n");
    for k in KNOBS.iter().filter(|k| k.scope != Scope::Test) {
        let default = if k.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", k.default)
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            k.name,
            kind_text(k.kind),
            default,
            scope_text(k.scope),
            k.doc
        ));
    }
    s
}

/// The markers around the generated table in `docs/cli.md`.
pub const DOC_START: &str = "<!-- knobs:start -->";
pub const DOC_END: &str = "<!-- knobs:end -->";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("proto/ has a parent")
            .to_path_buf()
    }

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for k in KNOBS {
            assert!(k.name.starts_with("VX_"), "{}", k.name);
            assert!(seen.insert(k.name), "{} declared twice", k.name);
            assert!(!k.doc.contains('\n') && !k.doc.contains('|'), "{}", k.name);
            if let Kind::Choice(c) = k.kind {
                assert!(c.contains(&k.default), "{}: default not a choice", k.name);
            }
        }
    }

    #[test]
    fn getters() {
        let env: BTreeMap<String, String> = [
            ("VX_KILL_GRACE_MS", " 250 "),
            ("VX_TIMING", "0"),
            ("VX_HISTORY", "0"),
            ("VX_SCHEDULE", "structural"),
            ("VX_CACHE_DIR", ""),
            ("VX_READY_NOTICE_MS", "soon"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cases: &[(&Knob, Option<u64>, bool, bool)] = &[
            // knob, number, on, off
            (&KILL_GRACE_MS, Some(250), true, false),
            (&TIMING, Some(0), false, true),
            (&HISTORY, Some(0), false, true),
            (&CACHE_DIR, None, false, false),
            (&READY_NOTICE_MS, None, true, false),
            (&CACHE_LOCK_TIMEOUT_MS, None, false, false),
        ];
        for (k, n, on, off) in cases {
            assert_eq!(k.number(&env), *n, "{}", k.name);
            assert_eq!(k.on(&env), *on, "{}", k.name);
            assert_eq!(k.off(&env), *off, "{}", k.name);
        }
        assert_eq!(KILL_GRACE_MS.millis(&env), Some(Duration::from_millis(250)));
        assert!(SCHEDULE.is(&env, "structural"));
        assert_eq!(CACHE_DIR.get(&env), None, "empty counts as unset");
        assert_eq!(by_name("VX_LOG").map(|k| k.scope), Some(Scope::Daemon));
        assert!(run_knobs().any(|k| k.name == "VX_CACHE_DIR"));
        assert!(run_knobs().all(|k| k.scope == Scope::Run));
    }

    /// `docs/cli.md` holds exactly [`markdown`] between the markers;
    /// `VX_BLESS=1` rewrites the block.
    #[test]
    fn cli_doc_lists_the_table() {
        let path = repo().join("docs").join("cli.md");
        let doc = std::fs::read_to_string(&path).expect("read docs/cli.md");
        let (Some(a), Some(b)) = (doc.find(DOC_START), doc.find(DOC_END)) else {
            panic!("docs/cli.md lacks the {DOC_START} / {DOC_END} markers");
        };
        assert!(a < b, "markers out of order in docs/cli.md");
        let body_start = a + DOC_START.len();
        let want = format!("\n{}", markdown());
        if doc[body_start..b] == want {
            return;
        }
        if BLESS.get_process().as_deref() == Some("1") {
            let new = format!("{}{}{}", &doc[..body_start], want, &doc[b..]);
            std::fs::write(&path, new).expect("write docs/cli.md");
            return;
        }
        panic!(
            "docs/cli.md's knob table differs from proto/src/knobs.rs; rerun with VX_BLESS=1 to rewrite it. Expected:\n{want}"
        );
    }

    /// No `"VX_` string literal outside this file in the sources of the
    /// client, the engine and the protocol: every read goes through the table.
    #[test]
    fn no_knob_literal_outside_the_table() {
        let root = repo();
        let me = root.join("proto").join("src").join("knobs.rs");
        let mut found = Vec::new();
        for dir in ["client", "daemon", "proto"] {
            scan(&root.join(dir), &me, &mut found);
        }
        assert!(
            found.is_empty(),
            "\"VX_ literals outside proto/src/knobs.rs (use vx_proto::knobs):\n{}",
            found.join("\n")
        );
    }

    fn scan(dir: &Path, skip: &Path, found: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                scan(&p, skip, found);
            } else if p.extension().is_some_and(|x| x == "rs") && p != skip {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for (i, line) in text.lines().enumerate() {
                    if line.contains("\"VX_") {
                        found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }
}
