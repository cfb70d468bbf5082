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
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}
