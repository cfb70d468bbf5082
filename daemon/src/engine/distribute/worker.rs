//! `engine::distribute::worker` — a worker's execution of one
//! [`Assignment`], in its own checkout (the `vxd worker` process; no
//! daemon).
//!
//! Owns: loading the workspace for that one task through the worker's
//! hot state of its checkout (kept current by a watcher between
//! assignments, as the daemon's is; the assignment's env values over the
//! worker's own environment,
//! a remote cache read and written), restoring every dependency's outputs
//! from the cache (local, else remote), refusing when its own key differs
//! from the coordinator's, executing through the engine's normal
//! `task::run_task` (saved locally), uploading the result before it
//! reports, and forwarding output lines without ever blocking on them.
//! Never: executes a dependency (one missing from both caches fails the
//! assignment, naming it), reports `uploaded` without the remote having
//! accepted the result, or talks to the coordinator itself (the transport
//! sends the [`Report`]).

use super::super::prepare::prepare;
use super::super::task::{Hit, run_task, try_hit};
use super::{Assignment, Report, Stream};
use crate::error::EngineError;
use crate::sink::Events;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use vx_proto::{OutputLogs, RunEvent, RunParams, TaskStatus};

/// The worker's hot state of its checkout: the workspace model, file
/// snapshot and hashes kept current by a watcher between assignments (as
/// the daemon keeps them), so an assignment does not load and walk the
/// whole workspace again. Started on first use; `None` (each assignment
/// then loads everything itself, as the foreground engine does) when the
/// watcher cannot start.
fn hot_for(root: &std::path::Path) -> Option<Arc<crate::state::Hot>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static HOTS: OnceLock<Mutex<HashMap<PathBuf, Arc<crate::state::Hot>>>> = OnceLock::new();
    let mut hots = HOTS.get_or_init(Default::default).lock().ok()?;
    if let Some(h) = hots.get(root) {
        return Some(h.clone());
    }
    match crate::state::Hot::start(root) {
        Ok(h) => {
            hots.insert(root.to_path_buf(), h.clone());
            Some(h)
        }
        Err(e) => {
            tracing::warn!(
                "worker: no hot state for {} ({e}); loading per task",
                root.display()
            );
            None
        }
    }
}

pub(super) async fn execute(
    root: PathBuf,
    a: Assignment,
    env: BTreeMap<String, String>,
    log: mpsc::Sender<(Stream, String)>,
    cancel: watch::Receiver<Option<i32>>,
) -> Report {
    let t0 = Instant::now();
    let dropped = Arc::new(AtomicU64::new(0));
    let r = run(&root, &a, env, &log, &dropped, cancel).await;
    let n = dropped.load(Ordering::Relaxed);
    if n > 0 {
        let _ = log
            .send((Stream::Stderr, format!("[{n} lines dropped]")))
            .await;
    }
    match r {
        Ok(report) => report,
        Err(error) => Report {
            status: TaskStatus::Failed,
            exit_code: None,
            duration_ms: t0.elapsed().as_millis() as u64,
            error: Some(error),
            uploaded: false,
            cpu_ms: None,
            peak_rss_bytes: None,
        },
    }
}

async fn run(
    root: &std::path::Path,
    a: &Assignment,
    mut env: BTreeMap<String, String>,
    log: &mpsc::Sender<(Stream, String)>,
    dropped: &Arc<AtomicU64>,
    cancel: watch::Receiver<Option<i32>>,
) -> Result<Report, String> {
    let t0 = Instant::now();
    env.extend(a.env.iter().cloned());
    let params = RunParams {
        cwd: root.to_string_lossy().into_owned(),
        tasks: vec![a.task_id.clone()],
        args: a.args.clone(),
        env,
        only: true,
        output_logs: OutputLogs::Full,
        // The result goes up once, below, and the report says whether it
        // did; no background upload.
        cache: Some("local:rw,remote:r".into()),
        ..Default::default()
    };
    let (tx, d2) = (log.clone(), dropped.clone());
    let events = Events::new(move |e| {
        let line = match e {
            RunEvent::TaskOutput {
                stream,
                line,
                replay: false,
                ..
            } => (stream, line),
            RunEvent::Warning { message } => (Stream::Stderr, format!("vx: {message}")),
            _ => return,
        };
        if tx.try_send(line).is_err() {
            d2.fetch_add(1, Ordering::Relaxed);
        }
    });
    let msg = |e: EngineError| e.message;
    let hot = hot_for(root);
    let (sh, sel) = tokio::task::spawn_blocking(move || prepare(params, Some(events), hot))
        .await
        .map_err(|e| format!("loading the workspace panicked: {e}"))?
        .map_err(msg)?;
    let graph = &sh.model.graph;
    let g = sel
        .requested
        .iter()
        .copied()
        .find(|&g| graph.nodes[g].id == a.task_id)
        .ok_or_else(|| format!("{} is not a task of this checkout", a.task_id))?;
    // Every dependency's key, in the selection's (dependency) order, as
    // the coordinator computed them before they ran.
    let (sh2, order) = (sh.clone(), sel.nodes.clone());
    tokio::task::spawn_blocking(move || {
        order
            .iter()
            .filter(|&&d| d != g)
            .try_for_each(|&d| sh2.key_of(d).map(drop))
    })
    .await
    .map_err(|e| format!("keying panicked: {e}"))?
    .map_err(msg)?;
    // The dependencies' outputs, from the cache; never by running them.
    for (id, key) in &a.deps {
        let d = sel
            .nodes
            .iter()
            .copied()
            .find(|&d| graph.nodes[d].id == *id)
            .ok_or_else(|| format!("dependency {id} is not a task of this checkout"))?;
        let own = sh.key_of(d).map_err(msg)?;
        if own != *key {
            return Err(format!(
                "key mismatch for dependency {id}: the coordinator's is {key}, this worker's {own} (the checkouts or the environment differ)"
            ));
        }
        let (sh2, k2) = (sh.clone(), key.clone());
        let hit = tokio::task::spawn_blocking(move || try_hit(&sh2, d, &k2, true))
            .await
            .map_err(|e| format!("restoring {id} panicked: {e}"))?
            .map_err(|e| format!("restoring dependency {id}: {}", e.message))?;
        if !matches!(hit, Hit::Served(..)) {
            return Err(format!(
                "dependency {id} (key {key}) is neither in the local nor in the remote cache"
            ));
        }
    }
    let sh2 = sh.clone();
    let key = tokio::task::spawn_blocking(move || sh2.key_of(g))
        .await
        .map_err(|e| format!("keying panicked: {e}"))?
        .map_err(msg)?;
    if key != a.key {
        return Err(format!(
            "key mismatch for {}: the coordinator's is {}, this worker's {} (the checkouts or the environment differ)",
            a.task_id, a.key, key
        ));
    }
    let result = run_task(&sh, g, key.clone(), false, cancel)
        .await
        .map_err(msg)?;
    sh.drain_uploads().await;
    let ok = matches!(result.status, TaskStatus::Success | TaskStatus::Cached);
    let mut error = result.error.clone();
    let uploaded = if ok {
        let (sh2, k2) = (sh.clone(), key.clone());
        match tokio::task::spawn_blocking(move || sh2.ensure_in_remote(g, &k2)).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                error = Some(format!("upload failed: {why}"));
                false
            }
            Err(e) => {
                error = Some(format!("upload panicked: {e}"));
                false
            }
        }
    } else {
        false
    };
    let sh2 = sh.clone();
    let _ = tokio::task::spawn_blocking(move || sh2.finish_store()).await;
    Ok(Report {
        status: match result.status {
            TaskStatus::Success | TaskStatus::Cached => TaskStatus::Success,
            TaskStatus::Aborted => TaskStatus::Aborted,
            _ => TaskStatus::Failed,
        },
        exit_code: result.exit_code,
        duration_ms: if result.duration_ms > 0 {
            result.duration_ms
        } else {
            t0.elapsed().as_millis() as u64
        },
        error,
        uploaded,
        cpu_ms: result.cpu_ms,
        peak_rss_bytes: result.peak_rss_bytes,
    })
}
