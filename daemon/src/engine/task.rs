//! `engine::task` — one task whose key is known: hit, restore, execute,
//! save, replay.
//!
//! Owns: asking the cache about a key (outputs in place, to restore, or a
//! miss; a corrupt or refused entry is dropped and the task runs), the
//! inline fast path ([`probe`]), restoring outputs, joining another run's
//! execution of the same key under the daemon, executing with retries and
//! the output-log policy, saving a successful result, and replaying a hit's
//! log; [`Done`], what a task's outcome reports to the driver.
//! Never: decides which task runs next or whether a failure stops the run
//! (that is [`super::schedule`]), and never caches a tainted result.

use super::now_ms;
use super::prepare::Shared;
use super::remote::Fetched;
use crate::cache::{self, CacheError, Manifest};
use crate::error::{EngineError, ErrorKind};
use crate::exec::{self, Outcome, Spawn};
use crate::persist;
use crate::state::{Finished, Inflight};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vx_proto::{CacheSource, OutputLogs, RunEvent, Stream, TaskResult, TaskStatus};

pub(super) fn base_result(sh: &Shared, g: usize) -> TaskResult {
    let node = &sh.model.graph.nodes[g];
    TaskResult {
        id: node.id.clone(),
        project: sh.model.ws.projects[node.project].name.clone(),
        task: node.name.clone(),
        status: TaskStatus::Skipped,
        cache: CacheSource::Miss,
        key: sh.keys.lock().ok().and_then(|k| k.get(&g).cloned()),
        exit_code: None,
        duration_ms: 0,
        attempts: 0,
        blocked_by: None,
        error: None,
        cpu_ms: None,
        peak_rss_bytes: None,
        worker: None,
    }
}

pub(super) fn skipped(sh: &Shared, g: usize, by: Option<String>) -> TaskResult {
    let mut r = base_result(sh, g);
    r.status = TaskStatus::Skipped;
    r.cache = if sh.cache_enabled(g) {
        CacheSource::Miss
    } else {
        CacheSource::Disabled
    };
    r.blocked_by = by;
    r
}

/// Tries the cache; returns `Some(result)` on a usable hit.
/// What the cache says about a task's key. (A value returned once per
/// task and matched at once: boxing the result would cost an allocation
/// per hit on the fully cached path.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Hit {
    /// Served: outputs are in place; the log, when it is to be replayed.
    Served(TaskResult, Vec<u8>),
    /// An entry exists but its outputs must be restored (not allowed here).
    NeedsRestore,
    Miss,
}

/// Tries the cache. Restores outputs only when `allow_restore`; reads the
/// log only when it will be replayed. A corrupt blob drops the entry and
/// is a miss.
pub(super) fn try_hit(
    sh: &Shared,
    g: usize,
    key: &str,
    allow_restore: bool,
) -> Result<Hit, EngineError> {
    let t0 = Instant::now();
    let local = if sh.policy.local_read {
        sh.store.get(key)?
    } else {
        None
    };
    // A local miss reads through to the remote cache (never a local hit).
    let (entry, remote) = match local {
        Some(e) => (e, false),
        None if allow_restore => match sh.remote_fetch(g, key) {
            Some(Fetched::Stored(e)) => (e, true),
            Some(Fetched::Direct(a)) => return Ok(sh.remote_restore(g, key, a, t0)),
            None => return Ok(Hit::Miss),
        },
        None => return Ok(Hit::Miss),
    };
    let (m, stamps) = (&entry.0, &entry.1);
    let node = &sh.model.graph.nodes[g];
    let p = node.project;
    let dir = sh.project_abs(p);
    let pats = &sh.patterns[&g];
    let fence = sh.rel_fence(p);
    let corrupt = |what: &str| {
        sh.emit(RunEvent::Warning {
            message: format!(
                "{}: cache entry {} is corrupt ({what}); dropping it and running the task",
                node.id,
                &key[..12]
            ),
        });
        sh.store.drop_entry(key);
    };
    // Under the daemon, outputs verified since the last change in their
    // project need no look at the disk.
    let bases = pats.outputs.bases();
    let known_ok = sh
        .hot
        .as_ref()
        .is_some_and(|h| bases.is_some() && h.outputs_known_ok(&sh.model, g, key));
    let up_to_date = known_ok || {
        if let (Some(hot), Some(bases)) = (&sh.hot, &bases) {
            hot.watch_outputs(&dir, bases);
        }
        let ok = stamps
            .as_ref()
            .is_some_and(|s| cache::outputs_in_place(&dir, &pats.outputs, &fence, m, s));
        if ok
            && bases.is_some()
            && let Some(hot) = &sh.hot
        {
            hot.set_outputs_ok(&sh.model, g, key);
        }
        ok
    };
    if !up_to_date && !allow_restore {
        return Ok(Hit::NeedsRestore);
    }
    let log = if sh.logs_of(g) == OutputLogs::Full {
        match sh.store.read_log(&m.log) {
            Ok(l) => l,
            Err(CacheError::Corrupt(_)) => {
                corrupt("log");
                return Ok(Hit::Miss);
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        Vec::new()
    };
    let source = if up_to_date {
        CacheSource::UpToDate
    } else {
        match cache::restore(&sh.store, m, &dir, &pats.outputs, &fence) {
            Ok(st) => {
                sh.store.put_stamps(key, &st);
                sh.mark_restored(p, &pats.outputs, &st);
                if remote {
                    CacheSource::Remote
                } else {
                    CacheSource::Local
                }
            }
            Err(CacheError::Corrupt(what)) => {
                corrupt(&format!("blob {}", &what[..what.len().min(12)]));
                return Ok(Hit::Miss);
            }
            Err(CacheError::Refused(why)) => {
                sh.emit(RunEvent::Warning {
                    message: format!(
                        "{}: not restored from the cache: {why}; running the task",
                        node.id
                    ),
                });
                sh.store.drop_entry(key);
                return Ok(Hit::Miss);
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut r = base_result(sh, g);
    r.status = TaskStatus::Cached;
    r.cache = source;
    r.key = Some(key.to_string());
    r.exit_code = Some(m.exit_code);
    r.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(Hit::Served(r, log))
}

/// The scheduler's inline fast path: the key, and a hit whose outputs are
/// already in place (with the log it replayed), without leaving the
/// scheduler's thread. Anything that writes files or runs a process goes
/// to [`run_task`].
#[allow(clippy::type_complexity)]
pub(super) fn probe(
    sh: &Shared,
    g: usize,
) -> Result<(String, Option<(TaskResult, Vec<u8>)>), EngineError> {
    let key = sh.key_of(g)?;
    if !sh.cache_read(g) {
        return Ok((key, None));
    }
    match try_hit(sh, g, &key, false)? {
        Hit::Served(r, log) => {
            replay(sh, g, &r.id, &key, &r, &log);
            Ok((key, Some((r, log))))
        }
        Hit::NeedsRestore | Hit::Miss => Ok((key, None)),
    }
}

pub(super) fn wants_live(logs: OutputLogs) -> bool {
    matches!(logs, OutputLogs::Full | OutputLogs::NewOnly)
}

/// Runs one task whose key is known and whose outputs were not already in
/// place: restore from the cache, or execute (joining an execution of the
/// same key in another run, under the daemon).
pub(super) async fn run_task(
    sh: &Arc<Shared>,
    g: usize,
    key: String,
    tainted: bool,
    cancel: watch::Receiver<Option<i32>>,
) -> Result<TaskResult, EngineError> {
    let id = sh.model.graph.nodes[g].id.clone();
    // A task sharing outputs with another of its project restores and
    // executes only while it holds their group's lock (any run, any process).
    let _group = match sh.shared_outputs.get(&g) {
        Some(slot) => match take_lock(sh, slot, cancel.clone()).await {
            Taken::Held(lock, waited) => {
                if waited {
                    // The holder may have stored entries we look for now.
                    sh.store.refresh();
                }
                Some(lock)
            }
            Taken::Unavailable => None,
            Taken::Cancelled => return Ok(cancelled_waiting(sh, g, &key)),
        },
        None => None,
    };
    let sh2 = sh.clone();
    let k2 = key.clone();
    let hit = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
        if sh2.cache_read(g) {
            try_hit(&sh2, g, &k2, true)
        } else {
            Ok(Hit::Miss)
        }
    })
    .await
    .map_err(|e| EngineError::new(ErrorKind::Internal, e.to_string()))??;
    if let Hit::Served(r, log) = hit {
        replay(sh, g, &id, &key, &r, &log);
        return Ok(r);
    }
    let Some(hot) = sh.hot.clone() else {
        return execute_alone(sh, g, &key, tainted, cancel)
            .await
            .map(|(r, _)| r);
    };
    // The daemon: a task with this key already executing for another run
    // is joined, not run again.
    let (entry, executor) = hot.attach(&key);
    let detach = {
        let entry = entry.clone();
        let mut my_cancel = cancel.clone();
        tokio::spawn(async move {
            if my_cancel.wait_for(|c| c.is_some()).await.is_ok() {
                let sig = (*my_cancel.borrow()).unwrap_or(libc::SIGTERM);
                entry.detach(sig);
            }
        })
    };
    let result = if executor {
        let lock = hot.task_lock(&id);
        let _serialized = lock.lock().await;
        let r = execute_alone(sh, g, &key, tainted, entry.cancel_receiver()).await;
        // Let joiners see the entry we saved before they look for it.
        if entry.has_joiners() {
            let _ = sh.store.flush();
        }
        let finished = match &r {
            Ok((res, log)) => Finished {
                result: res.clone(),
                log: log.clone(),
            },
            Err(e) => {
                let mut res = base_result(sh, g);
                res.status = TaskStatus::Failed;
                res.error = Some(e.message.clone());
                Finished {
                    result: res,
                    log: Vec::new(),
                }
            }
        };
        hot.finish(&key, &entry, Arc::new(finished));
        r.map(|(res, _)| res)
    } else {
        join(sh, g, &key, &entry, cancel).await
    };
    detach.abort();
    result
}

/// Waits for another run's execution of the same key and takes its outcome.
pub(super) async fn join(
    sh: &Arc<Shared>,
    g: usize,
    key: &str,
    entry: &Arc<Inflight>,
    mut cancel: watch::Receiver<Option<i32>>,
) -> Result<TaskResult, EngineError> {
    let id = sh.model.graph.nodes[g].id.clone();
    let mut done = entry.done_receiver();
    let finished = tokio::select! {
        r = done.wait_for(|d| d.is_some()) => r.ok().and_then(|v| v.clone()),
        _ = cancel.wait_for(|c| c.is_some()) => None,
    };
    let Some(fin) = finished else {
        let mut r = base_result(sh, g);
        r.key = Some(key.to_string());
        r.status = TaskStatus::Aborted;
        r.error = Some("cancelled while waiting for the same task in another run".into());
        return Ok(r);
    };
    if fin.result.status == TaskStatus::Success && sh.cache_read(g) {
        let sh2 = sh.clone();
        let k2 = key.to_string();
        let hit = tokio::task::spawn_blocking(move || try_hit(&sh2, g, &k2, true))
            .await
            .map_err(|e| EngineError::new(ErrorKind::Internal, e.to_string()))??;
        if let Hit::Served(r, log) = hit {
            replay(sh, g, &id, key, &r, &log);
            return Ok(r);
        }
    }
    if wants_live(sh.logs_of(g))
        || (sh.logs_of(g) == OutputLogs::ErrorsOnly && fin.result.status != TaskStatus::Success)
    {
        for line in String::from_utf8_lossy(&fin.log).lines() {
            sh.emit(RunEvent::TaskOutput {
                id: id.clone(),
                stream: Stream::Stdout,
                line: line.to_string(),
                replay: true,
                worker: None,
            });
        }
    }
    let mut r = fin.result.clone();
    r.attempts = 0;
    Ok(r)
}

/// Emits a cache hit's header and stored log (the header alone under
/// `hash-only`).
pub(super) fn replay(sh: &Shared, g: usize, id: &str, key: &str, r: &TaskResult, log: &[u8]) {
    let logs = sh.logs_of(g);
    if matches!(logs, OutputLogs::Full | OutputLogs::HashOnly) {
        sh.emit(RunEvent::TaskCacheHit {
            id: id.to_string(),
            key: key.to_string(),
            source: r.cache,
        });
    }
    if logs == OutputLogs::Full {
        for line in String::from_utf8_lossy(log).lines() {
            sh.emit(RunEvent::TaskOutput {
                id: id.to_string(),
                stream: Stream::Stdout,
                line: line.to_string(),
                replay: true,
                worker: None,
            });
        }
    }
}

/// How often a task waiting for another process's execution of it looks
/// again.
const LOCK_POLL: Duration = Duration::from_millis(25);

/// The outcome of waiting for a task lock.
enum Taken {
    /// Held; and whether it had to wait (someone else had it).
    Held(cache::TaskLock, bool),
    /// No lock can be had here (an ephemeral store, a read-only cache dir):
    /// go on unlocked, as a single process would.
    Unavailable,
    /// The run was cancelled while waiting.
    Cancelled,
}

/// Takes the cross-process task lock `slot` names, waiting (cancellably)
/// while another holder has it.
async fn take_lock(sh: &Shared, slot: &str, mut cancel: watch::Receiver<Option<i32>>) -> Taken {
    let Some(mut lock) = sh.store.task_lock(slot) else {
        return Taken::Unavailable;
    };
    let mut waited = false;
    while !lock.try_take() {
        if !waited {
            waited = true;
            lock.wait_mark();
            tracing::debug!(slot, "waiting for another holder of a task lock");
        }
        tokio::select! {
            _ = tokio::time::sleep(LOCK_POLL) => {}
            _ = cancel.wait_for(|c| c.is_some()) => return Taken::Cancelled,
        }
    }
    Taken::Held(lock, waited)
}

/// The result of a task cancelled while it waited for a lock.
fn cancelled_waiting(sh: &Shared, g: usize, key: &str) -> TaskResult {
    let mut r = base_result(sh, g);
    r.key = Some(key.to_string());
    r.status = TaskStatus::Aborted;
    r.error = Some("cancelled while waiting for another execution of this task".into());
    r
}

/// [`execute`], but never at the same time as another process executing
/// the same task of the same project (a `--no-daemon` run beside the
/// daemon, or two foreground runs): both would wipe and write the same
/// outputs, and one could capture the other's half-written files under
/// its key. The second waits (cancellably) for the first, then takes the
/// first's result from the cache when it is there, and executes only when
/// it is not. Only a task whose result is saved takes the lock: an
/// uncached or tainted one (and a persistent one, which never comes
/// here) is the user's to run twice.
async fn execute_alone(
    sh: &Arc<Shared>,
    g: usize,
    key: &str,
    tainted: bool,
    cancel: watch::Receiver<Option<i32>>,
) -> Result<(TaskResult, Vec<u8>), EngineError> {
    // Uncached, or already holding its output group's lock (`run_task`).
    if !sh.cache_enabled(g) || tainted || sh.shared_outputs.contains_key(&g) {
        return execute(sh, g, key, tainted, cancel).await;
    }
    let node = &sh.model.graph.nodes[g];
    let slot = format!("{}\0{}", sh.project_abs(node.project).display(), node.id);
    let (lock, waited) = match take_lock(sh, &slot, cancel.clone()).await {
        Taken::Held(lock, waited) => (lock, waited),
        Taken::Unavailable => return execute(sh, g, key, tainted, cancel).await,
        Taken::Cancelled => return Ok((cancelled_waiting(sh, g, key), Vec::new())),
    };
    if waited && sh.cache_read(g) {
        // The other process may have stored this very key.
        sh.store.refresh();
        let (sh2, k2) = (sh.clone(), key.to_string());
        let hit = tokio::task::spawn_blocking(move || try_hit(&sh2, g, &k2, true))
            .await
            .map_err(|e| EngineError::new(ErrorKind::Internal, e.to_string()))??;
        if let Hit::Served(r, log) = hit {
            replay(sh, g, &node.id, key, &r, &log);
            return Ok((r, log));
        }
    }
    let r = execute(sh, g, key, tainted, cancel).await;
    if lock.awaited() {
        // Commit what we stored before letting the waiter look for it.
        let sh2 = sh.clone();
        let _ = tokio::task::spawn_blocking(move || sh2.store.flush()).await;
    }
    drop(lock);
    r
}

/// Executes a task (with retries) and saves a successful result. Returns
/// the result and the task's log.
pub(super) async fn execute(
    sh: &Arc<Shared>,
    g: usize,
    key: &str,
    tainted: bool,
    cancel: watch::Receiver<Option<i32>>,
) -> Result<(TaskResult, Vec<u8>), EngineError> {
    let node = &sh.model.graph.nodes[g];
    let id = node.id.clone();
    let logs = sh.logs_of(g);
    let key = key.to_string();
    let p = node.project;
    let dir = sh.project_abs(p);
    let write = sh.cache_enabled(g) && !tainted;
    let fence = sh.rel_fence(p);
    let command = sh.command_line(g);
    let timeout = node
        .def
        .timeout_ms
        .or(sh.model.ws.defaults.timeout_ms)
        .map(Duration::from_millis);
    // The task's span: its process nests its own spans under it.
    let traceparent = sh.trace.as_ref().map(|t| t.child().1);
    let mut env = sh.task_env(g);
    if let (Some(t), Some(tp)) = (&sh.trace, &traceparent) {
        env.extend(t.task_env(tp));
    }
    let spec = Spawn {
        command: command.clone(),
        dir: dir.clone(),
        env,
        timeout,
        keep_stdin: false,
        tty: sh.gets_terminal(g),
        kill_grace: Some(exec::kill_grace_in(&sh.params.env)),
    };
    if node.def.interactive && !spec.tty {
        sh.emit(RunEvent::Warning {
            message: format!(
                "{id} is interactive but does not run alone on a terminal; its stdin is closed"
            ),
        });
    }
    // Remote execution (`[remote_execution] execute`), when the task may go
    // and the server can take it; else (or when it fails) here.
    // A task that falls back after `task_started` said `worker: "reapi"`
    // is started again, here (no worker): the last `task_started` of a task
    // names where it runs.
    if let Some(r) = sh.remote_executor(g, tainted).await {
        match super::rexec::run_remote(sh, g, &key, r, cancel.clone()).await {
            super::rexec::Ran::Done(res) => return res,
            super::rexec::Ran::Local => {}
        }
    }
    sh.emit(RunEvent::TaskStarted {
        id: id.clone(),
        key: Some(key.clone()),
        command: command.clone(),
        uncached: !sh.cache_enabled(g),
        traceparent,
        worker: None,
    });
    let attempts_total = node.def.retries + 1;
    let t0 = Instant::now();
    let mut attempt = 0;
    let mut usage = exec::Usage::default();
    let (outcome, log) = loop {
        attempt += 1;
        if write && !sh.patterns[&g].outputs.is_empty() {
            let (d2, pats, f2) = (dir.clone(), sh.patterns[&g].outputs.clone(), fence.clone());
            tokio::task::spawn_blocking(move || cache::wipe_outputs(&d2, &pats, &f2))
                .await
                .map_err(|e| EngineError::new(ErrorKind::Internal, e.to_string()))??;
        }
        let mut log: Vec<u8> = Vec::new();
        let mut buffered: Vec<(Stream, String)> = Vec::new();
        let (outcome, used) = exec::run_measured(
            &spec,
            |stream, line| {
                log.extend_from_slice(line.as_bytes());
                log.push(b'\n');
                if wants_live(logs) {
                    sh.emit(RunEvent::TaskOutput {
                        id: id.clone(),
                        stream,
                        line,
                        replay: false,
                        worker: None,
                    });
                } else if logs == OutputLogs::ErrorsOnly {
                    buffered.push((stream, line));
                }
            },
            |_| {},
            cancel.clone(),
        )
        .await;
        usage.cpu_ms = sum_opt(usage.cpu_ms, used.cpu_ms);
        usage.peak_rss_bytes = usage.peak_rss_bytes.max(used.peak_rss_bytes);
        let ok = outcome == Outcome::Exited(0);
        if !ok && logs == OutputLogs::ErrorsOnly {
            for (stream, line) in buffered {
                sh.emit(RunEvent::TaskOutput {
                    id: id.clone(),
                    stream,
                    line,
                    replay: false,
                    worker: None,
                });
            }
        }
        let retryable =
            !ok && !matches!(outcome, Outcome::Cancelled(_)) && attempt < attempts_total;
        if retryable {
            let reason = match &outcome {
                Outcome::TimedOut => "a timeout".to_string(),
                Outcome::SpawnFailed(e) => e.clone(),
                o => format!("exit {}", o.exit_code().unwrap_or(1)),
            };
            sh.emit(RunEvent::TaskRetry {
                id: id.clone(),
                attempt: attempt + 1,
                of: attempts_total,
                reason,
            });
            continue;
        }
        break (outcome, log);
    };
    let duration_ms = t0.elapsed().as_millis() as u64;
    if let Ok(mut u) = sh.usage.lock() {
        u.insert(g, usage);
    }
    let fp = sh.fingerprint(g, &key);
    if let Ok(mut f) = sh.fingerprints.lock() {
        f.push(fp);
    }
    sh.mark_dirty(p);
    let mut r = base_result(sh, g);
    r.key = Some(key.clone());
    r.attempts = attempt;
    r.duration_ms = duration_ms;
    r.exit_code = outcome.exit_code();
    r.cpu_ms = usage.cpu_ms;
    r.peak_rss_bytes = usage.peak_rss_bytes;
    r.cache = if sh.cache_enabled(g) {
        CacheSource::Miss
    } else {
        CacheSource::Disabled
    };
    match &outcome {
        Outcome::Exited(0) => r.status = TaskStatus::Success,
        Outcome::Cancelled(_) => {
            r.status = TaskStatus::Aborted;
            r.error = Some("cancelled".into());
        }
        Outcome::TimedOut => {
            r.status = TaskStatus::Failed;
            r.error = Some(format!(
                "timed out after {} ms",
                timeout.map(|t| t.as_millis()).unwrap_or(0)
            ));
        }
        Outcome::SpawnFailed(e) => {
            r.status = TaskStatus::Failed;
            r.error = Some(e.clone());
        }
        Outcome::Signalled(s) => {
            r.status = TaskStatus::Failed;
            r.error = Some(format!("killed by signal {s}"));
        }
        Outcome::Exited(c) => {
            r.status = TaskStatus::Failed;
            r.error = Some(match c {
                126 => "exit 126: the command is not executable".into(),
                127 => "exit 127: command not found (is it installed and on PATH?)".into(),
                _ => format!("exit {c}"),
            });
        }
    }
    if r.status == TaskStatus::Success && write && !sh.policy.local_write {
        // The run does not write the local store: the remote may still
        // take the result.
        sh.upload_outputs(g, &key, log.clone(), duration_ms).await;
    } else if r.status == TaskStatus::Success && write {
        let sh2 = sh.clone();
        let k2 = key.clone();
        let log2 = log.clone();
        let saved =
            tokio::task::spawn_blocking(move || save(&sh2, g, &k2, &log2, duration_ms)).await;
        match saved {
            Ok(Ok(())) => sh.upload(g, &key),
            Ok(Err(e)) => sh.emit(RunEvent::Warning {
                message: format!("{id}: result not cached: {e}"),
            }),
            Err(e) => sh.emit(RunEvent::Warning {
                message: format!("{id}: result not cached: {e}"),
            }),
        }
    }
    Ok((r, log))
}

pub(super) fn sum_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// Stores a successful execution: output blobs, the log, then the entry.
pub(super) fn save(
    sh: &Shared,
    g: usize,
    key: &str,
    log: &[u8],
    duration_ms: u64,
) -> Result<(), EngineError> {
    let node = &sh.model.graph.nodes[g];
    let dir = sh.project_abs(node.project);
    let fence = sh.rel_fence(node.project);
    let files = cache::collect_outputs(&dir, &sh.patterns[&g].outputs, &fence);
    let outputs = cache::capture(&sh.store, &dir, &files)?;
    let log = sh.store.put_bytes(log)?;
    let m = Manifest {
        version: cache::MANIFEST_VERSION,
        key: key.to_string(),
        task: node.id.clone(),
        outputs,
        log,
        exit_code: 0,
        duration_ms,
        created_at: now_ms(),
    };
    sh.store.put_entry(&m, &cache::stamps_of(&files));
    Ok(())
}

/// What one task's future reports to the scheduler.
pub(super) struct Done {
    pub(super) local: usize,
    pub(super) result: Option<TaskResult>,
    pub(super) failed: bool,
    pub(super) tainted: bool,
    /// A persistent task that is ready (its dependents may start).
    pub(super) proc: Option<persist::Proc>,
    /// Nothing happened (a watch cycle found the task unchanged): no events,
    /// and not listed when only changes are reported.
    pub(super) quiet: bool,
}

impl Done {
    pub(super) fn new(
        local: usize,
        result: Option<TaskResult>,
        failed: bool,
        tainted: bool,
    ) -> Done {
        Done {
            local,
            result,
            failed,
            tainted,
            proc: None,
            quiet: false,
        }
    }
}
