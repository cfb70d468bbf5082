//! `inspect` — the read-only requests about a workspace's past and state:
//! `history.runs`, `history.run`, `history.task`, `history.why`,
//! `workspace.info` and `cache.stats`.
//!
//! Owns: resolving a task name the way `vx run` does, opening the history
//! (the daemon keeps its handle; the no-daemon engine opens it per
//! request), the cache's counts, and turning history errors into error
//! kinds. The request's workspace comes from `state::request_workspace`
//! (another workspace is refused under a daemon). Never writes the
//! history or the cache, runs a task, or knows a transport or its codes.

use crate::cache::Store;
use crate::error::{EngineError, ErrorKind};
use crate::history::{self, DEFAULT_WINDOW, History, HistoryError};
use crate::model::cache_dir;
use crate::state::{Hot, request_workspace};
use crate::workspace::Workspace;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vx_proto::history::{
    DaemonBrief, FailureMode, FlakyTask, HistoryRunParams, HistoryRunsParams, HistoryTaskParams,
    InfoParams, RunList, RunRecord, TaskHistory, WhyReport, WorkspaceInfo,
};

/// How long a reader waits for a record being written after its run's
/// answer (a foreground engine's, which holds `history.lock`).
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// Rows and runs listed when the client asks for no particular number.
const DEFAULT_LIMIT: usize = 20;

/// What a daemon says about itself in `workspace.info`.
#[derive(Debug, Clone, Copy)]
pub struct DaemonFacts<'a> {
    pub socket: &'a Path,
    pub version: &'a str,
}

pub(crate) fn history_err(e: HistoryError) -> EngineError {
    let code = match &e {
        HistoryError::NoSuchRun(_)
        | HistoryError::AmbiguousRun { .. }
        | HistoryError::NoTaskRuns(_) => ErrorKind::NotFound,
        HistoryError::Locked(_) => ErrorKind::User,
        _ => ErrorKind::Cache,
    };
    let mut msg = e.to_string();
    if e.is_locked() {
        msg.push_str(" (held exclusively, by an older vx? stop its daemon with `vx daemon stop`)");
    }
    EngineError::new(code, msg)
}

fn no_runs(ws: &Workspace) -> EngineError {
    EngineError::new(
        ErrorKind::NotFound,
        format!(
            "no runs recorded yet in {}; run `vx run <task>` first",
            ws.root.display()
        ),
    )
}

/// The workspace's history: the daemon's long-lived handle, or a handle
/// opened for this request; `None` when no history file exists yet (the
/// no-daemon path never creates one just to read it).
pub(crate) fn open(ws: &Workspace, hot: Option<&Hot>) -> Result<Option<Arc<History>>, EngineError> {
    let dir = cache_dir(ws);
    // A foreground run that just answered may still be writing its record
    // (in any process): it holds the record lock until its commit.
    if !crate::cache::wait_for_records(&dir, RECORD_WAIT) {
        tracing::warn!(
            "a run's history record in {} is still being written after {:?}; reading without it",
            dir.display(),
            RECORD_WAIT
        );
    }
    if hot.is_some() {
        let h = history::shared(&dir).map_err(history_err)?;
        // A run that just answered may still be writing its record.
        h.settle(Duration::from_secs(10));
        return Ok(Some(h));
    }
    if !dir.join(history::FILE_NAME).exists() {
        return Ok(None);
    }
    History::open_wait(&dir, Duration::from_secs(2))
        .map(|h| Some(Arc::new(h)))
        .map_err(history_err)
}

/// Up to five declared task ids close to `name`.
fn near_names(ws: &Workspace, name: &str) -> Vec<String> {
    let bare = name.rsplit('#').next().unwrap_or(name);
    let mut scored: Vec<(f64, String)> = ws
        .projects
        .iter()
        .flat_map(|p| p.tasks.keys().map(move |t| format!("{}#{t}", p.name)))
        .map(|id| {
            let task = id.rsplit('#').next().unwrap_or(&id).to_string();
            let score = strsim::jaro_winkler(name, &id).max(strsim::jaro_winkler(bare, &task));
            (score, id)
        })
        .filter(|(s, _)| *s >= 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.into_iter().take(5).map(|(_, id)| id).collect()
}

fn unknown_task(ws: &Workspace, name: &str) -> EngineError {
    let near = near_names(ws, name);
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", near.join(", "))
    };
    EngineError::new(ErrorKind::NotFound, format!("unknown task `{name}`{hint}"))
        .with_data(serde_json::json!({ "near": near }))
}

/// `project#task` for `name`: kept as is when it names a declared task (or
/// one the history knows); a bare task name resolves to the cwd's project,
/// else to the only project declaring it.
pub(crate) fn resolve_task(
    ws: &Workspace,
    cwd: &Path,
    name: &str,
    h: Option<&History>,
) -> Result<String, EngineError> {
    let in_history = |id: &str| {
        h.and_then(|h| h.task_runs(id, 1).ok())
            .is_some_and(|r| !r.is_empty())
    };
    if let Some((project, task)) = name.split_once('#') {
        let declared = ws
            .project(project)
            .is_some_and(|p| p.tasks.contains_key(task));
        if declared || in_history(name) {
            return Ok(name.to_string());
        }
        return Err(unknown_task(ws, name));
    }
    if let Some(p) = ws.project_at(cwd)
        && p.tasks.contains_key(name)
    {
        return Ok(format!("{}#{name}", p.name));
    }
    let owners: Vec<&str> = ws
        .projects
        .iter()
        .filter(|p| p.tasks.contains_key(name))
        .map(|p| p.name.as_str())
        .collect();
    match owners.as_slice() {
        [] => Err(unknown_task(ws, name)),
        [one] => Ok(format!("{one}#{name}")),
        many => Err(EngineError::new(
            ErrorKind::User,
            format!(
                "`{name}` is declared by {} projects ({}); name one, e.g. `{}#{name}`",
                many.len(),
                many.join(", "),
                many[0]
            ),
        )),
    }
}

/// `history.runs`.
pub fn runs(p: HistoryRunsParams, hot: Option<&Hot>) -> Result<RunList, EngineError> {
    let cwd = Path::new(&p.cwd);
    let ws = request_workspace(cwd, hot)?;
    let h = open(&ws, hot)?.ok_or_else(|| no_runs(&ws))?;
    let runs = h
        .runs(p.limit.unwrap_or(DEFAULT_LIMIT).max(1))
        .map_err(history_err)?;
    if runs.is_empty() {
        return Err(no_runs(&ws));
    }
    Ok(RunList {
        root: ws.root.to_string_lossy().into_owned(),
        runs,
    })
}

/// `history.run` (`vx last`).
pub fn run(p: HistoryRunParams, hot: Option<&Hot>) -> Result<RunRecord, EngineError> {
    let cwd = Path::new(&p.cwd);
    let ws = request_workspace(cwd, hot)?;
    let h = open(&ws, hot)?.ok_or_else(|| no_runs(&ws))?;
    let found = match (&p.run_id, p.failed) {
        (Some(id), _) => h.run(Some(id)),
        (None, true) => match h.last_failed() {
            Ok(None) if h.run(None).ok().flatten().is_some() => {
                return Err(EngineError::new(
                    ErrorKind::NotFound,
                    "no failed run is recorded (every retained run succeeded)",
                ));
            }
            r => r,
        },
        (None, false) => h.run(None),
    };
    found.map_err(history_err)?.ok_or_else(|| no_runs(&ws))
}

/// `history.task` (`vx history TASK`).
pub fn task(p: HistoryTaskParams, hot: Option<&Hot>) -> Result<TaskHistory, EngineError> {
    let cwd = Path::new(&p.cwd);
    let ws = request_workspace(cwd, hot)?;
    let h = open(&ws, hot)?;
    let id = resolve_task(&ws, cwd, &p.task, h.as_deref())?;
    let h = h.ok_or_else(|| no_runs(&ws))?;
    let rows = h
        .task_runs(&id, p.limit.unwrap_or(DEFAULT_LIMIT).max(1))
        .map_err(history_err)?;
    if rows.is_empty() {
        return Err(history_err(HistoryError::NoTaskRuns(id)));
    }
    let stats = h
        .stats(std::slice::from_ref(&id), DEFAULT_WINDOW)
        .map_err(history_err)?
        .remove(&id);
    Ok(TaskHistory {
        task: id,
        rows,
        stats,
    })
}

/// `history.why` (`vx why`).
pub fn why(p: HistoryTaskParams, hot: Option<&Hot>) -> Result<WhyReport, EngineError> {
    let cwd = Path::new(&p.cwd);
    let ws = request_workspace(cwd, hot)?;
    let h = open(&ws, hot)?;
    let id = resolve_task(&ws, cwd, &p.task, h.as_deref())?;
    let h = h.ok_or_else(|| no_runs(&ws))?;
    // A pattern that does not parse keys nothing: no file is global then
    // (a run with that config fails with the pattern's error).
    let global = crate::globs::Patterns::new(&ws.global.keyed_inputs()).ok();
    let is_global = |f: &str| global.as_ref().is_some_and(|g| g.matches(f));
    h.why_at_with(&id, p.run_id.as_deref(), &is_global)
        .map_err(history_err)
}

/// `workspace.info` (`vx info`). History problems are reported in the
/// result, not as an error.
pub fn info(
    p: InfoParams,
    hot: Option<&Hot>,
    daemon: Option<DaemonFacts<'_>>,
) -> Result<WorkspaceInfo, EngineError> {
    let cwd = Path::new(&p.cwd);
    let ws = request_workspace(cwd, hot)?;
    let cache = cache_stats_of(&ws, hot)?;
    let dir = cache_dir(&ws);
    let mut history_runs = 0;
    let mut runs_last_24h = 0;
    let mut history_error = None;
    let mut flaky = Vec::new();
    let read = |h: &History| -> Result<_, HistoryError> {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(24 * 3_600_000);
        let counts = h.run_counts(since)?;
        let ids = h.task_ids()?;
        let stats = h.stats(&ids, DEFAULT_WINDOW)?;
        let mut flaky: Vec<FlakyTask> = stats
            .into_iter()
            .filter(|(_, s)| s.failure_mode != FailureMode::Stable)
            .map(|(task, s)| FlakyTask {
                task,
                failure_mode: s.failure_mode,
                total: s.total,
                failures: s.failures,
                retried: s.retried,
            })
            .collect();
        flaky.sort_by(|a, b| a.task.cmp(&b.task));
        Ok((counts, flaky))
    };
    match open(&ws, hot) {
        Ok(None) => {}
        Ok(Some(h)) => match read(&h) {
            Ok(((total, recent), f)) => {
                history_runs = total;
                runs_last_24h = recent;
                flaky = f;
            }
            Err(e) => history_error = Some(e.to_string()),
        },
        Err(e) => history_error = Some(e.message),
    }
    let socket = match daemon {
        Some(d) => d.socket.to_string_lossy().into_owned(),
        None => vx_proto::paths::daemon_paths(&ws.root)
            .map(|p| p.socket.to_string_lossy().into_owned())
            .unwrap_or_else(|e| e),
    };
    Ok(WorkspaceInfo {
        version: daemon
            .map(|d| d.version.to_string())
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        root: ws.root.to_string_lossy().into_owned(),
        projects: ws.projects.len(),
        tasks: ws.projects.iter().map(|p| p.tasks.len()).sum(),
        cache_dir: cache.dir,
        cache_entries: cache.entries,
        cache_blobs: cache.blobs,
        cache_bytes: cache.blob_bytes,
        history_file: dir.join(history::FILE_NAME).to_string_lossy().into_owned(),
        history_runs,
        runs_last_24h,
        history_error,
        flaky,
        daemon: hot.map(|h| DaemonBrief {
            pid: std::process::id(),
            uptime_ms: h.started.elapsed().as_millis() as u64,
        }),
        socket,
    })
}

/// `cache.stats` of a workspace already loaded (and checked against `hot`).
pub fn cache_stats_of(
    ws: &Workspace,
    hot: Option<&Hot>,
) -> Result<vx_proto::CacheStats, EngineError> {
    let dir = cache_dir(ws);
    let stats = |store: &Store| -> Result<vx_proto::CacheStats, EngineError> {
        let (entries, blobs, blob_bytes) = store.stats()?;
        Ok(vx_proto::CacheStats {
            dir: dir.to_string_lossy().into_owned(),
            entries,
            blobs,
            blob_bytes,
        })
    };
    if let Some(hot) = hot {
        return stats(hot.store()?.as_ref());
    }
    if !dir.join("index.redb").exists() {
        return Ok(vx_proto::CacheStats {
            dir: dir.to_string_lossy().into_owned(),
            entries: 0,
            blobs: 0,
            blob_bytes: 0,
        });
    }
    let store = Store::open(&dir, Duration::from_secs(30), &mut || {})?;
    let r = stats(&store);
    store.close()?;
    r
}
