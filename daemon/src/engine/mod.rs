//! `engine` — one run, end to end: load → select → key → cache → execute,
//! behind one [`Engine`] façade.
//!
//! Owns: orchestrating a run, a plan or a watch loop over the pipeline
//! modules, in stages that each own one thing (each says so, and what it
//! must never do):
//!
//! - `prepare`: load/sync, select, patterns, open the store, walk, warm
//!   hashes; the run's shared context; `plan`.
//! - `keys`: input lists, keyed env, the key fold, fingerprints.
//! - `priority`: the order ready tasks prefer (critical path or structural).
//! - `schedule`: the scheduler, a state machine with no processes and no I/O.
//! - `run`: the driver loop that carries out the scheduler's decisions.
//! - `task`: one task's hit / restore / execute / save / replay.
//! - `persistent`: persistent tasks' start, and what a run keeps running.
//! - `record`: the summary, the history record, `--profile`/`--report`.
//! - `replay`: under the daemon, a repeat request answered from memory
//!   when nothing its answer depends on changed.
//! - `store`: opening the foreground engine's cache store; `cache.clean`
//!   and `cache.prune`.
//! - [`watch`]: one `vx watch` client's cycle loop.
//! - [`distribute`]: worker links (the coordinator's leases, a worker's
//!   execution of an assigned task); the transport is another crate.
//!
//! It emits [`vx_proto::RunEvent`]s into an [`Events`] sink and fails with an
//! [`EngineError`] of some [`ErrorKind`]. Never: knows about JSON-RPC,
//! sockets or protocol error codes (that is `server`), and never reads the
//! daemon's own environment for a run's settings (they come with the
//! request).

pub mod distribute;
mod explain;
mod keys;
mod persistent;
mod prepare;
mod priority;
mod record;
mod remote;
mod replay;
mod rexec;
mod run;
mod schedule;
mod store;
mod task;
pub mod watch;

use crate::inspect::{self, DaemonFacts};
use crate::state::Hot;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch as channel;
use vx_proto::history::{
    HistoryRunParams, HistoryRunsParams, HistoryTaskParams, InfoParams, RunList, RunRecord,
    TaskHistory, WhyReport, WorkspaceInfo,
};
use vx_proto::{
    CacheCleaned, CachePruneParams, CachePruned, CacheStats, Plan, RunParams, RunSummary,
    WatchParams, WatchSummary,
};

pub use crate::error::{EngineError, ErrorKind};
pub use crate::inspect::cache_stats_of;
pub use crate::model::{Model, Snapshot, cache_dir, load_workspace};
pub use crate::sink::{Events, Observer};
pub use crate::state::request_workspace;
pub(crate) use explain::{KeyReport, explain_keys};
pub use prepare::shell_quote;
pub(crate) use record::redacted_argv;
pub use record::settle_records;
pub use run::{Session, run_in};
pub use store::{cache_clean, cache_prune};

/// The engine as its callers see it: every request a transport serves.
/// Cheap to clone; under a daemon it carries the daemon's hot state.
/// The methods without `async` block: call them off the async threads.
#[derive(Clone, Default)]
pub struct Engine {
    hot: Option<Arc<Hot>>,
}

impl Engine {
    /// The engine of a daemon (`Some`: its hot state) or of one foreground
    /// client (`None`: everything is loaded per request).
    pub fn new(hot: Option<Arc<Hot>>) -> Engine {
        Engine { hot }
    }

    /// The daemon's hot state, if this engine has one.
    pub fn hot(&self) -> Option<&Arc<Hot>> {
        self.hot.as_ref()
    }

    /// `run.start`: see [`run`].
    pub async fn run(
        &self,
        params: RunParams,
        events: Events,
        cancel: channel::Receiver<Option<i32>>,
    ) -> Result<RunSummary, EngineError> {
        run(params, events, cancel, self.hot.clone()).await
    }

    /// `run.plan`: see [`plan`].
    pub async fn plan(&self, params: RunParams) -> Result<Plan, EngineError> {
        plan(params, self.hot.clone()).await
    }

    /// `watch.start`: the dev loop until `cancel` fires. The daemon's
    /// watcher serves every watch client; the foreground engine starts a
    /// private one for this loop.
    pub async fn watch(
        &self,
        params: WatchParams,
        events: Events,
        cancel: channel::Receiver<Option<i32>>,
    ) -> Result<WatchSummary, EngineError> {
        let hot = match &self.hot {
            Some(h) => h.clone(),
            None => {
                let cwd = PathBuf::from(&params.run.cwd);
                let root = tokio::task::spawn_blocking(move || crate::workspace::find_root(&cwd))
                    .await
                    .map_err(|e| EngineError::new(ErrorKind::Internal, e.to_string()))??;
                Hot::start(&root).map_err(|e| {
                    EngineError::new(
                        ErrorKind::Internal,
                        format!("cannot watch {}: {e:#}", root.display()),
                    )
                })?
            }
        };
        watch::run(params, events, cancel, hot).await
    }

    /// `cache.stats` (blocking).
    pub fn cache_stats(&self, cwd: &Path) -> Result<CacheStats, EngineError> {
        cache_stats(cwd, self.hot.as_deref())
    }

    /// `cache.clean` (blocking).
    pub fn cache_clean(&self, cwd: &Path) -> Result<CacheCleaned, EngineError> {
        cache_clean(cwd, self.hot.as_deref())
    }

    /// `cache.prune` (blocking).
    pub fn cache_prune(&self, p: &CachePruneParams) -> Result<CachePruned, EngineError> {
        cache_prune(p, self.hot.as_deref())
    }

    /// `history.runs` (blocking).
    pub fn history_runs(&self, p: HistoryRunsParams) -> Result<RunList, EngineError> {
        inspect::runs(p, self.hot.as_deref())
    }

    /// `history.run` (blocking).
    pub fn history_run(&self, p: HistoryRunParams) -> Result<RunRecord, EngineError> {
        inspect::run(p, self.hot.as_deref())
    }

    /// `history.task` (blocking).
    pub fn history_task(&self, p: HistoryTaskParams) -> Result<TaskHistory, EngineError> {
        inspect::task(p, self.hot.as_deref())
    }

    /// `history.why` (blocking).
    pub fn history_why(&self, p: HistoryTaskParams) -> Result<WhyReport, EngineError> {
        inspect::why(p, self.hot.as_deref())
    }

    /// `workspace.info` (blocking); `daemon`: what a daemon says of itself.
    pub fn workspace_info(
        &self,
        p: InfoParams,
        daemon: Option<DaemonFacts<'_>>,
    ) -> Result<WorkspaceInfo, EngineError> {
        inspect::info(p, self.hot.as_deref(), daemon)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Executes a run. Events stream into `events`; `cancel` carrying a signal
/// number stops it. Requested persistent tasks (and the persistent tasks
/// they depend on) keep running after a [`vx_proto::RunEvent::Settled`] event until
/// one of them exits or the run is cancelled.
pub async fn run(
    params: RunParams,
    events: Events,
    cancel: channel::Receiver<Option<i32>>,
    hot: Option<Arc<Hot>>,
) -> Result<RunSummary, EngineError> {
    run_in(params, events, cancel, hot, None).await
}

/// Plans a run: every selected task with its key and predicted cache status.
pub async fn plan(params: RunParams, hot: Option<Arc<Hot>>) -> Result<Plan, EngineError> {
    tokio::task::spawn_blocking(move || prepare::plan_blocking(params, hot))
        .await
        .map_err(|e| EngineError::new(ErrorKind::Internal, format!("plan panicked: {e}")))?
}

/// A concurrency above [`vx_proto::MAX_CONCURRENCY`] (a flag, a request
/// or a config): refused before anything is allocated for it.
pub fn concurrency_error(n: usize) -> EngineError {
    EngineError::new(
        ErrorKind::User,
        format!(
            "concurrency {n} is too large: at most {} tasks can run at once",
            vx_proto::MAX_CONCURRENCY
        ),
    )
}

/// `cache.stats` for the workspace containing `cwd`.
pub fn cache_stats(cwd: &Path, hot: Option<&Hot>) -> Result<CacheStats, EngineError> {
    cache_stats_of(&request_workspace(cwd, hot)?, hot)
}
