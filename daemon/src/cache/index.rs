//! `cache::index` — `index.redb` and the [`Store`] handle: opening it in
//! the shared (multi-writer) mode every vx process uses, reading it through
//! at open (damage shows there, not mid-run), moving a damaged one aside
//! (only when no other process has it open), the entries memo and the
//! `generation` row that tells it another process changed the index, the
//! `removals` row that tells it an entry may have gone (a memo of hits
//! survives additions), and the one writer thread per handle that batches commits. Every commit is
//! durable (another process may read it at once). Never reads or writes a
//! blob's bytes and never deletes a blob.

use super::*;

pub(super) const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");

pub(super) const STAMPS: TableDefinition<&str, &[u8]> = TableDefinition::new("stamps");

pub(super) const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");

pub(super) const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");

/// `generation`: bumped by every commit that adds, drops or re-stamps an
/// entry, in any process, so a process that memoises entries knows when
/// another one changed the index.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) const GENERATION: &str = "generation";

/// `removals`: bumped by every commit that can turn a hit into a miss or
/// change what it serves — a drop, a re-stamp, an entry replaced, a
/// clear — in any process; never by an addition (a
/// new entry only turns misses into hits). See [`Store::removals`].
pub(super) const REMOVALS: &str = "removals";

/// An entry's recorded access time is refreshed only when it is older than
/// this, so a repeat fully cached run writes nothing.
pub(super) const TOUCH_EVERY_MS: u64 = 60 * 60 * 1000;

pub(super) enum Op {
    Put {
        key: String,
        manifest: Vec<u8>,
        stamps: Vec<u8>,
    },
    Stamps {
        key: String,
        stamps: Vec<u8>,
    },
    Drop {
        key: String,
    },
    /// Records when an entry was last served (a hint, like stamps).
    Touch {
        key: String,
        at: u64,
    },
    Files(Vec<(String, Record)>),
    Flush(mpsc::Sender<Result<(), String>>),
}

/// A memoised entry and the access time last recorded for it.
pub(super) struct Memo {
    pub(super) entry: Entry,
    pub(super) accessed: u64,
}

/// The local store.
pub struct Store {
    pub(super) dir: PathBuf,
    pub(super) db: Arc<redb::Database>,
    /// In memory only: nothing is kept (see [`Store::ephemeral`]).
    pub(super) ephemeral: bool,
    /// Entries read or written through this store, kept in memory; dropped
    /// by [`Store::refresh`] when another process changed the index.
    pub(super) memo: Mutex<std::collections::HashMap<String, Memo>>,
    /// The read transaction look-ups share (see [`Store::snapshot`]).
    pub(super) snapshot: Snapshot,
    /// The index's `generation` as this store last knew it (its own
    /// commits advance it; another process's make the file's differ).
    pub(super) seen: Arc<std::sync::atomic::AtomicU64>,
    /// The index's `removals` row as of the last [`Store::refresh`].
    pub(super) removals_seen: std::sync::atomic::AtomicU64,
    /// Moves (never back) on every removal this store makes and on every
    /// change of the `removals` row a refresh sees (see [`Store::removals`]).
    pub(super) removals: std::sync::atomic::AtomicU64,
    /// Blob hashes put by this store and not yet named by a queued entry,
    /// with when they were last put and how many puts await their entry
    /// (two saves in flight may put the same bytes): [`Store::prune`] never
    /// deletes them.
    pub(super) pending: Mutex<std::collections::HashMap<String, (Instant, u32)>>,
    /// Held shared while a blob is installed (or found present) and while an
    /// entry is queued; held exclusively by [`Store::prune`] from reading the
    /// index to deleting blobs, so a prune cannot delete a blob that a save
    /// in flight is about to name.
    pub(super) gc: RwLock<()>,
    /// Blobs installed (or found present) by this store whose bytes may not
    /// be durable yet: the writer thread makes them durable (see
    /// [`super::blobs::make_durable`]) before its next commit, so no entry
    /// naming one is committed first.
    pub(super) unsynced: Arc<Mutex<Vec<PathBuf>>>,
    pub(super) writer: Mutex<Option<mpsc::Sender<Op>>>,
    pub(super) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Why the index could not be opened.
pub(super) enum Opened {
    Locked,
    Io(std::io::Error),
    Damaged(String),
}

pub(super) fn create_tables(db: &redb::Database) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(ENTRIES).map_err(|e| e.to_string())?;
    tx.open_table(STAMPS).map_err(|e| e.to_string())?;
    tx.open_table(FILES).map_err(|e| e.to_string())?;
    tx.open_table(ACCESS).map_err(|e| e.to_string())?;
    tx.open_table(META).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Reads every row of `t` once (damage shows here, not in the middle of a run).
pub(crate) fn read_through<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    t: TableDefinition<K, V>,
) -> Result<(), String> {
    match tx.open_table(t) {
        Ok(table) => {
            for row in table.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                let _ = (k.value(), v.value());
            }
            Ok(())
        }
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn read_file_index(
    t: &redb::ReadOnlyTable<&str, &[u8]>,
) -> Result<Vec<(String, Record)>, redb::StorageError> {
    let mut out = Vec::with_capacity(t.len()? as usize);
    for row in t.iter()? {
        let (k, v) = row?;
        if let Some(r) = Record::decode(v.value()) {
            out.push((k.value().to_string(), r));
        }
    }
    Ok(out)
}

/// Reads the first and the last row of `t` (its root and both edges).
pub(crate) fn read_ends<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    t: TableDefinition<K, V>,
) -> Result<(), String> {
    match tx.open_table(t) {
        Ok(table) => {
            table.len().map_err(|e| e.to_string())?;
            for row in [table.first(), table.last()] {
                if let Some((k, v)) = row.map_err(|e| e.to_string())? {
                    let _ = (k.value(), v.value());
                }
            }
            Ok(())
        }
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// redb's page cache for the index of a long-lived holder ([`Store::open_kept`]).
pub const KEPT_PAGE_CACHE_BYTES: usize = 1 << 20;

/// Opens a redb file in the mode every vx process shares it in: any number
/// of processes read and write it at once (one write transaction at a time,
/// across processes; readers never wait). See docs/ARCHITECTURE.md, "The
/// store", for why this mode.
#[cfg(test)]
pub(crate) fn open_shared(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    open_shared_with(path, redb::Builder::new())
}

/// [`open_shared`] with the caller's builder settings (a cache size).
pub(crate) fn open_shared_with(
    path: &Path,
    mut b: redb::Builder,
) -> Result<redb::Database, redb::DatabaseError> {
    b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
        .create(path)
}

/// Opens the index and reads it through, turning redb's errors and panics
/// on a damaged file into [`Opened::Damaged`]; creates missing tables.
pub(super) fn open_checked(
    path: &Path,
    page_cache: Option<usize>,
) -> Result<(redb::Database, Vec<(String, Record)>), Opened> {
    let r = quietly(|| {
        let mut b = redb::Builder::new();
        if let Some(bytes) = page_cache {
            b.set_cache_size(bytes);
        }
        let db = match open_shared_with(path, b) {
            Ok(db) => db,
            // Held exclusively by a vx that does not share it (before
            // multi-writer), or for a moment by one moving it aside.
            Err(
                redb::DatabaseError::DatabaseAlreadyOpen
                | redb::DatabaseError::LockProtocolMismatch,
            ) => return Err(Opened::Locked),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(Opened::Io(e));
            }
            Err(e) => return Err(Opened::Damaged(e.to_string())),
        };
        let tx = db
            .begin_read()
            .map_err(|e| Opened::Damaged(e.to_string()))?;
        let mut missing = false;
        for r in [
            read_through(&tx, ENTRIES),
            read_through(&tx, STAMPS),
            read_through(&tx, ACCESS),
            read_through(&tx, META),
        ] {
            r.map_err(Opened::Damaged)?;
        }
        // The file index is read through by decoding it (the caller that
        // wants it gets it without a second pass).
        let files = match tx.open_table(FILES) {
            Ok(t) => read_file_index(&t).map_err(|e| Opened::Damaged(e.to_string()))?,
            Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => return Err(Opened::Damaged(e.to_string())),
        };
        for exists in [
            tx.open_table(ENTRIES).is_ok(),
            tx.open_table(STAMPS).is_ok(),
            tx.open_table(FILES).is_ok(),
            tx.open_table(ACCESS).is_ok(),
            tx.open_table(META).is_ok(),
        ] {
            missing |= !exists;
        }
        drop(tx);
        // Create the tables once (a write transaction costs an fsync; most
        // opens find them already there).
        if missing {
            create_tables(&db).map_err(Opened::Damaged)?;
        }
        Ok((db, files))
    });
    match r {
        Ok(r) => r,
        Err(panic) => Err(Opened::Damaged(format!(
            "the index reader panicked: {panic}"
        ))),
    }
}

/// Moves a damaged redb file aside as `<name>.broken-<unix s>`, removing
/// older `<name>.broken-*` files first (at most one is kept); returns the
/// new path.
pub fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{name}.broken-");
    if let Some(dir) = path.parent()
        && let Ok(rd) = fs::read_dir(dir)
    {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix)
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = path.with_file_name(format!("{prefix}{secs}"));
    fs::rename(path, &aside)?;
    Ok(aside)
}

std::thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic (redb panics on some damaged files) and
/// keeping the panic hook quiet for it on this thread; the panic's message
/// on failure.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                prev(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

/// Warnings about a cache dir (a damaged index moved aside) waiting for the
/// next run to show them.
pub(super) static NOTICES: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

pub(super) fn push_notice(dir: &Path, msg: String) {
    if let Ok(mut n) = NOTICES.lock() {
        n.push((dir.to_path_buf(), msg));
    }
}

/// Takes the warnings queued for the cache at `dir` (each is shown once).
pub fn take_notice(dir: &Path) -> Vec<String> {
    let Ok(mut n) = NOTICES.lock() else {
        return Vec::new();
    };
    let (mine, rest): (Vec<_>, Vec<_>) = n.drain(..).partition(|(d, _)| d == dir);
    *n = rest;
    mine.into_iter().map(|(_, m)| m).collect()
}

impl Store {
    /// Opens (or creates) the store. If another process holds the index,
    /// waits up to `wait` and calls `on_wait` once. A damaged index (redb
    /// reports an error or panics while opening or reading it through) is
    /// moved aside as `index.redb.broken-<unix s>` (older ones are removed)
    /// and replaced by an empty one; the warning for that is queued for
    /// [`take_notice`].
    pub fn open(dir: &Path, wait: Duration, on_wait: &mut dyn FnMut()) -> Result<Self, CacheError> {
        Self::open_loaded(dir, wait, on_wait).map(|(s, _)| s)
    }

    /// [`Store::open`], also returning the persisted file index (read while
    /// the open reads the index through, so it costs no second pass).
    pub fn open_loaded(
        dir: &Path,
        wait: Duration,
        on_wait: &mut dyn FnMut(),
    ) -> Result<(Self, Vec<(String, Record)>), CacheError> {
        Self::open_loaded_with(dir, wait, on_wait, None)
    }

    /// [`Store::open`] for a long-lived holder (the daemon): redb's page
    /// cache is capped at [`KEPT_PAGE_CACHE_BYTES`]. Entries a run looks up
    /// are memoised above redb (so its cache only saves re-reads of pages
    /// the OS has cached anyway); redb's default cap (1 GiB) kept every page
    /// the open's read-through and the writer touched resident for the
    /// daemon's life: 4–5 MiB of its memory at 3,000 entries, 5× that at
    /// 15,000.
    pub fn open_kept(
        dir: &Path,
        wait: Duration,
        on_wait: &mut dyn FnMut(),
    ) -> Result<Self, CacheError> {
        Self::open_loaded_with(dir, wait, on_wait, Some(KEPT_PAGE_CACHE_BYTES)).map(|(s, _)| s)
    }

    fn open_loaded_with(
        dir: &Path,
        wait: Duration,
        on_wait: &mut dyn FnMut(),
        page_cache: Option<usize>,
    ) -> Result<(Self, Vec<(String, Record)>), CacheError> {
        fs::create_dir_all(dir.join("cas")).map_err(io(dir))?;
        fs::create_dir_all(dir.join("tmp")).map_err(io(dir))?;
        let ignore = dir.join(".gitignore");
        if fs::symlink_metadata(&ignore).is_err() {
            let _ = fs::write(&ignore, GITIGNORE);
        }
        let path = dir.join(INDEX_FILE);
        let start = Instant::now();
        let mut warned = false;
        let mut moved = false;
        let db = loop {
            match open_checked(&path, page_cache) {
                Ok(opened) => break opened,
                Err(Opened::Locked) => {
                    if start.elapsed() > wait {
                        return Err(CacheError::Locked(dir.to_path_buf(), wait.as_secs()));
                    }
                    if !warned {
                        on_wait();
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Opened::Io(e)) => return Err(CacheError::Io { path, source: e }),
                Err(Opened::Damaged(why)) if !moved => {
                    // The cache is only a cache: move the damaged index
                    // aside and start empty rather than refusing to run;
                    // but never a file another process has open (it may be
                    // writing it): then this process goes on without it.
                    let Some(_held) = share::unshared(&path) else {
                        return Err(CacheError::Db(format!(
                            "the cache index {} is damaged ({why}) and another vx process has it open: left in place",
                            path.display()
                        )));
                    };
                    let aside = move_aside(&path).map_err(io(&path))?;
                    let msg = format!(
                        "the cache index {} is damaged ({why}); moved it aside to {} and started an empty one: this run is a cold run",
                        path.display(),
                        aside.display()
                    );
                    // The next run shows it as a warning; the daemon's log
                    // keeps it too.
                    tracing::info!("{msg}");
                    push_notice(dir, msg);
                    moved = true;
                }
                Err(Opened::Damaged(why)) => {
                    return Err(CacheError::Db(format!(
                        "cannot create a new cache index at {}: {why}",
                        path.display()
                    )));
                }
            }
        };
        let (db, files) = db;
        Ok((Self::with_db(dir, db, false)?, files))
    }

    /// A store that keeps nothing: an in-memory index and no blob writes
    /// (every put fails). For a run whose cache directory cannot be used.
    pub fn ephemeral(dir: &Path) -> Result<Self, CacheError> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(dberr)?;
        create_tables(&db).map_err(CacheError::Db)?;
        Self::with_db(dir, db, true)
    }

    /// Whether this is an [`Store::ephemeral`] store.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    pub(super) fn with_db(
        dir: &Path,
        db: redb::Database,
        ephemeral: bool,
    ) -> Result<Self, CacheError> {
        let db = Arc::new(db);
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(
            generation_of(&db).unwrap_or(0),
        ));
        let removals_seen = std::sync::atomic::AtomicU64::new(removals_of(&db).unwrap_or(0));
        let (tx, rx) = mpsc::channel::<Op>();
        let snapshot: Snapshot = Arc::new(Mutex::new(None));
        let unsynced: Arc<Mutex<Vec<PathBuf>>> = Arc::new(Mutex::new(Vec::new()));
        let (wdb, wseen, wsnap) = (db.clone(), seen.clone(), snapshot.clone());
        let (wdir, wunsynced) = (dir.join("cas"), unsynced.clone());
        let thread = std::thread::Builder::new()
            .name("vx-cache-writer".into())
            .spawn(move || writer_loop(wdb, wseen, wsnap, (wdir, wunsynced), rx))
            .map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            ephemeral,
            memo: Mutex::new(std::collections::HashMap::new()),
            snapshot,
            seen,
            removals_seen,
            removals: std::sync::atomic::AtomicU64::new(0),
            pending: Mutex::new(std::collections::HashMap::new()),
            gc: RwLock::new(()),
            unsynced,
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Forgets the memoised entries when another process changed the index
    /// since this store last looked (a foreground run beside the daemon
    /// stored, dropped or re-stamped entries, or cleaned the cache): the
    /// next reads see the file. One small read; the daemon calls it before
    /// each run.
    pub fn refresh(&self) {
        use std::sync::atomic::Ordering;
        self.forget_snapshot();
        if let Some(r) = removals_of(&self.db)
            && self.removals_seen.swap(r, Ordering::AcqRel) != r
        {
            self.removals.fetch_add(1, Ordering::AcqRel);
        }
        let Some(now) = generation_of(&self.db) else {
            return;
        };
        if now != self.seen.load(Ordering::Acquire) {
            if let Ok(mut memo) = self.memo.lock() {
                memo.clear();
            }
            self.seen.store(now, Ordering::Release);
        }
    }

    /// The index's `generation` as this store last knew it: as of its last
    /// [`Store::refresh`], advanced by its own commits (see [`META`]). Two
    /// equal readings, each right after a refresh, mean no process added,
    /// dropped or re-stamped an entry, nor cleaned the index, in between.
    pub fn generation(&self) -> u64 {
        self.seen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A counter that moves whenever an entry may have been dropped,
    /// re-stamped or replaced (by this store at once; by any process as of
    /// the next [`Store::refresh`]), and never on an addition. Two equal
    /// readings of the same open store, the later one right after a
    /// refresh, mean every entry present at the first is still there with
    /// the same manifest and stamps (what a daemon's per-task memo of hits
    /// relies on: a run's own saves do not invalidate it).
    pub fn removals(&self) -> u64 {
        self.removals.load(std::sync::atomic::Ordering::Acquire)
    }

    /// This run's hold on the cache directory, which `cache clean` (any
    /// process) waits for; `None` for an ephemeral store or when the lock
    /// file cannot be made. Waits while a clean is under way.
    pub fn run_lease(&self) -> Option<RunLease> {
        if self.ephemeral {
            return None;
        }
        share::run_lease(&self.dir)
    }

    /// The cross-process execution lock of the task `slot` names (see
    /// [`TaskLock`]); `None` for an ephemeral store or when the lock file
    /// cannot be made.
    pub fn task_lock(&self, slot: &str) -> Option<super::TaskLock> {
        if self.ephemeral {
            return None;
        }
        super::share::TaskLock::open(&self.dir, slot)
    }

    pub(super) fn send(&self, op: Op) {
        if let Ok(g) = self.writer.lock()
            && let Some(tx) = g.as_ref()
        {
            let _ = tx.send(op);
        }
    }

    /// Waits until everything queued is committed.
    pub fn flush(&self) -> Result<(), CacheError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        let r = match rx.recv() {
            Ok(r) => r.map_err(CacheError::Db),
            Err(_) => Err(CacheError::Db("cache writer stopped".into())),
        };
        // The end of a daemon run (or a prune): look-ups start afresh.
        self.forget_snapshot();
        r
    }

    /// Flushes and stops the writer thread.
    pub fn close(&self) -> Result<(), CacheError> {
        let r = self.flush();
        if let Ok(mut g) = self.writer.lock() {
            g.take();
        }
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
        r
    }

    /// The manifest and stamps for `key`, if any. An undecodable entry is a
    /// miss. A found entry counts as accessed (see [`Store::touch`]).
    pub fn get(&self, key: &str) -> Result<Option<Entry>, CacheError> {
        if let Ok(mut memo) = self.memo.lock()
            && let Some(m) = memo.get_mut(key)
        {
            let hit = m.entry.clone();
            self.touch_memo(key, m);
            return Ok(Some(hit));
        }
        let r = self.snapshot()?;
        let Some(v) = r.entries.get(key).map_err(dberr)? else {
            return Ok(None);
        };
        let m: Manifest = match serde_json::from_slice(v.value()) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        if m.version != MANIFEST_VERSION || m.key != key {
            return Ok(None);
        }
        let st = r
            .stamps
            .get(key)
            .map_err(dberr)?
            .and_then(|v| serde_json::from_slice::<Stamps>(v.value()).ok());
        let accessed = match &r.access {
            Some(t) => t.get(key).map_err(dberr)?.map(|v| v.value()),
            None => None,
        }
        .unwrap_or(m.created_at);
        let hit = Arc::new((m, st));
        if let Ok(mut memo) = self.memo.lock() {
            let mut m = Memo {
                entry: hit.clone(),
                accessed,
            };
            self.touch_memo(key, &mut m);
            memo.insert(key.to_string(), m);
        }
        Ok(Some(hit))
    }

    /// The read transaction look-ups share until the next commit, flush,
    /// refresh or drop (one per run, not one per task, when the run saves
    /// nothing: a read transaction of a shared
    /// file locks and reads the file's header). Entries this process puts
    /// meanwhile are in the memo; other processes' show from the next run.
    /// The tables a look-up reads are opened once with it (opening one
    /// looks its name up in the file's table of tables).
    fn snapshot(&self) -> Result<Arc<Reader>, CacheError> {
        let mut g = self
            .snapshot
            .lock()
            .map_err(|_| CacheError::Db("cache snapshot lock poisoned".into()))?;
        if let Some(r) = g.as_ref() {
            return Ok(r.clone());
        }
        let tx = self.db.begin_read().map_err(dberr)?;
        let r = Arc::new(Reader {
            entries: tx.open_table(ENTRIES).map_err(dberr)?,
            stamps: tx.open_table(STAMPS).map_err(dberr)?,
            access: tx.open_table(ACCESS).ok(),
            _tx: tx,
        });
        *g = Some(r.clone());
        Ok(r)
    }

    /// Lets go of the shared read transaction (the next look-up sees the
    /// file as it is then; a held one would keep the pages it reads from
    /// being reused by any process).
    pub(super) fn forget_snapshot(&self) {
        if let Ok(mut g) = self.snapshot.lock() {
            g.take();
        }
    }

    /// Records that the entry `key` was served now, for [`Store::prune`]'s
    /// least-recently-used order. Costs a map look-up: the write is queued to
    /// the writer thread (as a hint, without an fsync) and only when the
    /// recorded time is more than an hour old, so each entry is written at
    /// most once an hour. [`Store::get`] already calls this for every entry
    /// it finds.
    pub fn touch(&self, key: &str) {
        if let Ok(mut memo) = self.memo.lock()
            && let Some(m) = memo.get_mut(key)
        {
            self.touch_memo(key, m);
            return;
        }
        // Not read through this store: record it unconditionally.
        self.send(Op::Touch {
            key: key.to_string(),
            at: now_ms(),
        });
    }

    pub(super) fn touch_memo(&self, key: &str, m: &mut Memo) {
        let now = now_ms();
        if now.saturating_sub(m.accessed) >= TOUCH_EVERY_MS {
            m.accessed = now;
            self.send(Op::Touch {
                key: key.to_string(),
                at: now,
            });
        }
    }

    pub fn load_file_index(&self) -> Result<Vec<(String, Record)>, CacheError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(FILES).map_err(dberr)?;
        read_file_index(&t).map_err(dberr)
    }

    pub fn save_file_index(&self, updates: Vec<(String, Record)>) {
        if !updates.is_empty() {
            self.send(Op::Files(updates));
        }
    }

    /// Queues an entry; it is committed after its blobs (already durable).
    pub fn put_entry(&self, m: &Manifest, stamps: &Stamps) {
        let _gc = self.gc.read();
        if let Ok(mut memo) = self.memo.lock() {
            memo.insert(
                m.key.clone(),
                Memo {
                    entry: Arc::new((m.clone(), Some(stamps.clone()))),
                    accessed: m.created_at,
                },
            );
        }
        let manifest = serde_json::to_vec(m).unwrap_or_default();
        let stamps = serde_json::to_vec(stamps).unwrap_or_default();
        self.send(Op::Put {
            key: m.key.clone(),
            manifest,
            stamps,
        });
        // Queued before any prune can read the index (which flushes first):
        // its blobs no longer need the pending guard.
        if let Ok(mut p) = self.pending.lock() {
            for d in m.outputs.iter().map(|o| &o.digest).chain([&m.log]) {
                if let Some((_, n)) = p.get_mut(&d.hash) {
                    *n -= 1;
                    if *n == 0 {
                        p.remove(&d.hash);
                    }
                }
            }
        }
    }

    pub fn put_stamps(&self, key: &str, stamps: &Stamps) {
        if let Ok(mut memo) = self.memo.lock()
            && let Some(m) = memo.get_mut(key)
        {
            m.entry = Arc::new((m.entry.0.clone(), Some(stamps.clone())));
        }
        self.send(Op::Stamps {
            key: key.to_string(),
            stamps: serde_json::to_vec(stamps).unwrap_or_default(),
        });
    }

    pub fn drop_entry(&self, key: &str) {
        self.removals
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(mut memo) = self.memo.lock() {
            memo.remove(key);
        }
        self.forget_snapshot();
        self.send(Op::Drop {
            key: key.to_string(),
        });
    }

    /// Empties the index in place, in one durable commit that every process
    /// with it open sees at its next read (their memos go with the
    /// generation): what `cache clean` does to an index another process
    /// has open.
    pub fn clear(&self) -> Result<(), CacheError> {
        self.flush()?;
        let tx = self.db.begin_write().map_err(dberr)?;
        for t in [ENTRIES, STAMPS, FILES] {
            tx.delete_table(t).map_err(dberr)?;
            tx.open_table(t).map_err(dberr)?;
        }
        tx.delete_table(ACCESS).map_err(dberr)?;
        tx.open_table(ACCESS).map_err(dberr)?;
        {
            let mut meta = tx.open_table(META).map_err(dberr)?;
            let old = meta.get(GENERATION).map_err(dberr)?.map(|v| v.value());
            meta.insert(GENERATION, old.unwrap_or(0) + 1)
                .map_err(dberr)?;
            let old = meta.get(REMOVALS).map_err(dberr)?.map(|v| v.value());
            meta.insert(REMOVALS, old.unwrap_or(0) + 1).map_err(dberr)?;
        }
        self.removals
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tx.commit().map_err(dberr)?;
        if let Ok(mut memo) = self.memo.lock() {
            memo.clear();
        }
        self.forget_snapshot();
        Ok(())
    }
}

impl Drop for Store {
    /// The last holder of a store flushes it and releases the index (and
    /// its file lock, so another process can open it).
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The index's `removals` (see [`REMOVALS`]); `None` when it cannot be read.
pub(super) fn removals_of(db: &redb::Database) -> Option<u64> {
    let tx = db.begin_read().ok()?;
    match tx.open_table(META) {
        Ok(t) => Some(t.get(REMOVALS).ok()?.map(|v| v.value()).unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Some(0),
        Err(_) => None,
    }
}

/// The index's `generation` (see [`META`]); `None` when it cannot be read.
pub(super) fn generation_of(db: &redb::Database) -> Option<u64> {
    let tx = db.begin_read().ok()?;
    match tx.open_table(META) {
        Ok(t) => Some(t.get(GENERATION).ok()?.map(|v| v.value()).unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Some(0),
        Err(_) => None,
    }
}

/// How long the writer gathers queued writes into one commit before it
/// commits them (a `Flush` commits at once). Every commit of a shared file
/// is durable (a lock and two fsyncs), so restoring 3,000 tasks' stamps one
/// commit per batch cost ~600 commits; gathered, a run costs a few. A write
/// only becomes visible to other processes later by this much; this
/// process sees it at once (the memo).
const COMMIT_WINDOW: Duration = Duration::from_millis(100);
/// At most this many writes in one commit.
const MAX_BATCH: usize = 4096;

/// The writes of one commit: `first`, then whatever arrives within
/// [`COMMIT_WINDOW`], up to a `Flush` (which ends the gathering at once).
fn gather(first: Op, rx: &mpsc::Receiver<Op>) -> Vec<Op> {
    let deadline = std::time::Instant::now() + COMMIT_WINDOW;
    let mut batch = vec![first];
    loop {
        if batch.len() >= MAX_BATCH || matches!(batch.last(), Some(Op::Flush(_))) {
            // Whatever is already queued still joins this commit.
            while let Ok(op) = rx.try_recv() {
                batch.push(op);
            }
            return batch;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(op) => batch.push(op),
            Err(_) => return batch,
        }
    }
}

/// The read transaction look-ups share, also held by the writer thread,
/// which lets go of it after each commit: a read transaction keeps every
/// page it can see from being reused, so one held across a run's commits
/// would grow the file (and the memory redb caches it in) with every save.
pub(super) type Snapshot = Arc<Mutex<Option<Arc<Reader>>>>;

/// A read transaction with the tables [`Store::get`] reads, opened once.
pub(super) struct Reader {
    pub(super) entries: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    pub(super) stamps: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    /// Absent in an index written before access times were kept.
    pub(super) access: Option<redb::ReadOnlyTable<&'static str, u64>>,
    pub(super) _tx: redb::ReadTransaction,
}

pub(super) fn writer_loop(
    db: Arc<redb::Database>,
    seen: Arc<std::sync::atomic::AtomicU64>,
    snapshot: Snapshot,
    (cas, unsynced): (PathBuf, Arc<Mutex<Vec<PathBuf>>>),
    rx: mpsc::Receiver<Op>,
) {
    use std::sync::atomic::Ordering;
    while let Ok(first) = rx.recv() {
        let batch = gather(first, &rx);
        let mut flushes = Vec::new();
        let result = (|| -> Result<(), String> {
            let writes: Vec<&Op> = batch
                .iter()
                .filter(|o| !matches!(o, Op::Flush(_)))
                .collect();
            if writes.is_empty() {
                return Ok(());
            }
            // The blobs the entries name are made durable first, all at
            // once. (Every blob put before its entry was queued is in the
            // list: the put notes it before the save queues the entry.)
            let blobs = unsynced
                .lock()
                .map(|mut u| std::mem::take(&mut *u))
                .unwrap_or_default();
            if let Err(e) = super::blobs::make_durable(&cas, &blobs) {
                // Nothing of this batch is committed; the next one retries.
                if let Ok(mut u) = unsynced.lock() {
                    u.extend(blobs);
                }
                return Err(format!("cannot make cache blobs durable: {e}"));
            }
            // Every commit is durable: a commit another process can read
            // must be on disk first (redb refuses non-durable commits in a
            // shared file). A batch groups what queued meanwhile.
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            // Entries, drops and stamps change what a memo holds: bump the
            // generation (one more row in the same commit).
            let bump = writes
                .iter()
                .any(|o| matches!(o, Op::Put { .. } | Op::Stamps { .. } | Op::Drop { .. }));
            let mut bumped = None;
            {
                if bump {
                    let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
                    let old = meta
                        .get(GENERATION)
                        .map_err(|e| e.to_string())?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    meta.insert(GENERATION, old + 1)
                        .map_err(|e| e.to_string())?;
                    bumped = Some(old);
                }
                let mut entries = tx.open_table(ENTRIES).map_err(|e| e.to_string())?;
                let mut stamps = tx.open_table(STAMPS).map_err(|e| e.to_string())?;
                let mut files = tx.open_table(FILES).map_err(|e| e.to_string())?;
                let mut access = tx.open_table(ACCESS).map_err(|e| e.to_string())?;
                // Whether this commit can turn a hit into a miss (see
                // [`REMOVALS`]).
                let mut removes = false;
                for op in writes {
                    match op {
                        Op::Put {
                            key,
                            manifest,
                            stamps: st,
                        } => {
                            let old = entries
                                .insert(key.as_str(), manifest.as_slice())
                                .map_err(|e| e.to_string())?;
                            // Any entry replaced (a forced run, a race of
                            // two executions) counts as a removal.
                            removes |= old.is_some();
                            stamps
                                .insert(key.as_str(), st.as_slice())
                                .map_err(|e| e.to_string())?;
                            // A fresh entry's access time is its creation.
                            access.remove(key.as_str()).map_err(|e| e.to_string())?;
                        }
                        Op::Stamps { key, stamps: st } => {
                            removes = true;
                            stamps
                                .insert(key.as_str(), st.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                        Op::Drop { key } => {
                            removes = true;
                            entries.remove(key.as_str()).map_err(|e| e.to_string())?;
                            stamps.remove(key.as_str()).map_err(|e| e.to_string())?;
                            access.remove(key.as_str()).map_err(|e| e.to_string())?;
                        }
                        Op::Touch { key, at } => {
                            // Only for an entry that (still) exists.
                            if entries
                                .get(key.as_str())
                                .map_err(|e| e.to_string())?
                                .is_some()
                            {
                                access
                                    .insert(key.as_str(), *at)
                                    .map_err(|e| e.to_string())?;
                            }
                        }
                        Op::Files(updates) => {
                            for (p, r) in updates {
                                files
                                    .insert(p.as_str(), r.encode().as_slice())
                                    .map_err(|e| e.to_string())?;
                            }
                        }
                        Op::Flush(_) => {}
                    }
                }
                if removes {
                    let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
                    let old = meta
                        .get(REMOVALS)
                        .map_err(|e| e.to_string())?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    meta.insert(REMOVALS, old + 1).map_err(|e| e.to_string())?;
                }
            }
            tx.commit().map_err(|e| e.to_string())?;
            // Look-ups start a fresh read transaction after a commit, so
            // the pages this commit freed can be reused by the next one.
            if let Ok(mut g) = snapshot.lock() {
                g.take();
            }
            // Our own commit keeps our memo valid; if another process had
            // committed before it, `seen` stays behind and the next
            // `refresh` drops the memo.
            if let Some(old) = bumped {
                let _ = seen.compare_exchange(old, old + 1, Ordering::AcqRel, Ordering::Acquire);
            }
            Ok(())
        })();
        if let Err(e) = &result {
            tracing::error!("cache index commit failed: {e}");
        }
        for op in batch {
            if let Op::Flush(tx) = op {
                flushes.push(tx);
            }
        }
        for f in flushes {
            let _ = f.send(result.clone());
        }
    }
}
