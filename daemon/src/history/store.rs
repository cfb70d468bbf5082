//! `history::store` — `history.redb` and the [`History`] handle: opening
//! it in the shared (multi-writer) mode every vx process uses, reading it
//! through at open, moving a damaged file aside (only when no other process
//! has it open), compaction, and the memos (statistics, duration lists)
//! with the `generation` row that tells a handle another process wrote.
//! Never decides what a record holds or derives statistics.

use super::*;

pub(super) const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");

pub(super) const RUN_IDS: TableDefinition<&str, u64> = TableDefinition::new("run_ids");

/// (run seq, task id) → a task row: a run's rows are contiguous, so a
/// record appends them and retention drops a range.
pub(super) const TASK_ROWS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("run_rows");

/// The rows as files before `run_rows` kept them, (task id, run seq) → a
/// task row: converted at open ([`convert_task_rows`]), then deleted.
pub(super) const OLD_TASK_ROWS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("task_rows");

pub(super) const OUTCOMES: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("outcomes");

pub(super) const KEY_REFS: TableDefinition<&str, u64> = TableDefinition::new("key_refs");

pub(super) const FINGERPRINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("fingerprints");

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Task id → durations (ms) of its newest executed successful runs, oldest
/// first, at most [`DEFAULT_WINDOW`]: what the scheduler reads, kept apart so
/// it never scans rows.
pub(super) const DURATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("durations");

/// The history's page cache: it is read little, and a daemon keeps it open.
pub(super) const CACHE_BYTES: usize = 2 << 20;

/// The `meta` row bumped by every commit, in any process: a handle whose
/// memos were computed at another generation drops them.
pub(super) const GENERATION: &str = "generation";

/// Files smaller than this are never compacted.
pub(super) const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Compacts the file when it is big and mostly free pages (redb does not
/// give freed pages back; a history that keeps dropping old runs grows
/// to several times its live size). Only at open, when nothing else
/// holds a transaction; a failure only costs disk space.
pub(super) fn compact_if_sparse(db: &mut redb::Database, path: &Path) {
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

/// Converts a file written before `run_rows` (rows keyed by task, then
/// run): its `task_rows` become `run_rows` and go, in one write
/// transaction. Several processes may open the file at once: redb
/// serialises their write transactions, and one that finds the old table
/// gone (another converted it) does nothing. Rows of no retained run (left
/// by dropping an undecodable run) are not carried over, and such rows
/// already in `run_rows` go: an older vx, which knows only `task_rows`,
/// may have recorded and dropped runs since an earlier conversion.
pub(super) fn convert_task_rows(db: &redb::Database) -> Result<bool, HistoryError> {
    let old_exists = |tx: &redb::ReadTransaction| match tx.open_table(OLD_TASK_ROWS) {
        Ok(_) => Ok(true),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(HistoryError::from(e)),
    };
    if !old_exists(&db.begin_read()?)? {
        return Ok(false);
    }
    let start = Instant::now();
    let tx = db.begin_write()?;
    let n = {
        let old = match tx.open_table(OLD_TASK_ROWS) {
            Ok(t) => Some(t),
            // Converted by another process meanwhile.
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        match old {
            None => None,
            Some(old) => {
                let runs = tx.open_table(RUNS)?;
                let mut retained = HashSet::new();
                for item in runs.iter()? {
                    retained.insert(item?.0.value());
                }
                let mut rows = tx.open_table(TASK_ROWS)?;
                rows.retain(|(seq, _), _| retained.contains(&seq))?;
                let mut n = 0u64;
                for item in old.iter()? {
                    let (k, v) = item?;
                    let (task, seq) = k.value();
                    if retained.contains(&seq) {
                        rows.insert((seq, task), v.value())?;
                        n += 1;
                    }
                }
                Some(n)
            }
        }
    };
    let Some(n) = n else {
        tx.abort()?;
        return Ok(false);
    };
    tx.delete_table(OLD_TASK_ROWS)
        .map_err(|e| HistoryError::Db(e.to_string()))?;
    History::bump(&tx)?;
    tx.commit()?;
    tracing::info!(
        "converted {n} history rows to the run-major layout in {:?}",
        start.elapsed()
    );
    Ok(true)
}

/// Memoised statistics by (task, window); `generation` counts commits.
#[derive(Default)]
pub(super) struct Memo {
    pub(super) generation: u64,
    pub(super) stats: HashMap<(String, usize), TaskStats>,
}

/// The run history of one cache directory.
pub struct History {
    pub(super) path: PathBuf,
    pub(super) db: redb::Database,
    pub(super) max_runs: usize,
    pub(super) max_age: Duration,
    /// Statistics by (task, window), dropped for every task a write touches.
    pub(super) memo: Mutex<Memo>,
    /// The newest executed successful durations by task, as in the
    /// `durations` table (plus announced runs not yet written), so
    /// scheduling reads no file.
    pub(super) lists: Mutex<HashMap<String, Vec<u64>>>,
    /// Bumped whenever a list in `lists` changes.
    pub(super) lists_gen: std::sync::atomic::AtomicU64,
    /// The file's [`GENERATION`] as this handle last knew it (its own
    /// commits advance it; another process's make the file's differ).
    pub(super) seen: std::sync::atomic::AtomicU64,
    /// (dev, ino) of the file when opened: a `vx cache clean` replaces it.
    pub(super) ident: (u64, u64),
    /// Records announced but not yet committed (the daemon records after
    /// answering); readers wait for them, so a `vx why` right after a run
    /// sees it.
    pub(super) pending: (Mutex<usize>, std::sync::Condvar),
}

impl History {
    /// The file's generation; `None` when it cannot be read.
    pub(super) fn file_generation(&self) -> Option<u64> {
        let tx = self.db.begin_read().ok()?;
        let meta = tx.open_table(META).ok()?;
        Some(meta.get(GENERATION).ok()?.map(|v| v.value()).unwrap_or(0))
    }

    /// Drops the memoised statistics and duration lists when another
    /// process wrote the file since this handle last looked (a foreground
    /// run beside the daemon recorded a run).
    pub(super) fn sync(&self) {
        use std::sync::atomic::Ordering;
        let Some(now) = self.file_generation() else {
            return;
        };
        if now != self.seen.load(Ordering::Acquire) {
            self.forget();
            self.seen.store(now, Ordering::Release);
        }
    }

    pub(super) fn forget(&self) {
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
    pub(super) fn bump(tx: &redb::WriteTransaction) -> Result<u64, HistoryError> {
        let mut meta = tx.open_table(META)?;
        let old = meta.get(GENERATION)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(GENERATION, old + 1)?;
        Ok(old)
    }

    /// After a commit that bumped the generation from `old`: our memos stay
    /// valid only if nobody else had committed before it.
    pub(super) fn committed(&self, old: u64) {
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

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("path", &self.path)
            .field("max_runs", &self.max_runs)
            .field("max_age", &self.max_age)
            .finish()
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
    pub(super) fn open_opts(cache_dir: &Path, compact: bool) -> Result<History, HistoryError> {
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

    pub(super) fn open_checked(cache_dir: &Path, compact: bool) -> Result<History, HistoryError> {
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
        // Before the read-through: a file in the old layout is converted
        // (a failure, or a panic, here is damage like any other).
        convert_task_rows(&db).map_err(|e| match e {
            HistoryError::Corrupt { message, .. } => corrupt(message),
            e => e,
        })?;
        {
            // The daemon and the readers (`compact`: once per handle) read
            // every table through; a run's own handle reads the small
            // tables through and only the ends of those that grow with the
            // history (a 100 MiB history would cost a run ~300 ms, and
            // `outcomes` and `key_refs` hold a row per task and key):
            // damage found later in those costs that run's record (a
            // warning; the record catches redb's panics), never the run.
            use crate::cache::{read_ends, read_through};
            let tx = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
            for r in [
                read_through(&tx, RUN_IDS),
                read_through(&tx, META),
                read_through(&tx, DURATIONS),
            ] {
                r.map_err(&corrupt)?;
            }
            let r = if compact {
                [
                    read_through(&tx, RUNS),
                    read_through(&tx, TASK_ROWS),
                    read_through(&tx, FINGERPRINTS),
                    read_through(&tx, OUTCOMES),
                    read_through(&tx, KEY_REFS),
                ]
            } else {
                [
                    read_ends(&tx, RUNS),
                    read_ends(&tx, TASK_ROWS),
                    read_ends(&tx, FINGERPRINTS),
                    read_ends(&tx, OUTCOMES),
                    read_ends(&tx, KEY_REFS),
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
                            .and_then(|v| decode_durations(v.value()))
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
}
