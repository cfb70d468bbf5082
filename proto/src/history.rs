//! Run history on the wire: what the engine records about every run, and
//! what `vx history`, `vx last`, `vx why` and `vx info` read back.
//!
//! The engine that ran a run (the daemon when there is one) writes a
//! [`RunRecord`] and, for every task it executed, a [`Fingerprint`] of the
//! parts behind the task's key. Values that may be secret (env values,
//! forwarded args) only ever appear hashed.

use crate::methods::{CacheSource, RunCounts, TaskStatus};
use serde::{Deserialize, Serialize};

/// One task's row in a recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskRun {
    /// `project#task`.
    pub id: String,
    pub status: TaskStatus,
    pub cache: CacheSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub attempts: u32,
    /// Wall time of the task (all attempts).
    pub duration_ms: u64,
    /// Start and end, in milliseconds since the run started.
    pub start_ms: u64,
    pub end_ms: u64,
    /// The concurrency lane (0-based) the task executed in; `None` for
    /// tasks that never held a lane (inline cache hits, skipped tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// CPU time (user + system) of the task's process tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Peak resident set size of the task's process tree (sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A long-running task (never cached).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
    /// The worker that executed it (`vx run --distribute`); absent when
    /// it ran in the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunRecord {
    pub run_id: String,
    /// The client's command line (argv, program name first).
    pub argv: Vec<String>,
    /// The requested tasks as given (`build`, `app#test`).
    pub requested: Vec<String>,
    /// Unix milliseconds.
    pub started_at: u64,
    pub ended_at: u64,
    pub duration_ms: u64,
    pub exit_code: i32,
    pub ok: bool,
    pub concurrency: usize,
    pub counts: RunCounts,
    /// Sorted by id.
    pub tasks: Vec<TaskRun>,
}

/// The parts behind one task key, as they were when the key was computed.
/// Written when the task executed (a miss), keyed by the task key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Fingerprint {
    pub key: String,
    /// `project#task`.
    pub task: String,
    /// Input files: workspace-relative path → blake3 of the content, sorted.
    pub files: Vec<(String, String)>,
    /// Keyed env: name → blake3 of the value (`"unset"` when unset), sorted.
    pub env: Vec<(String, String)>,
    /// blake3 of the task's resolved configuration.
    pub config: String,
    /// The command line (without forwarded args).
    pub command: String,
    /// Upstream tasks whose keys are folded: id → key, sorted.
    pub upstream: Vec<(String, String)>,
    /// blake3 of the forwarded args (of the empty list when none).
    pub args: String,
    /// Key material from plugins (`docs/plugins.md`): plugin name →
    /// blake3 of its material, sorted; empty without key plugins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------
// Derived views: statistics, `vx why`, and the request/result types of the
// `history.*` and `workspace.info` methods.
// ---------------------------------------------------------------------------

/// How a task fails, from its recent history (`docs/history.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    /// No retries, and no key that both failed and succeeded.
    Stable,
    /// Flaky, but failures are rare (fewer than a fifth of the runs).
    FlakyRecoverable,
    /// Flaky, and failures are common.
    FlakyFatal,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Stable => "stable",
            FailureMode::FlakyRecoverable => "flaky-recoverable",
            FailureMode::FlakyFatal => "flaky-fatal",
        }
    }
}

/// Statistics of one task over its most recent runs (the window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskStats {
    /// Rows in the window.
    pub total: u64,
    /// Rows that executed and succeeded (`status = success`).
    pub successes: u64,
    /// Rows served from the cache (`local` or `up-to-date`).
    pub hits: u64,
    /// Rows that did not come from the cache (`miss` or `disabled`).
    pub executed: u64,
    pub failures: u64,
    /// Rows that needed more than one attempt.
    pub retried: u64,
    /// Percentiles of the duration of the most recent `window` executed,
    /// successful runs (`None` when there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
    /// `successes / total` (0 when `total = 0`).
    pub success_rate: f64,
    /// `hits / total` (0 when `total = 0`).
    pub hit_rate: f64,
    pub failure_mode: FailureMode,
    /// Keys that both failed and succeeded (or hit), over all retained history.
    pub mixed_outcome_keys: u64,
}

/// One line of `vx history` without a task: a recorded run, without its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunBrief {
    pub run_id: String,
    pub argv: Vec<String>,
    pub requested: Vec<String>,
    pub started_at: u64,
    pub duration_ms: u64,
    pub exit_code: i32,
    pub ok: bool,
    pub counts: RunCounts,
}

impl From<&RunRecord> for RunBrief {
    fn from(r: &RunRecord) -> Self {
        RunBrief {
            run_id: r.run_id.clone(),
            argv: r.argv.clone(),
            requested: r.requested.clone(),
            started_at: r.started_at,
            duration_ms: r.duration_ms,
            exit_code: r.exit_code,
            ok: r.ok,
            counts: r.counts,
        }
    }
}

/// One recorded row of a task, with the run it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskRunRow {
    pub run_id: String,
    /// The run's start (Unix milliseconds).
    pub started_at: u64,
    pub task: TaskRun,
}

/// Which part of a key changed (`vx why`); `plugin` is a key plugin's
/// material (the change's `name` is the plugin's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    File,
    Env,
    Config,
    Command,
    Upstream,
    Args,
    Plugin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One difference between two fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Change {
    pub component: Component,
    /// The file path, env name or upstream task id (`None` for config,
    /// command and args).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: ChangeKind,
}

/// Why a task's key changed between its last two distinct keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WhyReport {
    /// `project#task`.
    pub task: String,
    /// The newest recorded key (`None` when no recorded row has a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The run that last recorded `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The distinct key recorded before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run_id: Option<String>,
    /// Where the newest recorded row's result came from (`remote`: the
    /// remote cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSource>,
    /// Whether both fingerprints were found (so `changes` is complete).
    pub compared: bool,
    pub changes: Vec<Change>,
    /// What to do, one sentence per line.
    pub advice: Vec<String>,
}

/// Parameters of `history.runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HistoryRunsParams {
    pub cwd: String,
    /// How many runs, newest first (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The result of `history.runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunList {
    pub root: String,
    /// Newest first.
    pub runs: Vec<RunBrief>,
}

/// Parameters of `history.run` (`vx last`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HistoryRunParams {
    pub cwd: String,
    /// A run id or a unique prefix of one; `None` = the latest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The latest failed run (ignored when `run_id` is given).
    #[serde(default)]
    pub failed: bool,
}

/// Parameters of `history.task` and `history.why`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HistoryTaskParams {
    pub cwd: String,
    /// `project#task`, or a bare task name resolved against the cwd's project.
    pub task: String,
    /// How many rows, newest first (default 20; `history.task` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// `history.why` only: explain the key the task had in this run (a
    /// unique prefix works) instead of the newest one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// The result of `history.task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskHistory {
    /// The resolved `project#task`.
    pub task: String,
    /// Newest first.
    pub rows: Vec<TaskRunRow>,
    /// Over the default window (50 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<TaskStats>,
}

/// Parameters of `workspace.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InfoParams {
    pub cwd: String,
}

/// A task whose history says it is flaky (`vx info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FlakyTask {
    pub task: String,
    pub failure_mode: FailureMode,
    pub total: u64,
    pub failures: u64,
    pub retried: u64,
}

/// The daemon serving the workspace, when one answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DaemonBrief {
    pub pid: u32,
    pub uptime_ms: u64,
}

/// The result of `workspace.info` (`vx info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WorkspaceInfo {
    /// The engine's version.
    pub version: String,
    pub root: String,
    pub projects: usize,
    pub tasks: usize,
    pub cache_dir: String,
    pub cache_entries: u64,
    pub cache_blobs: u64,
    pub cache_bytes: u64,
    pub history_file: String,
    /// Runs retained in the history (0 when it is missing or unreadable).
    pub history_runs: u64,
    pub runs_last_24h: u64,
    /// Why the history could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
    /// Tasks whose failure mode is not `stable`, sorted by id.
    pub flaky: Vec<FlakyTask>,
    /// `None` when the answer came from the no-daemon engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonBrief>,
    /// Where the workspace's daemon listens (or would).
    pub socket: String,
}
