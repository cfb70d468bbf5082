//! `engine::replay` — answering a repeat run from memory, under the daemon.
//!
//! Owns: whether a finished run's whole answer may be kept ([`Capture`]),
//! whether a request may be answered with a kept one ([`try_replay`]), and
//! replaying it: every event the run emitted, in order, under a new run id
//! (so the client, the event bus, its subscribers and the OTel exporter see
//! a run like any other), its summary with new times, and its history
//! record with the new id and times.
//!
//! A kept answer stands for a request with the very same parameters (cwd,
//! tasks, filters, flags, forwarded args and every environment value: a
//! blake3 of the whole [`RunParams`]) while everything the answer was
//! computed from is provably unchanged:
//! - the hot state's generation ([`Hot::generation`]) read after a cookie
//!   barrier is the one the run read after its own barrier before it
//!   started and again when it ended: the watcher bumps it after every
//!   change it reports (inputs, configs, output directories, which a hit
//!   watches before it checks them, an overflow, a watcher error, a missed
//!   cookie), and the barrier makes every write made before the request
//!   count;
//! - the store is the same open store ([`Weak`] identity: a closed and
//!   reopened one differs) and its index generation, refreshed, is the one
//!   the run started and ended with: any process's commit that adds, drops
//!   or re-stamps an entry, and a `cache clean`, moves it;
//! - the workspace root found from the cwd is still the daemon's;
//! - it is younger than [`MAX_AGE`] (hits record their entries' access
//!   times for `cache prune` at most hourly; a replay records none).
//! - the bus's watchers get what they would get from a fresh run: a kept
//!   answer holds what its client was sent and, marked apart, what only
//!   the watchers were handed ([`Events::observe`]: the hits a plain run's
//!   client did not ask for). An answer captured while the bus was watched
//!   at every task replays both (the marked ones to the watchers alone,
//!   and only while someone still watches); one captured while nobody (or
//!   not always somebody) watched is replayed only to an unwatched bus,
//!   so a run with a watcher that arrived since is computed afresh once
//!   and kept as watched.
//!
//! Only a run that could not have changed anything is kept: every task a
//! local hit whose outputs were already in place and lie under watched
//! output directories, no warning but the config's own, nothing persistent,
//! not cancelled, and a request that reads no git state (`--affected`, a
//! `[ref]` filter), writes no profile or report, neither forces nor
//! disables the cache, and is not a watch cycle.
//!
//! It also owns the per-task memo of a request's last run, for the runs
//! that are computed afresh: which of its in-place hits (and group keys)
//! the next run of the same request serves unvisited ([`memo_served`]:
//! their project unchanged since that run's snapshot, no store removal
//! since it started, every dependency served), which results a run keeps
//! ([`memo_keeps`], [`keep_memo`]). The scheduler sees the other tasks only.
//!
//! Never: replays an answer when any of the above cannot be shown equal
//! (that is a fresh run, never a guess); looks at tasks or files on the
//! replay path (its cost is a cookie barrier, a generation read and the
//! answer's own events); keeps an answer with more events than
//! [`MAX_EVENTS`] or [`MAX_BYTES`] of output lines.

use super::now_ms;
use super::prepare::Shared;
use super::record::{RecordJob, record_job, recorder};
use crate::cache::Store;
use crate::history;
use crate::sink::Events;
use crate::state::{Hot, MemoTask, RunAnswer, RunMemo};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use vx_proto::history::RunRecord;
use vx_proto::knobs;
use vx_proto::{CacheSource, RunEvent, RunParams, RunSummary, TaskStatus};

/// A kept answer older than this is not replayed (see the module doc).
pub const MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// At most this many events are kept per answer.
pub const MAX_EVENTS: usize = 20_000;
/// At most this many bytes of output lines are kept per answer.
pub const MAX_BYTES: usize = 8 << 20;

/// Whether a request is of the kind whose answer may be kept and replayed
/// (see the module doc): it reads no git state, writes no file of its own,
/// uses the cache normally, is not distributed (its tasks run on other
/// machines) and does not say `VX_REPLAY=0`.
pub(super) fn eligible(p: &RunParams) -> bool {
    !p.distribute
        && !knobs::REPLAY.off(&p.env)
        && p.affected.is_none()
        && !p.filters.iter().any(|f| f.contains('['))
        && p.profile.is_none()
        && p.report.is_none()
        && !p.force
        && !p.no_cache
        && p.cache.is_none()
}

/// The request's identity: every parameter, the whole environment included.
pub(super) fn request_hash(p: &RunParams) -> [u8; 32] {
    let bytes = serde_json::to_vec(p).unwrap_or_default();
    *blake3::hash(&bytes).as_bytes()
}

/// The state a run starts in, as the replay compares it.
#[derive(Clone)]
pub(super) struct World {
    generation: u64,
    store: Weak<Store>,
    store_generation: u64,
}

impl World {
    /// Now, after a cookie barrier (blocking). `None` when there is no
    /// store to compare (a run then is neither replayed nor kept).
    fn now(hot: &Hot) -> Option<World> {
        let generation = hot.settled_generation();
        let store = hot.store().ok()?;
        Some(World {
            generation,
            store_generation: store.generation(),
            store: Arc::downgrade(&store),
        })
    }

    fn same(&self, generation: u64, store: &Weak<Store>, store_generation: u64) -> bool {
        self.generation == generation
            && Weak::ptr_eq(&self.store, store)
            && self.store_generation == store_generation
    }
}

/// Replays the answer kept for `params`, if it still stands: emits its
/// events under `run_id`, queues its history record and returns its
/// summary. Otherwise `Err` with the state now, for the fresh run's
/// [`Capture`] (`None`: nothing to capture against). Blocking.
pub(super) fn try_replay(
    params: &RunParams,
    hot: &Arc<Hot>,
    events: &Events,
    run_id: &str,
    started_at: u64,
    t0: Instant,
) -> Result<RunSummary, Option<World>> {
    let request = request_hash(params);
    let cwd = std::path::Path::new(&params.cwd);
    let same_root = crate::workspace::find_root(cwd).is_ok_and(|r| r == hot.root);
    let world = World::now(hot);
    let (Some(world), true) = (world, same_root) else {
        return Err(None);
    };
    let Some(answer) = hot.answer(&request) else {
        return Err(Some(world));
    };
    // A kept answer captured without watchers lacks the hits only they get
    // (`Events::observe`): while someone watches, it is computed afresh.
    let watched = events.watched();
    if (watched && !answer.observed_whole)
        || !world.same(answer.generation, &answer.store, answer.store_generation)
        || answer.at.elapsed() > MAX_AGE
        || hot.root_gone.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(Some(world));
    }
    let trace = crate::telemetry::begin(&params.env);
    if trace.is_some() {
        crate::telemetry::remember(run_id, &params.env);
    }
    for (observed_only, e) in &answer.events {
        if *observed_only {
            if watched {
                events.observe(e);
            }
            continue;
        }
        match e {
            RunEvent::RunStarted {
                root,
                tasks,
                concurrency,
                ..
            } => {
                let _ = events.send(RunEvent::RunStarted {
                    run_id: run_id.to_string(),
                    root: root.clone(),
                    tasks: *tasks,
                    concurrency: *concurrency,
                    traceparent: trace.as_ref().map(|t| t.traceparent()),
                    parent_span_id: trace.as_ref().and_then(|t| t.parent_span_id.clone()),
                });
            }
            e => {
                let _ = events.send(e.clone());
            }
        }
    }
    let mut summary = answer.summary.clone();
    summary.run_id = run_id.to_string();
    summary.started_at = started_at;
    summary.ended_at = now_ms();
    summary.duration_ms = t0.elapsed().as_millis() as u64;
    if let Some(record) = &answer.record {
        record_replayed(hot, params, record.clone(), &summary);
    }
    hot.runs_served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hot.runs_replayed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hot.touch();
    tracing::debug!(run_id, "replayed a kept answer");
    Ok(summary)
}

/// Queues the replayed run's history record (the kept one under the new
/// id and times) on the daemon's recording thread. A history that cannot
/// be opened now loses this record (logged), as a fresh run's would.
fn record_replayed(hot: &Arc<Hot>, params: &RunParams, kept: Arc<RunRecord>, s: &RunSummary) {
    if knobs::HISTORY.off(&params.env) {
        return;
    }
    let h = match history::shared(&hot.cache_dir()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("run {} not recorded: {e}", s.run_id);
            return;
        }
    };
    let (run_id, started_at, ended_at, duration_ms) =
        (s.run_id.clone(), s.started_at, s.ended_at, s.duration_ms);
    let pending = h.announce(&[]);
    recorder(record_job(RecordJob {
        history: h,
        pending,
        build: Box::new(move || {
            let mut r = Arc::unwrap_or_clone(kept);
            r.run_id = run_id;
            r.started_at = started_at;
            r.ended_at = ended_at;
            r.duration_ms = duration_ms;
            Some(r)
        }),
        fingerprints: Vec::new(),
        keep: history::Retention::from_env(&params.env),
        idle: Some(Arc::downgrade(hot)),
        events: None,
        pause: knobs::TEST_RECORD_DELAY_MS.millis(&params.env),
    }));
}

/// Events as a run emits them, kept (within bounds) beside their delivery.
#[derive(Default)]
struct Recorded {
    /// `true`: handed to the bus's watchers alone.
    events: Vec<(bool, RunEvent)>,
    bytes: usize,
    /// Past the bounds, or something that makes the answer unfit to keep.
    spoiled: bool,
    /// Some task's hit was not handed to the watchers (nobody watched).
    unwatched: bool,
}

impl Recorded {
    /// Keeps `e` unless past the bounds (which spoils the answer).
    fn keep(&mut self, observed_only: bool, e: &RunEvent) {
        if self.spoiled {
            return;
        }
        if let RunEvent::TaskOutput { line, .. } = e {
            self.bytes += line.len();
        }
        // A task's span belongs to this run: never replayed.
        let traced_task = matches!(
            e,
            RunEvent::TaskStarted {
                traceparent: Some(_),
                ..
            }
        );
        if traced_task || self.events.len() >= MAX_EVENTS || self.bytes > MAX_BYTES {
            self.spoiled = true;
            self.events = Vec::new();
        } else {
            self.events.push((observed_only, e.clone()));
        }
    }
}

/// The bus's observer, with a copy of what it is handed kept: the tee of
/// a captured run on the watchers' side.
struct KeepObserved {
    inner: Arc<dyn crate::sink::Observer>,
    recorded: Arc<Mutex<Recorded>>,
}

impl crate::sink::Observer for KeepObserved {
    fn watched(&self) -> bool {
        let w = self.inner.watched();
        if !w && let Ok(mut r) = self.recorded.lock() {
            r.unwatched = true;
        }
        w
    }

    fn observe(&self, e: &RunEvent) {
        if let Ok(mut r) = self.recorded.lock() {
            r.keep(true, e);
        }
        self.inner.observe(e);
    }
}

/// A fresh run that may be kept to be replayed: what it started from, its
/// events, and (through [`Capture::record_slot`]) its history record.
pub(super) struct Capture {
    request: [u8; 32],
    before: World,
    recorded: Arc<Mutex<Recorded>>,
    record: Arc<OnceLock<Arc<RunRecord>>>,
}

impl Capture {
    /// Starts capturing a run of `params` that started in `before`;
    /// returns the sink the run emits into (`events`, with a copy kept).
    pub(super) fn start(params: &RunParams, before: World, events: Events) -> (Capture, Events) {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let r2 = recorded.clone();
        let mut tee = events.clone().with_client(move |e: RunEvent| {
            if let Ok(mut r) = r2.lock() {
                r.keep(false, &e);
            }
            let _ = events.send(e);
        });
        match tee.observer() {
            Some(inner) => {
                tee = tee.with_observer(Arc::new(KeepObserved {
                    inner,
                    recorded: recorded.clone(),
                }));
            }
            // Nothing can watch this run's bus: no hit is ever observed.
            None => {
                if let Ok(mut r) = recorded.lock() {
                    r.unwatched = true;
                }
            }
        }
        let capture = Capture {
            request: request_hash(params),
            before,
            recorded,
            record: Arc::new(OnceLock::new()),
        };
        (capture, tee)
    }

    /// Where the run's history record is put (see `record::Head::kept`).
    pub(super) fn record_slot(&self) -> Arc<OnceLock<Arc<RunRecord>>> {
        self.record.clone()
    }

    /// Keeps the finished run's answer if it qualifies (see the module
    /// doc): checks every task's result once, on this (fresh) run's path.
    /// Blocking (a cookie barrier).
    pub(super) fn finish(self, sh: &Shared, hot: &Hot, summary: &RunSummary) {
        let recorded = match self.recorded.lock() {
            Ok(mut r) if !r.spoiled => std::mem::take(&mut *r),
            _ => return,
        };
        let warnings = &sh.model.ws.warnings;
        let quiet_events = recorded.events.iter().all(|(_, e)| match e {
            RunEvent::Warning { message } => warnings.contains(message),
            _ => true,
        });
        // The record is the proof of every task's outcome (the summary
        // names only what changed): a run not recorded is not kept.
        let Some(record) = self.record.get().cloned() else {
            return;
        };
        if !quiet_events {
            return;
        }
        let c = &summary.counts;
        if !summary.ok || c.cached != c.total || record.tasks.len() != c.total {
            return;
        }
        // Every task a hit in place, under watched output directories: one
        // look per task, here on the fresh run's path, never on a replay's.
        let graph = &sh.model.graph;
        let in_place = record.tasks.iter().all(|t| {
            t.status == TaskStatus::Cached
                && t.cache == CacheSource::UpToDate
                && graph.get(&t.id).is_some_and(|g| {
                    !graph.nodes[g].def.persistent
                        && sh
                            .patterns
                            .get(&g)
                            .is_some_and(|p| p.outputs.bases().is_some())
                })
        });
        if !in_place {
            return;
        }
        let Some(after) = World::now(hot) else {
            return;
        };
        let b = &self.before;
        if !after.same(b.generation, &b.store, b.store_generation) {
            return;
        }
        hot.keep_answer(
            self.request,
            RunAnswer {
                generation: b.generation,
                store: b.store.clone(),
                store_generation: b.store_generation,
                at: Instant::now(),
                events: recorded.events,
                observed_whole: !recorded.unwatched,
                summary: summary.clone(),
                record: Some(record),
            },
        );
    }
}

/// Whether a run may serve hits from, and keep, a per-task memo (see
/// [`memo_served`]): under the daemon, not a watch cycle, a request that
/// could be replayed whole ([`eligible`]), not `--only` or `--parallel`,
/// not traced (a task's span belongs to its run), without hook plugins
/// (their answers may change between runs), on a real store read locally.
pub(super) fn memo_fits(sh: &Shared, watch_cycle: bool) -> bool {
    sh.hot.is_some()
        && !watch_cycle
        && sh.started_at.is_some()
        && eligible(&sh.params)
        && !sh.params.only
        && !sh.params.parallel
        && sh.trace.is_none()
        && !sh.model.ws.defaults.plugin_hooks
        && sh.plugins.material.is_empty()
        && !sh.plugins.uncached
        && !sh.store.is_ephemeral()
        && sh.policy.local_read
}

/// By graph node, for a run over `nodes`: the hit (or, for a group task,
/// the key) the same request's last run found, when nothing it was
/// computed from can have changed since, so the run serves it without
/// looking at it. `None`: no memo applies, every task is visited.
///
/// A task is served only when the memo is of the same request (every
/// parameter and environment value), model, selection and open store, is
/// younger than [`MAX_AGE`], no entry of the store may have been dropped,
/// re-stamped or replaced since that run started (`Store::removals`; a
/// save only adds entries), and:
/// - the last run found it a local hit whose outputs were in place under
///   watched output directories (or it is a group task it keyed), by a
///   check younger than [`MAX_AGE`] (a served task keeps its check's time);
/// - no sync since that run's snapshot found anything changed in its
///   project (its files, its outputs: `Hot::changed_since`; a rescan, a
///   new model or a change outside every project is "everything");
/// - its inputs are its project's alone (no root or global inputs);
/// - every task it depends on is served too (a visited task's dependents
///   are visited: its key may have changed).
pub(super) fn memo_served(sh: &Shared, nodes: &[usize]) -> Option<Vec<Option<Arc<MemoTask>>>> {
    let hot = sh.hot.as_ref()?;
    let (_, removals) = sh.started_at?;
    let memo = hot.run_memo(&request_hash(&sh.params))?;
    if memo.nodes != nodes
        || !Weak::ptr_eq(&memo.model, &Arc::downgrade(&sh.model))
        || !Weak::ptr_eq(&memo.store, &Arc::downgrade(&sh.store))
        || memo.removals != removals
        || memo.at.elapsed() > MAX_AGE
        || hot.root_gone.load(std::sync::atomic::Ordering::Relaxed)
    {
        return None;
    }
    let changed = hot.changed_since(memo.mark)?;
    let graph = &sh.model.graph;
    let mut project_changed = vec![false; sh.model.ws.projects.len()];
    for p in changed {
        if let Some(c) = project_changed.get_mut(p) {
            *c = true;
        }
    }
    if !sh.global_inputs.is_empty() || memo.tasks.len() != graph.nodes.len() {
        return None;
    }
    // `nodes` is in dependency order: a node's deps are decided before it.
    let mut out: Vec<Option<Arc<MemoTask>>> = vec![None; graph.nodes.len()];
    for &g in nodes {
        let node = &graph.nodes[g];
        let fits = !project_changed.get(node.project).copied().unwrap_or(true)
            && sh
                .patterns
                .get(&g)
                .is_some_and(|p| p.root_inputs.is_empty())
            && graph.deps(g).all(|d| out[d].is_some());
        if fits {
            out[g] = memo.tasks[g].clone().filter(|t| t.at.elapsed() <= MAX_AGE);
        }
    }
    Some(out)
}

/// Whether a finished task's result may be kept in the run's memo (see
/// [`memo_served`]): a local hit whose outputs were in place, of a task
/// whose outputs lie under watched output directories.
pub(super) fn memo_keeps(sh: &Shared, g: usize, r: &vx_proto::TaskResult) -> bool {
    let node = &sh.model.graph.nodes[g];
    r.status == TaskStatus::Cached
        && r.cache == CacheSource::UpToDate
        && node.def.command.is_some()
        && !node.def.persistent
        && sh
            .patterns
            .get(&g)
            .is_some_and(|p| p.outputs.bases().is_some())
}

/// Keeps the memo of a finished run over `nodes` (its selection): `tasks`
/// by graph node (the hits it found or served; group tasks are filled in
/// here from their keys). Call only for a run that [`memo_fits`], was not
/// cancelled and met no internal error.
pub(super) fn keep_memo(sh: &Shared, nodes: &[usize], mut tasks: Vec<Option<Arc<MemoTask>>>) {
    let (Some(hot), Some((mark, removals))) = (&sh.hot, sh.started_at) else {
        return;
    };
    let graph = &sh.model.graph;
    if tasks.len() != graph.nodes.len() {
        return;
    }
    if let Ok(keys) = sh.keys.lock() {
        for &g in nodes {
            if tasks[g].is_none()
                && graph.nodes[g].def.command.is_none()
                && let Some(k) = keys.get(&g)
            {
                tasks[g] = Some(Arc::new(MemoTask {
                    at: Instant::now(),
                    key: k.clone(),
                    result: None,
                    log: None,
                }));
            }
        }
    }
    if tasks.iter().all(Option::is_none) {
        hot.forget_run_memo(&request_hash(&sh.params));
        return;
    }
    hot.keep_run_memo(
        request_hash(&sh.params),
        RunMemo {
            model: Arc::downgrade(&sh.model),
            store: Arc::downgrade(&sh.store),
            removals,
            mark,
            at: Instant::now(),
            nodes: nodes.to_vec(),
            tasks,
        },
    );
}
