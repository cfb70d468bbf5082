//! `engine::run` — the driver of one run (or one watch cycle).
//!
//! Owns: the loop that feeds the [`Scheduler`] and carries out its
//! decisions — a group task's key, a persistent task's start, a watch
//! cycle's unchanged task, the inline fast path ([`super::task::probe`]), or a
//! spawned [`super::task::run_task`] — and delivers outcomes back to it, with the
//! run's events, cancellation (a signal stops starting tasks and is passed
//! to running ones) and, at the end, the summary (with [`super::record`]) and the
//! persistent tasks kept (with [`super::persistent`]). A watch [`Session`] carries
//! keys and persistent processes from one cycle to the next.
//! Never: decides the order or what a failure stops (the scheduler does),
//! and never does a task's work itself.

use super::distribute::offer::{self, Dist, Verdict};
use super::persistent::{self, futures_join_all, start_persistent};
use super::prepare::{Shared, Timing, prepare};
use super::priority::priorities;
use super::record::{Head, open_history};
use super::replay;
use super::schedule::{Scheduler, Step};
use super::task::{
    Done, Hit, base_result, probe, replay as replay_log, run_task, skipped, try_hit,
};
use super::{concurrency_error, now_ms};
use crate::error::{EngineError, ErrorKind};
use crate::history::History;
use crate::persist;
use crate::sink::Events;
use crate::state::{Hot, MemoTask};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use vx_proto::{CacheSource, ContinueMode, RunEvent, RunParams, RunSummary, TaskStatus};

/// What a watch session carries from one cycle to the next.
#[derive(Default)]
pub struct Session {
    /// Per task id: the key it last ran (or was served) with, and whether
    /// that ended well. A task whose key is unchanged is not run again.
    pub last: Mutex<HashMap<String, (String, bool)>>,
    /// Running persistent tasks by id.
    pub procs: Mutex<HashMap<String, persist::Proc>>,
}

impl Session {
    pub(super) fn last_of(&self, id: &str) -> Option<(String, bool)> {
        self.last.lock().ok().and_then(|l| l.get(id).cloned())
    }

    pub(super) fn take_proc(&self, id: &str) -> Option<persist::Proc> {
        self.procs.lock().ok().and_then(|mut p| p.remove(id))
    }

    /// Remembers what a cycle ran: keys of what ended well or failed; a
    /// skipped or aborted task is forgotten (it runs next time).
    fn remember(&self, results: &[vx_proto::TaskResult]) {
        if let Ok(mut last) = self.last.lock() {
            for r in results {
                if let Some(k) = &r.key {
                    match r.status {
                        TaskStatus::Success | TaskStatus::Cached | TaskStatus::Running => {
                            last.insert(r.id.clone(), (k.clone(), true));
                        }
                        TaskStatus::Failed => {
                            last.insert(r.id.clone(), (k.clone(), false));
                        }
                        TaskStatus::Skipped | TaskStatus::Aborted => {
                            last.remove(&r.id);
                        }
                    }
                }
            }
        }
    }

    /// Stops every persistent task of the session.
    pub async fn stop_all(&self) {
        let procs: Vec<persist::Proc> = self
            .procs
            .lock()
            .map(|mut p| p.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        futures_join_all(procs.into_iter().map(|p| p.stop())).await;
    }
}

/// [`super::run`], as one cycle of a watch session when `session` is given:
/// unchanged tasks are not run again and persistent tasks live in the
/// session (restarted only when their key changed).
pub async fn run_in(
    mut params: RunParams,
    events: Events,
    mut cancel: watch::Receiver<Option<i32>>,
    hot: Option<Arc<Hot>>,
    session: Option<Arc<Session>>,
) -> Result<RunSummary, EngineError> {
    offer::check_daemon(&params, hot.is_some())?;
    if session.is_some() {
        params.distribute = false; // a watch cycle runs here
    }
    let started_at = now_ms();
    let t0 = Instant::now();
    let run_id = format!("{:x}-{:x}", unique_ms(started_at), std::process::id());
    // Under the daemon, a repeat request whose answer cannot have changed
    // is replayed; otherwise this run may be kept to be replayed.
    let mut events = events;
    let mut capture = None;
    if let (Some(h), None) = (&hot, &session)
        && replay::eligible(&params)
    {
        let (h2, ev2, rid) = (h.clone(), events.clone(), run_id.clone());
        let (p, r) = tokio::task::spawn_blocking(move || {
            let r = replay::try_replay(&params, &h2, &ev2, &rid, started_at, t0);
            (params, r)
        })
        .await
        .map_err(|e| EngineError::new(ErrorKind::Internal, format!("replay panicked: {e}")))?;
        params = p;
        match r {
            Ok(summary) => return Ok(summary),
            Err(Some(world)) => {
                let (c, tee) = replay::Capture::start(&params, world, events);
                events = tee;
                capture = Some(c);
            }
            Err(None) => {}
        }
    }
    let (detail, continue_mode) = (params.detail, params.continue_mode);
    let concurrency_param = params.concurrency;
    let ev = events.clone();
    let hot2 = hot.clone();
    let (sh, sel, history) = tokio::task::spawn_blocking(move || {
        let (sh, sel) = prepare(params, Some(ev), hot2)?;
        let history = open_history(&sh);
        Ok::<_, EngineError>((sh, sel, history))
    })
    .await
    .map_err(|e| EngineError::new(ErrorKind::Internal, format!("prepare panicked: {e}")))??;
    let mut timing = Timing::new(&sh.params.env);
    let concurrency = concurrency_of(&sh, concurrency_param)?;
    if sh.params.distribute {
        offer::check_remote(&sh)?;
    }
    if let Some(base) = &sel.nothing_affected {
        let _ = events.send(RunEvent::Warning {
            message: format!("nothing affected since {base}"),
        });
    }
    let (only, parallel) = (sh.params.only || sh.params.parallel, sh.params.parallel);
    let nodes: Vec<usize> = if only {
        // The dependencies do not run, but their keys are part of their
        // dependents': keyed here, from the files as they are.
        let sh2 = sh.clone();
        let order = sel.nodes.clone();
        let requested = sel.requested.clone();
        tokio::task::spawn_blocking(move || {
            order
                .iter()
                .filter(|g| parallel || !requested.contains(g))
                .try_for_each(|&g| sh2.key_of(g).map(drop))
        })
        .await
        .map_err(|e| EngineError::new(ErrorKind::Internal, e.to_string()))??;
        sel.nodes
            .iter()
            .copied()
            .filter(|g| sel.requested.contains(g))
            .collect()
    } else {
        sel.nodes.clone()
    };
    // A distributed run's scheduler starts every ready task: the pool
    // and the run's own lanes bound what runs.
    let sched_lanes = if sh.params.distribute {
        nodes.len().max(1)
    } else {
        concurrency
    };
    // Under the daemon, the hits nothing can have changed since the same
    // request's last run are served from its memo: the scheduler visits
    // only the other tasks (those depend on served ones only through keys).
    let memo_on = replay::memo_fits(&sh, session.is_some());
    let served = if memo_on {
        replay::memo_served(&sh, &nodes)
    } else {
        None
    };
    let visit: Vec<usize> = match &served {
        Some(s) => nodes.iter().copied().filter(|&g| s[g].is_none()).collect(),
        None => nodes.clone(),
    };
    let sched = if parallel {
        scheduler_of_unordered(&sh, &visit, history.as_deref(), sched_lanes, continue_mode)
    } else {
        scheduler_of(&sh, &visit, history.as_deref(), sched_lanes, continue_mode)
    };
    timing.stage("scheduler");
    let root = sh.model.ws.root.to_string_lossy().into_owned();
    if sh.trace.is_some() {
        crate::telemetry::remember(&run_id, &sh.params.env);
    }
    let _ = events.send(RunEvent::RunStarted {
        traceparent: sh.trace.as_ref().map(|t| t.traceparent()),
        parent_span_id: sh.trace.as_ref().and_then(|t| t.parent_span_id.clone()),
        run_id: run_id.clone(),
        root: root.clone(),
        tasks: nodes
            .iter()
            .filter(|&&g| sh.model.graph.nodes[g].def.command.is_some())
            .count(),
        concurrency,
    });
    let mut d = Driver::new(sched, sh.clone(), visit, session.clone(), t0);
    if sh.params.distribute {
        d.dist = Some(Dist::open(&sh, events.clone(), &d.nodes, concurrency)?);
    }
    if memo_on {
        d.memo = Some(vec![None; sh.model.graph.nodes.len()]);
    }
    if let Some(s) = served {
        d.serve(&nodes, s, &events, detail);
        timing.stage("served");
    }
    d.drive(&mut cancel, &events, detail).await;
    d.dist = None; // the run's part of the pool ends
    if let Some(memo) = d.memo.take()
        && d.error.is_none()
        && d.cancelled.is_none()
    {
        replay::keep_memo(&sh, &nodes, memo);
    }
    timing.stage("schedule");
    sh.drain_uploads().await;
    let sh2 = sh.clone();
    let close = tokio::task::spawn_blocking(move || sh2.finish_store()).await;
    if let Some(hot) = &hot {
        hot.runs_served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hot.touch();
    }
    timing.stage("close");
    if let Ok(Err(e)) = close {
        let _ = events.send(RunEvent::Warning {
            message: format!("the cache index could not be written: {e}"),
        });
    }
    let head = Head {
        run_id,
        started_at,
        t0,
        root,
        detail,
        concurrency,
        history,
        watch_cycle: session.is_some(),
        nodes: d.nodes.clone(),
        kept: capture.as_ref().map(|c| c.record_slot()),
    };
    let summary = d.conclude(head, &events, &mut cancel).await?;
    if let (Some(c), Some(h)) = (capture, hot) {
        let s2 = summary.clone();
        let _ = tokio::task::spawn_blocking(move || c.finish(&sh, &h, &s2)).await;
    }
    Ok(summary)
}

/// The run's concurrency: the request's, else the config's, else
/// [`crate::exec::default_concurrency`] of the machine's CPUs (capped at
/// [`vx_proto::MAX_CONCURRENCY`]); a requested or configured one above that
/// is refused.
fn concurrency_of(sh: &Shared, requested: Option<usize>) -> Result<usize, EngineError> {
    let concurrency = requested
        .or(sh.model.ws.defaults.concurrency)
        .unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            crate::exec::default_concurrency(cpus).min(vx_proto::MAX_CONCURRENCY)
        })
        .max(1);
    if concurrency > vx_proto::MAX_CONCURRENCY {
        return Err(concurrency_error(concurrency));
    }
    Ok(concurrency)
}

/// A scheduler over `nodes` with no edges between them (`--parallel`).
fn scheduler_of_unordered(
    sh: &Shared,
    nodes: &[usize],
    history: Option<&History>,
    concurrency: usize,
    continue_mode: ContinueMode,
) -> Scheduler {
    let deps: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let priority = priorities(sh, nodes, &deps, &dependents, history);
    Scheduler::new(deps, dependents, priority, concurrency, continue_mode)
}

/// The scheduler over the selected graph nodes `nodes` (local index =
/// position), with their edges within the selection and their priorities.
fn scheduler_of(
    sh: &Shared,
    nodes: &[usize],
    history: Option<&History>,
    concurrency: usize,
    continue_mode: ContinueMode,
) -> Scheduler {
    let local_of: HashMap<usize, usize> = nodes.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|&g| {
            sh.model
                .graph
                .deps(g)
                .filter_map(|d| local_of.get(&d).copied())
                .collect()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let priority = priorities(sh, nodes, &deps, &dependents, history);
    Scheduler::new(deps, dependents, priority, concurrency, continue_mode)
}

/// What the driver waits for when nothing is ready inline (a value on
/// the stack, moved once: not worth a box per task).
#[allow(clippy::large_enum_variant)]
enum Next {
    Done(Done),
    /// A spawned task's future panicked.
    Panicked(String),
    Cancel(i32),
    /// The pool's word on an offered task.
    Pool(super::distribute::Outcome),
    /// An offered task's dependencies were made sure of in the remote.
    Uploaded(usize, Result<(), String>),
    Nothing,
}

/// One run's moving parts between the scheduler's decisions and the tasks.
struct Driver {
    sched: Scheduler,
    sh: Arc<Shared>,
    /// Graph node of each local task index.
    nodes: Vec<usize>,
    session: Option<Arc<Session>>,
    t0: Instant,
    /// What started tasks listen to for the run's cancellation.
    task_cancel: watch::Receiver<Option<i32>>,
    task_cancel_tx: watch::Sender<Option<i32>>,
    /// The signal the run was cancelled with.
    cancelled: Option<i32>,
    running: tokio::task::JoinSet<Done>,
    /// Outcomes ready without a spawned task (inline hits, groups).
    immediate: VecDeque<Done>,
    results: Vec<vx_proto::TaskResult>,
    /// Persistent tasks that became ready, by local index.
    procs: Vec<(usize, persist::Proc)>,
    /// Results that are not news (hits, unchanged in a watch cycle).
    quiet: HashSet<String>,
    error: Option<EngineError>,
    /// A `--distribute` run's part of the coordinator.
    dist: Option<Dist>,
    /// The run's per-task memo as it is built (by graph node), when it
    /// may keep one (see [`replay::memo_fits`]).
    memo: Option<Vec<Option<Arc<MemoTask>>>>,
    /// The logs inline hits replayed in full, by local index (for the memo).
    hit_logs: HashMap<usize, Vec<u8>>,
    /// Bytes of logs kept in the memo (at most [`replay::MAX_BYTES`]).
    memo_bytes: usize,
}

impl Driver {
    fn new(
        sched: Scheduler,
        sh: Arc<Shared>,
        nodes: Vec<usize>,
        session: Option<Arc<Session>>,
        t0: Instant,
    ) -> Driver {
        let (task_cancel_tx, task_cancel) = watch::channel::<Option<i32>>(None);
        Driver {
            sched,
            sh,
            nodes,
            session,
            t0,
            task_cancel,
            task_cancel_tx,
            cancelled: None,
            running: tokio::task::JoinSet::new(),
            immediate: VecDeque::new(),
            results: Vec::new(),
            procs: Vec::new(),
            quiet: HashSet::new(),
            error: None,
            dist: None,
            memo: None,
            hit_logs: HashMap::new(),
            memo_bytes: 0,
        }
    }

    /// Serves the memo's hits (by graph node; `selection` is every
    /// selected node in order) before the loop: their events as a fresh
    /// run's hit would emit them (the log replayed, the result to the
    /// client with `--detail=all`, else to the watchers), and their keys
    /// for the visited tasks that depend on them. The scheduler does not
    /// know them (it is over the visited tasks).
    fn serve(
        &mut self,
        selection: &[usize],
        mut served: Vec<Option<Arc<MemoTask>>>,
        events: &Events,
        detail: vx_proto::Detail,
    ) {
        let sh = self.sh.clone();
        let graph = &sh.model.graph;
        if let Ok(mut keys) = sh.keys.lock() {
            for &g in &self.nodes {
                for d in graph.deps(g) {
                    if let Some(m) = served.get(d).and_then(Option::as_ref) {
                        keys.insert(d, m.key.clone());
                    }
                }
            }
        }
        let mut n = 0;
        for &g in selection {
            let Some(m) = served.get_mut(g).and_then(Option::take) else {
                continue;
            };
            n += 1;
            if let Some(r) = &m.result {
                let log = m.log.as_deref().map(Vec::as_slice).unwrap_or_default();
                replay_log(&sh, g, &r.id, &m.key, r, log);
                let e = RunEvent::TaskFinished { result: r.clone() };
                if detail == vx_proto::Detail::All {
                    let _ = events.send(e);
                } else if sh.trace.is_some() || events.watched() {
                    events.observe(&e);
                }
                self.results.push(r.clone());
            }
            if let Some(out) = self.memo.as_mut() {
                if let Some(log) = &m.log {
                    self.memo_bytes += log.len();
                }
                out[g] = Some(m);
            }
        }
        if let Some(hot) = &sh.hot {
            hot.tasks_memo_served
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The loop: carry out the scheduler's decisions, wait for an outcome
    /// (inline ones first) or a cancel, hand it back; until every task is
    /// done. What never became ready (cannot happen on a DAG) is reported
    /// skipped.
    async fn drive(
        &mut self,
        cancel: &mut watch::Receiver<Option<i32>>,
        events: &Events,
        detail: vx_proto::Detail,
    ) {
        while !self.sched.is_complete() {
            self.dispatch();
            let done = match self.immediate.pop_front() {
                Some(done) => done,
                None => {
                    let pool_waiting = self.dist.as_ref().is_some_and(|d| d.waiting());
                    if self.running.is_empty() && !pool_waiting {
                        if self.sched.nothing_ready() {
                            break; // nothing can progress (cannot happen on a DAG)
                        }
                        continue;
                    }
                    let (rx, uploads) = match self.dist.as_mut() {
                        Some(d) => (Some(&mut d.rx), Some(&mut d.uploads)),
                        None => (None, None),
                    };
                    let next = tokio::select! {
                        joined = self.running.join_next(), if !self.running.is_empty() => match joined {
                            None => Next::Nothing,
                            Some(Ok(done)) => Next::Done(done),
                            Some(Err(e)) => Next::Panicked(e.to_string()),
                        },
                        o = pool_outcome(rx) => Next::Pool(o),
                        u = pool_upload(uploads) => match u {
                            Some((i, r)) => Next::Uploaded(i, r),
                            None => Next::Nothing,
                        },
                        r = cancel.changed(), if self.cancelled.is_none() => {
                            Next::Cancel(match r { Ok(()) => (*cancel.borrow()).unwrap_or(libc::SIGTERM), Err(_) => libc::SIGTERM })
                        }
                    };
                    match next {
                        Next::Done(done) => done,
                        Next::Nothing => continue,
                        Next::Panicked(e) => {
                            self.error = Some(EngineError::new(
                                ErrorKind::Internal,
                                format!("a task panicked: {e}"),
                            ));
                            self.sched.lost();
                            self.sched.stop();
                            continue;
                        }
                        Next::Cancel(sig) => {
                            self.cancel(sig);
                            continue;
                        }
                        Next::Uploaded(i, r) => {
                            if let Some(d) = self.dist.as_mut() {
                                d.uploaded(&self.sh, i, r);
                            }
                            continue;
                        }
                        Next::Pool(o) => {
                            let Some(d) = self.dist.as_mut() else {
                                continue;
                            };
                            match d.outcome(&self.sh, o) {
                                Verdict::Now(done) => done,
                                Verdict::Later(fut) => {
                                    self.running.spawn(fut);
                                    continue;
                                }
                                Verdict::Nothing => continue,
                            }
                        }
                    }
                }
            };
            if let Some(d) = self.dist.as_mut() {
                d.local.remove(&done.local);
            }
            self.collect(done, events, detail);
            // A stopping distributed run takes back what it offered.
            if self.sched.stopping()
                && self.cancelled.is_none()
                && let Some(d) = self.dist.as_mut()
                && !d.out.is_empty()
            {
                let reason = "the run is stopping after a failure";
                self.immediate.extend(d.withdraw(&self.sh, reason));
            }
            // A cancel that arrives while only inline work remains.
            if self.cancelled.is_none() && cancel.has_changed().unwrap_or(false) {
                let sig = (*cancel.borrow_and_update()).unwrap_or(libc::SIGTERM);
                self.cancel(sig);
            }
        }
        let never: Vec<usize> = self.sched.never_ready().collect();
        for i in never {
            let g = self.nodes[i];
            if self.sh.model.graph.nodes[g].def.command.is_some() {
                self.results.push(skipped(&self.sh, g, None));
            }
        }
    }

    /// After the loop: an internal error stops every persistent task; a
    /// watch cycle leaves its persistent tasks to the session; a cancelled
    /// run stops them; otherwise the run holds the persistent tasks it
    /// keeps. Then the summary, recorded.
    async fn conclude(
        self,
        mut head: Head,
        events: &Events,
        cancel: &mut watch::Receiver<Option<i32>>,
    ) -> Result<RunSummary, EngineError> {
        let Driver {
            sched,
            sh,
            nodes,
            session,
            mut results,
            procs,
            quiet,
            error,
            cancelled,
            ..
        } = self;
        if let Some(e) = error {
            let all: Vec<persist::Proc> = procs.into_iter().map(|(_, p)| p).collect();
            futures_join_all(all.into_iter().map(|p| p.stop())).await;
            return Err(e);
        }
        results.sort_by(|a, b| a.id.cmp(&b.id));
        let lanes = sched.lanes();
        if let Some(s) = &session {
            // The session keeps the persistent tasks and remembers what ran.
            s.remember(&results);
            if cancelled.is_some() {
                futures_join_all(procs.into_iter().map(|(_, p)| p.stop())).await;
            } else if let Ok(mut map) = s.procs.lock() {
                for (_, p) in procs {
                    map.insert(p.id.clone(), p);
                }
            }
            return Ok(head.finish(&sh, results, cancelled, &quiet, lanes).await);
        }
        if let Some(sig) = cancelled {
            futures_join_all(procs.into_iter().map(|(_, p)| p.stop())).await;
            for r in results.iter_mut() {
                if r.status == TaskStatus::Running {
                    r.status = TaskStatus::Aborted;
                }
            }
            return Ok(head.finish(&sh, results, Some(sig), &quiet, lanes).await);
        }
        let (results, cancelled) = persistent::hold(
            &sh, &mut head, &sched, &nodes, results, procs, &quiet, events, cancel,
        )
        .await;
        Ok(head.finish(&sh, results, cancelled, &quiet, lanes).await)
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// The run is cancelled: start nothing more, pass the signal on.
    fn cancel(&mut self, sig: i32) {
        self.cancelled = Some(sig);
        self.sched.stop();
        let _ = self.task_cancel_tx.send(Some(sig));
        if let Some(d) = self.dist.as_mut() {
            self.immediate
                .extend(d.withdraw(&self.sh, "the run was cancelled"));
        }
    }

    /// Carries out the scheduler's decisions while it has any.
    fn dispatch(&mut self) {
        while let Some(step) = self.sched.next(self.now()) {
            match step {
                Step::Skip {
                    task: i,
                    blocked_by,
                } => {
                    let g = self.nodes[i];
                    if self.sh.model.graph.nodes[g].def.command.is_some() {
                        let by =
                            blocked_by.map(|r| self.sh.model.graph.nodes[self.nodes[r]].id.clone());
                        self.results.push(skipped(&self.sh, g, by));
                    }
                }
                Step::Start { task: i, tainted } => self.start(i, tainted),
            }
        }
        // A distributed run's own lanes take their share of the pool.
        let Some(d) = self.dist.as_mut() else {
            return;
        };
        for (i, g, key, tainted) in d.take_local() {
            self.spawn_local(i, g, key, tainted);
        }
    }

    /// Starts task `i`: inline when its outcome is known at once, else as a
    /// spawned future that holds a lane.
    fn start(&mut self, i: usize, is_tainted: bool) {
        let sh = &self.sh;
        let g = self.nodes[i];
        let node = &sh.model.graph.nodes[g];
        if node.def.command.is_none() {
            // A group task: a key (for its dependents), nothing to run.
            if let Err(e) = sh.key_of(g) {
                self.error = Some(e);
                self.sched.stop();
            }
            self.immediate
                .push_back(Done::new(i, None, false, is_tainted));
            return;
        }
        if node.def.persistent {
            match sh.key_of(g) {
                Ok(key) => {
                    let old = self.session.as_ref().and_then(|s| s.take_proc(&node.id));
                    if let Some(p) = old.as_ref()
                        && p.key == key
                        && p.exited().is_none()
                    {
                        // A watch cycle: still running with the same key.
                        let mut res = base_result(sh, g);
                        res.status = TaskStatus::Running;
                        res.cache = CacheSource::Disabled;
                        let mut d = Done::new(i, Some(res), false, is_tainted);
                        d.proc = old;
                        d.quiet = true;
                        self.immediate.push_back(d);
                        return;
                    }
                    let sh2 = sh.clone();
                    let rx = self.task_cancel.clone();
                    self.sched.spawned(i);
                    self.running.spawn(async move {
                        start_persistent(&sh2, i, g, key, old, is_tainted, rx).await
                    });
                }
                Err(e) => {
                    let mut res = base_result(sh, g);
                    res.status = TaskStatus::Failed;
                    res.error = Some(e.message);
                    self.immediate
                        .push_back(Done::new(i, Some(res), true, is_tainted));
                }
            }
            return;
        }
        // A watch cycle does not run again what did not change. A cached
        // task that succeeded goes through the cache instead, so its
        // outputs are restored if they were deleted meanwhile; when they
        // are in place it is not news (its log is not replayed).
        let mut unchanged_key = None;
        if let Some(s) = &self.session {
            let key = sh.key_of(g);
            if let Ok(key) = &key
                && let Some((last, ok)) = s.last_of(&node.id)
                && &last == key
            {
                if ok && sh.cache_read(g) {
                    match try_hit(sh, g, key, false) {
                        Ok(Hit::Served(r, _)) => {
                            let mut d = Done::new(i, Some(r), false, is_tainted);
                            d.quiet = true;
                            self.immediate.push_back(d);
                            return;
                        }
                        // To restore (or run): the usual way, below.
                        Ok(_) | Err(_) => unchanged_key = Some(key.clone()),
                    }
                } else {
                    let mut res = base_result(sh, g);
                    res.key = Some(key.clone());
                    if ok {
                        res.status = TaskStatus::Cached;
                        res.cache = CacheSource::UpToDate;
                    } else {
                        res.status = TaskStatus::Failed;
                        res.error = Some("failed, and nothing it depends on changed since".into());
                    }
                    let mut d = Done::new(i, Some(res), !ok, is_tainted);
                    d.quiet = true;
                    self.immediate.push_back(d);
                    return;
                }
            }
        }
        // The fast path: key and an in-place hit, inline.
        let probed = match unchanged_key {
            Some(key) => Ok((key, None)),
            None => probe(sh, g),
        };
        let key = match probed {
            Ok((_, Some((r, log)))) => {
                if self.memo.is_some() && sh.logs_of(g) == vx_proto::OutputLogs::Full {
                    self.hit_logs.insert(i, log);
                }
                self.immediate
                    .push_back(Done::new(i, Some(r), false, is_tainted));
                return;
            }
            Ok((key, None)) => key,
            Err(e) => {
                sh.emit(RunEvent::Warning {
                    message: format!("{}: {}", node.id, e.message),
                });
                let mut res = base_result(sh, g);
                res.status = TaskStatus::Failed;
                res.error = Some(e.message);
                self.immediate
                    .push_back(Done::new(i, Some(res), true, is_tainted));
                return;
            }
        };
        if let Some(d) = self.dist.as_mut()
            && Dist::wants(sh, g, is_tainted)
        {
            self.sched.spawned(i);
            let priority = self.sched.priority(i);
            d.offer(sh, i, g, key, is_tainted, priority);
            return;
        }
        self.spawn_local(i, g, key, is_tainted);
    }

    /// Runs task `i` (graph node `g`, key known) in this process.
    fn spawn_local(&mut self, i: usize, g: usize, key: String, is_tainted: bool) {
        let sh2 = self.sh.clone();
        let rx = self.task_cancel.clone();
        // An offered task was counted as spawned when offered.
        if !self.dist.as_ref().is_some_and(|d| d.local.contains(&i)) {
            self.sched.spawned(i);
        }
        self.running.spawn(async move {
            let r = run_task(&sh2, g, key, is_tainted, rx).await;
            match r {
                Ok(result) => {
                    let failed = matches!(result.status, TaskStatus::Failed | TaskStatus::Aborted);
                    Done::new(i, Some(result), failed, is_tainted)
                }
                Err(e) => {
                    sh2.emit(RunEvent::Warning {
                        message: format!("{}: {}", sh2.model.graph.nodes[g].id, e.message),
                    });
                    let mut res = base_result(&sh2, g);
                    res.status = TaskStatus::Failed;
                    res.error = Some(e.message);
                    Done::new(i, Some(res), true, is_tainted)
                }
            }
        });
    }

    /// Hands one outcome to the scheduler and reports it.
    fn collect(&mut self, done: Done, events: &Events, detail: vx_proto::Detail) {
        let i = done.local;
        let now = self.now();
        self.sched.finished(i, done.failed, done.tainted, now);
        if let Some(p) = done.proc {
            if !done.quiet {
                let _ = events.send(RunEvent::TaskReady { id: p.id.clone() });
            }
            self.procs.push((i, p));
        }
        if let Some(r) = done.result {
            let shown = !done.quiet && (r.status != TaskStatus::Cached);
            if detail == vx_proto::Detail::All || shown {
                let _ = events.send(RunEvent::TaskFinished { result: r.clone() });
            } else if self.sh.trace.is_some() || events.watched() {
                // Not for this run's client, but the bus's watchers (and a
                // traced run's exporter) see every task.
                events.observe(&RunEvent::TaskFinished { result: r.clone() });
            }
            // Cached results are left out by status; only other quiet ones
            // need naming (no per-hit clone on a repeat run).
            if done.quiet && r.status != TaskStatus::Cached {
                self.quiet.insert(r.id.clone());
            }
            if !done.quiet {
                self.remember(i, &r);
            }
            self.results.push(r);
        }
    }
}

impl Driver {
    /// Keeps task `i`'s result in the run's memo if it may be served next
    /// time (see [`replay::memo_keeps`]): a hit whose log was replayed in
    /// full only with that log, within [`replay::MAX_BYTES`] in all.
    fn remember(&mut self, i: usize, r: &vx_proto::TaskResult) {
        let Some(out) = self.memo.as_mut() else {
            return;
        };
        let g = self.nodes[i];
        let hit_log = self.hit_logs.remove(&i);
        let Some(key) = &r.key else { return };
        if !replay::memo_keeps(&self.sh, g, r) {
            return;
        }
        let log = if self.sh.logs_of(g) == vx_proto::OutputLogs::Full {
            let Some(log) = hit_log else {
                return;
            };
            if self.memo_bytes + log.len() > replay::MAX_BYTES {
                return;
            }
            self.memo_bytes += log.len();
            Some(Arc::new(log))
        } else {
            None
        };
        out[g] = Some(Arc::new(MemoTask {
            at: std::time::Instant::now(),
            key: key.clone(),
            result: Some(r.clone()),
            log,
        }));
    }
}

/// The next outcome the pool sends a distributed run (never, otherwise).
async fn pool_outcome(
    rx: Option<&mut tokio::sync::mpsc::UnboundedReceiver<super::distribute::Outcome>>,
) -> super::distribute::Outcome {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(o) => o,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The next finished dependency upload of a distributed run (never,
/// when there is none).
async fn pool_upload(
    uploads: Option<&mut tokio::task::JoinSet<(usize, Result<(), String>)>>,
) -> Option<(usize, Result<(), String>)> {
    match uploads {
        Some(u) if !u.is_empty() => match u.join_next().await {
            Some(Ok(r)) => Some(r),
            _ => None,
        },
        _ => std::future::pending().await,
    }
}

/// A run id's time part: `now`, or one past the previous id's when two
/// runs of this process start in the same millisecond (the event bus and
/// the history tell runs apart by id).
fn unique_ms(now: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}
