//! Method names, their parameters and results, and the run events.
//!
//! Every type here is plain data with serde derives. Field names are the wire
//! names (snake_case); `docs/protocol.md` documents each one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `daemon.hello` — must be the first request on a connection.
pub const HELLO: &str = "daemon.hello";
/// `run.start` — plan and execute; `run.event` notifications stream until the response.
pub const RUN_START: &str = "run.start";
/// `run.plan` — plan only (`--dry`, `--graph`): keys and predicted cache status.
pub const RUN_PLAN: &str = "run.plan";
/// `run.cancel` — a notification or request that stops a run (Ctrl-C).
pub const RUN_CANCEL: &str = "run.cancel";
/// `run.event` — notification from the engine during `run.start`.
pub const RUN_EVENT: &str = "run.event";
/// `cache.stats` — entries, blobs and bytes of the local cache.
pub const CACHE_STATS: &str = "cache.stats";
/// `cache.clean` — delete the local cache.
pub const CACHE_CLEAN: &str = "cache.clean";
/// `daemon.shutdown` — stop the engine after answering.
pub const SHUTDOWN: &str = "daemon.shutdown";
/// `daemon.status` — what a long-lived daemon holds and has done.
pub const STATUS: &str = "daemon.status";
/// `watch.start` — a dev loop: an initial run, then a cycle per batch of
/// changes. `run.event` notifications stream until `run.cancel`; the
/// response ([`WatchSummary`]) comes when the loop stops.
pub const WATCH_START: &str = "watch.start";
/// `cache.prune` — drop least recently used entries by age and size, then unreferenced blobs.
pub const CACHE_PRUNE: &str = "cache.prune";
/// `history.runs` — recent recorded runs, newest first (`vx history`).
pub const HISTORY_RUNS: &str = "history.runs";
/// `history.run` — one recorded run (`vx last`).
pub const HISTORY_RUN: &str = "history.run";
/// `history.task` — one task's recorded rows and statistics (`vx history TASK`).
pub const HISTORY_TASK: &str = "history.task";
/// `history.why` — why a task's key changed (`vx why`).
pub const HISTORY_WHY: &str = "history.why";
/// `workspace.info` — versions, counts, cache, history, daemon (`vx info`).
pub const WORKSPACE_INFO: &str = "workspace.info";
/// `daemon.methods` — the method catalogue, with JSON Schemas.
pub const DAEMON_METHODS: &str = "daemon.methods";
/// `$/cancel` — cancel one request of the connection by its id.
pub const CANCEL: &str = "$/cancel";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HelloParams {
    pub protocol: u32,
    /// The client's binary version (`CARGO_PKG_VERSION`).
    pub client_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HelloResult {
    pub protocol: u32,
    /// The engine's binary version.
    pub version: String,
    pub pid: u32,
    /// `"stdio"` for the no-daemon path, `"daemon"` for a long-lived vxd.
    pub mode: String,
    /// The workspace root a daemon serves (`None` on the stdio path).
    #[serde(default)]
    pub root: Option<String>,
}

/// The result of `daemon.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub protocol: u32,
    pub root: String,
    pub socket: String,
    pub uptime_ms: u64,
    /// Milliseconds since the last request; the daemon exits after `idle_timeout_ms`.
    pub idle_ms: u64,
    pub idle_timeout_ms: u64,
    pub projects: usize,
    pub tasks: usize,
    pub files_indexed: usize,
    pub watches: usize,
    pub rss_bytes: u64,
    pub runs_served: u64,
    /// Of `runs_served`, the runs answered by replaying the answer of an
    /// identical earlier request that nothing changed since
    /// (`docs/caching.md`, "Repeat runs under the daemon").
    #[serde(default)]
    pub runs_replayed: u64,
    /// Tasks of fresh runs served from the memo of the same request's last
    /// run, unvisited (`docs/caching.md`, "Repeat runs under the daemon").
    #[serde(default)]
    pub tasks_memo_served: u64,
    pub connections: usize,
    /// Full rescans since start (watcher overflow, errors, branch switches).
    pub rescans: u64,
    pub log_file: String,
    /// What attaches to the daemon besides its socket, by name (`http` →
    /// its URL); empty when nothing else is served.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub endpoints: std::collections::BTreeMap<String, String>,
}

/// What to do after a task fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ContinueMode {
    /// Stop starting tasks; running ones finish; the rest are skipped.
    Never,
    /// Skip the failed task's dependents; everything else goes on.
    #[default]
    DepsOk,
    /// Run dependents anyway (their results are not cached).
    Always,
}

/// Which task logs the client shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum OutputLogs {
    /// Live output of executed tasks and the replayed log of hits.
    #[default]
    Full,
    /// Only the output of failed tasks (buffered, shown when they fail).
    ErrorsOnly,
    /// Live output of executed tasks; hits print nothing.
    NewOnly,
    /// No task output at all; only the summary.
    None,
    /// No task output; one line per task with its cache status and key
    /// (turbo's `hash-only`).
    HashOnly,
}

/// Which environment reaches a task (turbo's `envMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum EnvMode {
    /// Only a small allowlist (PATH, HOME, …), the keyed variables and the
    /// pass-through ones.
    #[default]
    Strict,
    /// The client's whole environment (keys are unchanged: only declared
    /// variables are keyed).
    Loose,
}

/// How much per-task detail `run.start` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Detail {
    /// A `task_finished` event and a summary row for every task.
    #[default]
    All,
    /// Only for tasks that did not come from the cache (executed, failed,
    /// skipped, aborted); `counts` still cover every task. For renderers
    /// that only show what happened.
    Changes,
}

/// The largest accepted concurrency (`--concurrency`, `concurrency` in a
/// config): the engine refuses more, so no caller can make it allocate
/// per-lane state for billions of lanes.
pub const MAX_CONCURRENCY: usize = 1024;

/// Parameters of `run.start` and `run.plan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunParams {
    /// The client's working directory (absolute). Decides the workspace and,
    /// outside its root, the default project scope.
    pub cwd: String,
    /// Requested tasks: `build` or `project#build`.
    pub tasks: Vec<String>,
    /// `--filter` patterns, in order.
    #[serde(default)]
    pub filters: Vec<String>,
    /// `--all`: every project that declares the task.
    #[serde(default)]
    pub all: bool,
    /// `--affected[=BASE]`: `Some("")` means the default base.
    #[serde(default)]
    pub affected: Option<String>,
    /// Arguments after `--`, forwarded to requested tasks and keyed.
    #[serde(default)]
    pub args: Vec<String>,
    /// `--concurrency N`; `None` = the default (twice the CPUs, at least 8). At most
    /// [`MAX_CONCURRENCY`]: a larger value is refused.
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default, rename = "continue")]
    pub continue_mode: ContinueMode,
    /// `--force`: ignore cache hits, still save.
    #[serde(default)]
    pub force: bool,
    /// `--no-cache`: neither read nor write the cache.
    #[serde(default)]
    pub no_cache: bool,
    #[serde(default)]
    pub output_logs: OutputLogs,
    #[serde(default)]
    pub detail: Detail,
    /// The client's environment: the engine resolves task env and keyed env
    /// values from it, never from its own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the client's stdin and stdout are a terminal: an interactive
    /// task that runs alone then gets it.
    #[serde(default)]
    pub tty: bool,
    /// The client's command line, recorded in the run history.
    #[serde(default)]
    pub argv: Vec<String>,
    /// `--profile=FILE` (absolute): write a Chrome trace of the run there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `--report[=FILE]` (absolute): write a markdown summary there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Which environment reaches tasks (`--env-mode`); `None`: the
    /// workspace's (turbo.json `envMode`), else strict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_mode: Option<EnvMode>,
    /// Key and pass the env variables of the framework a package uses
    /// (`NEXT_PUBLIC_*` for Next.js, …), as turbo's `--framework-inference`
    /// (the default); `Some(false)` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_inference: Option<bool>,
    /// `output_logs` is the default, not chosen: a task's own `outputLogs`
    /// (turbo.json) wins over it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_logs_from_tasks: bool,
    /// Run only the requested tasks, not their dependencies (turbo's
    /// `--only`); the dependencies' keys still count.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only: bool,
    /// Run the requested tasks at once, ignoring the order between them,
    /// and none of their dependencies (turbo's `--parallel`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel: bool,
    /// `--cache=local:rw,remote:r` (turbo 2's syntax): which caches this
    /// run reads and writes. `None`: both, as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// `--distribute`: the daemon coordinates this run, offering the tasks
    /// it must execute to its attached workers (`docs/distributed.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distribute: bool,
    /// With `distribute`: whether the daemon's own lanes run tasks too
    /// (`--no-local` turns it off). Default true.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub distribute_local: bool,
}

impl Default for RunParams {
    fn default() -> Self {
        RunParams {
            cwd: Default::default(),
            tasks: Default::default(),
            filters: Default::default(),
            all: Default::default(),
            affected: Default::default(),
            args: Default::default(),
            concurrency: Default::default(),
            continue_mode: Default::default(),
            force: Default::default(),
            no_cache: Default::default(),
            output_logs: Default::default(),
            detail: Default::default(),
            env: Default::default(),
            tty: Default::default(),
            argv: Default::default(),
            profile: Default::default(),
            report: Default::default(),
            env_mode: Default::default(),
            framework_inference: Default::default(),
            output_logs_from_tasks: Default::default(),
            only: Default::default(),
            parallel: Default::default(),
            cache: Default::default(),
            distribute: Default::default(),
            distribute_local: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    /// Executed and exited 0.
    Success,
    /// Served from the cache (restored, or outputs already up to date).
    Cached,
    /// Executed and failed (non-zero exit, timeout, spawn error).
    Failed,
    /// Not run because a dependency failed (or `--continue=never` stopped the run).
    Skipped,
    /// Killed because the run was cancelled.
    Aborted,
    /// A persistent task that is ready and still running.
    Running,
}

/// Where a task's result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum CacheSource {
    /// No usable entry: the task executed (or would).
    Miss,
    /// Restored from the local cache.
    Local,
    /// A local hit whose outputs were already on disk: nothing written.
    UpToDate,
    /// Caching is off for this task (or the run).
    Disabled,
    /// Fetched from the remote cache (then kept in the local one) and restored.
    Remote,
}

/// The outcome of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskResult {
    /// `project#task`.
    pub id: String,
    pub project: String,
    pub task: String,
    pub status: TaskStatus,
    pub cache: CacheSource,
    /// The task key (64 hex), when one was computed.
    pub key: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub attempts: u32,
    /// For a skipped task: the failed task that blocked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    /// A one-line reason for a failure (timeout, spawn error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// CPU time (user + system) of an executed task's process tree, over
    /// all attempts, in ms; absent for a hit, or when the tree lived too
    /// briefly to be sampled (`docs/history.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Peak resident memory of an executed task's process tree (the sum
    /// over its processes, sampled), in bytes; absent as `cpu_ms` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// The worker that executed it (`vx run --distribute`); absent when
    /// it ran here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunCounts {
    pub total: usize,
    pub cached: usize,
    pub executed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub aborted: usize,
    /// Persistent tasks still running when the summary was made.
    #[serde(default)]
    pub running: usize,
}

/// The result of `run.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunSummary {
    pub run_id: String,
    pub ok: bool,
    /// The exit code the client should use (0, 1, 130, 143).
    pub exit_code: i32,
    /// Unix milliseconds.
    pub started_at: u64,
    pub ended_at: u64,
    pub duration_ms: u64,
    pub counts: RunCounts,
    pub tasks: Vec<TaskResult>,
    /// Where the workspace root is (for the client's `--summarize` default).
    pub root: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A `run.event` notification's params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        root: String,
        tasks: usize,
        concurrency: usize,
        /// The run's span (W3C `traceparent`), when the run is traced
        /// (`docs/telemetry.md`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// The span the run is a child of (its client's `TRACEPARENT`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_span_id: Option<String>,
    },
    TaskStarted {
        id: String,
        key: Option<String>,
        command: String,
        /// The task is not cached (its summary row says `cache: disabled`):
        /// `cache = false`, persistent, interactive, a group, or `--no-cache`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        uncached: bool,
        /// The task's span (the `TRACEPARENT` its process got), when the
        /// run is traced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// The worker it runs on (`vx run --distribute`; `reapi` for remote
        /// execution); absent here. A task that falls back to this machine
        /// after a remote start is started again without it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    TaskOutput {
        id: String,
        stream: Stream,
        line: String,
        /// True when the line is replayed from the cache.
        #[serde(default)]
        replay: bool,
        /// The worker printing it (`vx run --distribute`); absent here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// A cache hit: its stored log follows as `task_output` lines with `replay: true`.
    TaskCacheHit {
        id: String,
        key: String,
        /// `local` (restored) or `up-to-date` (outputs already on disk).
        source: CacheSource,
    },
    TaskRetry {
        id: String,
        attempt: u32,
        of: u32,
        reason: String,
    },
    TaskFinished {
        result: TaskResult,
    },
    /// A one-line notice from the engine (a dropped corrupt entry, ...).
    Warning {
        message: String,
    },
    /// A persistent task is ready (its `ready_when` line appeared, or it
    /// started and has no `ready_when`): its dependents may start.
    TaskReady {
        id: String,
    },
    /// Every task that will finish has finished. In `run.start`, the
    /// persistent tasks listed in `summary` as `running` keep going (their
    /// output keeps streaming) until one exits or the run is cancelled; the
    /// response follows then. In `watch.start`, the end of a cycle.
    Settled {
        summary: RunSummary,
    },
    /// This connection did not read its events fast enough: `count`
    /// `task_output` events were not sent to it (its queue is bounded).
    /// Sent once the connection has room again, in the place of the gap;
    /// every other event and the response are always delivered. The full
    /// logs are in the cache as usual.
    EventsDropped {
        count: u64,
    },
    /// `watch.start`: a cycle begins. `changes` are the changed paths
    /// (workspace-relative, at most 20) that triggered it; empty for the
    /// initial run.
    WatchCycle {
        cycle: u64,
        changes: Vec<String>,
    },
}

/// Parameters of `watch.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WatchParams {
    /// What each cycle runs (the same as `run.start`'s parameters).
    pub run: RunParams,
    /// Quiet time after the last change before a cycle starts (default 100 ms).
    #[serde(default)]
    pub debounce_ms: Option<u64>,
}

/// The result of `watch.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WatchSummary {
    pub cycles: u64,
    /// The exit code the client should use (0 when stopped by a signal).
    pub exit_code: i32,
}

/// The predicted cache status in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    Hit,
    Miss,
    /// Caching is off for the task.
    Uncached,
    /// A group task: nothing runs.
    Group,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PlannedTask {
    pub id: String,
    pub project: String,
    pub task: String,
    /// Project directory relative to the workspace root (`.` for the root).
    pub dir: String,
    pub command: Option<String>,
    pub key: Option<String>,
    pub prediction: Prediction,
    /// Ids of the tasks this one waits for.
    pub deps: Vec<String>,
    /// Whether the user asked for it (as opposed to pulled in as a dependency).
    pub requested: bool,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Risks in how the task is keyed, one sentence each (e.g. an input
    /// that is a symlink to a path outside the workspace, hashed by its link
    /// text only). Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Where the task would execute on a miss, when the run executes tasks
    /// remotely (`[remote_execution] execute`): `reapi` (the REAPI server,
    /// if it turns out able to execute) or `local`. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
}

/// The result of `run.plan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Plan {
    pub root: String,
    pub tasks: Vec<PlannedTask>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunCancelParams {
    /// The signal that caused the cancel (2 = SIGINT, 15 = SIGTERM); decides the exit code.
    /// Absent (or 0): SIGTERM.
    #[serde(default)]
    pub signal: i32,
}

/// Parameters of `cache.stats` and `cache.clean`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CacheParams {
    pub cwd: String,
    /// The client's cache-related environment (`VX_CACHE_DIR`): which cache
    /// it means is the client's choice, never the engine's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CacheStats {
    pub dir: String,
    pub entries: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CacheCleaned {
    pub dir: String,
    pub entries: u64,
    pub freed_bytes: u64,
}

/// Parameters of `cache.prune`. Without either limit only unreferenced
/// blobs and stale temp files are removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CachePruneParams {
    pub cwd: String,
    /// As in [`CacheParams`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Drop least recently used entries until the blobs take at most this many bytes.
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Drop entries not served (or created) within this many milliseconds.
    #[serde(default)]
    pub max_age_ms: Option<u64>,
    /// Report what would go; remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The result of `cache.prune`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CachePruned {
    pub dir: String,
    /// Entries removed (with `dry_run`: that would be).
    pub removed: u64,
    pub kept: u64,
    /// Bytes of blobs and stale temp files deleted (or that would be).
    pub freed_bytes: u64,
    pub kept_bytes: u64,
    #[serde(default)]
    pub dry_run: bool,
    /// The removed entries, least recently used first.
    #[serde(default)]
    pub entries: Vec<PrunedEntry>,
}

/// One entry removed by `cache.prune`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PrunedEntry {
    pub key: String,
    /// `project#task` (empty for an undecodable entry).
    pub task: String,
    /// Unix ms the entry was last served (or created).
    pub accessed_at: u64,
    /// Bytes of the blobs it names (a blob shared with another entry counts in full).
    pub bytes: u64,
}
