//! `engine::persistent` — persistent tasks within a run.
//!
//! Owns: starting a persistent task (stopping a watch session's previous
//! process of it first) and reporting when it is ready; after the run's
//! tasks are done, keeping the requested persistent tasks (and the
//! persistent tasks they depend on), stopping the others, and waiting
//! until one kept task exits or the run is cancelled.
//! Never: decides readiness itself (`persist` does) or caches anything.

use super::prepare::Shared;
use super::record::Head;
use super::schedule::Scheduler;
use super::task::Done;
use super::task::base_result;
use crate::exec::{self, Outcome, Spawn};
use crate::persist;
use crate::sink::Events;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use vx_proto::knobs;
use vx_proto::{CacheSource, RunEvent, TaskResult, TaskStatus};

/// Starts a persistent task (stopping the session's previous process of it
/// first) and reports when it is ready, or why it is not.
pub(super) async fn start_persistent(
    sh: &Arc<Shared>,
    i: usize,
    g: usize,
    key: String,
    old: Option<persist::Proc>,
    tainted: bool,
    cancel: watch::Receiver<Option<i32>>,
) -> Done {
    let node = &sh.model.graph.nodes[g];
    let id = node.id.clone();
    if let Some(old) = old {
        if old.exited().is_none() {
            sh.emit(RunEvent::Warning {
                message: format!("restarting {id}: its inputs changed"),
            });
        }
        old.stop().await;
    }
    let command = sh.command_line(g);
    let spec = Spawn {
        command: command.clone(),
        dir: sh.project_abs(node.project),
        env: sh.task_env(g),
        timeout: None,
        keep_stdin: true,
        tty: false,
        kill_grace: Some(exec::kill_grace_in(&sh.params.env)),
    };
    let ready_when = node
        .def
        .ready_when
        .as_deref()
        .and_then(|r| regex::Regex::new(r).ok());
    let ready_timeout = node
        .def
        .timeout_ms
        .or(sh.model.ws.defaults.timeout_ms)
        .map(Duration::from_millis);
    sh.emit(RunEvent::TaskStarted {
        id: id.clone(),
        key: None,
        command,
        uncached: true,
        traceparent: None,
        worker: None,
    });
    let t0 = Instant::now();
    let started = persist::start(
        spec,
        id.clone(),
        key.clone(),
        ready_when,
        ready_timeout,
        knobs::READY_NOTICE_MS
            .millis(&sh.params.env)
            .unwrap_or(persist::DEFAULT_READY_NOTICE),
        sh.events.clone(),
        cancel,
    )
    .await;
    let mut res = base_result(sh, g);
    res.key = Some(key);
    res.cache = CacheSource::Disabled;
    res.attempts = 1;
    res.duration_ms = t0.elapsed().as_millis() as u64;
    match started {
        Ok(p) => {
            res.status = TaskStatus::Running;
            let mut d = Done::new(i, Some(res), false, tainted);
            d.proc = Some(p);
            d
        }
        Err(e) => {
            res.exit_code = e.outcome.as_ref().and_then(|o| o.exit_code());
            if e.cancelled.is_some() {
                res.status = TaskStatus::Aborted;
                res.error = Some("cancelled".into());
            } else {
                res.status = TaskStatus::Failed;
                res.error = Some(e.error);
            }
            Done::new(i, Some(res), true, tainted)
        }
    }
}

/// After a run's tasks are done: keeps the requested persistent tasks and
/// the persistent tasks they depend on, stops the others, and (when any is
/// kept) reports the run settled and waits until one kept task exits or
/// the run is cancelled. Returns the results to summarise and the signal
/// that ended the wait.
#[allow(clippy::too_many_arguments)]
pub(super) async fn hold(
    sh: &Arc<Shared>,
    head: &mut Head,
    sched: &Scheduler,
    nodes: &[usize],
    mut results: Vec<TaskResult>,
    procs: Vec<(usize, persist::Proc)>,
    quiet: &HashSet<String>,
    events: &Events,
    cancel: &mut watch::Receiver<Option<i32>>,
) -> (Vec<TaskResult>, Option<i32>) {
    let n = nodes.len();
    // Keep the requested persistent tasks and the persistent tasks they
    // depend on; stop the others.
    let mut keep = vec![false; n];
    let mut stack: Vec<usize> = (0..n)
        .filter(|&i| {
            sh.requested.contains(&nodes[i]) && sh.model.graph.nodes[nodes[i]].def.persistent
        })
        .collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        for &d in sched.deps(i) {
            if sh.model.graph.nodes[nodes[d]].def.persistent {
                stack.push(d);
            }
        }
    }
    let (kept, others): (Vec<_>, Vec<_>) = procs.into_iter().partition(|(i, _)| keep[*i]);
    let stopped: HashSet<String> = others.iter().map(|(_, p)| p.id.clone()).collect();
    futures_join_all(others.into_iter().map(|(_, p)| p.stop())).await;
    for r in results.iter_mut() {
        if stopped.contains(&r.id) {
            r.status = TaskStatus::Success;
        }
    }
    if kept.is_empty() {
        return (results, None);
    }
    let settled = head.summary(&results, None, quiet);
    let _ = events.send(RunEvent::Settled { summary: settled });
    // Wait until one kept task exits, or the run is cancelled.
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(String, Outcome)>();
    let mut kept: Vec<persist::Proc> = kept.into_iter().map(|(_, p)| p).collect();
    let mut waiters = Vec::new();
    for p in kept.iter() {
        let mut rx = p.exit_receiver();
        let tx = exit_tx.clone();
        let id = p.id.clone();
        waiters.push(tokio::spawn(async move {
            if let Ok(o) = rx.wait_for(|o| o.is_some()).await
                && let Some(o) = o.clone()
            {
                let _ = tx.send((id, o));
            }
        }));
    }
    drop(exit_tx);
    let ended = tokio::select! {
        e = exit_rx.recv() => e.map(Ok),
        r = cancel.changed() => {
            let sig = match r { Ok(()) => (*cancel.borrow()).unwrap_or(libc::SIGTERM), Err(_) => libc::SIGTERM };
            Some(Err(sig))
        }
    };
    for w in waiters {
        w.abort();
    }
    let exited_id = match &ended {
        Some(Ok((id, _))) => Some(id.clone()),
        _ => None,
    };
    let rest: Vec<persist::Proc> = kept
        .drain(..)
        .filter(|p| Some(&p.id) != exited_id.as_ref())
        .collect();
    futures_join_all(rest.into_iter().map(|p| p.stop())).await;
    match ended {
        Some(Err(sig)) => {
            for r in results.iter_mut() {
                if r.status == TaskStatus::Running {
                    r.status = TaskStatus::Success;
                }
            }
            (results, Some(sig))
        }
        Some(Ok((id, outcome))) => {
            for r in results.iter_mut() {
                if r.status != TaskStatus::Running {
                    continue;
                }
                r.status = TaskStatus::Success;
                if r.id == id {
                    r.exit_code = outcome.exit_code();
                    if outcome != Outcome::Exited(0) {
                        r.status = TaskStatus::Failed;
                        r.error = Some(match outcome.exit_code() {
                            Some(c) => format!("exited with {c}"),
                            None => "exited".to_string(),
                        });
                    }
                }
            }
            let _ = events.send(RunEvent::Warning {
                message: format!(
                    "{id} exited{}; stopping the other persistent tasks",
                    match outcome.exit_code() {
                        Some(c) => format!(" with {c}"),
                        None => String::new(),
                    }
                ),
            });
            (results, None)
        }
        None => (results, None),
    }
}

/// Awaits every future (they run concurrently).
pub(super) async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
