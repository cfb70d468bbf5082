//! `engine::record` — what a run leaves behind: its summary, its history
//! record, and the `--profile` / `--report` files.
//!
//! Owns: opening the run history for a run, the summary and counts
//! ([`Head`]), the record of a run (one row per task with its lane, times
//! and usage) with the client's argv redacted, and writing it after the
//! answer — under the daemon on one long-lived recording thread, in the
//! foreground engine on a thread of its own holding the history's record
//! lock (`history.lock`) from before the answer until the commit, which the
//! process waits for before it exits ([`settle_records`]).
//! Never: fails a run (a history that cannot be opened or written costs a
//! warning), and never stores forwarded args or env values in plain.

use super::now_ms;
use super::prepare::Shared;
use super::schedule::Lanes;
use crate::exec;
use crate::history::{self, History};
use crate::model::{Model, cache_dir};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vx_proto::history::{Fingerprint, RunRecord, TaskRun};
use vx_proto::knobs;
use vx_proto::{CacheSource, RunCounts, RunEvent, RunSummary, TaskResult, TaskStatus};

/// The run history of this workspace, if it can be used. A history that
/// cannot be opened costs a warning, never the run.
pub(super) fn open_history(sh: &Shared) -> Option<Arc<History>> {
    if knobs::HISTORY.off(&sh.params.env) {
        return None;
    }
    let dir = match &sh.hot {
        Some(h) => h.cache_dir(),
        None => cache_dir(&sh.model.ws),
    };
    // The daemon keeps one handle for its life; the foreground engine opens
    // its own and drops it at the end of the run (redb then closes the file
    // cleanly; a file left open would be repaired — scanned — on next open).
    let opened = match &sh.hot {
        Some(_) => history::shared(&dir),
        None => History::open_for_run(&dir, Duration::from_secs(2)).map(Arc::new),
    };
    match opened {
        Ok(h) => Some(h),
        Err(e) => {
            let what = if e.is_locked() {
                "is in use by another vx process".to_string()
            } else {
                format!("cannot be used ({e})")
            };
            sh.emit(RunEvent::Warning {
                message: format!(
                    "the run history {what}: tasks are scheduled in structural order and this run is not recorded"
                ),
            });
            None
        }
    }
}

pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the daemon's history-recording thread.
pub(super) fn recorder(job: Job) {
    static TX: std::sync::OnceLock<Mutex<Option<std::sync::mpsc::Sender<Job>>>> =
        std::sync::OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("vx-history".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // History never fails a run, nor the daemon: a record
                    // that panics (a file damaged after it was opened) is
                    // lost, and this thread goes on with the next one.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(
                            "recording a run in the history panicked; that run is not recorded"
                        );
                    }
                    // A record builds and drops its rows after the run's
                    // answer, when the run's own trim has passed.
                    crate::mem::give_back_if_idle();
                }
            });
        Mutex::new(spawned.ok().map(|_| tx))
    });
    let job = match tx.lock() {
        Ok(g) => match g.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        },
        Err(_) => job,
    };
    // No recording thread: record here.
    job();
}

/// Records the foreground engine writes after its answer, not yet committed.
static AFTER_ANSWER: (Mutex<usize>, std::sync::Condvar) =
    (Mutex::new(0), std::sync::Condvar::new());

/// Runs `job` (a foreground run's record) on a thread of its own after the
/// run answers, holding `lock` (the history's record lock, taken before
/// the answer) until it is committed, so that a reader started once the
/// client has the answer waits for it. The engine process waits for it
/// before exiting ([`settle_records`]). `Err(job)` when no thread can be
/// started: the caller records before answering.
fn after_answer(job: Job, lock: crate::cache::Held) -> Result<(), Job> {
    let slot = std::sync::Arc::new(Mutex::new(Some(job)));
    let theirs = slot.clone();
    if let Ok(mut n) = AFTER_ANSWER.0.lock() {
        *n += 1;
    }
    let spawned = std::thread::Builder::new()
        .name("vx-history".into())
        .spawn(move || {
            let job = theirs.lock().ok().and_then(|mut j| j.take());
            if let Some(job) = job
                && std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err()
            {
                tracing::error!(
                    "recording a run in the history panicked; that run is not recorded"
                );
            }
            drop(lock);
            if let Ok(mut n) = AFTER_ANSWER.0.lock() {
                *n = n.saturating_sub(1);
            }
            AFTER_ANSWER.1.notify_all();
        });
    if spawned.is_ok() {
        return Ok(());
    }
    if let Ok(mut n) = AFTER_ANSWER.0.lock() {
        *n = n.saturating_sub(1);
    }
    match slot.lock().ok().and_then(|mut j| j.take()) {
        Some(job) => Err(job),
        None => Ok(()),
    }
}

/// Waits (at most `wait`) until every record a foreground run left to be
/// written after its answer is committed: `vxd --stdio` calls it before
/// exiting, so a record is durable before the process ends. `false` when
/// some are still being written after `wait`.
pub fn settle_records(wait: Duration) -> bool {
    let Ok(n) = AFTER_ANSWER.0.lock() else {
        return false;
    };
    match AFTER_ANSWER.1.wait_timeout_while(n, wait, |n| *n > 0) {
        Ok((n, _)) => *n == 0,
        Err(_) => false,
    }
}

/// What a run's history record is built from (after the answer, under the
/// daemon).
pub(super) struct RecordInput {
    pub(super) run_id: String,
    pub(super) started_at: u64,
    pub(super) concurrency: usize,
    pub(super) nodes: Vec<usize>,
    /// Milliseconds since the run started, at its end.
    pub(super) now_ms: u64,
    pub(super) results: Vec<TaskResult>,
    pub(super) start: Vec<u64>,
    pub(super) end: Vec<u64>,
    pub(super) slot: Vec<Option<u32>>,
    pub(super) summary: RunSummary,
    /// Not the run's `Shared`: it holds the event channel, which must close
    /// when the run answers.
    pub(super) model: Arc<Model>,
    pub(super) usage: HashMap<usize, exec::Usage>,
    pub(super) argv: Vec<String>,
    pub(super) requested: Vec<String>,
}

/// The client's argv as the history keeps it: the args forwarded after
/// `--` (tokens, paths, anything) are replaced by one placeholder naming
/// their hash, the hash the fingerprints hold (`docs/history.md`: args are
/// only ever kept hashed).
pub(crate) fn redacted_argv(argv: &[String], args: &[String]) -> Vec<String> {
    if args.is_empty() {
        return argv.to_vec();
    }
    let hash = blake3::hash(serde_json::to_string(args).unwrap_or_default().as_bytes()).to_hex();
    let placeholder = format!(
        "<{} arg{} hashed {}>",
        args.len(),
        if args.len() == 1 { "" } else { "s" },
        &hash[..12]
    );
    // `vx run TASK -- ARGS…`: the args are the tail after a `--`.
    if let Some(t) = argv.len().checked_sub(args.len())
        && t > 0
        && argv[t - 1] == "--"
        && argv[t..] == *args
    {
        let mut v = argv[..t].to_vec();
        v.push(placeholder);
        return v;
    }
    // Any other shape: nothing after a `--`, and no element equal to an arg.
    let mut v = Vec::with_capacity(argv.len());
    for a in argv {
        if a == "--" {
            v.push(a.clone());
            break;
        }
        if !args.contains(a) {
            v.push(a.clone());
        }
    }
    v.push(placeholder);
    v
}

/// The history record of a run: one row per task with its lane, times and
/// usage.
pub(super) fn build_record(inp: RecordInput) -> RunRecord {
    let graph = &inp.model.graph;
    let local: HashMap<usize, usize> = inp.nodes.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    let usage = &inp.usage;
    let mut tasks: Vec<TaskRun> = inp
        .results
        .into_iter()
        .map(|r| {
            let g = graph.get(&r.id);
            let persistent = g.is_some_and(|g| graph.nodes[g].def.persistent);
            let (start, end, slot) = match g.and_then(|g| local.get(&g).copied()) {
                Some(i) => (
                    inp.start[i],
                    if inp.end[i] < inp.start[i] || persistent {
                        inp.now_ms
                    } else {
                        inp.end[i]
                    },
                    inp.slot[i],
                ),
                None => (0, 0, None),
            };
            let u = g.and_then(|g| usage.get(&g).copied());
            TaskRun {
                id: r.id,
                status: r.status,
                cache: r.cache,
                key: r.key,
                exit_code: r.exit_code,
                attempts: r.attempts,
                duration_ms: r.duration_ms,
                start_ms: start,
                end_ms: end,
                slot,
                cpu_ms: u.and_then(|u| u.cpu_ms).or(r.cpu_ms),
                peak_rss_bytes: u.and_then(|u| u.peak_rss_bytes).or(r.peak_rss_bytes),
                blocked_by: r.blocked_by,
                error: r.error,
                persistent,
                worker: r.worker,
            }
        })
        .collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let s = inp.summary;
    RunRecord {
        run_id: inp.run_id,
        argv: inp.argv,
        requested: inp.requested,
        started_at: inp.started_at,
        ended_at: s.ended_at,
        duration_ms: s.duration_ms,
        exit_code: s.exit_code,
        ok: s.ok,
        concurrency: inp.concurrency,
        counts: s.counts,
        tasks,
    }
}

/// Everything writing one run's record takes.
pub(super) struct RecordJob {
    pub(super) history: Arc<History>,
    pub(super) pending: history::Pending,
    /// Builds the record (on the recording thread under the daemon).
    pub(super) build: Box<dyn FnOnce() -> Option<RunRecord> + Send>,
    pub(super) fingerprints: Vec<Fingerprint>,
    pub(super) keep: history::Retention,
    /// The daemon's state: the record waits for it to be idle a moment.
    pub(super) idle: Option<std::sync::Weak<crate::state::Hot>>,
    /// Where a failure is reported (the foreground engine's run, when it
    /// records before answering).
    pub(super) events: Option<crate::sink::Events>,
    /// `VX_TEST_RECORD_DELAY_MS`: a pause inside the write transaction.
    pub(super) pause: Option<Duration>,
}

/// The job that writes a run's record: under the daemon once it has been
/// idle a moment (so back-to-back runs do not compete with their records;
/// at most 2 s later; readers wait for it), durably.
pub(super) fn record_job(j: RecordJob) -> Job {
    Box::new(move || {
        let RecordJob {
            history: h,
            pending,
            build,
            fingerprints: fps,
            keep,
            idle,
            events,
            pause,
        } = j;
        let _pending = pending;
        let Some(record) = build() else {
            return;
        };
        if let Some(hot) = idle {
            let t = Instant::now();
            while let Some(h) = hot.upgrade()
                && h.idle_for() < Duration::from_millis(50)
                && t.elapsed() < Duration::from_secs(2)
            {
                drop(h);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let t = Instant::now();
        // Every commit is durable (the no-daemon engine exits soon after).
        let r = h.record_paused(&record, &fps, keep, pause);
        tracing::debug!("run {} recorded in {:?}", record.run_id, t.elapsed());
        if let Err(e) = r {
            tracing::warn!("run {} not recorded: {e}", record.run_id);
            if let Some(tx) = events {
                let _ = tx.send(RunEvent::Warning {
                    message: format!("this run was not recorded in the history: {e}"),
                });
            }
        }
    })
}

/// What a run's summary is made of besides its task results.
pub(super) struct Head {
    pub(super) run_id: String,
    pub(super) started_at: u64,
    pub(super) t0: Instant,
    pub(super) root: String,
    pub(super) detail: vx_proto::Detail,
    pub(super) concurrency: usize,
    pub(super) history: Option<Arc<History>>,
    /// A watch cycle: recorded only when something ran.
    pub(super) watch_cycle: bool,
    /// Graph node of each local task index.
    pub(super) nodes: Vec<usize>,
    /// Where the record goes when the run's answer is kept to be replayed
    /// (see [`super::replay`]).
    pub(super) kept: Option<Arc<std::sync::OnceLock<Arc<RunRecord>>>>,
}

impl Head {
    /// The final summary: records the run in the history and writes the
    /// requested profile and report.
    pub(super) async fn finish(
        &mut self,
        sh: &Arc<Shared>,
        results: Vec<TaskResult>,
        cancelled: Option<i32>,
        quiet: &HashSet<String>,
        lanes: &Lanes,
    ) -> RunSummary {
        let summary = self.summary(&results, cancelled, quiet);
        let Some(h) = self.history.clone() else {
            return summary;
        };
        // A watch cycle that ran nothing is not worth a record.
        if self.watch_cycle
            && cancelled.is_none()
            && results
                .iter()
                .all(|r| quiet.contains(&r.id) || r.status == TaskStatus::Cached)
        {
            return summary;
        }
        let graph = &sh.model.graph;
        let executed: Vec<(String, u64)> = results
            .iter()
            .filter(|r| {
                matches!(r.cache, CacheSource::Miss | CacheSource::Disabled)
                    && r.status == TaskStatus::Success
                    && !graph
                        .get(&r.id)
                        .is_some_and(|g| graph.nodes[g].def.persistent)
            })
            .map(|r| (r.id.clone(), r.duration_ms))
            .collect();
        let input = RecordInput {
            run_id: self.run_id.clone(),
            started_at: self.started_at,
            concurrency: self.concurrency,
            nodes: self.nodes.clone(),
            now_ms: self.t0.elapsed().as_millis() as u64,
            results,
            start: lanes.start.clone(),
            end: lanes.end.clone(),
            slot: lanes.slot.clone(),
            summary: summary.clone(),
            model: sh.model.clone(),
            usage: sh
                .usage
                .lock()
                .map(|mut u| std::mem::take(&mut *u))
                .unwrap_or_default(),
            argv: redacted_argv(&sh.params.argv, &sh.params.args),
            requested: sh.params.tasks.clone(),
        };
        let fps: Vec<Fingerprint> = sh
            .fingerprints
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        // The profile and report are written before the client hears the end;
        // otherwise the daemon builds the record after answering.
        let mut input = Some(input);
        let mut built = None;
        if (sh.params.profile.is_some() || sh.params.report.is_some())
            && let Some(inp) = input.take()
        {
            let record = build_record(inp);
            self.write_profile_and_report(sh, &record);
            built = Some(record);
        }
        if let Some(slot) = &self.kept
            && let Some(inp) = input.take()
        {
            // A run kept to be replayed keeps its record too (built now, not
            // on the recording thread, which may be waiting for idle time).
            let record = Arc::new(build_record(inp));
            let _ = slot.set(record.clone());
            built = Some(Arc::unwrap_or_clone(record));
        }
        let daemon = sh.hot.is_some();
        // The foreground engine answers first too (a run, not a watch
        // cycle, whose records must stay in order), holding the history's
        // record lock from now until its commit; when another record holds
        // it, this one is written before the answer, as it always was.
        let lock = if daemon || self.watch_cycle {
            None
        } else {
            h.path().parent().and_then(crate::cache::record_lock)
        };
        // A record written after the answer must not hold the run's event
        // channel (the answer waits for it to close), so a failure only
        // reaches the log (the daemon's, or the engine's stderr) there.
        let events = if daemon || lock.is_some() {
            None
        } else {
            sh.events.clone()
        };
        let pending = h.announce(&executed);
        let job = record_job(RecordJob {
            history: h,
            pending,
            build: Box::new(move || match (built, input) {
                (Some(r), _) => Some(r),
                (None, Some(inp)) => Some(build_record(inp)),
                (None, None) => None,
            }),
            fingerprints: fps,
            keep: history::Retention::from_env(&sh.params.env),
            idle: sh.hot.as_ref().map(Arc::downgrade),
            events,
            pause: knobs::TEST_RECORD_DELAY_MS.millis(&sh.params.env),
        });
        if daemon {
            // One long-lived thread: records stay in order; one allocator arena.
            recorder(job);
            return summary;
        }
        let job = match lock {
            Some(lock) => match after_answer(job, lock) {
                Ok(()) => return summary,
                Err(job) => job,
            },
            None => job,
        };
        let _ = tokio::task::spawn_blocking(job).await;
        summary
    }

    pub(super) fn write_profile_and_report(&self, sh: &Shared, record: &RunRecord) {
        if let Some(path) = &sh.params.profile {
            let trace = crate::profile::chrome_trace(record);
            if let Some(dir) = Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(path, serde_json::to_vec(&trace).unwrap_or_default()) {
                sh.emit(RunEvent::Warning {
                    message: format!("cannot write the profile to {path}: {e}"),
                });
            }
        }
        if let Some(path) = &sh.params.report {
            let ids: Vec<String> = record.tasks.iter().map(|t| t.id.clone()).collect();
            let stats = self
                .history
                .as_ref()
                .and_then(|h| h.stats(&ids, history::DEFAULT_WINDOW).ok());
            let md = crate::profile::markdown_report(record, stats.as_ref());
            // A CI job summary file collects every step's report.
            let append = sh.params.env.get("GITHUB_STEP_SUMMARY") == Some(path);
            if let Some(dir) = Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let written = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, md.as_bytes()));
            if let Err(e) = written {
                sh.emit(RunEvent::Warning {
                    message: format!("cannot write the report to {path}: {e}"),
                });
            }
        }
    }
    pub(super) fn summary(
        &mut self,
        all: &[TaskResult],
        cancelled: Option<i32>,
        quiet: &HashSet<String>,
    ) -> RunSummary {
        let mut results: Vec<TaskResult> = if self.detail == vx_proto::Detail::Changes {
            all.iter()
                .filter(|r| r.status != TaskStatus::Cached && !quiet.contains(&r.id))
                .cloned()
                .collect()
        } else {
            all.to_vec()
        };
        let mut counts = RunCounts {
            total: all.len(),
            ..Default::default()
        };
        for r in all {
            match r.status {
                TaskStatus::Success => counts.executed += 1,
                TaskStatus::Cached => counts.cached += 1,
                TaskStatus::Failed => {
                    counts.executed += 1;
                    counts.failed += 1
                }
                TaskStatus::Skipped => counts.skipped += 1,
                TaskStatus::Aborted => counts.aborted += 1,
                TaskStatus::Running => counts.running += 1,
            }
        }
        let ok =
            counts.failed == 0 && counts.skipped == 0 && counts.aborted == 0 && cancelled.is_none();
        results.shrink_to_fit();
        // As turbo: a failed run exits with the largest exit code among its
        // failed tasks (1 when none exited with a code of its own: killed
        // or stopped by a signal, which the shell reports as 128+N, timed
        // out, not spawned, or only skipped or aborted tasks).
        let exit_code = match cancelled {
            Some(sig) => 128 + sig,
            None if ok => 0,
            None => results
                .iter()
                .filter(|r| r.status == TaskStatus::Failed)
                .filter_map(|r| r.exit_code)
                .filter(|c| (1..128).contains(c))
                .max()
                .unwrap_or(1),
        };
        RunSummary {
            run_id: self.run_id.clone(),
            ok,
            exit_code,
            started_at: self.started_at,
            ended_at: now_ms(),
            duration_ms: self.t0.elapsed().as_millis() as u64,
            counts,
            tasks: results,
            root: self.root.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_args_never_reach_the_recorded_argv() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (argv, args, what must remain before the placeholder)
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (
                &["vx", "run", "test", "--", "--token=secret"],
                &["--token=secret"],
                &["vx", "run", "test", "--"],
            ),
            (
                &["vx", "run", "-F", "a", "test", "--", "x", "secret"],
                &["x", "secret"],
                &["vx", "run", "-F", "a", "test", "--"],
            ),
            // Not the expected tail: cut at `--`, drop any arg seen before it.
            (
                &["vx", "secret", "run", "--", "secret", "more"],
                &["secret"],
                &["vx", "run", "--"],
            ),
            (&["vx", "run", "t"], &["secret"], &["vx", "run", "t"]),
        ];
        for (argv, args, kept) in cases {
            let out = redacted_argv(&v(argv), &v(args));
            assert_eq!(&out[..out.len() - 1], &v(kept)[..], "{argv:?}");
            let last = out.last().map(String::as_str).unwrap_or_default();
            assert!(last.starts_with('<') && last.contains("hashed"), "{out:?}");
            assert!(!out.iter().any(|o| o.contains("secret")), "{out:?}");
        }
        // No args: the argv as it was.
        let argv = v(&["vx", "run", "build"]);
        assert_eq!(redacted_argv(&argv, &[]), argv);
        // The same args give the same placeholder (comparable across runs).
        assert_eq!(
            redacted_argv(&v(&["vx", "--", "a"]), &v(&["a"])),
            redacted_argv(&v(&["vx", "--", "a"]), &v(&["a"]))
        );
    }
}
