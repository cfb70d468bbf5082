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
//! - `task_rows`: (task id, seq) → [`TaskRunRow`] (JSON) — the per-task index;
//! - `outcomes`: (task id, key) → (failed rows, ok rows), over all retained runs;
//! - `key_refs`: key → rows referencing it (fingerprint garbage collection);
//! - `fingerprints`: key → [`Fingerprint`] (JSON), written once per key;
//! - `meta`: `next_seq`.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
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

const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
const RUN_IDS: TableDefinition<&str, u64> = TableDefinition::new("run_ids");
const TASK_ROWS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("task_rows");
const OUTCOMES: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("outcomes");
const KEY_REFS: TableDefinition<&str, u64> = TableDefinition::new("key_refs");
const FINGERPRINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("fingerprints");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Task id → durations (ms) of its newest executed successful runs, oldest
/// first, at most [`DEFAULT_WINDOW`]: what the scheduler reads, kept apart so
/// it never scans rows.
const DURATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("durations");
/// The history's page cache: it is read little, and a daemon keeps it open.
const CACHE_BYTES: usize = 8 << 20;
/// The `meta` row bumped by every commit, in any process: a handle whose
/// memos were computed at another generation drops them.
const GENERATION: &str = "generation";

/// The history file's name inside the cache directory.
pub const FILE_NAME: &str = "history.redb";
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

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, HistoryError> {
    serde_json::from_slice(bytes).map_err(|e| HistoryError::Corrupt {
        path: PathBuf::from(FILE_NAME),
        message: format!("a stored record does not decode: {e}"),
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, HistoryError> {
    serde_json::to_vec(v).map_err(|e| HistoryError::Db(e.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A run as stored: the record without its rows (they live in `task_rows`)
/// and the ids of those rows.
#[derive(Serialize, Deserialize)]
struct StoredRun {
    head: RunRecord,
    task_ids: Vec<String>,
}

/// Whether a row counts as a good outcome for the mixed-outcome rule: it
/// executed successfully or came from the cache.
/// Whether a row's duration counts for scheduling: executed and successful.
fn counts_as_duration(t: &TaskRun) -> bool {
    matches!(t.cache, CacheSource::Miss | CacheSource::Disabled)
        && t.status == TaskStatus::Success
        && !t.persistent
}

/// The median of the newest `window` durations (oldest first in `list`).
fn p50_of(list: &[u64], window: usize) -> Option<u64> {
    let mut w: Vec<u64> = list[list.len().saturating_sub(window)..].to_vec();
    w.sort_unstable();
    percentile(&w, 0.5)
}

fn row_ok(t: &TaskRun) -> bool {
    matches!(t.status, TaskStatus::Success | TaskStatus::Cached)
        || matches!(t.cache, CacheSource::Local | CacheSource::UpToDate)
}

fn row_hit(t: &TaskRun) -> bool {
    matches!(t.cache, CacheSource::Local | CacheSource::UpToDate)
}

/// The `q` percentile of ascending `sorted`: `sorted[min(n-1, floor(q*n))]`.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let idx = ((q * n as f64).floor() as usize).min(n - 1);
    Some(sorted[idx])
}

/// Files smaller than this are never compacted.
const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Compacts the file when it is big and mostly free pages (redb does not
/// give freed pages back; a history that keeps dropping old runs grows
/// to several times its live size). Only at open, when nothing else
/// holds a transaction; a failure only costs disk space.
fn compact_if_sparse(db: &mut redb::Database, path: &Path) {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len < COMPACT_MIN_BYTES {
        return;
    }
    let live = db.begin_write().ok().and_then(|tx| {
        let live = tx
            .stats()
            .ok()
            .map(|s| s.stored_bytes() + s.metadata_bytes());
        let _ = tx.abort();
        live
    });
    let Some(live) = live else { return };
    if live.saturating_mul(2) > len {
        return;
    }
    let start = Instant::now();
    match db.compact() {
        Ok(_) => tracing::info!(
            "compacted {} ({} MiB live of {} MiB) in {:?}",
            path.display(),
            live >> 20,
            len >> 20,
            start.elapsed()
        ),
        Err(e) => tracing::warn!("could not compact {}: {e}", path.display()),
    }
}

/// Memoised statistics by (task, window); `generation` counts commits.
#[derive(Default)]
struct Memo {
    generation: u64,
    stats: HashMap<(String, usize), TaskStats>,
}

/// The run history of one cache directory.
pub struct History {
    path: PathBuf,
    db: redb::Database,
    max_runs: usize,
    max_age: Duration,
    /// Statistics by (task, window), dropped for every task a write touches.
    memo: Mutex<Memo>,
    /// The newest executed successful durations by task, as in the
    /// `durations` table (plus announced runs not yet written), so
    /// scheduling reads no file.
    lists: Mutex<HashMap<String, Vec<u64>>>,
    /// Bumped whenever a list in `lists` changes.
    lists_gen: std::sync::atomic::AtomicU64,
    /// The file's [`GENERATION`] as this handle last knew it (its own
    /// commits advance it; another process's make the file's differ).
    seen: std::sync::atomic::AtomicU64,
    /// (dev, ino) of the file when opened: a `vx cache clean` replaces it.
    ident: (u64, u64),
    /// Records announced but not yet committed (the daemon records after
    /// answering); readers wait for them, so a `vx why` right after a run
    /// sees it.
    pending: (Mutex<usize>, std::sync::Condvar),
}

impl History {
    /// The file's generation; `None` when it cannot be read.
    fn file_generation(&self) -> Option<u64> {
        let tx = self.db.begin_read().ok()?;
        let meta = tx.open_table(META).ok()?;
        Some(meta.get(GENERATION).ok()?.map(|v| v.value()).unwrap_or(0))
    }

    /// Drops the memoised statistics and duration lists when another
    /// process wrote the file since this handle last looked (a foreground
    /// run beside the daemon recorded a run).
    fn sync(&self) {
        use std::sync::atomic::Ordering;
        let Some(now) = self.file_generation() else {
            return;
        };
        if now != self.seen.load(Ordering::Acquire) {
            self.forget();
            self.seen.store(now, Ordering::Release);
        }
    }

    fn forget(&self) {
        if let Ok(mut memo) = self.memo.lock() {
            memo.generation += 1;
            memo.stats.clear();
        }
        if let Ok(mut m) = self.lists.lock() {
            m.clear();
        }
        self.lists_gen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bumps the generation inside `tx`; returns the one it replaced.
    fn bump(tx: &redb::WriteTransaction) -> Result<u64, HistoryError> {
        let mut meta = tx.open_table(META)?;
        let old = meta.get(GENERATION)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(GENERATION, old + 1)?;
        Ok(old)
    }

    /// After a commit that bumped the generation from `old`: our memos stay
    /// valid only if nobody else had committed before it.
    fn committed(&self, old: u64) {
        use std::sync::atomic::Ordering;
        if self
            .seen
            .compare_exchange(old, old + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.forget();
            self.seen.store(old + 1, Ordering::Release);
        }
    }
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

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("path", &self.path)
            .field("max_runs", &self.max_runs)
            .field("max_age", &self.max_age)
            .finish()
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

impl History {
    /// Opens (or creates) `<cache_dir>/history.redb`, with the default
    /// retention (a run's own comes with [`History::record_kept`]). A file held by another process gives
    /// [`HistoryError::Locked`]; a damaged one [`HistoryError::Corrupt`].
    pub fn open(cache_dir: &Path) -> Result<History, HistoryError> {
        Self::open_opts(cache_dir, true)
    }

    /// [`History::open`] without the compaction check (which reads the
    /// whole file's statistics): for a run that only appends. Space freed by
    /// retention is reused, so the file stays bounded without compaction;
    /// the daemon and `vx history`/`vx info` compact.
    pub fn open_for_run(cache_dir: &Path, wait: Duration) -> Result<History, HistoryError> {
        let start = Instant::now();
        loop {
            match Self::open_opts(cache_dir, false) {
                Err(HistoryError::Locked(_)) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    /// Opens the file and reads it through once, so that damage redb only
    /// notices on reading (or panics on) shows here, never in the middle of
    /// recording. A damaged file (an error or a panic in redb) is moved
    /// aside as `history.redb.broken-<unix s>` (older ones removed) and
    /// reported as [`HistoryError::Corrupt`]: this run is not recorded, the
    /// next open starts a new history, and no handle to the damaged file is
    /// ever kept (the daemon's shared one included).
    fn open_opts(cache_dir: &Path, compact: bool) -> Result<History, HistoryError> {
        std::fs::create_dir_all(cache_dir).map_err(|source| HistoryError::Io {
            path: cache_dir.to_path_buf(),
            source,
        })?;
        let path = cache_dir.join(FILE_NAME);
        let damage = match crate::cache::quietly(|| Self::open_checked(cache_dir, compact)) {
            Ok(Err(HistoryError::Corrupt { message, .. })) => message,
            Ok(r) => return r,
            Err(panic) => format!("the history reader panicked: {panic}"),
        };
        // Never a file another process has open (it may be writing it).
        let Some(_held) = crate::cache::unshared(&path) else {
            let message = format!("{damage}; another vx process has it open: left in place");
            tracing::info!("run history {}: {message}", path.display());
            return Err(HistoryError::Corrupt { path, message });
        };
        let message = match crate::cache::move_aside(&path) {
            Ok(aside) => format!(
                "{damage}; moved it aside to {}: the next run starts a new history",
                aside.display()
            ),
            Err(e) => format!("{damage}; could not move it aside: {e}"),
        };
        // The run shows the warning; the daemon's log keeps it too.
        tracing::info!("run history {}: {message}", path.display());
        Err(HistoryError::Corrupt { path, message })
    }

    fn open_checked(cache_dir: &Path, compact: bool) -> Result<History, HistoryError> {
        let path = cache_dir.join(FILE_NAME);
        let corrupt = |message: String| HistoryError::Corrupt {
            path: path.clone(),
            message,
        };
        let mut builder = redb::Builder::new();
        builder.set_cache_size(CACHE_BYTES);
        let db = match crate::cache::open_shared_with(&path, builder) {
            Ok(db) => db,
            // Held exclusively by a vx that does not share it (before
            // multi-writer), or for a moment by one moving it aside.
            Err(
                redb::DatabaseError::DatabaseAlreadyOpen
                | redb::DatabaseError::LockProtocolMismatch,
            ) => {
                return Err(HistoryError::Locked(path));
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(source)))
                if !matches!(
                    source.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(HistoryError::Io { path, source });
            }
            // A foreign or damaged file (redb reports a bad magic number as
            // InvalidData).
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let mut db = db;
        {
            // The daemon and the readers (`compact`: once per handle) read
            // every table through; a run's own handle reads the small
            // tables through and only the ends of the big ones (a 100 MiB
            // history would cost a run ~300 ms): damage found later in
            // those costs that run's record (a warning), never the run.
            use crate::cache::{read_ends, read_through};
            let tx = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
            for r in [
                read_through(&tx, RUN_IDS),
                read_through(&tx, OUTCOMES),
                read_through(&tx, META),
                read_through(&tx, DURATIONS),
                read_through(&tx, KEY_REFS),
            ] {
                r.map_err(&corrupt)?;
            }
            let r = if compact {
                [
                    read_through(&tx, RUNS),
                    read_through(&tx, TASK_ROWS),
                    read_through(&tx, FINGERPRINTS),
                ]
            } else {
                [
                    read_ends(&tx, RUNS),
                    read_ends(&tx, TASK_ROWS),
                    read_ends(&tx, FINGERPRINTS),
                ]
            };
            for r in r {
                r.map_err(&corrupt)?;
            }
        }
        if compact {
            compact_if_sparse(&mut db, &path);
        }
        let ident = std::fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0));
        let exists = db.begin_read().ok().is_some_and(|r| {
            r.open_table(RUNS).is_ok()
                && r.open_table(RUN_IDS).is_ok()
                && r.open_table(TASK_ROWS).is_ok()
                && r.open_table(OUTCOMES).is_ok()
                && r.open_table(KEY_REFS).is_ok()
                && r.open_table(FINGERPRINTS).is_ok()
                && r.open_table(META).is_ok()
        });
        if !exists {
            let tx = db.begin_write()?;
            let fix = |e: HistoryError| match e {
                HistoryError::Corrupt { message, .. } => corrupt(message),
                e => e,
            };
            tx.open_table(RUNS).map_err(|e| fix(e.into()))?;
            tx.open_table(RUN_IDS).map_err(|e| fix(e.into()))?;
            tx.open_table(TASK_ROWS).map_err(|e| fix(e.into()))?;
            tx.open_table(OUTCOMES).map_err(|e| fix(e.into()))?;
            tx.open_table(KEY_REFS).map_err(|e| fix(e.into()))?;
            tx.open_table(FINGERPRINTS).map_err(|e| fix(e.into()))?;
            tx.open_table(META).map_err(|e| fix(e.into()))?;
            tx.commit()?;
        }
        let keep = Retention::from_env(&Default::default());
        let h = History {
            path,
            db,
            max_runs: keep.max_runs,
            max_age: keep.max_age,
            memo: Mutex::new(Memo::default()),
            lists: Mutex::new(HashMap::new()),
            lists_gen: std::sync::atomic::AtomicU64::new(0),
            seen: std::sync::atomic::AtomicU64::new(0),
            ident,
            pending: (Mutex::new(0), std::sync::Condvar::new()),
        };
        if let Some(g) = h.file_generation() {
            h.seen.store(g, std::sync::atomic::Ordering::Release);
        }
        Ok(h)
    }

    /// Announces a record that will be written soon (see [`History::settle`]).
    /// The run's durations count for scheduling at once.
    /// `executed`: (task id, duration) of the run's executed successful
    /// tasks (see `counts_as_duration`).
    pub fn announce(self: &Arc<Self>, executed: &[(String, u64)]) -> Pending {
        if let Ok(mut n) = self.pending.0.lock() {
            *n += 1;
        }
        if !executed.is_empty() {
            let table = self.db.begin_read().ok();
            let table = table.as_ref().and_then(|tx| tx.open_table(DURATIONS).ok());
            if let Ok(mut memo) = self.lists.lock() {
                for (id, ms) in executed {
                    let list = memo.entry(id.clone()).or_insert_with(|| {
                        table
                            .as_ref()
                            .and_then(|tb| tb.get(id.as_str()).ok().flatten())
                            .and_then(|v| serde_json::from_slice(v.value()).ok())
                            .unwrap_or_default()
                    });
                    list.push(*ms);
                    if list.len() > DEFAULT_WINDOW {
                        list.drain(..list.len() - DEFAULT_WINDOW);
                    }
                }
            }
            self.lists_gen
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Pending(self.clone())
    }

    /// Changes whenever the durations scheduling reads may have changed.
    pub fn lists_generation(&self) -> u64 {
        self.lists_gen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until every announced record is written.
    pub fn settle(&self, timeout: Duration) {
        if let Ok(n) = self.pending.0.lock() {
            let _ = self.pending.1.wait_timeout_while(n, timeout, |n| *n > 0);
        }
    }

    /// [`History::open`], retrying while another process holds the file,
    /// for up to `wait`.
    pub fn open_wait(cache_dir: &Path, wait: Duration) -> Result<History, HistoryError> {
        let start = Instant::now();
        loop {
            match History::open(cache_dir) {
                Err(HistoryError::Locked(_)) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// Keeps the newest `max_runs` runs (at least 1) that are younger than
    /// `max_age`; the newest run is always kept.
    pub fn with_retention(mut self, max_runs: usize, max_age: Duration) -> History {
        self.max_runs = max_runs.max(1);
        self.max_age = max_age;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file on disk is still the one this handle has open (a
    /// `vx cache clean` deletes the cache directory).
    pub fn is_current(&self) -> bool {
        std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.ident)
            .unwrap_or(false)
    }

    /// Records one run and the fingerprints of the keys it executed, and
    /// applies retention, in one write transaction. A fingerprint is stored
    /// only if some row of the run has its key and it is not stored yet.
    pub fn record(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
    ) -> Result<(), HistoryError> {
        self.record_with(run, fingerprints)
    }

    /// [`History::record`] with this handle's retention. Every commit is
    /// durable: another process may read it at once (redb refuses a
    /// non-durable commit in a shared file).
    pub fn record_with(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
    ) -> Result<(), HistoryError> {
        let keep = Retention {
            max_runs: self.max_runs,
            max_age: self.max_age,
        };
        self.record_kept(run, fingerprints, keep)
    }

    /// [`History::record_with`] with the retention the recorded run asked
    /// for ([`Retention::from_env`] of its request).
    pub fn record_kept(
        &self,
        run: &RunRecord,
        fingerprints: &[Fingerprint],
        keep: Retention,
    ) -> Result<(), HistoryError> {
        let mut touched: HashSet<String> = HashSet::new();
        let tx = self.db.begin_write()?;
        let old_generation = Self::bump(&tx)?;
        let mut p50s: Vec<(String, Vec<u64>)> = Vec::new();
        {
            let mut durations = tx.open_table(DURATIONS)?;
            for task in &run.tasks {
                if !counts_as_duration(task) {
                    continue;
                }
                let mut list: Vec<u64> = durations
                    .get(task.id.as_str())?
                    .and_then(|v| serde_json::from_slice(v.value()).ok())
                    .unwrap_or_default();
                list.push(task.duration_ms);
                if list.len() > DEFAULT_WINDOW {
                    list.drain(..list.len() - DEFAULT_WINDOW);
                }
                durations.insert(task.id.as_str(), encode(&list)?.as_slice())?;
                p50s.push((task.id.clone(), list));
            }
        }
        {
            let mut runs = tx.open_table(RUNS)?;
            let mut ids = tx.open_table(RUN_IDS)?;
            let mut rows = tx.open_table(TASK_ROWS)?;
            let mut outcomes = tx.open_table(OUTCOMES)?;
            let mut refs = tx.open_table(KEY_REFS)?;
            let mut fps = tx.open_table(FINGERPRINTS)?;
            let mut meta = tx.open_table(META)?;
            let mut t = Tables {
                runs: &mut runs,
                ids: &mut ids,
                rows: &mut rows,
                outcomes: &mut outcomes,
                refs: &mut refs,
                fps: &mut fps,
            };
            // Recording the same run id twice replaces the first.
            let old = t.ids.get(run.run_id.as_str())?.map(|g| g.value());
            if let Some(old) = old {
                t.drop_run(old, &mut touched)?;
            }
            let next = meta.get("next_seq")?.map(|g| g.value()).unwrap_or(0);
            let last = t.runs.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
            let seq = next.max(last);
            meta.insert("next_seq", seq + 1)?;

            let mut seen = HashSet::new();
            let mut task_ids = Vec::with_capacity(run.tasks.len());
            // Key → the task whose row names it (keys include the task id).
            let mut keys: HashMap<&str, &str> = HashMap::new();
            for task in &run.tasks {
                if !seen.insert(task.id.as_str()) {
                    tracing::debug!(
                        "run {} lists {} twice; keeping the first",
                        run.run_id,
                        task.id
                    );
                    continue;
                }
                task_ids.push(task.id.clone());
                touched.insert(task.id.clone());
                let row = TaskRunRow {
                    run_id: run.run_id.clone(),
                    started_at: run.started_at,
                    task: task.clone(),
                };
                t.rows
                    .insert((task.id.as_str(), seq), encode(&row)?.as_slice())?;
                if let Some(key) = &task.key {
                    keys.insert(key.as_str(), task.id.as_str());
                    let (f, o) = t
                        .outcomes
                        .get((task.id.as_str(), key.as_str()))?
                        .map(|g| g.value())
                        .unwrap_or((0, 0));
                    let failed = u64::from(task.status == TaskStatus::Failed);
                    let ok = u64::from(row_ok(task));
                    t.outcomes
                        .insert((task.id.as_str(), key.as_str()), (f + failed, o + ok))?;
                    let n = t.refs.get(key.as_str())?.map(|g| g.value()).unwrap_or(0);
                    t.refs.insert(key.as_str(), n + 1)?;
                }
            }
            let mut prune = Vec::new();
            for fp in fingerprints {
                let Some(owner) = keys.get(fp.key.as_str()) else {
                    tracing::debug!("fingerprint {} names no row of run {}", fp.key, run.run_id);
                    continue;
                };
                if t.fps.get(fp.key.as_str())?.is_none() {
                    t.fps.insert(fp.key.as_str(), encode(fp)?.as_slice())?;
                    prune.push(*owner);
                }
            }
            for task in prune {
                t.prune_fingerprints(task, FINGERPRINTS_PER_TASK)?;
            }
            let mut head = run.clone();
            head.tasks = Vec::new();
            let stored = StoredRun { head, task_ids };
            t.runs.insert(seq, encode(&stored)?.as_slice())?;
            t.ids.insert(run.run_id.as_str(), seq)?;

            // Retention: the oldest runs beyond `max_runs`, and runs older
            // than `max_age`; never the run just recorded.
            let cutoff = now_ms().saturating_sub(keep.max_age.as_millis() as u64);
            loop {
                let len = t.runs.len()?;
                let Some((first, started)) = t.runs.first()?.map(|(k, v)| {
                    (
                        k.value(),
                        decode::<StoredRun>(v.value()).map(|s| s.head.started_at),
                    )
                }) else {
                    break;
                };
                if first == seq {
                    break;
                }
                // An undecodable run is dropped as if it were old.
                let old = started.map(|s| s < cutoff).unwrap_or(true);
                if len as usize > keep.max_runs.max(1) || old {
                    t.drop_run(first, &mut touched)?;
                } else {
                    break;
                }
            }
        }
        tx.commit()?;
        self.committed(old_generation);
        if let Ok(mut memo) = self.memo.lock() {
            memo.generation += 1;
            memo.stats.retain(|(task, _), _| !touched.contains(task));
        }
        if !p50s.is_empty() {
            if let Ok(mut m) = self.lists.lock() {
                m.extend(p50s);
            }
            self.lists_gen
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// The newest `limit` runs, newest first, without their rows.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunBrief>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in runs.iter()?.rev().take(limit) {
            let (_, v) = item?;
            let s: StoredRun = decode(v.value())?;
            out.push(RunBrief::from(&s.head));
        }
        Ok(out)
    }

    /// How many runs are retained, and how many of them started at or after
    /// `since` (Unix milliseconds).
    pub fn run_counts(&self, since: u64) -> Result<(u64, u64), HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let total = runs.len()?;
        let mut recent = 0;
        for item in runs.iter()?.rev() {
            let (_, v) = item?;
            let s: StoredRun = decode(v.value())?;
            if s.head.started_at < since {
                break;
            }
            recent += 1;
        }
        Ok((total, recent))
    }

    /// One run with its rows: `None` = the latest; otherwise a run id or a
    /// unique prefix of one. `Ok(None)` when no run is recorded at all.
    /// The sequence number of a run id or unique prefix.
    fn seq_of(&self, id: &str) -> Result<u64, HistoryError> {
        let tx = self.db.begin_read()?;
        let ids = tx.open_table(RUN_IDS)?;
        if let Some(seq) = ids.get(id)?.map(|g| g.value()) {
            return Ok(seq);
        }
        let mut matches = Vec::new();
        for item in ids.range(id..)? {
            let (k, v) = item?;
            if !k.value().starts_with(id) {
                break;
            }
            matches.push((k.value().to_string(), v.value()));
        }
        match matches.len() {
            0 => Err(HistoryError::NoSuchRun(id.to_string())),
            1 => Ok(matches[0].1),
            _ => Err(HistoryError::AmbiguousRun {
                prefix: id.to_string(),
                matches: matches.into_iter().map(|m| m.0).collect(),
            }),
        }
    }

    pub fn run(&self, id: Option<&str>) -> Result<Option<RunRecord>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let rows = tx.open_table(TASK_ROWS)?;
        let seq = match id {
            None => match runs.last()? {
                Some((k, _)) => k.value(),
                None => return Ok(None),
            },
            Some(id) => self.seq_of(id)?,
        };
        let Some(v) = runs.get(seq)? else {
            return Err(HistoryError::NoSuchRun(id.unwrap_or_default().to_string()));
        };
        let stored: StoredRun = decode(v.value())?;
        load_run(&rows, seq, stored).map(Some)
    }

    /// The newest run that did not succeed.
    pub fn last_failed(&self) -> Result<Option<RunRecord>, HistoryError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(RUNS)?;
        let rows = tx.open_table(TASK_ROWS)?;
        for item in runs.iter()?.rev() {
            let (k, v) = item?;
            let stored: StoredRun = decode(v.value())?;
            if !stored.head.ok {
                return load_run(&rows, k.value(), stored).map(Some);
            }
        }
        Ok(None)
    }

    /// A task's newest `limit` rows, newest first.
    pub fn task_runs(&self, task_id: &str, limit: usize) -> Result<Vec<TaskRunRow>, HistoryError> {
        let tx = self.db.begin_read()?;
        let rows = tx.open_table(TASK_ROWS)?;
        let mut out = Vec::new();
        for item in rows
            .range((task_id, 0u64)..=(task_id, u64::MAX))?
            .rev()
            .take(limit)
        {
            let (_, v) = item?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Every task id with at least one retained row, sorted.
    pub fn task_ids(&self) -> Result<Vec<String>, HistoryError> {
        let tx = self.db.begin_read()?;
        let rows = tx.open_table(TASK_ROWS)?;
        let mut out: Vec<String> = Vec::new();
        for item in rows.iter()? {
            let (k, _) = item?;
            let (task, _) = k.value();
            if out.last().map(String::as_str) != Some(task) {
                out.push(task.to_string());
            }
        }
        Ok(out)
    }

    /// Statistics of each task over its newest `window` rows (see
    /// `docs/history.md`). Tasks without rows are absent. Memoised until a
    /// write touches the task.
    pub fn stats(
        &self,
        task_ids: &[String],
        window: usize,
    ) -> Result<HashMap<String, TaskStats>, HistoryError> {
        self.sync();
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        // Computed values are memoised only if no write committed meanwhile.
        let mut generation = None;
        match self.memo.lock() {
            Ok(memo) => {
                generation = Some(memo.generation);
                for id in task_ids {
                    match memo.stats.get(&(id.clone(), window)) {
                        Some(s) => {
                            out.insert(id.clone(), s.clone());
                        }
                        None => missing.push(id),
                    }
                }
            }
            Err(_) => missing.extend(task_ids),
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let tx = self.db.begin_read()?;
        let rows = tx.open_table(TASK_ROWS)?;
        let outcomes = tx.open_table(OUTCOMES)?;
        let mut fresh = Vec::new();
        for id in missing {
            if let Some(s) = task_stats(&rows, &outcomes, id, window)? {
                fresh.push((id.clone(), s));
            }
        }
        if let Ok(mut memo) = self.memo.lock()
            && Some(memo.generation) == generation
        {
            for (id, s) in &fresh {
                memo.stats.insert((id.clone(), window), s.clone());
            }
        }
        out.extend(fresh);
        Ok(out)
    }

    /// The p50 duration of each task's executed, successful runs (over the
    /// newest `window` of them); tasks without one are absent. What the
    /// scheduler feeds to [`critical_path`].
    pub fn durations(
        &self,
        task_ids: &[String],
        window: usize,
    ) -> Result<HashMap<String, u64>, HistoryError> {
        self.sync();
        let mut out = HashMap::new();
        let mut memo = self.lists.lock().ok();
        let mut missing = Vec::new();
        for id in task_ids {
            match memo.as_ref().and_then(|m| m.get(id)) {
                Some(list) => {
                    if let Some(p) = p50_of(list, window) {
                        out.insert(id.clone(), p);
                    }
                }
                None => missing.push(id),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(DURATIONS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        for id in missing {
            let list: Vec<u64> = match &table {
                Some(t) => t
                    .get(id.as_str())?
                    .and_then(|v| serde_json::from_slice(v.value()).ok())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(p) = p50_of(&list, window) {
                out.insert(id.clone(), p);
            }
            if let Some(m) = memo.as_mut() {
                m.insert(id.clone(), list);
            }
        }
        Ok(out)
    }

    /// The stored fingerprint of `key`.
    pub fn fingerprint(&self, key: &str) -> Result<Option<Fingerprint>, HistoryError> {
        let tx = self.db.begin_read()?;
        let fps = tx.open_table(FINGERPRINTS)?;
        fps.get(key)?.map(|v| decode(v.value())).transpose()
    }

    /// Why `task_id`'s key changed: its two newest distinct recorded keys,
    /// their fingerprints compared part by part, and what to do.
    pub fn why(&self, task_id: &str) -> Result<WhyReport, HistoryError> {
        self.why_at(task_id, None)
    }

    /// [`History::why`] as of run `run_id` (a unique prefix works): the key
    /// the task had in that run against the distinct key before it.
    pub fn why_at(&self, task_id: &str, run_id: Option<&str>) -> Result<WhyReport, HistoryError> {
        let upto = match run_id {
            Some(id) => self.seq_of(id)?,
            None => u64::MAX,
        };
        let tx = self.db.begin_read()?;
        let rows = tx.open_table(TASK_ROWS)?;
        let fps = tx.open_table(FINGERPRINTS)?;
        let mut total = 0usize;
        let mut newest: Option<(String, String)> = None;
        let mut previous: Option<(String, String)> = None;
        let mut same_key_rows = 0usize;
        for item in rows.range((task_id, 0u64)..=(task_id, upto))?.rev() {
            let (_, v) = item?;
            total += 1;
            let row: TaskRunRow = decode(v.value())?;
            let Some(key) = row.task.key else { continue };
            match &newest {
                None => {
                    newest = Some((key, row.run_id));
                    same_key_rows = 1;
                }
                Some((k, _)) if *k == key => same_key_rows += 1,
                Some(_) => {
                    previous = Some((key, row.run_id));
                    break;
                }
            }
        }
        if total == 0 {
            return Err(HistoryError::NoTaskRuns(task_id.to_string()));
        }
        let mut report = WhyReport {
            task: task_id.to_string(),
            key: newest.as_ref().map(|n| n.0.clone()),
            run_id: newest.as_ref().map(|n| n.1.clone()),
            previous_key: previous.as_ref().map(|p| p.0.clone()),
            previous_run_id: previous.as_ref().map(|p| p.1.clone()),
            compared: false,
            changes: Vec::new(),
            advice: Vec::new(),
        };
        let Some((key, run_id)) = newest else {
            report.advice.push(format!(
                "none of the {total} recorded runs of {task_id} computed a key (it was skipped, or it is a group task); there is nothing to compare"
            ));
            return Ok(report);
        };
        let Some((prev_key, prev_run)) = previous else {
            report.advice.push(format!(
                "{task_id} has had the same key ({}) in all {same_key_rows} recorded runs that computed one: nothing it depends on changed",
                short(&key)
            ));
            report.advice.push(
                "if it executed anyway, its cache entry was missing: the cache was cleaned, the run used --force or --no-cache, or caching is off for the task".to_string(),
            );
            return Ok(report);
        };
        let load = |k: &str| -> Result<Option<Fingerprint>, HistoryError> {
            fps.get(k)?.map(|v| decode(v.value())).transpose()
        };
        let (new_fp, old_fp) = (load(&key)?, load(&prev_key)?);
        let (Some(new_fp), Some(old_fp)) = (new_fp, old_fp) else {
            for (k, r, fp) in [
                (&key, &run_id, load(&key)?),
                (&prev_key, &prev_run, load(&prev_key)?),
            ] {
                if fp.is_none() {
                    report.advice.push(format!(
                        "no fingerprint is stored for key {} (run {r}): {task_id} was only ever restored from the cache with that key (or the key is older than the {FINGERPRINTS_PER_TASK} newest kept), so what went into it is unknown",
                        short(k)
                    ));
                }
            }
            report.advice.push(format!(
                "run `vx run {task_id} --force` to execute it and record its fingerprint"
            ));
            return Ok(report);
        };
        report.compared = true;
        report.changes = diff(&old_fp, &new_fp);
        report.advice = advice(task_id, &report.changes);
        Ok(report)
    }
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// The mutable tables of one write transaction.
struct Tables<'a, 't> {
    runs: &'a mut redb::Table<'t, u64, &'static [u8]>,
    ids: &'a mut redb::Table<'t, &'static str, u64>,
    rows: &'a mut redb::Table<'t, (&'static str, u64), &'static [u8]>,
    outcomes: &'a mut redb::Table<'t, (&'static str, &'static str), (u64, u64)>,
    refs: &'a mut redb::Table<'t, &'static str, u64>,
    fps: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
}

impl Tables<'_, '_> {
    /// Drops the fingerprints of `task` other than those of its `keep`
    /// newest distinct keys.
    fn prune_fingerprints(&mut self, task: &str, keep: usize) -> Result<(), HistoryError> {
        let mut newest: Vec<String> = Vec::new();
        for item in self.rows.range((task, 0u64)..=(task, u64::MAX))?.rev() {
            let (_, v) = item?;
            let Ok(row) = decode::<TaskRunRow>(v.value()) else {
                continue;
            };
            if let Some(k) = row.task.key
                && !newest.contains(&k)
            {
                newest.push(k);
                if newest.len() >= keep {
                    break;
                }
            }
        }
        let mut stale = Vec::new();
        for item in self.outcomes.range((task, "")..)? {
            let (k, _) = item?;
            let (t, key) = k.value();
            if t != task {
                break;
            }
            if !newest.iter().any(|n| n == key) {
                stale.push(key.to_string());
            }
        }
        for k in stale {
            self.fps.remove(k.as_str())?;
        }
        Ok(())
    }

    /// Removes run `seq`, its rows, its outcome counts and key references;
    /// fingerprints no retained row references go with it.
    fn drop_run(&mut self, seq: u64, touched: &mut HashSet<String>) -> Result<(), HistoryError> {
        let stored = match self.runs.remove(seq)? {
            Some(v) => decode::<StoredRun>(v.value()).ok(),
            None => return Ok(()),
        };
        let Some(stored) = stored else {
            tracing::warn!("dropping an undecodable run (seq {seq}) from the history");
            return Ok(());
        };
        self.ids.remove(stored.head.run_id.as_str())?;
        for id in &stored.task_ids {
            touched.insert(id.clone());
            let row = match self.rows.remove((id.as_str(), seq))? {
                Some(v) => decode::<TaskRunRow>(v.value()).ok(),
                None => None,
            };
            let Some(row) = row else { continue };
            let Some(key) = &row.task.key else { continue };
            let counts = self
                .outcomes
                .get((id.as_str(), key.as_str()))?
                .map(|g| g.value());
            if let Some((f, o)) = counts {
                let failed = u64::from(row.task.status == TaskStatus::Failed);
                let ok = u64::from(row_ok(&row.task));
                let (f, o) = (f.saturating_sub(failed), o.saturating_sub(ok));
                // (0, 0) cannot make a key mixed: forget it.
                if (f, o) == (0, 0) {
                    self.outcomes.remove((id.as_str(), key.as_str()))?;
                } else {
                    self.outcomes.insert((id.as_str(), key.as_str()), (f, o))?;
                }
            }
            let n = self.refs.get(key.as_str())?.map(|g| g.value()).unwrap_or(0);
            if n <= 1 {
                self.refs.remove(key.as_str())?;
                self.fps.remove(key.as_str())?;
            } else {
                self.refs.insert(key.as_str(), n - 1)?;
            }
        }
        Ok(())
    }
}

fn load_run(
    rows: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    seq: u64,
    stored: StoredRun,
) -> Result<RunRecord, HistoryError> {
    let mut run = stored.head;
    for id in &stored.task_ids {
        if let Some(v) = rows.get((id.as_str(), seq))? {
            let row: TaskRunRow = decode(v.value())?;
            run.tasks.push(row.task);
        }
    }
    run.tasks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(run)
}

fn task_stats(
    rows: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    outcomes: &redb::ReadOnlyTable<(&'static str, &'static str), (u64, u64)>,
    id: &str,
    window: usize,
) -> Result<Option<TaskStats>, HistoryError> {
    let mut total = 0u64;
    let (mut successes, mut hits, mut executed, mut failures, mut retried) = (0, 0, 0, 0, 0);
    let mut durations = Vec::new();
    for item in rows.range((id, 0u64)..=(id, u64::MAX))?.rev() {
        if total as usize >= window && durations.len() >= window {
            break;
        }
        let (_, v) = item?;
        let row: TaskRunRow = decode(v.value())?;
        let t = &row.task;
        let is_executed = matches!(t.cache, CacheSource::Miss | CacheSource::Disabled);
        if (total as usize) < window {
            total += 1;
            successes += u64::from(t.status == TaskStatus::Success);
            hits += u64::from(row_hit(t));
            executed += u64::from(is_executed);
            failures += u64::from(t.status == TaskStatus::Failed);
            retried += u64::from(t.attempts > 1);
        }
        if durations.len() < window && is_executed && t.status == TaskStatus::Success {
            durations.push(t.duration_ms);
        }
    }
    if total == 0 {
        return Ok(None);
    }
    let mut mixed = 0u64;
    for item in outcomes.range((id, "")..)? {
        let (k, v) = item?;
        if k.value().0 != id {
            break;
        }
        let (f, o) = v.value();
        if f > 0 && o > 0 {
            mixed += 1;
        }
    }
    durations.sort_unstable();
    Ok(Some(TaskStats {
        total,
        successes,
        hits,
        executed,
        failures,
        retried,
        p50_ms: percentile(&durations, 0.5),
        p99_ms: percentile(&durations, 0.99),
        success_rate: successes as f64 / total as f64,
        hit_rate: hits as f64 / total as f64,
        failure_mode: classify(total, failures, retried, mixed),
        mixed_outcome_keys: mixed,
    }))
}

/// The failure mode: flaky when a row was retried, or when it failed and
/// some key both failed and succeeded; flaky with failures in fewer than a
/// fifth of the rows is recoverable, otherwise fatal.
pub fn classify(total: u64, failures: u64, retried: u64, mixed_keys: u64) -> FailureMode {
    let flaky = retried > 0 || (failures > 0 && mixed_keys > 0);
    if !flaky {
        FailureMode::Stable
    } else if (failures as f64) < total as f64 / 5.0 {
        FailureMode::FlakyRecoverable
    } else {
        FailureMode::FlakyFatal
    }
}

fn diff_pairs(
    component: Component,
    old: &[(String, String)],
    new: &[(String, String)],
    out: &mut Vec<Change>,
) {
    let old: BTreeMap<&str, &str> = old.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let new: BTreeMap<&str, &str> = new.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let names: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    for name in names {
        let kind = match (old.get(name), new.get(name)) {
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            (Some(a), Some(b)) if a != b => ChangeKind::Changed,
            _ => continue,
        };
        out.push(Change {
            component,
            name: Some(name.to_string()),
            kind,
        });
    }
}

/// The differences from `old` to `new`, sorted by component and name.
pub fn diff(old: &Fingerprint, new: &Fingerprint) -> Vec<Change> {
    let mut out = Vec::new();
    diff_pairs(Component::File, &old.files, &new.files, &mut out);
    diff_pairs(Component::Env, &old.env, &new.env, &mut out);
    let whole = |component, changed: bool, out: &mut Vec<Change>| {
        if changed {
            out.push(Change {
                component,
                name: None,
                kind: ChangeKind::Changed,
            });
        }
    };
    whole(Component::Config, old.config != new.config, &mut out);
    whole(Component::Command, old.command != new.command, &mut out);
    diff_pairs(Component::Upstream, &old.upstream, &new.upstream, &mut out);
    whole(Component::Args, old.args != new.args, &mut out);
    out.sort_by(|a, b| (a.component, &a.name).cmp(&(b.component, &b.name)));
    out
}

/// How many file changes get their own advice line.
const FILE_ADVICE: usize = 5;

/// What to do about each change, one sentence per line.
pub fn advice(task: &str, changes: &[Change]) -> Vec<String> {
    let mut out = Vec::new();
    if changes.is_empty() {
        out.push(format!(
            "the recorded parts of {task}'s two keys are identical; the key changed through something the fingerprint does not cover (a vx upgrade, or the key format)"
        ));
        return out;
    }
    let files: Vec<&Change> = changes
        .iter()
        .filter(|c| c.component == Component::File)
        .collect();
    for c in files.iter().take(FILE_ADVICE) {
        let name = c.name.as_deref().unwrap_or("?");
        out.push(match c.kind {
            ChangeKind::Changed => format!(
                "file {name} changed; if it is not an input of {task}, narrow `inputs` (or exclude it with a `!` pattern)"
            ),
            ChangeKind::Added => format!(
                "file {name} is a new input; if it should not affect {task}, narrow `inputs`"
            ),
            ChangeKind::Removed => format!(
                "file {name} is no longer an input (deleted, or no longer matched by `inputs`)"
            ),
        });
    }
    if files.len() > FILE_ADVICE {
        out.push(format!(
            "... and {} more input files changed",
            files.len() - FILE_ADVICE
        ));
    }
    for c in changes.iter().filter(|c| c.component != Component::File) {
        let name = c.name.as_deref().unwrap_or("?");
        out.push(match (c.component, c.kind) {
            (Component::Env, ChangeKind::Changed) => format!(
                "the value of {name} changed; if it should not affect the build, remove it from `env` in vx.toml (or list it in `pass_env`, which passes it without keying it)"
            ),
            (Component::Env, ChangeKind::Added) => {
                format!("{name} is newly keyed (it was added to `env`, or matches a new pattern)")
            }
            (Component::Env, ChangeKind::Removed) => {
                format!("{name} is no longer keyed (it was removed from `env`)")
            }
            (Component::Config, _) => format!(
                "{task}'s configuration changed (its vx.toml, package.json or turbo.json entry: inputs, outputs, env, dependencies or options)"
            ),
            (Component::Command, _) => format!("{task}'s command changed"),
            (Component::Upstream, ChangeKind::Changed) => {
                format!("{name}'s key changed; run `vx why {name}` to see why")
            }
            (Component::Upstream, ChangeKind::Added) => format!("{task} now depends on {name}"),
            (Component::Upstream, ChangeKind::Removed) => {
                format!("{task} no longer depends on {name}")
            }
            (Component::Args, _) => {
                "the arguments after `--` changed; they are part of the key of the requested tasks"
                    .to_string()
            }
            (Component::File, _) => continue,
        });
    }
    out
}

/// Estimated critical-path priorities (`docs/history.md`): `own[n]` is the
/// p50 of task `n` when known; unknown tasks take the median of the known
/// ones (1000 ms when none is known). `ECP(n) = own(n) + max ECP(d)` over
/// the dependents `d` of `n` (0 when it has none), computed from the sinks
/// back; a node on a cycle (never reached) gets its own duration.
pub fn critical_path(
    deps: &[Vec<usize>],
    dependents: &[Vec<usize>],
    own: &[Option<u64>],
) -> Vec<u64> {
    let n = own.len();
    let mut known: Vec<u64> = own.iter().flatten().copied().collect();
    known.sort_unstable();
    let median = known
        .get(known.len() / 2)
        .copied()
        .unwrap_or(DEFAULT_DURATION_MS);
    let own_of = |i: usize| own[i].unwrap_or(median);
    let mut ecp: Vec<Option<u64>> = vec![None; n];
    let mut remaining: Vec<usize> = (0..n)
        .map(|i| {
            dependents
                .get(i)
                .map_or(0, |d| d.iter().filter(|&&x| x < n).count())
        })
        .collect();
    let mut ready: Vec<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
    while let Some(i) = ready.pop() {
        let longest = dependents
            .get(i)
            .into_iter()
            .flatten()
            .filter_map(|&d| ecp.get(d).copied().flatten())
            .max()
            .unwrap_or(0);
        ecp[i] = Some(own_of(i).saturating_add(longest));
        for &d in deps.get(i).into_iter().flatten() {
            if d < n && remaining[d] > 0 {
                remaining[d] -= 1;
                if remaining[d] == 0 {
                    ready.push(d);
                }
            }
        }
    }
    (0..n)
        .map(|i| ecp[i].unwrap_or_else(|| own_of(i)))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use vx_proto::RunCounts;

    fn task(
        id: &str,
        status: TaskStatus,
        cache: CacheSource,
        key: Option<&str>,
        ms: u64,
    ) -> TaskRun {
        TaskRun {
            id: id.into(),
            status,
            cache,
            key: key.map(str::to_string),
            exit_code: match status {
                TaskStatus::Failed => Some(1),
                TaskStatus::Success => Some(0),
                _ => None,
            },
            attempts: 1,
            duration_ms: ms,
            start_ms: 0,
            end_ms: ms,
            slot: Some(0),
            cpu_ms: None,
            peak_rss_bytes: None,
            blocked_by: None,
            error: None,
            persistent: false,
        }
    }

    fn run(id: &str, started_at: u64, tasks: Vec<TaskRun>) -> RunRecord {
        let ok = tasks.iter().all(|t| t.status != TaskStatus::Failed);
        RunRecord {
            run_id: id.into(),
            argv: vec!["vx".into(), "run".into(), "build".into()],
            requested: vec!["build".into()],
            started_at,
            ended_at: started_at + 100,
            duration_ms: 100,
            exit_code: if ok { 0 } else { 1 },
            ok,
            concurrency: 2,
            counts: RunCounts {
                total: tasks.len(),
                ..Default::default()
            },
            tasks,
        }
    }

    fn fp(task: &str, key: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Fingerprint {
        Fingerprint {
            key: key.into(),
            task: task.into(),
            files: files
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            config: "cfg".into(),
            command: "make".into(),
            upstream: vec![],
            args: "none".into(),
        }
    }

    fn open(d: &Path) -> History {
        History::open(d)
            .unwrap()
            .with_retention(200, Duration::from_secs(30 * 86_400))
    }

    #[test]
    fn record_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path());
        assert!(h.run(None).unwrap().is_none());
        let t0 = now_ms();
        let r1 = run(
            "run-aaa",
            t0,
            vec![
                task(
                    "lib#build",
                    TaskStatus::Success,
                    CacheSource::Miss,
                    Some("k1"),
                    30,
                ),
                task(
                    "app#build",
                    TaskStatus::Failed,
                    CacheSource::Miss,
                    Some("k2"),
                    10,
                ),
            ],
        );
        h.record(&r1, &[fp("lib#build", "k1", &[], &[])]).unwrap();
        let r2 = run(
            "run-bbb",
            t0 + 1000,
            vec![task(
                "lib#build",
                TaskStatus::Cached,
                CacheSource::Local,
                Some("k1"),
                1,
            )],
        );
        h.record(&r2, &[]).unwrap();

        let mut sorted = r1.clone();
        sorted.tasks.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(h.run(Some("run-aaa")).unwrap().unwrap(), sorted);
        assert_eq!(h.run(None).unwrap().unwrap(), r2);
        assert_eq!(h.run(Some("run-b")).unwrap().unwrap().run_id, "run-bbb");
        assert!(matches!(
            h.run(Some("run-")),
            Err(HistoryError::AmbiguousRun { .. })
        ));
        assert!(matches!(
            h.run(Some("nope")),
            Err(HistoryError::NoSuchRun(_))
        ));
        assert_eq!(h.last_failed().unwrap().unwrap().run_id, "run-aaa");
        let briefs = h.runs(10).unwrap();
        assert_eq!(
            briefs.iter().map(|b| b.run_id.as_str()).collect::<Vec<_>>(),
            ["run-bbb", "run-aaa"]
        );
        let rows = h.task_runs("lib#build", 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].run_id, "run-bbb");
        assert_eq!(rows[1].task.duration_ms, 30);
        assert_eq!(h.task_ids().unwrap(), ["app#build", "lib#build"]);
        assert!(h.fingerprint("k1").unwrap().is_some());
        assert_eq!(h.run_counts(t0 + 500).unwrap(), (2, 1));

        // Reopening sees the same data.
        drop(h);
        let h = open(d.path());
        assert_eq!(h.runs(10).unwrap().len(), 2);
    }

    #[test]
    fn retention_comes_from_the_request_env() {
        let env = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        const RUNS: &str = vx_proto::knobs::HISTORY_MAX_RUNS.name;
        const DAYS: &str = vx_proto::knobs::HISTORY_MAX_AGE_DAYS.name;
        let day = Duration::from_secs(86_400);
        type Case<'a> = (&'a [(&'a str, &'a str)], usize, Duration);
        let cases: &[Case] = &[
            (&[], DEFAULT_MAX_RUNS, day * DEFAULT_MAX_AGE_DAYS as u32),
            (&[(RUNS, " 5 ")], 5, day * 30),
            (&[(RUNS, "0")], 1, day * 30),
            (&[(RUNS, "many")], DEFAULT_MAX_RUNS, day * 30),
            (&[(DAYS, "2")], DEFAULT_MAX_RUNS, day * 2),
        ];
        for (pairs, runs, age) in cases {
            let keep = Retention::from_env(&env(pairs));
            assert_eq!((keep.max_runs, keep.max_age), (*runs, *age), "{pairs:?}");
        }
        // A run's retention applies to its own record, whatever the handle's.
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path());
        let keep = Retention::from_env(&env(&[(RUNS, "2")]));
        for i in 0..4u64 {
            let r = run(&format!("r{i}"), now_ms() + i, vec![]);
            h.record_kept(&r, &[], keep).unwrap();
        }
        assert_eq!(h.runs(10).unwrap().len(), 2);
    }

    #[test]
    fn retention_drops_old_runs_and_orphaned_fingerprints() {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path()).with_retention(2, Duration::from_secs(86_400));
        let t0 = now_ms();
        // Too old: dropped by age as soon as another run is recorded.
        let old = run(
            "r0",
            t0 - 2 * 86_400_000,
            vec![task(
                "a#b",
                TaskStatus::Success,
                CacheSource::Miss,
                Some("k0"),
                5,
            )],
        );
        h.record(&old, &[fp("a#b", "k0", &[], &[])]).unwrap();
        assert_eq!(
            h.runs(10).unwrap().len(),
            1,
            "the newest run is always kept"
        );
        for (i, key) in ["k1", "k2", "k3"].iter().enumerate() {
            let r = run(
                &format!("r{}", i + 1),
                t0 + i as u64,
                vec![task(
                    "a#b",
                    TaskStatus::Success,
                    CacheSource::Miss,
                    Some(key),
                    5,
                )],
            );
            h.record(&r, &[fp("a#b", key, &[], &[])]).unwrap();
        }
        let ids: Vec<String> = h.runs(10).unwrap().into_iter().map(|b| b.run_id).collect();
        assert_eq!(ids, ["r3", "r2"]);
        assert!(h.fingerprint("k0").unwrap().is_none());
        assert!(h.fingerprint("k1").unwrap().is_none());
        assert!(h.fingerprint("k2").unwrap().is_some());
        assert!(h.fingerprint("k3").unwrap().is_some());
        assert_eq!(h.task_runs("a#b", 10).unwrap().len(), 2);
        assert!(matches!(h.run(Some("r1")), Err(HistoryError::NoSuchRun(_))));

        // A fingerprint shared by a retained run survives.
        let r = run(
            "r4",
            t0 + 10,
            vec![task(
                "a#b",
                TaskStatus::Cached,
                CacheSource::Local,
                Some("k3"),
                1,
            )],
        );
        h.record(&r, &[]).unwrap();
        assert!(h.fingerprint("k2").unwrap().is_none());
        assert!(h.fingerprint("k3").unwrap().is_some());
    }

    #[test]
    fn only_the_newest_fingerprints_of_a_task_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path());
        let t0 = now_ms();
        let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            let r = run(
                &format!("r{i}"),
                t0 + i as u64,
                vec![
                    task("a#b", TaskStatus::Success, CacheSource::Miss, Some(key), 5),
                    task(
                        "c#d",
                        TaskStatus::Success,
                        CacheSource::Miss,
                        Some(&format!("c{i}")),
                        5,
                    ),
                ],
            );
            h.record(
                &r,
                &[
                    fp("a#b", key, &[], &[]),
                    fp("c#d", &format!("c{i}"), &[], &[]),
                ],
            )
            .unwrap();
        }
        let kept: Vec<bool> = keys
            .iter()
            .map(|k| h.fingerprint(k).unwrap().is_some())
            .collect();
        assert_eq!(kept, [false, false, false, true, true, true, true]);
        assert!(h.fingerprint("c6").unwrap().is_some() && h.fingerprint("c2").unwrap().is_none());
        // A key that comes back counts as new again.
        let r = run(
            "again",
            t0 + 100,
            vec![task(
                "a#b",
                TaskStatus::Cached,
                CacheSource::Local,
                Some("k3"),
                1,
            )],
        );
        h.record(&r, &[]).unwrap();
        assert!(h.why("a#b").unwrap().compared);
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(3));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.99), Some(4));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(100));
    }

    fn record_rows(h: &History, rows: Vec<TaskRun>) {
        let t0 = now_ms();
        for (i, t) in rows.into_iter().enumerate() {
            h.record(&run(&format!("r{i:03}"), t0 + i as u64, vec![t]), &[])
                .unwrap();
        }
    }

    #[test]
    fn why_at_an_older_run_compares_the_keys_before_it() {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path());
        let fp = |key: &str, hash: &str| Fingerprint {
            key: key.into(),
            task: "a#b".into(),
            files: vec![("a/src.txt".into(), hash.into())],
            ..Default::default()
        };
        for (i, (key, hash)) in [("k1", "h1"), ("k2", "h2"), ("k3", "h3")]
            .iter()
            .enumerate()
        {
            let rows = vec![task(
                "a#b",
                TaskStatus::Success,
                CacheSource::Miss,
                Some(key),
                10,
            )];
            h.record(
                &run(&format!("run{i}"), now_ms() + i as u64, rows),
                &[fp(key, hash)],
            )
            .unwrap();
        }
        let latest = h.why("a#b").unwrap();
        assert_eq!(latest.key.as_deref(), Some("k3"));
        assert_eq!(latest.previous_key.as_deref(), Some("k2"));
        let older = h.why_at("a#b", Some("run1")).unwrap();
        assert_eq!(older.key.as_deref(), Some("k2"));
        assert_eq!(older.previous_key.as_deref(), Some("k1"));
        assert!(older.compared);
        assert!(matches!(
            h.why_at("a#b", Some("nope")),
            Err(HistoryError::NoSuchRun(_))
        ));
    }

    #[test]
    fn durations_count_executed_successes_only_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let h = open(d.path());
            let ms = [100u64, 300, 200];
            for (i, &m) in ms.iter().enumerate() {
                let rows = vec![
                    task("a#b", TaskStatus::Success, CacheSource::Miss, Some("k"), m),
                    task("c#d", TaskStatus::Cached, CacheSource::Local, Some("k2"), 5),
                ];
                h.record(&run(&format!("r{i}"), 1000 + i as u64, rows), &[])
                    .unwrap();
            }
            // A failure and a hit do not move the median.
            let rows = vec![task(
                "a#b",
                TaskStatus::Failed,
                CacheSource::Miss,
                Some("k"),
                9000,
            )];
            h.record(&run("r9", 2000, rows), &[]).unwrap();
            let ids = vec!["a#b".to_string(), "c#d".to_string()];
            let d1 = h.durations(&ids, DEFAULT_WINDOW).unwrap();
            assert_eq!(d1.get("a#b"), Some(&200));
            assert_eq!(d1.get("c#d"), None);
        }
        let h = open(d.path());
        let d2 = h.durations(&["a#b".to_string()], DEFAULT_WINDOW).unwrap();
        assert_eq!(d2.get("a#b"), Some(&200));
        assert_eq!(
            h.durations(&["a#b".to_string()], 1).unwrap().get("a#b"),
            Some(&200)
        );
    }

    #[test]
    fn stats_and_failure_modes() {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path());
        // stable: executes and hits, never fails.
        let mut rows = Vec::new();
        for i in 0..6u64 {
            rows.push(task(
                "a#stable",
                TaskStatus::Success,
                CacheSource::Miss,
                Some(&format!("s{i}")),
                100 + i,
            ));
            rows.push(task(
                "a#stable",
                TaskStatus::Cached,
                CacheSource::Local,
                Some(&format!("s{i}")),
                1,
            ));
        }
        // recoverable: one retried success among ten.
        for i in 0..10u64 {
            let mut t = task(
                "a#retry",
                TaskStatus::Success,
                CacheSource::Miss,
                Some(&format!("r{i}")),
                50,
            );
            if i == 3 {
                t.attempts = 2;
            }
            rows.push(t);
        }
        // fatal: the same key fails and succeeds, often.
        for i in 0..6 {
            let status = if i % 2 == 0 {
                TaskStatus::Failed
            } else {
                TaskStatus::Success
            };
            rows.push(task("a#fatal", status, CacheSource::Miss, Some("same"), 20));
        }
        // failing but deterministic: different keys fail, none succeeds → stable.
        for i in 0..3 {
            rows.push(task(
                "a#broken",
                TaskStatus::Failed,
                CacheSource::Miss,
                Some(&format!("b{i}")),
                5,
            ));
        }
        record_rows(&h, rows);
        let ids: Vec<String> = ["a#stable", "a#retry", "a#fatal", "a#broken", "a#none"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = h.stats(&ids, 50).unwrap();
        assert!(!s.contains_key("a#none"));
        let st = &s["a#stable"];
        assert_eq!(
            (st.total, st.successes, st.hits, st.executed, st.failures),
            (12, 6, 6, 6, 0)
        );
        assert_eq!(st.failure_mode, FailureMode::Stable);
        assert_eq!(st.p50_ms, Some(103));
        assert_eq!(st.p99_ms, Some(105));
        assert!((st.hit_rate - 0.5).abs() < 1e-9);
        assert_eq!(s["a#retry"].retried, 1);
        assert_eq!(s["a#retry"].failure_mode, FailureMode::FlakyRecoverable);
        assert_eq!(s["a#fatal"].mixed_outcome_keys, 1);
        assert_eq!(s["a#fatal"].failure_mode, FailureMode::FlakyFatal);
        assert_eq!(s["a#broken"].failure_mode, FailureMode::Stable);
        assert_eq!(s["a#broken"].p50_ms, None);

        // The window counts only the newest rows; durations take the newest
        // `window` executed successes.
        let w = h.stats(&ids[..1], 2).unwrap();
        assert_eq!(w["a#stable"].total, 2);
        assert_eq!(w["a#stable"].p50_ms, Some(105));
        let durs = h.durations(&ids, 50).unwrap();
        assert_eq!(durs.get("a#stable"), Some(&103));
        assert!(!durs.contains_key("a#broken"));

        // The memo is dropped for a task a new run touches.
        h.record(
            &run(
                "zzz",
                now_ms() + 10_000,
                vec![task(
                    "a#broken",
                    TaskStatus::Success,
                    CacheSource::Miss,
                    Some("b2"),
                    7,
                )],
            ),
            &[],
        )
        .unwrap();
        let s = h.stats(&ids, 50).unwrap();
        assert_eq!(s["a#broken"].total, 4);
        assert_eq!(s["a#broken"].mixed_outcome_keys, 1);
        assert_eq!(s["a#broken"].failure_mode, FailureMode::FlakyFatal);
        assert_eq!(s["a#stable"].total, 12);
    }

    #[test]
    fn classify_rules() {
        assert_eq!(classify(10, 0, 0, 0), FailureMode::Stable);
        assert_eq!(classify(10, 3, 0, 0), FailureMode::Stable);
        assert_eq!(classify(10, 1, 0, 1), FailureMode::FlakyRecoverable);
        assert_eq!(classify(10, 2, 0, 1), FailureMode::FlakyFatal);
        assert_eq!(classify(10, 0, 1, 0), FailureMode::FlakyRecoverable);
    }

    #[test]
    fn why_names_the_changed_parts() {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path());
        let t0 = now_ms();
        let id = "app#build";
        let mut old = fp(
            id,
            "k1",
            &[("src/a.ts", "h1"), ("src/b.ts", "h2")],
            &[("FOO", "x"), ("BAR", "y")],
        );
        old.upstream = vec![("lib#build".into(), "u1".into())];
        let mut new = fp(
            id,
            "k2",
            &[("src/a.ts", "h1b"), ("src/c.ts", "h3")],
            &[("FOO", "x2"), ("BAR", "y")],
        );
        new.upstream = vec![("lib#build".into(), "u2".into())];
        new.command = "make all".into();
        h.record(
            &run(
                "r1",
                t0,
                vec![task(
                    id,
                    TaskStatus::Success,
                    CacheSource::Miss,
                    Some("k1"),
                    5,
                )],
            ),
            &[old],
        )
        .unwrap();
        // A hit with the same key in between does not count as a change.
        h.record(
            &run(
                "r2",
                t0 + 1,
                vec![task(
                    id,
                    TaskStatus::Cached,
                    CacheSource::Local,
                    Some("k1"),
                    1,
                )],
            ),
            &[],
        )
        .unwrap();
        h.record(
            &run(
                "r3",
                t0 + 2,
                vec![task(
                    id,
                    TaskStatus::Success,
                    CacheSource::Miss,
                    Some("k2"),
                    5,
                )],
            ),
            &[new],
        )
        .unwrap();
        let w = h.why(id).unwrap();
        assert!(w.compared);
        assert_eq!(w.key.as_deref(), Some("k2"));
        assert_eq!(w.previous_key.as_deref(), Some("k1"));
        assert_eq!(w.previous_run_id.as_deref(), Some("r2"));
        let got: Vec<(Component, Option<&str>, ChangeKind)> = w
            .changes
            .iter()
            .map(|c| (c.component, c.name.as_deref(), c.kind))
            .collect();
        assert_eq!(
            got,
            [
                (Component::File, Some("src/a.ts"), ChangeKind::Changed),
                (Component::File, Some("src/b.ts"), ChangeKind::Removed),
                (Component::File, Some("src/c.ts"), ChangeKind::Added),
                (Component::Env, Some("FOO"), ChangeKind::Changed),
                (Component::Command, None, ChangeKind::Changed),
                (Component::Upstream, Some("lib#build"), ChangeKind::Changed),
            ]
        );
        let advice = w.advice.join("\n");
        assert!(advice.contains("the value of FOO changed"), "{advice}");
        assert!(advice.contains("vx why lib#build"), "{advice}");
        assert!(advice.contains("src/a.ts"), "{advice}");

        // Same key throughout; and a key only ever restored.
        h.record(
            &run(
                "r4",
                t0 + 3,
                vec![task(
                    "x#t",
                    TaskStatus::Success,
                    CacheSource::Miss,
                    Some("s"),
                    5,
                )],
            ),
            &[],
        )
        .unwrap();
        let w = h.why("x#t").unwrap();
        assert!(!w.compared && w.previous_key.is_none());
        assert!(w.advice[0].contains("same key"));
        h.record(
            &run(
                "r5",
                t0 + 4,
                vec![task(
                    "x#t",
                    TaskStatus::Cached,
                    CacheSource::Local,
                    Some("s2"),
                    1,
                )],
            ),
            &[],
        )
        .unwrap();
        let w = h.why("x#t").unwrap();
        assert!(!w.compared);
        assert!(
            w.advice.iter().any(|a| a.contains("only ever restored")),
            "{:?}",
            w.advice
        );
        assert!(matches!(h.why("nope#x"), Err(HistoryError::NoTaskRuns(_))));
    }

    #[test]
    fn critical_path_priorities() {
        // 0 → 1 → 2 (2 depends on 1 depends on 0), 3 depends on 0.
        let deps = vec![vec![], vec![0], vec![1], vec![0]];
        let mut dependents = vec![Vec::new(); 4];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let own = [Some(10), Some(100), Some(1000), None];
        // median of [10, 100, 1000] = 100 for node 3.
        assert_eq!(
            critical_path(&deps, &dependents, &own),
            vec![1110, 1100, 1000, 100]
        );
        // Nothing known: 1000 ms each.
        assert_eq!(
            critical_path(&deps, &dependents, &[None; 4]),
            vec![3000, 2000, 1000, 1000]
        );
        // A cycle does not hang; its nodes get their own duration.
        let deps = vec![vec![1], vec![0]];
        let dependents = vec![vec![1], vec![0]];
        assert_eq!(
            critical_path(&deps, &dependents, &[Some(5), Some(7)]),
            vec![5, 7]
        );
        assert!(critical_path(&[], &[], &[]).is_empty());
    }

    /// Two handles stand for two processes (the daemon's and a foreground
    /// run's): each sees the other's records, and memos follow.
    #[test]
    fn two_handles_share_the_history_and_memos_follow() {
        let d = tempfile::tempdir().unwrap();
        let daemon = open(d.path());
        let fg = open(d.path());
        let t0 = now_ms();
        let ok = |ms| {
            task(
                "a#build",
                TaskStatus::Success,
                CacheSource::Miss,
                Some("k1"),
                ms,
            )
        };
        daemon.record(&run("r1", t0, vec![ok(100)]), &[]).unwrap();
        let ids = vec!["a#build".to_string()];
        assert_eq!(daemon.durations(&ids, 50).unwrap()["a#build"], 100);
        assert_eq!(daemon.stats(&ids, 50).unwrap()["a#build"].total, 1);
        // The foreground run records twice; the daemon's memos go.
        fg.record(&run("r2", t0 + 1_000, vec![ok(300)]), &[])
            .unwrap();
        fg.record(&run("r3", t0 + 2_000, vec![ok(300)]), &[])
            .unwrap();
        assert_eq!(daemon.stats(&ids, 50).unwrap()["a#build"].total, 3);
        assert_eq!(daemon.durations(&ids, 50).unwrap()["a#build"], 300);
        assert_eq!(daemon.runs(10).unwrap().len(), 3);
    }

    #[test]
    fn corrupt_and_locked_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let h = open(d.path());
        // Handles share the file (as processes do)...
        let h2 = History::open(d.path()).unwrap();
        drop((h, h2));
        // ...unless one holds it exclusively (a vx before multi-writer).
        let old = redb::Database::create(d.path().join(FILE_NAME)).unwrap();
        let e = History::open(d.path()).unwrap_err();
        assert!(e.is_locked(), "{e}");
        drop(old);
        std::fs::write(
            d.path().join(FILE_NAME),
            b"this is not a redb file at all, not at all",
        )
        .unwrap();
        let e = History::open(d.path()).unwrap_err();
        assert!(e.is_corrupt(), "{e}");
    }

    #[test]
    fn a_damaged_history_is_moved_aside_once_and_never_kept_open() {
        for (what, damage) in crate::cache::damages() {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("cache");
            {
                let h = shared(&dir).unwrap();
                h.record(&run("r1", now_ms(), vec![]), &[]).unwrap();
                release(&dir);
            }
            std::fs::write(dir.join("history.redb.broken-1"), "old").unwrap();
            damage(&dir.join(FILE_NAME));
            // The daemon's handle: one error, nothing kept, then a new history.
            let e = shared(&dir).unwrap_err();
            assert!(e.is_corrupt(), "{what}: {e}");
            assert!(e.to_string().contains("moved it aside"), "{what}: {e}");
            let h = shared(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(h.run(None).unwrap().is_none(), "{what}");
            h.record(&run("r2", now_ms(), vec![]), &[]).unwrap();
            let broken: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("history.redb.broken-")
                })
                .collect();
            assert_eq!(broken.len(), 1, "{what}");
            release(&dir);
        }
    }

    #[test]
    fn shared_handle_follows_a_deleted_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let a = shared(&dir).unwrap();
        assert!(Arc::ptr_eq(&a, &shared(&dir).unwrap()));
        a.record(&run("r1", now_ms(), vec![]), &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let b = shared(&dir).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(b.run(None).unwrap().is_none());
    }
}
/// A size and speed probe (1,000 tasks × 250 runs), not a test: run with
/// `cargo test --release -p vxd --lib perf_probe -- --ignored --nocapture`.
#[cfg(test)]
mod perf_probe {
    use super::*;
    use vx_proto::RunCounts;
    #[test]
    #[ignore]
    fn probe() {
        let d = tempfile::tempdir().unwrap();
        let h = History::open(d.path()).unwrap();
        let n = 1000;
        let t0 = now_ms();
        let start = Instant::now();
        let mut rec_max = Duration::ZERO;
        for r in 0..250u64 {
            let tasks: Vec<TaskRun> = (0..n)
                .map(|i| TaskRun {
                    id: format!("p{i}#build"),
                    status: TaskStatus::Success,
                    cache: if (i + r) % 3 == 0 {
                        CacheSource::Miss
                    } else {
                        CacheSource::Local
                    },
                    key: Some(format!("{:064x}", i * 1000 + (r / 5))),
                    exit_code: Some(0),
                    attempts: 1,
                    duration_ms: 100 + i,
                    start_ms: 0,
                    end_ms: 100,
                    slot: Some(0),
                    cpu_ms: None,
                    peak_rss_bytes: None,
                    blocked_by: None,
                    error: None,
                    persistent: false,
                })
                .collect();
            let fps: Vec<Fingerprint> = tasks
                .iter()
                .filter(|t| t.cache == CacheSource::Miss)
                .map(|t| Fingerprint {
                    key: t.key.clone().unwrap(),
                    task: t.id.clone(),
                    files: (0..20)
                        .map(|f| (format!("src/f{f}.ts"), format!("{:064x}", f)))
                        .collect(),
                    ..Default::default()
                })
                .collect();
            let run = RunRecord {
                run_id: format!("r{r}"),
                argv: vec![],
                requested: vec![],
                started_at: t0 + r,
                ended_at: t0 + r,
                duration_ms: 1,
                exit_code: 0,
                ok: true,
                concurrency: 2,
                counts: RunCounts::default(),
                tasks,
            };
            let s = Instant::now();
            h.record(&run, &fps).unwrap();
            rec_max = rec_max.max(s.elapsed());
        }
        eprintln!(
            "250 runs x {n} tasks recorded in {:?} (max {:?})",
            start.elapsed(),
            rec_max
        );
        let ids: Vec<String> = (0..n).map(|i| format!("p{i}#build")).collect();
        let s = Instant::now();
        let st = h.stats(&ids, 50).unwrap();
        eprintln!("stats cold {:?} ({} tasks)", s.elapsed(), st.len());
        let s = Instant::now();
        h.stats(&ids, 50).unwrap();
        eprintln!("stats memo {:?}", s.elapsed());
        let s = Instant::now();
        h.run(None).unwrap();
        eprintln!("run(None) {:?}", s.elapsed());
        let s = Instant::now();
        h.why("p7#build").unwrap();
        eprintln!("why {:?}", s.elapsed());
        eprintln!(
            "file {} MiB",
            std::fs::metadata(h.path()).unwrap().len() >> 20
        );
        let tx = h.db.begin_write().unwrap();
        let st = tx.stats().unwrap();
        eprintln!(
            "stored {} MiB, metadata {} MiB, fragmented {} MiB",
            st.stored_bytes() >> 20,
            st.metadata_bytes() >> 20,
            st.fragmented_bytes() >> 20
        );
        tx.abort().unwrap();
        let path = h.path().to_path_buf();
        drop(h);
        let s = Instant::now();
        let h = History::open(path.parent().unwrap()).unwrap();
        eprintln!(
            "reopen (compacts) in {:?}: file {} MiB",
            s.elapsed(),
            std::fs::metadata(&path).unwrap().len() >> 20
        );
        drop(h);
        for _ in 0..3 {
            let s = Instant::now();
            let h = History::open_for_run(d.path(), Duration::from_secs(1)).unwrap();
            eprintln!(
                "open_for_run {:?} ({} bytes)",
                s.elapsed(),
                std::fs::metadata(h.path()).map(|m| m.len()).unwrap_or(0)
            );
        }
    }
}
