//! `engine::distribute::offer` — a `--distribute` run's side of the
//! coordinator, for the driver ([`super::super::run`]).
//!
//! Owns: the run's checks (a daemon, a remote cache it reads and writes),
//! which tasks are offered to the pool (a cached, untainted command whose
//! dependencies' outputs can travel through the remote cache), what an
//! [`super::Assignment`] carries (key, transitive dependencies' keys, the
//! keyed env values, the arguments), uploading a dependency's result the
//! remote lacks before a worker may take a dependent, the run's local
//! lanes' share of the pool, and turning a worker's report into the task's
//! result (its outputs restored from the remote cache).
//! Never: decides which worker gets what (that is [`super::lease`]), runs
//! a task itself (the driver does, through `task::run_task`), or takes a
//! worker's word for outputs it cannot fetch.

use super::super::prepare::Shared;
use super::super::task::{Done, base_result};
use super::{Coordinator, Job, Outcome, Report, RunGuard, Settings, Spec};
use crate::error::{EngineError, ErrorKind};
use crate::sink::Events;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use vx_proto::{CacheSource, RunEvent, RunParams, TaskStatus};

/// Refuses a `--distribute` request the foreground engine got.
pub(in crate::engine) fn check_daemon(params: &RunParams, daemon: bool) -> Result<(), EngineError> {
    if params.distribute && !daemon {
        return Err(EngineError::new(
            ErrorKind::User,
            "--distribute needs the daemon: it is the coordinator workers connect to; run without --no-daemon (and without VX_NO_DAEMON)",
        ));
    }
    Ok(())
}

/// Refuses a distributed run without a remote cache it can read and
/// write (outputs travel between machines through it), or with a bad
/// `[workers]` section.
pub(in crate::engine) fn check_remote(sh: &Shared) -> Result<(), EngineError> {
    super::settings(&sh.model.ws.root).map_err(|e| EngineError::new(ErrorKind::Config, e))?;
    let why = match &sh.remote {
        _ if sh.params.no_cache => Some("--no-cache turns it off"),
        None => Some("none is configured (or it cannot be used)"),
        Some(r) if !r.policy.remote_read || !r.policy.remote_write => {
            Some("this run may not both read and write it")
        }
        Some(_) => None,
    };
    match why {
        None => Ok(()),
        Some(why) => Err(EngineError::new(
            ErrorKind::User,
            format!(
                "--distribute needs a remote cache the run can read and write (outputs travel through it), but {why}: set `[remote_cache] url` in the root vx.toml (or VX_REMOTE_CACHE_URL, or `[remote_execution] endpoint`), with read and write on (docs/remote-cache.md)"
            ),
        )),
    }
}

/// A distributed run's part of the driver.
pub(in crate::engine) struct Dist {
    guard: RunGuard,
    pub(in crate::engine) rx: mpsc::UnboundedReceiver<Outcome>,
    /// The run's own lanes (its concurrency); 0 under `--no-local`.
    lanes: usize,
    /// Tasks running in the run's own lanes, taken from the pool.
    pub(in crate::engine) local: HashSet<usize>,
    /// Offered tasks without an outcome yet (pending, leased, uploading).
    pub(in crate::engine) out: HashSet<usize>,
    /// Per offered task: its graph node, key and taint.
    offered: HashMap<usize, (usize, String, bool)>,
    /// Dependencies' outputs being made sure of in the remote.
    pub(in crate::engine) uploads: tokio::task::JoinSet<(usize, Result<(), String>)>,
    /// Keys known to be in the remote cache.
    in_remote: Arc<Mutex<HashSet<String>>>,
}

impl Dist {
    /// Registers the run with the coordinator. `Err`: a bad `[workers]`
    /// section (its file and line named).
    pub(in crate::engine) fn open(
        sh: &Shared,
        events: Events,
        nodes: &[usize],
        concurrency: usize,
    ) -> Result<Dist, EngineError> {
        let ids: Vec<String> = nodes
            .iter()
            .map(|&g| sh.model.graph.nodes[g].id.clone())
            .collect();
        let local = sh.params.distribute_local;
        let settings: Settings = super::settings(&sh.model.ws.root)
            .map_err(|e| EngineError::new(ErrorKind::Config, e))?;
        let (guard, rx) =
            Coordinator::global().open_run(events, Arc::new(ids), local, Some(&settings));
        Ok(Dist {
            guard,
            rx,
            lanes: if local { concurrency } else { 0 },
            local: HashSet::new(),
            out: HashSet::new(),
            offered: HashMap::new(),
            uploads: tokio::task::JoinSet::new(),
            in_remote: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    /// Whether the task (its key known, not a hit in place) goes to the
    /// pool rather than straight to a local lane: a cached, untainted,
    /// non-persistent, non-interactive command.
    pub(in crate::engine) fn wants(sh: &Shared, g: usize, tainted: bool) -> bool {
        let def = &sh.model.graph.nodes[g].def;
        def.command.is_some()
            && !def.persistent
            && !def.interactive
            && !tainted
            && sh.cache_enabled(g)
    }

    /// Offers task `i` (graph node `g`, key `key`) to the pool.
    pub(in crate::engine) fn offer(
        &mut self,
        sh: &Arc<Shared>,
        i: usize,
        g: usize,
        key: String,
        tainted: bool,
        priority: usize,
    ) {
        let node = &sh.model.graph.nodes[g];
        // Every command it depends on, transitively.
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = sh.model.graph.deps(g).collect();
        while let Some(d) = stack.pop() {
            if seen.insert(d) {
                stack.extend(sh.model.graph.deps(d));
            }
        }
        let mut deps = Vec::new();
        let mut dep_nodes = Vec::new();
        let mut possible = true;
        for d in seen {
            let dn = &sh.model.graph.nodes[d];
            if dn.def.command.is_none() {
                continue;
            }
            if dn.def.persistent || !sh.cache_enabled(d) {
                possible = false; // its outputs cannot travel through the cache
                continue;
            }
            match sh.key_of(d) {
                Ok(k) => {
                    deps.push((dn.id.clone(), k.clone()));
                    dep_nodes.push((d, k));
                }
                Err(_) => possible = false,
            }
        }
        let spec = Spec {
            key: key.clone(),
            deps,
            env: keyed_env(sh, g),
            args: if sh.requested.contains(&g) {
                sh.params.args.clone()
            } else {
                Vec::new()
            },
            command: sh.command_line(g),
        };
        let remote_ok = possible && dep_nodes.is_empty();
        let job = Job {
            run: self.guard.run,
            task: i,
            id: node.id.clone(),
            priority,
            labels: node.def.labels.clone(),
            remote_ok,
            remote_possible: possible,
        };
        self.out.insert(i);
        self.offered.insert(i, (g, key, tainted));
        self.guard.coord().offer(self.guard.run, job, spec);
        if possible && !dep_nodes.is_empty() {
            let (sh2, known) = (sh.clone(), self.in_remote.clone());
            self.uploads.spawn(async move {
                let r = tokio::task::spawn_blocking(move || {
                    for (d, k) in dep_nodes {
                        if known.lock().map(|s| s.contains(&k)).unwrap_or(false) {
                            continue;
                        }
                        sh2.ensure_in_remote(d, &k)?;
                        if let Ok(mut s) = known.lock() {
                            s.insert(k);
                        }
                    }
                    Ok(())
                })
                .await
                .unwrap_or_else(|e| Err(format!("panicked: {e}")));
                (i, r)
            });
        }
    }

    /// Its dependencies' outputs are in the remote (or cannot be).
    pub(in crate::engine) fn uploaded(&mut self, sh: &Shared, i: usize, r: Result<(), String>) {
        if !self.out.contains(&i) {
            return;
        }
        if let Err(why) = &r {
            let id = self
                .offered
                .get(&i)
                .map(|(g, _, _)| sh.model.graph.nodes[*g].id.clone())
                .unwrap_or_default();
            sh.emit(RunEvent::Warning {
                message: format!(
                    "{id} cannot go to a worker: a dependency's result is not in the remote cache ({why})"
                ),
            });
        }
        self.guard.coord().set_remote(self.guard.run, i, r.is_ok());
    }

    /// Tasks the run's free local lanes take now: `(i, g, key, tainted)`.
    pub(in crate::engine) fn take_local(&mut self) -> Vec<(usize, usize, String, bool)> {
        let free = self.lanes.saturating_sub(self.local.len());
        if free == 0 || self.out.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in self.guard.coord().take_local(self.guard.run, free) {
            self.out.remove(&i);
            if let Some((g, key, tainted)) = self.offered.remove(&i) {
                self.local.insert(i);
                out.push((i, g, key, tainted));
            }
        }
        out
    }

    /// Whether the driver has something of the pool's to wait for.
    pub(in crate::engine) fn waiting(&self) -> bool {
        !self.out.is_empty() || !self.uploads.is_empty()
    }

    /// The run is cancelled or stopping: nothing more goes to the pool;
    /// what was pending is skipped, what a worker held is revoked
    /// (aborted).
    pub(in crate::engine) fn withdraw(&mut self, sh: &Shared, reason: &str) -> Vec<Done> {
        let (pending, leased) = self.guard.coord().withdraw(self.guard.run, reason);
        let mut done = Vec::new();
        for (i, aborted) in pending
            .into_iter()
            .map(|i| (i, false))
            .chain(leased.into_iter().map(|i| (i, true)))
        {
            if !self.out.remove(&i) {
                continue;
            }
            let Some((g, key, tainted)) = self.offered.remove(&i) else {
                continue;
            };
            let mut r = base_result(sh, g);
            r.key = Some(key);
            if aborted {
                r.status = TaskStatus::Aborted;
                r.error = Some(format!("revoked from its worker: {reason}"));
            } else {
                r.status = TaskStatus::Skipped;
            }
            done.push(Done::new(i, Some(r), true, tainted));
        }
        // Whatever was still offered (uploading its dependencies) too.
        for i in std::mem::take(&mut self.out) {
            if let Some((g, key, tainted)) = self.offered.remove(&i) {
                let mut r = base_result(sh, g);
                r.key = Some(key);
                r.status = TaskStatus::Skipped;
                done.push(Done::new(i, Some(r), true, tainted));
            }
        }
        self.uploads.abort_all();
        done
    }

    /// The pool's word on task `i`: nothing (a task no longer offered —
    /// withdrawn meanwhile), a result at once, or (a worker's success) a
    /// future restoring its outputs from the remote cache.
    pub(in crate::engine) fn outcome(&mut self, sh: &Arc<Shared>, o: Outcome) -> Verdict {
        let (i, worker, report) = match o {
            Outcome::Failed { task, message } => {
                if !self.out.remove(&task) {
                    return Verdict::Nothing;
                }
                let Some((g, key, tainted)) = self.offered.remove(&task) else {
                    return Verdict::Nothing;
                };
                sh.emit(RunEvent::Warning {
                    message: message.clone(),
                });
                let mut r = base_result(sh, g);
                r.key = Some(key);
                r.status = TaskStatus::Failed;
                r.error = Some(message);
                return Verdict::Now(Done::new(task, Some(r), true, tainted));
            }
            Outcome::Done {
                task,
                worker,
                report,
            } => (task, worker, report),
        };
        if !self.out.remove(&i) {
            return Verdict::Nothing;
        }
        let Some((g, key, tainted)) = self.offered.remove(&i) else {
            return Verdict::Nothing;
        };
        let mut r = result_of(sh, g, &key, &worker, &report);
        if report.status != TaskStatus::Success {
            return Verdict::Now(Done::new(i, Some(r), true, tainted));
        }
        if !report.uploaded {
            r.status = TaskStatus::Failed;
            r.error = Some(format!(
                "worker {worker} reported success but did not upload its outputs to the remote cache{}",
                report
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            return Verdict::Now(Done::new(i, Some(r), true, tainted));
        }
        let (sh2, known) = (sh.clone(), self.in_remote.clone());
        Verdict::Later(Box::pin(async move {
            let (sh3, k2) = (sh2.clone(), key.clone());
            let restored = tokio::task::spawn_blocking(move || sh3.restore_from_remote(g, &k2))
                .await
                .unwrap_or_else(|e| Err(format!("panicked: {e}")));
            match restored {
                Ok(()) => {
                    if let Ok(mut s) = known.lock() {
                        s.insert(key.clone());
                    }
                    let fp = sh2.fingerprint(g, &key);
                    if let Ok(mut f) = sh2.fingerprints.lock() {
                        f.push(fp);
                    }
                    Done::new(i, Some(r), false, tainted)
                }
                Err(why) => {
                    r.status = TaskStatus::Failed;
                    r.error = Some(format!(
                        "ran on worker {worker}, but its outputs could not be taken from the remote cache: {why}"
                    ));
                    Done::new(i, Some(r), true, tainted)
                }
            }
        }))
    }
}

/// What the driver does with the pool's word on a task. (A value matched
/// at once, once per task: boxing `Done` would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
pub(in crate::engine) enum Verdict {
    /// Nothing: the task is no longer offered (withdrawn meanwhile).
    Nothing,
    /// Its outcome, now.
    Now(Done),
    /// Its outcome once this future (restoring its outputs) is done.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>),
}

/// A worker's report as the task's result.
fn result_of(
    sh: &Shared,
    g: usize,
    key: &str,
    worker: &str,
    report: &Report,
) -> vx_proto::TaskResult {
    let mut r = base_result(sh, g);
    r.key = Some(key.to_string());
    r.status = match report.status {
        TaskStatus::Success => TaskStatus::Success,
        TaskStatus::Aborted => TaskStatus::Aborted,
        _ => TaskStatus::Failed,
    };
    r.cache = CacheSource::Miss;
    r.exit_code = report.exit_code;
    r.duration_ms = report.duration_ms;
    r.attempts = 1;
    r.error = report.error.clone();
    if r.status == TaskStatus::Failed && r.error.is_none() {
        r.error = Some(match report.exit_code {
            Some(c) => format!("exit {c} on worker {worker}"),
            None => format!("failed on worker {worker}"),
        });
    }
    r.cpu_ms = report.cpu_ms;
    r.peak_rss_bytes = report.peak_rss_bytes;
    r.worker = Some(worker.to_string());
    r
}

/// The values of the env variables task `g`'s key folds in, from the
/// run's request.
fn keyed_env(sh: &Shared, g: usize) -> Vec<(String, String)> {
    let node = &sh.model.graph.nodes[g];
    let mut pats = sh.model.ws.global.env.clone();
    pats.extend(node.def.env.iter().cloned());
    if sh.params.framework_inference != Some(false) {
        pats.extend(node.def.framework_env.iter().cloned());
    }
    crate::hash::keyed_env(&pats, &sh.params.env)
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}
