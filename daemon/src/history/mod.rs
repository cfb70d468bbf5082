//! `history` — the run history: every recorded run, the fingerprints behind
//! the keys of executed tasks, and what is derived from them (per-task
//! statistics and failure modes, `vx why` diffs, critical-path priorities).
//!
//! Owns `<cache_dir>/history.redb`, its own redb file beside the cache index
//! (so a broken history never costs the cache). One write transaction per
//! recorded run applies retention too. Never runs tasks, computes keys or
//! speaks JSON-RPC; a failure here must never fail a run (callers degrade
//! with a warning). `docs/history.md` documents every definition.
//!
//! Tables:
//! - `runs`: seq → the run without its rows, plus its task ids (JSON);
//! - `run_ids`: run id → seq (lookups by id and by prefix);
//! - `run_rows`: (seq, task id) → a task row (JSON): a run's rows are
//!   contiguous (a record appends, retention drops a range); per-task reads
//!   look up each retained run, newest first. Files with the older
//!   `task_rows` ((task id, seq)) are converted at open;
//! - `outcomes`: (task id, key) → (failed rows, ok rows), over all retained runs;
//! - `key_refs`: key → rows referencing it (fingerprint garbage collection);
//! - `fingerprints`: key → a fingerprint row (JSON), written once per key;
//! - `meta`: `next_seq` and `generation` (bumped by every commit, in any
//!   process, so a handle knows when its memos are stale);
//! - `durations`: task id → its newest executed successful durations.
//!
//! The daemon keeps one handle open for its life while foreground engines
//! open their own: every process shares the file (redb multi-writer mode;
//! see docs/ARCHITECTURE.md, "The store"). What the file stores are the
//! row types of [`rows`], never the wire types, so a protocol change is
//! not a storage migration.
//!
//! Submodules: [`rows`] (the stored row types and their conversions),
//! [`store`] (the file and the [`History`] handle), [`record`] (writing a
//! run), [`query`] (reading, statistics) and [`why`] (key diffs, advice,
//! critical path).

mod query;
mod record;
mod rows;
mod store;
mod why;

#[cfg(test)]
mod perf_probe;
#[cfg(test)]
mod tests;

pub use query::*;
use rows::*;
pub use store::*;
pub use why::*;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vx_proto::history::{
    Change, ChangeKind, Component, FailureMode, Fingerprint, RunBrief, RunRecord, TaskRun,
    TaskRunRow, TaskStats, WhyReport,
};
use vx_proto::{CacheSource, TaskStatus};

/// The history file's name inside the cache directory.
pub const FILE_NAME: &str = crate::cache::HISTORY_FILE;

/// Runs kept by default (`VX_HISTORY_MAX_RUNS`).
pub const DEFAULT_MAX_RUNS: usize = 200;

/// Days a run is kept by default (`VX_HISTORY_MAX_AGE_DAYS`).
pub const DEFAULT_MAX_AGE_DAYS: u64 = 30;

/// Fingerprints kept per task: those of its newest distinct keys (`why`
/// compares the newest two); older ones go even while runs name them.
pub const FINGERPRINTS_PER_TASK: usize = 4;

/// The window `vx history TASK` and `vx info` compute statistics over.
pub const DEFAULT_WINDOW: usize = 50;

/// The duration assumed for a task when no task has any history.
pub const DEFAULT_DURATION_MS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Another process holds the file (the daemon, or a concurrent run).
    #[error("the run history {0} is in use by another vx process")]
    Locked(PathBuf),
    /// The file is damaged or not a history file.
    #[error("the run history {path} is damaged ({message})")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run history: {0}")]
    Db(String),
    #[error("no recorded run matches `{0}`")]
    NoSuchRun(String),
    #[error("`{prefix}` matches several runs: {}", matches.join(", "))]
    AmbiguousRun {
        prefix: String,
        matches: Vec<String>,
    },
    #[error("no recorded runs of {0}")]
    NoTaskRuns(String),
}

impl HistoryError {
    /// The file exists but cannot be read as a history (as opposed to held
    /// by another process, which passes).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, HistoryError::Corrupt { .. })
    }

    pub fn is_locked(&self) -> bool {
        matches!(self, HistoryError::Locked(_))
    }
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for HistoryError {
            fn from(e: $t) -> Self {
                HistoryError::Db(e.to_string())
            }
        }
    )*};
}

db_errors!(
    redb::TransactionError,
    redb::StorageError,
    redb::CommitError,
    redb::Error
);

impl From<redb::TableError> for HistoryError {
    fn from(e: redb::TableError) -> Self {
        match e {
            redb::TableError::TableTypeMismatch { .. } | redb::TableError::TableIsMultimap(_) => {
                HistoryError::Corrupt {
                    path: PathBuf::from(FILE_NAME),
                    message: e.to_string(),
                }
            }
            e => HistoryError::Db(e.to_string()),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Forgets every shared handle (the daemon, on its way out), once the
/// records queued by the last runs are written.
pub fn close_all() {
    let all: Vec<Arc<History>> = registry()
        .lock()
        .map(|mut r| r.drain().map(|(_, h)| h).collect())
        .unwrap_or_default();
    for h in all {
        h.settle(Duration::from_secs(5));
    }
}

/// A record in flight; dropping it (after `record`) lets readers go on.
pub struct Pending(Arc<History>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut n) = self.0.pending.0.lock() {
            *n = n.saturating_sub(1);
        }
        self.0.pending.1.notify_all();
    }
}

/// How many runs, and how old, a recorded run leaves in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_runs: usize,
    pub max_age: Duration,
}

impl Retention {
    /// The retention a run asks for: `VX_HISTORY_MAX_RUNS` and
    /// `VX_HISTORY_MAX_AGE_DAYS` from its request's environment (never the
    /// engine's own), else the defaults.
    pub fn from_env(env: &std::collections::BTreeMap<String, String>) -> Retention {
        let number = |k: vx_proto::knobs::Knob| {
            let v = k.get(env)?;
            let n = vx_proto::knobs::parse_number(v);
            if n.is_none() {
                tracing::warn!("ignoring {}={v:?}: not a whole number", k.name);
            }
            n
        };
        let max_runs = number(vx_proto::knobs::HISTORY_MAX_RUNS)
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_RUNS);
        let days = number(vx_proto::knobs::HISTORY_MAX_AGE_DAYS).unwrap_or(DEFAULT_MAX_AGE_DAYS);
        Retention {
            max_runs: max_runs.max(1),
            max_age: Duration::from_secs(days.saturating_mul(86_400)),
        }
    }
}

/// A process-wide registry of open histories, one per cache directory: the
/// daemon keeps its history open for its life (redb allows one open handle
/// per file, per process). A handle whose file was deleted (`vx cache
/// clean`) is replaced on the next call.
fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<History>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Arc<History>>>> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Forgets the shared handle of `cache_dir`, so that another process can
/// open the file once the last user of the handle is done (the daemon
/// handing a run to the foreground engine).
pub fn release(cache_dir: &Path) {
    if let Ok(mut reg) = registry().lock() {
        reg.remove(cache_dir);
    }
}

pub fn shared(cache_dir: &Path) -> Result<Arc<History>, HistoryError> {
    let mut reg = registry()
        .lock()
        .map_err(|_| HistoryError::Db("the history registry is poisoned".into()))?;
    if let Some(h) = reg.get(cache_dir) {
        if h.is_current() {
            return Ok(h.clone());
        }
        reg.remove(cache_dir);
    }
    let h = Arc::new(History::open_wait(cache_dir, Duration::from_secs(2))?);
    reg.insert(cache_dir.to_path_buf(), h.clone());
    Ok(h)
}
