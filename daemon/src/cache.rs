//! `cache` — the local content-addressed store, its index, and output
//! ownership (collect, wipe, restore, up-to-date checks).
//!
//! Layout under the cache dir (default `<root>/.vx/cache`):
//! `cas/<2 hex>/<64 hex>` blobs named by the blake3 of their bytes, and
//! `index.redb` with the tables `entries` (task key → manifest), `stamps`
//! (task key → stat of the outputs as last written on this machine),
//! `access` (task key → unix ms it was last served, a hint for
//! [`Store::prune`]) and `files` (the persisted file index of `hash`);
//! `tmp/<pid>-<n>` temp files, `.gitignore`, `index.redb.broken-<unix s>`
//! (a damaged index moved aside; at most one is kept) and the history's
//! `history.redb` (owned by `history`). [`clean`] and [`Store::prune`]
//! delete only names of this layout, never a directory wholesale: a cache
//! dir that holds anything else keeps it.
//!
//! Invariants: a blob is written to a temp file, fsynced and renamed before
//! any entry naming it is committed; every blob read is verified against its
//! digest, and a mismatch is reported as [`CacheError::Corrupt`] (the caller
//! treats it as a miss and drops the entry) and deletes the bad blob, and a
//! save over an existing blob replaces it, so a re-run repairs it; restore
//! copies bytes, never hard-links a blob into the tree. A symlink output is
//! stored as a symlink (its link text, digested) and restored as one, and
//! only when it stays inside the project. Every write into a project
//! (wipe, restore) and every read of an output (capture) goes through
//! [`crate::fsx::Confined`]: never through a symlinked directory, never
//! outside the project. A damaged index (a redb error or panic at open) is
//! moved aside and replaced by an empty one with one warning. Only one
//! writer thread commits to the index. Pruning commits the removal of
//! entries before it deletes any blob, so a crash leaves unreferenced blobs,
//! never a dangling entry. This module never spawns a process and never
//! decides what runs.

mod share;

pub use share::RunLease;
pub(crate) use share::unshared;

use crate::fsx::Confined;
use crate::globs::Patterns;
use crate::hash::{FileStat, Record};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use vx_proto::Digest;

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const STAMPS: TableDefinition<&str, &[u8]> = TableDefinition::new("stamps");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");
/// `generation`: bumped by every commit that adds, drops or re-stamps an
/// entry, in any process, so a process that memoises entries knows when
/// another one changed the index.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";

/// An entry's recorded access time is refreshed only when it is older than
/// this, so a repeat fully cached run writes nothing.
const TOUCH_EVERY_MS: u64 = 60 * 60 * 1000;

/// Blobs put but not yet named by a committed entry, and temp files, are
/// left alone by [`Store::prune`] for this long.
const GRACE: Duration = Duration::from_secs(60 * 60);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long an open waits for an index held by a process that does not
/// share it (an older vx holding it exclusively, or one moving a damaged
/// index aside) before it gives up (`VX_CACHE_LOCK_TIMEOUT_MS`).
pub const OPEN_WAIT: Duration = Duration::from_secs(3);

/// Version of the manifest encoding; a manifest of another version is a miss.
/// 2: symlink outputs are stored as links (version 1 stored their targets'
/// bytes).
pub const MANIFEST_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache index error: {0}")]
    Db(String),
    #[error("corrupt cache blob {0}")]
    Corrupt(String),
    /// Held exclusively by a vx process that does not share it (an older
    /// vx, or one moving a damaged index aside).
    #[error("the cache at {0} is held by another vx process that does not share it (waited {1} s)")]
    Locked(PathBuf, u64),
    /// `cache clean` gave up waiting for runs in progress.
    #[error("{0}")]
    Busy(String),
    /// An entry (or outputs) vx refuses to restore or store, e.g. a symlink
    /// pointing outside the project: a miss, never a wrong hit.
    #[error("{0}")]
    Refused(String),
    /// A confined write or read was refused (a symlinked directory on the
    /// way, a path leaving the project) or failed.
    #[error(transparent)]
    Fs(#[from] crate::fsx::FsxError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn dberr<E: std::fmt::Display>(e: E) -> CacheError {
    CacheError::Db(e.to_string())
}

/// What an output is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A regular file: `digest` names a blob of its bytes.
    #[default]
    File,
    /// A symlink: `link` is its link text and `digest` that text's digest
    /// (no blob); restored as a link.
    Symlink,
}

/// One output of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Project-relative path.
    pub path: String,
    pub mode: u32,
    pub digest: Digest,
    #[serde(default)]
    pub kind: OutputKind,
    /// The link text of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl OutputFile {
    fn is_link(&self) -> bool {
        self.kind == OutputKind::Symlink
    }
}

/// What a cache entry records about one successful task execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub key: String,
    pub task: String,
    pub outputs: Vec<OutputFile>,
    /// The task's combined output log.
    pub log: Digest,
    pub exit_code: i32,
    pub duration_ms: u64,
    /// Unix milliseconds.
    pub created_at: u64,
}

/// Output stats (size, mtime, inode) as last written by vx on this machine.
pub type Stamps = BTreeMap<String, (u64, i64, u64)>;

/// An entry as read from the index: its manifest and (if known) its stamps.
pub type Entry = Arc<(Manifest, Option<Stamps>)>;

enum Op {
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
struct Memo {
    entry: Entry,
    accessed: u64,
}

/// What [`Store::prune`] removed (or, on a dry run, would remove) and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries removed (or that would be).
    pub removed: u64,
    pub kept: u64,
    /// Bytes of blob and stale temp files deleted (or that would be).
    pub freed_bytes: u64,
    /// Bytes of the blobs that stay.
    pub kept_bytes: u64,
    /// The removed entries, least recently accessed first.
    pub entries: Vec<PrunedEntry>,
}

impl Pruned {
    /// The `cache.prune` result for the store at `dir`.
    pub fn into_proto(self, dir: String, dry_run: bool) -> vx_proto::CachePruned {
        vx_proto::CachePruned {
            dir,
            removed: self.removed,
            kept: self.kept,
            freed_bytes: self.freed_bytes,
            kept_bytes: self.kept_bytes,
            dry_run,
            entries: self
                .entries
                .into_iter()
                .map(|e| vx_proto::PrunedEntry {
                    key: e.key,
                    task: e.task,
                    accessed_at: e.accessed_at,
                    bytes: e.bytes,
                })
                .collect(),
        }
    }
}

/// One entry removed by a prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedEntry {
    pub key: String,
    /// The task id (empty for an undecodable entry).
    pub task: String,
    /// Unix ms of the last recorded access (or creation).
    pub accessed_at: u64,
    /// Bytes of the blobs it names (shared blobs counted in full).
    pub bytes: u64,
}

/// The local store.
pub struct Store {
    dir: PathBuf,
    db: Arc<redb::Database>,
    /// In memory only: nothing is kept (see [`Store::ephemeral`]).
    ephemeral: bool,
    /// Entries read or written through this store, kept in memory; dropped
    /// by [`Store::refresh`] when another process changed the index.
    memo: Mutex<std::collections::HashMap<String, Memo>>,
    /// The index's `generation` as this store last knew it (its own
    /// commits advance it; another process's make the file's differ).
    seen: Arc<std::sync::atomic::AtomicU64>,
    /// Blob hashes put by this store and not yet named by a queued entry,
    /// with when they were last put and how many puts await their entry
    /// (two saves in flight may put the same bytes): [`Store::prune`] never
    /// deletes them.
    pending: Mutex<std::collections::HashMap<String, (Instant, u32)>>,
    /// Held shared while a blob is installed (or found present) and while an
    /// entry is queued; held exclusively by [`Store::prune`] from reading the
    /// index to deleting blobs, so a prune cannot delete a blob that a save
    /// in flight is about to name.
    gc: RwLock<()>,
    writer: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest {
        hash: blake3::hash(bytes).to_hex().to_string(),
        size_bytes: bytes.len() as u64,
    }
}

fn valid_hex(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The index file's name in the cache dir.
const INDEX_FILE: &str = "index.redb";
/// What vx writes to `<cache dir>/.gitignore`.
const GITIGNORE: &str = "*\n";

/// Why the index could not be opened.
enum Opened {
    Locked,
    Io(std::io::Error),
    Damaged(String),
}

fn create_tables(db: &redb::Database) -> Result<(), String> {
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

fn read_file_index(
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

/// Opens a redb file in the mode every vx process shares it in: any number
/// of processes read and write it at once (one write transaction at a time,
/// across processes; readers never wait). See docs/ARCHITECTURE.md, "The
/// store", for why this mode.
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
fn open_checked(path: &Path) -> Result<(redb::Database, Vec<(String, Record)>), Opened> {
    let r = quietly(|| {
        let db = match open_shared(path) {
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
static NOTICES: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

fn push_notice(dir: &Path, msg: String) {
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
            match open_checked(&path) {
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

    fn with_db(dir: &Path, db: redb::Database, ephemeral: bool) -> Result<Self, CacheError> {
        let db = Arc::new(db);
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(
            generation_of(&db).unwrap_or(0),
        ));
        let (tx, rx) = mpsc::channel::<Op>();
        let (wdb, wseen) = (db.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("vx-cache-writer".into())
            .spawn(move || writer_loop(wdb, wseen, rx))
            .map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            ephemeral,
            memo: Mutex::new(std::collections::HashMap::new()),
            seen,
            pending: Mutex::new(std::collections::HashMap::new()),
            gc: RwLock::new(()),
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

    /// This run's hold on the cache directory, which `cache clean` (any
    /// process) waits for; `None` for an ephemeral store or when the lock
    /// file cannot be made. Waits while a clean is under way.
    pub fn run_lease(&self) -> Option<RunLease> {
        if self.ephemeral {
            return None;
        }
        share::run_lease(&self.dir)
    }

    fn send(&self, op: Op) {
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
        match rx.recv() {
            Ok(r) => r.map_err(CacheError::Db),
            Err(_) => Err(CacheError::Db("cache writer stopped".into())),
        }
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
        let tx = self.db.begin_read().map_err(dberr)?;
        let entries = tx.open_table(ENTRIES).map_err(dberr)?;
        let Some(v) = entries.get(key).map_err(dberr)? else {
            return Ok(None);
        };
        let m: Manifest = match serde_json::from_slice(v.value()) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        if m.version != MANIFEST_VERSION || m.key != key {
            return Ok(None);
        }
        let stamps = tx.open_table(STAMPS).map_err(dberr)?;
        let st = stamps
            .get(key)
            .map_err(dberr)?
            .and_then(|v| serde_json::from_slice::<Stamps>(v.value()).ok());
        let accessed = match tx.open_table(ACCESS) {
            Ok(t) => t.get(key).map_err(dberr)?.map(|v| v.value()),
            Err(_) => None,
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

    fn touch_memo(&self, key: &str, m: &mut Memo) {
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
        if let Ok(mut memo) = self.memo.lock() {
            memo.remove(key);
        }
        self.send(Op::Drop {
            key: key.to_string(),
        });
    }

    fn blob_path(&self, hash: &str) -> PathBuf {
        self.dir.join("cas").join(&hash[..2]).join(hash)
    }

    fn tmp_path(&self) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    fn refuse_ephemeral(&self) -> Result<(), CacheError> {
        if self.ephemeral {
            return Err(CacheError::Db(format!(
                "the cache at {} is not in use for this run",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Stores bytes durably; returns their digest. A blob already there is
    /// kept only when its bytes verify (a corrupt one is replaced).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, CacheError> {
        self.refuse_ephemeral()?;
        let d = digest_of(bytes);
        let dest = self.blob_path(&d.hash);
        {
            let _gc = self.gc.read();
            let _shared = share::gc_lock(&self.dir, false);
            if fs::metadata(&dest).is_ok_and(|m| m.len() == d.size_bytes)
                && fs::read(&dest).is_ok_and(|b| blake3::hash(&b).to_hex().as_str() == d.hash)
                && refresh_mtime(&dest)
            {
                self.mark_pending(&d);
                return Ok(d);
            }
        }
        let tmp = self.tmp_path();
        let r = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_data()?;
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Io {
                path: tmp,
                source: e,
            });
        }
        let _gc = self.gc.read();
        let _shared = share::gc_lock(&self.dir, false);
        self.install(&tmp, &dest, true)?;
        self.mark_pending(&d);
        Ok(d)
    }

    /// Stores a file's bytes durably (streamed); returns their digest.
    pub fn put_file(&self, src: &Path) -> Result<Digest, CacheError> {
        let mut input = fs::File::open(src).map_err(io(src))?;
        self.put_reader(&mut input, src)
    }

    /// Stores the bytes of `input` (named `what` in errors) durably; returns
    /// their digest. The new bytes replace a blob already there (which may
    /// be corrupt: a save repairs it), without the directory fsync a new
    /// blob needs.
    pub fn put_reader(&self, input: &mut dyn Read, what: &Path) -> Result<Digest, CacheError> {
        self.refuse_ephemeral()?;
        let tmp = self.tmp_path();
        let r = (|| {
            let mut out = fs::File::create(&tmp)?;
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                size += n as u64;
            }
            out.sync_data()?;
            Ok::<_, std::io::Error>(Digest {
                hash: h.finalize().to_hex().to_string(),
                size_bytes: size,
            })
        })();
        let d = match r {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(CacheError::Io {
                    path: what.to_path_buf(),
                    source: e,
                });
            }
        };
        let dest = self.blob_path(&d.hash);
        let _gc = self.gc.read();
        let _shared = share::gc_lock(&self.dir, false);
        let existed = fs::symlink_metadata(&dest).is_ok();
        self.install(&tmp, &dest, !existed)?;
        self.mark_pending(&d);
        Ok(d)
    }

    /// Guards a blob just put from [`Store::prune`] until an entry naming it
    /// is queued (or [`GRACE`] passes). Called with `gc` held shared.
    fn mark_pending(&self, d: &Digest) {
        if let Ok(mut p) = self.pending.lock() {
            let e = p.entry(d.hash.clone()).or_insert((Instant::now(), 0));
            *e = (Instant::now(), e.1 + 1);
        }
    }

    /// Renames a durable temp file into place; `sync_dir` makes the rename
    /// itself durable (not needed when it replaces a blob of the same name).
    fn install(&self, tmp: &Path, dest: &Path, sync_dir: bool) -> Result<(), CacheError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if let Err(e) = fs::rename(tmp, dest) {
            let _ = fs::remove_file(tmp);
            return Err(CacheError::Io {
                path: dest.to_path_buf(),
                source: e,
            });
        }
        if sync_dir
            && let Some(parent) = dest.parent()
            && let Ok(d) = fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads a blob and verifies it against its digest. A blob whose bytes
    /// do not match its name is deleted (unless it was replaced meanwhile),
    /// so the next save of those bytes writes them afresh.
    pub fn read_verified(&self, d: &Digest) -> Result<Vec<u8>, CacheError> {
        if !valid_hex(&d.hash) {
            return Err(CacheError::Corrupt(d.hash.clone()));
        }
        let path = self.blob_path(&d.hash);
        let corrupt = || CacheError::Corrupt(d.hash.clone());
        let mut f = fs::File::open(&path).map_err(|_| corrupt())?;
        let ino = f.metadata().map(|m| m.ino()).ok();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(|_| corrupt())?;
        if blake3::hash(&bytes).to_hex().as_str() != d.hash {
            // The name is the hash: these bytes are wrong for every entry.
            if ino.is_some() && fs::symlink_metadata(&path).ok().map(|m| m.ino()) == ino {
                tracing::info!("deleting corrupt cache blob {}", path.display());
                let _ = fs::remove_file(&path);
            }
            return Err(corrupt());
        }
        if bytes.len() as u64 != d.size_bytes {
            return Err(corrupt());
        }
        Ok(bytes)
    }

    /// Prunes the store: (1) drops entries not accessed within `max_age`;
    /// (2) while the blobs still referenced (plus unreferenced ones too young
    /// to delete) exceed `max_size` bytes, drops the least recently accessed
    /// entries; (3) deletes every blob no remaining entry names, and temp
    /// files older than an hour. The removal of entries is committed
    /// durably before any blob is deleted, so a crash in between leaves only
    /// unreferenced blobs, which the next prune sweeps. Safe while runs use
    /// this store: a blob put by a save whose entry is not queued yet is
    /// never deleted.
    pub fn prune(
        &self,
        max_size: Option<u64>,
        max_age: Option<Duration>,
    ) -> Result<Pruned, CacheError> {
        self.prune_with(max_size, max_age, false)
    }

    /// What [`Store::prune`] would remove, without removing anything.
    pub fn prune_dry_run(
        &self,
        max_size: Option<u64>,
        max_age: Option<Duration>,
    ) -> Result<Pruned, CacheError> {
        self.prune_with(max_size, max_age, true)
    }

    fn prune_with(
        &self,
        max_size: Option<u64>,
        max_age: Option<Duration>,
        dry_run: bool,
    ) -> Result<Pruned, CacheError> {
        struct Row {
            key: String,
            task: String,
            accessed: u64,
            blobs: Vec<String>,
            /// Undecodable or of another version: always removed.
            bad: bool,
        }
        // Saves wait from here until the blobs are gone (see `gc`); those of
        // other processes too, where they find a blob present or install one
        // (`gc.lock`).
        let _gc = self
            .gc
            .write()
            .map_err(|_| CacheError::Db("cache gc lock poisoned".into()))?;
        let _exclusive = (!dry_run)
            .then(|| share::gc_lock(&self.dir, true))
            .flatten();
        self.flush()?;
        let now = now_ms();
        let mut rows = Vec::new();
        {
            let tx = self.db.begin_read().map_err(dberr)?;
            let entries = tx.open_table(ENTRIES).map_err(dberr)?;
            let access = tx.open_table(ACCESS).map_err(dberr)?;
            for row in entries.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                let key = k.value().to_string();
                let row = match serde_json::from_slice::<Manifest>(v.value()) {
                    Ok(m) if m.version == MANIFEST_VERSION && m.key == key => {
                        let accessed = access
                            .get(key.as_str())
                            .map_err(dberr)?
                            .map(|v| v.value())
                            .unwrap_or(m.created_at);
                        let mut blobs: Vec<String> = m
                            .outputs
                            .iter()
                            .filter(|o| !o.is_link())
                            .map(|o| &o.digest)
                            .chain([&m.log])
                            .map(|d| d.hash.clone())
                            .collect();
                        blobs.sort();
                        blobs.dedup();
                        Row {
                            key,
                            task: m.task,
                            accessed,
                            blobs,
                            bad: false,
                        }
                    }
                    _ => Row {
                        key,
                        task: String::new(),
                        accessed: 0,
                        blobs: Vec::new(),
                        bad: true,
                    },
                };
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| (a.accessed, &a.key).cmp(&(b.accessed, &b.key)));
        let on_disk = self.blob_sizes();
        let mut pending: HashSet<String> = match self.pending.lock() {
            Ok(mut p) => {
                p.retain(|_, (t, _)| t.elapsed() < GRACE);
                p.keys().cloned().collect()
            }
            Err(_) => HashSet::new(),
        };
        // A blob no entry names that was written (or found present and
        // refreshed) within GRACE may belong to a save in flight in another
        // process, whose entry is not committed yet: kept, like our own.
        let named: HashSet<&str> = rows
            .iter()
            .flat_map(|r| r.blobs.iter().map(String::as_str))
            .collect();
        for h in on_disk.keys() {
            if !named.contains(h.as_str())
                && !pending.contains(h)
                && fs::metadata(self.blob_path(h))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() < GRACE)
            {
                pending.insert(h.clone());
            }
        }
        let size_of = |h: &str| on_disk.get(h).copied().unwrap_or(0);

        // Decide, least recently accessed first.
        let cutoff = max_age.map(|a| now.saturating_sub(a.as_millis() as u64));
        let mut refs: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        let (mut gone, mut kept): (Vec<&Row>, Vec<&Row>) = (Vec::new(), Vec::new());
        for r in &rows {
            if r.bad || cutoff.is_some_and(|c| r.accessed < c) {
                gone.push(r);
            } else {
                kept.push(r);
                for h in &r.blobs {
                    *refs.entry(h.as_str()).or_default() += 1;
                }
            }
        }
        let mut kept_bytes: u64 = on_disk
            .iter()
            .filter(|(h, _)| refs.contains_key(h.as_str()) || pending.contains(*h))
            .map(|(_, n)| n)
            .sum();
        if let Some(max) = max_size {
            let mut n = 0;
            while kept_bytes > max && n < kept.len() {
                let r = kept[n];
                n += 1;
                for h in &r.blobs {
                    if let Some(c) = refs.get_mut(h.as_str()) {
                        *c -= 1;
                        if *c == 0 {
                            refs.remove(h.as_str());
                            if !pending.contains(h) {
                                kept_bytes -= size_of(h);
                            }
                        }
                    }
                }
                gone.push(r);
            }
            kept.drain(..n);
        }
        let doomed: Vec<(&String, u64)> = on_disk
            .iter()
            .filter(|(h, _)| !refs.contains_key(h.as_str()) && !pending.contains(*h))
            .map(|(h, n)| (h, *n))
            .collect();
        let stale_tmp = self.stale_temp_files();
        let freed_bytes = doomed.iter().map(|(_, n)| n).sum::<u64>()
            + stale_tmp.iter().map(|(_, n)| n).sum::<u64>();
        let pruned = Pruned {
            removed: gone.len() as u64,
            kept: kept.len() as u64,
            freed_bytes,
            kept_bytes,
            entries: gone
                .iter()
                .map(|r| PrunedEntry {
                    key: r.key.clone(),
                    task: r.task.clone(),
                    accessed_at: r.accessed,
                    bytes: r.blobs.iter().map(|h| size_of(h)).sum(),
                })
                .collect(),
        };
        if dry_run {
            return Ok(pruned);
        }
        // The index first, durably: from here no entry names a doomed blob.
        for r in &gone {
            self.drop_entry(&r.key);
        }
        self.flush()?;
        if let Ok(mut memo) = self.memo.lock() {
            for r in &gone {
                memo.remove(&r.key);
            }
        }
        // Then the files. One that is already gone was freed all the same.
        for (h, _) in &doomed {
            let p = self.blob_path(h);
            if let Err(e) = fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(CacheError::Io { path: p, source: e });
            }
        }
        for (p, _) in &stale_tmp {
            let _ = fs::remove_file(p);
        }
        Ok(pruned)
    }

    /// Every blob file under `cas/` (`cas/<2 hex>/<64 hex>`, regular files
    /// only) and its size.
    fn blob_sizes(&self) -> std::collections::HashMap<String, u64> {
        blob_files(&self.dir)
            .into_iter()
            .map(|(h, _, n)| (h, n))
            .collect()
    }

    /// Files under `tmp/` named like vx's temp files and not modified for an
    /// hour: left by a crash.
    fn stale_temp_files(&self) -> Vec<(PathBuf, u64)> {
        temp_files(&self.dir)
            .into_iter()
            .filter(|(_, _, age)| *age >= GRACE)
            .map(|(p, n, _)| (p, n))
            .collect()
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
        }
        tx.commit().map_err(dberr)?;
        if let Ok(mut memo) = self.memo.lock() {
            memo.clear();
        }
        Ok(())
    }

    /// Entry count, blob count and blob bytes.
    pub fn stats(&self) -> Result<(u64, u64, u64), CacheError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let entries = tx
            .open_table(ENTRIES)
            .map_err(dberr)?
            .len()
            .map_err(dberr)?;
        let blobs = self.blob_sizes();
        Ok((entries, blobs.len() as u64, blobs.values().sum()))
    }
}

/// The blobs of the layout under `dir`: (hash, path, size) of each regular
/// file `cas/<2 hex>/<64 hex>` whose directory is its hash's first two
/// characters. Never follows a link.
fn blob_files(dir: &Path) -> Vec<(String, PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir.join("cas")) else {
        return out;
    };
    for sub in rd.flatten() {
        let sub_name = sub.file_name().to_string_lossy().into_owned();
        if sub_name.len() != 2
            || !sub_name.bytes().all(|b| b.is_ascii_hexdigit())
            || !sub.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let Ok(rd2) = fs::read_dir(sub.path()) else {
            continue;
        };
        for f in rd2.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if valid_hex(&name)
                && name.starts_with(&sub_name)
                && let Ok(m) = f.metadata()
                && m.is_file()
            {
                out.push((name, f.path(), m.len()));
            }
        }
    }
    out
}

/// Whether `name` is one of vx's temp file names in `tmp/` (`<pid>-<n>`).
fn is_temp_name(name: &str) -> bool {
    name.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// vx's temp files under `dir/tmp`: (path, size, age). Never follows a link.
fn temp_files(dir: &Path) -> Vec<(PathBuf, u64, Duration)> {
    let Ok(rd) = fs::read_dir(dir.join("tmp")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|f| is_temp_name(&f.file_name().to_string_lossy()))
        .filter_map(|f| {
            let m = f.metadata().ok()?;
            let age = m.modified().ok()?.elapsed().unwrap_or_default();
            m.is_file().then(|| (f.path(), m.len(), age))
        })
        .collect()
}

impl Drop for Store {
    /// The last holder of a store flushes it and releases the index (and
    /// its file lock, so another process can open it).
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The index's `generation` (see [`META`]); `None` when it cannot be read.
fn generation_of(db: &redb::Database) -> Option<u64> {
    let tx = db.begin_read().ok()?;
    match tx.open_table(META) {
        Ok(t) => Some(t.get(GENERATION).ok()?.map(|v| v.value()).unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Some(0),
        Err(_) => None,
    }
}

/// Sets a blob's mtime to now: a blob found present for a save counts as
/// freshly written for [`Store::prune`]'s grace. False when it cannot be
/// done (the caller then writes the blob afresh).
fn refresh_mtime(path: &Path) -> bool {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .is_ok()
}

fn writer_loop(
    db: Arc<redb::Database>,
    seen: Arc<std::sync::atomic::AtomicU64>,
    rx: mpsc::Receiver<Op>,
) {
    use std::sync::atomic::Ordering;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        let mut flushes = Vec::new();
        let result = (|| -> Result<(), String> {
            let writes: Vec<&Op> = batch
                .iter()
                .filter(|o| !matches!(o, Op::Flush(_)))
                .collect();
            if writes.is_empty() {
                return Ok(());
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
                for op in writes {
                    match op {
                        Op::Put {
                            key,
                            manifest,
                            stamps: st,
                        } => {
                            entries
                                .insert(key.as_str(), manifest.as_slice())
                                .map_err(|e| e.to_string())?;
                            stamps
                                .insert(key.as_str(), st.as_slice())
                                .map_err(|e| e.to_string())?;
                            // A fresh entry's access time is its creation.
                            access.remove(key.as_str()).map_err(|e| e.to_string())?;
                        }
                        Op::Stamps { key, stamps: st } => {
                            stamps
                                .insert(key.as_str(), st.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                        Op::Drop { key } => {
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
            }
            tx.commit().map_err(|e| e.to_string())?;
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

/// One output on disk: a regular file or a symlink (of any target).
#[derive(Debug, Clone)]
pub struct OnDisk {
    /// Project-relative path.
    pub rel: String,
    pub abs: PathBuf,
    pub stat: FileStat,
    /// A symlink (captured and restored as a link, never followed).
    pub link: bool,
    /// Its name is not UTF-8 (`rel` is escaped, see `hash::escape_path`):
    /// vx can neither key, store nor wipe it, so such a result is never
    /// cached (capture refuses it by name).
    pub non_utf8: bool,
}

/// Finds the outputs the patterns select under `project` (not
/// gitignore-filtered): regular files and symlinks, never looking through a
/// symlinked directory (a base directory reached through one selects
/// nothing; [`wipe_outputs`] and [`restore`] refuse it). `fence` holds
/// project-relative directories of nested projects, which are never entered.
pub fn collect_outputs(project: &Path, pats: &Patterns, fence: &HashSet<String>) -> Vec<OnDisk> {
    let mut out = Vec::new();
    if pats.is_empty() {
        return out;
    }
    let bases = pats.base_dirs().unwrap_or_else(|| vec![String::new()]);
    let confined = Confined::open(project).ok();
    let mut seen = HashSet::new();
    for base in bases {
        let start = if base.is_empty() {
            project.to_path_buf()
        } else {
            // A base that is not a plain path below the project, or that is
            // reached through a symlinked directory, selects nothing.
            let Some(c) = &confined else { continue };
            match c.first_symlink(&base, false) {
                Ok(None) => {}
                _ => continue,
            }
            project.join(&base)
        };
        let Ok(md) = fs::symlink_metadata(&start) else {
            continue;
        };
        if md.is_dir() {
            walk_outputs(&start, &base, pats, fence, &mut out, &mut seen, false);
        } else if pats.matches(&base) && seen.insert(base.clone()) {
            push_file(&start, base, &md, &mut out, false);
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn push_file(abs: &Path, rel: String, md: &fs::Metadata, out: &mut Vec<OnDisk>, non_utf8: bool) {
    let link = md.file_type().is_symlink();
    if link || md.is_file() {
        out.push(OnDisk {
            rel,
            abs: abs.to_path_buf(),
            stat: FileStat::of(md),
            link,
            non_utf8,
        });
    }
}

fn walk_outputs(
    dir: &Path,
    rel_dir: &str,
    pats: &Patterns,
    fence: &HashSet<String>,
    out: &mut Vec<OnDisk>,
    seen: &mut HashSet<String>,
    non_utf8: bool,
) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let file_name = e.file_name();
        let (name, bad) = match file_name.to_str() {
            Some(n) => (n.to_owned(), non_utf8),
            None => (crate::hash::escape_path(Path::new(&file_name)), true),
        };
        let rel = if rel_dir.is_empty() {
            name.clone()
        } else {
            format!("{rel_dir}/{name}")
        };
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_dir() {
            if rel_dir.is_empty() && (name == ".git" || name == ".vx" || name == "node_modules") {
                continue;
            }
            if fence.contains(&rel) {
                continue;
            }
            walk_outputs(&e.path(), &rel, pats, fence, out, seen, bad);
        } else if pats.matches(&rel) && seen.insert(rel.clone()) {
            push_file(&e.path(), rel, &md, out, bad);
        }
    }
}

/// Refuses output bases vx could only write through a symlinked directory
/// (`dist -> /elsewhere` for `dist/**`) or that leave the project: the
/// error names the link. A base that is itself a selected symlink (a
/// literal pattern naming a link) is an output like any other.
fn check_bases(c: &Confined, pats: &Patterns) -> Result<(), CacheError> {
    for base in pats.bases().unwrap_or_default() {
        if base.is_empty() {
            continue;
        }
        if let Some(link) = c.first_symlink(base, !pats.matches(base))? {
            return Err(crate::fsx::FsxError::Symlink(link).into());
        }
    }
    Ok(())
}

/// Deletes the outputs the patterns select (a symlink is unlinked, never
/// followed), and the directories that became empty because of it. Every
/// deletion is confined to `project`; an output base reached through a
/// symlinked directory is refused with an error naming it.
pub fn wipe_outputs(
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
) -> Result<(), CacheError> {
    if pats.is_empty() {
        return Ok(());
    }
    let c = match Confined::open(project) {
        Ok(c) => c,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    check_bases(&c, pats)?;
    wipe_confined(&c, &collect_outputs(project, pats, fence))
}

fn wipe_confined(c: &Confined, files: &[OnDisk]) -> Result<(), CacheError> {
    let mut dirs = HashSet::new();
    // A name vx cannot address exactly (not UTF-8) is left alone.
    for f in files.iter().filter(|f| !f.non_utf8) {
        c.remove_file(&f.rel)?;
        let mut d = f.rel.as_str();
        while let Some((parent, _)) = d.rsplit_once('/') {
            dirs.insert(parent.to_string());
            d = parent;
        }
    }
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        c.remove_dir_if_empty(&d); // fails (and stays) when not empty
    }
    Ok(())
}

/// Stamps for the files as they are on disk now.
pub fn stamps_of(files: &[OnDisk]) -> Stamps {
    files
        .iter()
        .map(|f| (f.rel.clone(), (f.stat.size, f.stat.mtime_ns, f.stat.ino)))
        .collect()
}

/// Whether the outputs on disk are exactly what vx last wrote for this
/// entry on this machine: same set of files and links, each with its
/// recorded size, mtime and inode.
pub fn outputs_up_to_date(m: &Manifest, stamps: &Stamps, on_disk: &[OnDisk]) -> bool {
    if on_disk.len() != m.outputs.len() || stamps.len() != m.outputs.len() {
        return false;
    }
    on_disk.iter().zip(&m.outputs).all(|(d, o)| {
        d.rel == o.path
            && d.link == o.is_link()
            && d.stat.size == o.digest.size_bytes
            && stamps.get(&d.rel) == Some(&(d.stat.size, d.stat.mtime_ns, d.stat.ino))
    })
}

/// Why a symlink output at `rel` with link text `target` may not be cached
/// or restored, if it may not.
fn link_refusal(rel: &str, target: &str) -> Option<String> {
    (!crate::fsx::link_stays_inside(rel, target)).then(|| {
        format!("output {rel} is a symlink to {target:?}, outside the project; vx never restores such a link")
    })
}

/// Captures the outputs of a successful run under `project` into blobs;
/// returns the manifest entries. A regular file is read through a confined,
/// non-following open (a file swapped for a link meanwhile is refused, never
/// read through); a symlink is stored as its link text. A link pointing
/// outside the project is refused ([`CacheError::Refused`]: the result is
/// not cached).
pub fn capture(
    store: &Store,
    project: &Path,
    files: &[OnDisk],
) -> Result<Vec<OutputFile>, CacheError> {
    if let Some(f) = files.iter().find(|f| f.non_utf8) {
        return Err(CacheError::Refused(format!(
            "output name is not valid UTF-8: {} — vx refuses such names (it could not restore them exactly); rename it",
            f.rel
        )));
    }
    let c = Confined::open(project)?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        if f.link {
            let raw = c.read_link(&f.rel)?;
            let Ok(target) = String::from_utf8(raw) else {
                return Err(CacheError::Refused(format!(
                    "output {} is a symlink whose target is not UTF-8",
                    f.rel
                )));
            };
            if let Some(why) = link_refusal(&f.rel, &target) {
                return Err(CacheError::Refused(why));
            }
            out.push(OutputFile {
                path: f.rel.clone(),
                mode: 0o777,
                digest: digest_of(target.as_bytes()),
                kind: OutputKind::Symlink,
                link: Some(target),
            });
            continue;
        }
        let mut file = c.open_read(&f.rel)?;
        let mode = file.metadata().map(|m| m.mode() & 0o7777).unwrap_or(0o644);
        let digest = store.put_reader(&mut file, &f.abs)?;
        out.push(OutputFile {
            path: f.rel.clone(),
            mode,
            digest,
            kind: OutputKind::File,
            link: None,
        });
    }
    Ok(out)
}

/// Restores an entry's outputs into `project`: checks everything first
/// (every blob verified, every link's text against its digest and inside
/// the project, no output base behind a symlinked directory), then wipes
/// the current outputs and writes each file (temp sibling + rename) or link,
/// all confined to `project`. Returns the stamps of what it wrote.
/// [`CacheError::Corrupt`] and [`CacheError::Refused`] leave the tree as it
/// was (the caller treats them as a miss).
pub fn restore(
    store: &Store,
    m: &Manifest,
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
) -> Result<Stamps, CacheError> {
    // Verify every blob before touching the tree, so a corrupt entry leaves
    // the outputs as they were (the task then re-runs and wipes them itself).
    let mut contents = Vec::with_capacity(m.outputs.len());
    for o in &m.outputs {
        if crate::fsx::components(&o.path).is_none() {
            return Err(CacheError::Corrupt(format!(
                "entry {} names {}",
                m.key, o.path
            )));
        }
        if o.is_link() {
            let Some(target) = o.link.as_deref() else {
                return Err(CacheError::Corrupt(format!(
                    "entry {} link {}",
                    m.key, o.path
                )));
            };
            if digest_of(target.as_bytes()) != o.digest {
                return Err(CacheError::Corrupt(format!(
                    "entry {} link {}",
                    m.key, o.path
                )));
            }
            if let Some(why) = link_refusal(&o.path, target) {
                return Err(CacheError::Refused(why));
            }
            contents.push(Vec::new());
        } else {
            contents.push(store.read_verified(&o.digest)?);
        }
    }
    fs::create_dir_all(project).map_err(io(project))?;
    let c = Confined::open(project)?;
    check_bases(&c, pats)?;
    wipe_confined(&c, &collect_outputs(project, pats, fence))?;
    let mut stamps = Stamps::new();
    for (o, bytes) in m.outputs.iter().zip(contents) {
        match o.link.as_deref() {
            Some(target) if o.is_link() => c.write_symlink(&o.path, target)?,
            _ => c.write_file(&o.path, &bytes, o.mode)?,
        }
        let st = c.lstat(&o.path)?.ok_or_else(|| CacheError::Io {
            path: project.join(&o.path),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        stamps.insert(o.path.clone(), (st.size, st.mtime_ns, st.ino));
    }
    Ok(stamps)
}

/// How long `cache clean` waits for runs in progress (in any process) to
/// end before it gives up.
pub const CLEAN_WAIT: Duration = Duration::from_secs(30);

/// Deletes the store's own files under `dir` — blobs, temp files, the index
/// (and a moved-aside one), the history, the `.gitignore` and lock files vx
/// wrote — and then each of its directories only if that left it empty:
/// never a directory wholesale, so anything else in `dir` stays. Returns the
/// entry count and blob bytes freed.
///
/// Beside other processes: it first waits (at most [`CLEAN_WAIT`], then
/// fails with [`CacheError::Busy`]) until no run in any process holds a
/// [`RunLease`], and holds off new runs until it is done, so it never pulls
/// a blob out from under a run. The index is deleted only when no other
/// process has it open; one that is open (a live daemon keeps it open) is
/// emptied in place instead, in one commit that the holder sees at its next
/// read, so the daemon's next run starts from an empty cache. The history
/// is deleted either way (see below).
pub fn clean(dir: &Path) -> Result<(u64, u64), CacheError> {
    if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok((0, 0));
    }
    let _runs = share::runs_exclusive(dir, CLEAN_WAIT).map_err(|()| {
        CacheError::Busy(format!(
            "runs in progress still use the cache at {} after {} s: try again when they finish",
            dir.display(),
            CLEAN_WAIT.as_secs()
        ))
    })?;
    let index = dir.join(INDEX_FILE);
    let (entries, bytes) = if index.exists() {
        match Store::open(dir, Duration::from_secs(30), &mut || {}) {
            Ok(s) => {
                let (e, _, b) = s.stats()?;
                s.close()?;
                drop(s);
                (e, b)
            }
            Err(CacheError::Locked(p, s)) => return Err(CacheError::Locked(p, s)),
            Err(_) => (0, blob_files(dir).iter().map(|(_, _, n)| n).sum()),
        }
    } else {
        (0, blob_files(dir).iter().map(|(_, _, n)| n).sum())
    };
    let rm = |p: &Path| match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::Io {
            path: p.to_path_buf(),
            source: e,
        }),
    };
    // The index and the history: deleted when nobody else has them open
    // (held while deleting, so nobody opens them meanwhile), else emptied.
    let mut kept_open = false;
    if index.exists() {
        match share::unshared(&index) {
            Some(_held) => rm(&index)?,
            None => {
                kept_open = true;
                let s = Store::open(dir, Duration::from_secs(30), &mut || {})?;
                s.clear()?;
                s.close()?;
            }
        }
    }
    // The history is deleted even when open elsewhere: a daemon's handle
    // notices that its file is gone and opens a new one at its next use
    // (`history::shared`), and a foreground one lives for one command.
    rm(&dir.join(crate::history::FILE_NAME))?;
    for (_, p, _) in blob_files(dir) {
        rm(&p)?;
    }
    for (p, _, _) in temp_files(dir) {
        rm(&p)?;
    }
    if let Ok(rd) = fs::read_dir(dir.join("cas")) {
        for sub in rd.flatten() {
            let name = sub.file_name().to_string_lossy().into_owned();
            if name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                let _ = fs::remove_dir(sub.path());
            }
        }
    }
    if kept_open {
        // Another process works in this directory: its layout stays.
        return Ok((entries, bytes));
    }
    for sub in ["cas", "tmp"] {
        let _ = fs::remove_dir(dir.join(sub)); // stays when not empty
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = [share::GC_LOCK, share::RUNS_LOCK].contains(&name.as_str())
                || name.starts_with("index.redb.broken-")
                || name.starts_with("history.redb.broken-");
            if ours && e.file_type().is_ok_and(|t| t.is_file()) {
                rm(&e.path())?;
            }
        }
    }
    let ignore = dir.join(".gitignore");
    if fs::read(&ignore).is_ok_and(|b| b == GITIGNORE.as_bytes()) {
        rm(&ignore)?;
    }
    let _ = fs::remove_dir(dir); // stays when not empty
    Ok((entries, bytes))
}

/// A named way to damage a redb file (for tests).
#[cfg(test)]
pub(crate) type Damage = (&'static str, fn(&Path));

/// Ways to damage a redb file: zeroed pages in the middle, truncation,
/// garbage (for the tests of the index and the history).
#[cfg(test)]
pub(crate) fn damages() -> Vec<Damage> {
    vec![
        ("zeroed pages", |p| {
            let mut b = fs::read(p).unwrap();
            let end = b.len().min(3 * 4096);
            b[4096..end].fill(0);
            fs::write(p, b).unwrap();
        }),
        ("truncated", |p| {
            let b = fs::read(p).unwrap();
            fs::write(p, &b[..b.len() / 3]).unwrap();
        }),
        ("garbage", |p| {
            let b: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
            fs::write(p, b).unwrap();
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(d: &Path) -> Store {
        Store::open(&d.join("cache"), Duration::from_secs(1), &mut || {}).unwrap()
    }

    #[test]
    fn blob_round_trip_and_corruption_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let dg = s.put_bytes(b"hello").unwrap();
        assert_eq!(s.read_verified(&dg).unwrap(), b"hello");
        fs::write(s.blob_path(&dg.hash), b"jello").unwrap();
        assert!(matches!(s.read_verified(&dg), Err(CacheError::Corrupt(_))));
        // The corrupt blob was deleted; a missing one is corrupt too.
        assert!(!s.blob_path(&dg.hash).exists());
        assert!(matches!(s.read_verified(&dg), Err(CacheError::Corrupt(_))));
    }

    #[test]
    fn entries_commit_and_drop() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let log = s.put_bytes(b"log").unwrap();
        let m = Manifest {
            version: MANIFEST_VERSION,
            key: "k".repeat(64),
            task: "a#b".into(),
            outputs: vec![],
            log,
            exit_code: 0,
            duration_ms: 1,
            created_at: 0,
        };
        s.put_entry(&m, &Stamps::new());
        s.flush().unwrap();
        assert_eq!(s.get(&m.key).unwrap().unwrap().0, m);
        // and from disk, past the memo
        let s2_memo = s.memo.lock().unwrap().remove(&m.key);
        assert!(s2_memo.is_some());
        assert_eq!(s.get(&m.key).unwrap().unwrap().0, m);
        s.drop_entry(&m.key);
        s.flush().unwrap();
        assert!(s.get(&m.key).unwrap().is_none());
        s.close().unwrap();
    }

    #[test]
    fn restore_writes_copies_and_wipes_strays() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let proj = d.path().join("p");
        fs::create_dir_all(proj.join("dist/sub")).unwrap();
        fs::write(proj.join("dist/sub/a.txt"), "A").unwrap();
        let pats = Patterns::new(&["dist/**"]).unwrap();
        let fence = HashSet::new();
        let files = collect_outputs(&proj, &pats, &fence);
        let outputs = capture(&s, &proj, &files).unwrap();
        let m = Manifest {
            version: MANIFEST_VERSION,
            key: "a".repeat(64),
            task: "p#build".into(),
            outputs,
            log: s.put_bytes(b"").unwrap(),
            exit_code: 0,
            duration_ms: 0,
            created_at: 0,
        };
        fs::write(proj.join("dist/stray.txt"), "S").unwrap();
        let stamps = restore(&s, &m, &proj, &pats, &fence).unwrap();
        assert_eq!(
            fs::read_to_string(proj.join("dist/sub/a.txt")).unwrap(),
            "A"
        );
        assert!(!proj.join("dist/stray.txt").exists());
        let on_disk = collect_outputs(&proj, &pats, &fence);
        assert!(outputs_up_to_date(&m, &stamps, &on_disk));
        // the restored file is not the blob (no hard link)
        let blob = s.blob_path(&m.outputs[0].digest.hash);
        assert_ne!(
            fs::metadata(blob).unwrap().ino(),
            fs::metadata(proj.join("dist/sub/a.txt")).unwrap().ino()
        );
        fs::write(proj.join("dist/extra"), "x").unwrap();
        let on_disk = collect_outputs(&proj, &pats, &fence);
        assert!(!outputs_up_to_date(&m, &stamps, &on_disk));
    }

    const DAY: u64 = 24 * 60 * 60 * 1000;

    /// Puts an entry whose outputs are `dist/<name>` files with the given bytes.
    fn put(
        s: &Store,
        key: char,
        outputs: &[(&str, &[u8])],
        log: &[u8],
        created_at: u64,
    ) -> Manifest {
        let outputs = outputs
            .iter()
            .map(|(name, bytes)| OutputFile {
                path: format!("dist/{name}"),
                mode: 0o644,
                digest: s.put_bytes(bytes).unwrap(),
                kind: OutputKind::File,
                link: None,
            })
            .collect();
        let m = Manifest {
            version: MANIFEST_VERSION,
            key: key.to_string().repeat(64),
            task: format!("p#{key}"),
            outputs,
            log: s.put_bytes(log).unwrap(),
            exit_code: 0,
            duration_ms: 0,
            created_at,
        };
        s.put_entry(&m, &Stamps::new());
        m
    }

    fn has_blob(s: &Store, bytes: &[u8]) -> bool {
        s.blob_path(&digest_of(bytes).hash).exists()
    }

    /// Reopens the store from disk (no memo, no pending blobs), like a new process.
    fn reopen(d: &Path, s: Store) -> Store {
        s.close().unwrap();
        drop(s);
        store(d)
    }

    /// Every entry left restores byte-identical into a fresh project dir.
    fn assert_restores(s: &Store, d: &Path, ms: &[&Manifest], contents: &[&[(&str, &[u8])]]) {
        let pats = Patterns::new(&["dist/**"]).unwrap();
        for (m, files) in ms.iter().zip(contents) {
            let got = s.get(&m.key).unwrap().expect("entry kept");
            let proj = d.join(format!("restore-{}", &m.key[..1]));
            restore(s, &got.0, &proj, &pats, &HashSet::new()).unwrap();
            for (name, bytes) in *files {
                assert_eq!(fs::read(proj.join("dist").join(name)).unwrap(), *bytes);
            }
            assert_eq!(
                s.read_verified(&got.0.log).unwrap().len() as u64,
                got.0.log.size_bytes
            );
        }
    }

    #[test]
    fn prune_by_age_keeps_recently_accessed_entries() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let now = now_ms();
        let old = put(&s, 'a', &[("a", b"AAAA")], b"log-a", now - 10 * DAY);
        let fresh = put(&s, 'b', &[("b", b"BBBB")], b"log-b", now);
        let served = put(&s, 'c', &[("c", b"CCCC")], b"log-c", now - 10 * DAY);
        let s = reopen(d.path(), s);
        // Served long after it was created: its access time is now.
        assert!(s.get(&served.key).unwrap().is_some());
        let s = reopen(d.path(), s); // the access time survives a restart
        let p = s.prune(None, Some(Duration::from_millis(5 * DAY))).unwrap();
        assert_eq!((p.removed, p.kept), (1, 2));
        assert_eq!(p.entries[0].key, old.key);
        assert_eq!(p.freed_bytes, 4 + 5);
        assert_eq!(p.kept_bytes, 2 * (4 + 5));
        assert!(s.get(&old.key).unwrap().is_none());
        assert!(!has_blob(&s, b"AAAA") && !has_blob(&s, b"log-a"));
        assert!(has_blob(&s, b"BBBB") && has_blob(&s, b"CCCC"));
        assert_restores(
            &s,
            d.path(),
            &[&fresh, &served],
            &[&[("b", b"BBBB")], &[("c", b"CCCC")]],
        );
        assert_eq!(s.stats().unwrap(), (2, 4, 2 * (4 + 5)));
    }

    #[test]
    fn prune_by_size_drops_least_recently_accessed_first() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let now = now_ms();
        let (a, b, c) = (vec![b'a'; 1000], vec![b'b'; 1000], vec![b'c'; 1000]);
        let oldest = put(&s, 'a', &[("a", &a)], b"log-a", now - 3 * DAY);
        let middle = put(&s, 'b', &[("b", &b)], b"log-b", now - 2 * DAY);
        let newest = put(&s, 'c', &[("c", &c)], b"log-c", now - DAY);
        // The oldest is served now: it becomes the most recently used.
        s.touch(&oldest.key);
        let s = reopen(d.path(), s);
        let dry = s.prune_dry_run(Some(2100), None).unwrap();
        assert_eq!(dry.entries.len(), 1);
        assert_eq!(s.stats().unwrap().0, 3, "a dry run removes nothing");
        let p = s.prune(Some(2100), None).unwrap();
        assert_eq!(p, dry);
        assert_eq!(p.entries[0].key, middle.key);
        assert_eq!(p.entries[0].bytes, 1005);
        assert_eq!(
            (p.removed, p.kept, p.freed_bytes, p.kept_bytes),
            (1, 2, 1005, 2010)
        );
        assert!(!has_blob(&s, &b));
        // Next the least recently used is `newest` (served a day ago).
        let p = s.prune_dry_run(Some(1500), None).unwrap();
        assert_eq!(p.entries[0].key, newest.key);
        // (restoring serves both: their access times are now)
        assert_restores(
            &s,
            d.path(),
            &[&oldest, &newest],
            &[&[("a", &a)], &[("c", &c)]],
        );
        assert_eq!(s.prune(Some(0), None).unwrap().removed, 2);
        assert_eq!(s.stats().unwrap(), (0, 0, 0));
    }

    #[test]
    fn prune_keeps_a_blob_while_one_entry_names_it() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let now = now_ms();
        let shared: &[u8] = b"shared output bytes";
        let old = put(
            &s,
            'a',
            &[("x", shared), ("own", b"a-only")],
            b"log-a",
            now - 10 * DAY,
        );
        let new = put(&s, 'b', &[("x", shared)], b"log-b", now);
        let p = s.prune(None, Some(Duration::from_millis(DAY))).unwrap();
        assert_eq!(p.entries[0].key, old.key);
        assert_eq!(p.freed_bytes, 6 + 5, "only a's own output and log go");
        assert!(has_blob(&s, shared) && !has_blob(&s, b"a-only"));
        assert_restores(&s, d.path(), &[&new], &[&[("x", shared)]]);
        // Size: dropping `new` frees the shared blob too.
        let p = s.prune(Some(0), None).unwrap();
        assert_eq!(p.freed_bytes, shared.len() as u64 + 5);
        assert!(!has_blob(&s, shared));
    }

    /// Two handles on one directory stand for two processes (the daemon's
    /// long-lived store and a foreground run's).
    #[test]
    fn two_handles_share_the_index_both_ways_and_memos_follow() {
        let d = tempfile::tempdir().unwrap();
        let daemon = store(d.path());
        let fg = store(d.path());
        let now = now_ms();
        // The daemon stores; the other handle hits at once.
        let a = put(&daemon, 'a', &[("a", b"AAAA")], b"log-a", now);
        daemon.flush().unwrap();
        assert_eq!(fg.get(&a.key).unwrap().unwrap().0, a);
        assert_restores(&fg, d.path(), &[&a], &[&[("a", b"AAAA")]]);
        // The foreground stores; the daemon sees it (no memo of it yet).
        let b = put(&fg, 'b', &[("b", b"BBBB")], b"log-b", now);
        fg.flush().unwrap();
        assert_eq!(daemon.get(&b.key).unwrap().unwrap().0, b);
        // The foreground drops an entry the daemon memoised: the daemon's
        // memo serves it until its next refresh, then the file wins.
        fg.drop_entry(&a.key);
        fg.flush().unwrap();
        assert!(daemon.get(&a.key).unwrap().is_some(), "memoised");
        daemon.refresh();
        assert!(daemon.get(&a.key).unwrap().is_none());
        assert!(daemon.get(&b.key).unwrap().is_some());
        // Its own commits keep its memo (no needless drops).
        let c = put(&daemon, 'c', &[("c", b"CCCC")], b"log-c", now);
        daemon.flush().unwrap();
        daemon.refresh();
        assert_eq!(
            daemon.memo.lock().unwrap().len(),
            2,
            "b and c stay memoised"
        );
        assert_eq!(daemon.get(&c.key).unwrap().unwrap().0, c);
    }

    #[test]
    fn two_writers_at_once_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s1 = store(d.path());
        let s2 = store(d.path());
        let now = now_ms();
        let keys = ['a', 'b', 'c', 'd', 'e', 'f', '0', '1', '2', '3', '4', '5'];
        std::thread::scope(|t| {
            for (i, s) in [&s1, &s2].into_iter().enumerate() {
                let keys = &keys;
                t.spawn(move || {
                    for k in keys.iter().skip(i).step_by(2) {
                        let body = format!("out-{k}");
                        put(s, *k, &[("x", body.as_bytes())], b"log", now);
                        s.flush().unwrap();
                    }
                });
            }
        });
        let s3 = store(d.path());
        for k in keys {
            let key = k.to_string().repeat(64);
            let e = s3.get(&key).unwrap().expect("every entry of both writers");
            assert_eq!(e.0.key, key);
        }
        assert_eq!(s3.stats().unwrap().0, keys.len() as u64);
    }

    #[test]
    fn clean_beside_an_open_handle_empties_in_place_and_waits_for_runs() {
        let d = tempfile::tempdir().unwrap();
        let daemon = store(d.path());
        let a = put(&daemon, 'a', &[("a", b"AAAA")], b"log-a", now_ms());
        daemon.flush().unwrap();
        assert!(daemon.get(&a.key).unwrap().is_some());
        let dir = d.path().join("cache");
        // A run in progress (any process) holds clean off.
        let lease = daemon.run_lease().unwrap();
        let t = Instant::now();
        let waiting = std::thread::spawn({
            let dir = dir.clone();
            move || clean(&dir).unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "clean waits for the run");
        assert!(has_blob(&daemon, b"AAAA"));
        drop(lease);
        let (entries, _) = waiting.join().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(entries, 1);
        // The index the daemon holds was emptied, not deleted.
        assert!(dir.join(INDEX_FILE).exists());
        assert!(!has_blob(&daemon, b"AAAA"));
        daemon.refresh();
        assert!(daemon.get(&a.key).unwrap().is_none());
        // It keeps working: a new entry is seen by a fresh handle.
        let b = put(&daemon, 'b', &[("b", b"BBBB")], b"log-b", now_ms());
        daemon.flush().unwrap();
        assert_eq!(store(d.path()).get(&b.key).unwrap().unwrap().0, b);
        // Without another holder, clean deletes everything as before.
        daemon.close().unwrap();
        drop(daemon);
        clean(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn prune_after_a_crash_sweeps_unreferenced_blobs_and_old_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let now = now_ms();
        let gone = put(&s, 'a', &[("a", b"AAAA")], b"log-a", now);
        let kept = put(&s, 'b', &[("b", b"BBBB")], b"log-b", now);
        // A prune that committed the index and died before deleting blobs.
        s.drop_entry(&gone.key);
        let tmp = d.path().join("cache/tmp");
        fs::write(tmp.join("1-1"), b"12345678").unwrap();
        let f = fs::File::options()
            .write(true)
            .open(tmp.join("1-1"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - GRACE - Duration::from_secs(1))
            .unwrap();
        fs::write(tmp.join("1-2"), b"123").unwrap();
        let s = reopen(d.path(), s);
        assert!(has_blob(&s, b"AAAA"));
        // Unreferenced blobs younger than GRACE may be a save in flight in
        // another process: kept. These were left long ago.
        let p = s.prune(None, None).unwrap();
        assert_eq!((p.removed, p.kept, p.freed_bytes), (0, 1, 8));
        assert!(has_blob(&s, b"AAAA"));
        for b in [&b"AAAA"[..], b"log-a"] {
            let f = fs::File::options()
                .write(true)
                .open(s.blob_path(&digest_of(b).hash))
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - GRACE - Duration::from_secs(1))
                .unwrap();
        }
        fs::write(tmp.join("1-1"), b"12345678").unwrap();
        let f = fs::File::options()
            .write(true)
            .open(tmp.join("1-1"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - GRACE - Duration::from_secs(1))
            .unwrap();
        let p = s.prune(None, None).unwrap();
        assert_eq!((p.removed, p.kept), (0, 1));
        assert_eq!(p.freed_bytes, 4 + 5 + 8);
        assert!(!has_blob(&s, b"AAAA") && !has_blob(&s, b"log-a"));
        assert!(!tmp.join("1-1").exists() && tmp.join("1-2").exists());
        assert_restores(&s, d.path(), &[&kept], &[&[("b", b"BBBB")]]);
    }

    #[test]
    fn prune_never_deletes_a_blob_whose_entry_is_not_queued_yet() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let entry = |key: char, out: &Digest, log: Digest| {
            let m = Manifest {
                version: MANIFEST_VERSION,
                key: key.to_string().repeat(64),
                task: format!("p#{key}"),
                outputs: vec![OutputFile {
                    path: "dist/o".into(),
                    mode: 0o644,
                    digest: out.clone(),
                    kind: OutputKind::File,
                    link: None,
                }],
                log,
                exit_code: 0,
                duration_ms: 0,
                created_at: now_ms(),
            };
            s.put_entry(&m, &Stamps::new());
        };
        // Save X in flight: its blobs are stored, its entry not yet queued.
        let out = s.put_bytes(b"in flight").unwrap();
        let log_x = s.put_bytes(b"log").unwrap();
        let p = s.prune(Some(0), None).unwrap();
        assert_eq!((p.removed, p.freed_bytes), (0, 0));
        assert!(has_blob(&s, b"in flight") && has_blob(&s, b"log"));
        // Save Y stores the same output bytes; then X queues its entry.
        assert_eq!(s.put_bytes(b"in flight").unwrap(), out);
        entry('x', &out, log_x);
        let p = s.prune(Some(0), None).unwrap();
        assert_eq!((p.removed, p.freed_bytes), (1, 3), "only X's log goes");
        assert!(has_blob(&s, b"in flight"), "Y's output stays");
        // Y queues its entry: named by an entry now, size pressure drops it.
        let log_y = s.put_bytes(b"log-y").unwrap();
        entry('y', &out, log_y);
        let p = s.prune(Some(0), None).unwrap();
        assert_eq!((p.removed, p.freed_bytes), (1, 9 + 5));
        assert!(!has_blob(&s, b"in flight"));
        assert_eq!(s.stats().unwrap(), (0, 0, 0));
    }

    #[test]
    fn touch_writes_at_most_once_an_hour() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let m = put(&s, 'a', &[], b"log", now_ms() - 2 * TOUCH_EVERY_MS);
        s.flush().unwrap();
        let read = |s: &Store| {
            let tx = s.db.begin_read().unwrap();
            let t = tx.open_table(ACCESS).unwrap();
            t.get(m.key.as_str()).unwrap().map(|v| v.value())
        };
        assert_eq!(read(&s), None, "a new entry's access time is its creation");
        s.get(&m.key).unwrap();
        s.flush().unwrap();
        let first = read(&s).expect("touched");
        std::thread::sleep(Duration::from_millis(5));
        s.get(&m.key).unwrap();
        s.touch(&m.key);
        s.flush().unwrap();
        assert_eq!(
            read(&s),
            Some(first),
            "a second hit within the hour writes nothing"
        );
        s.drop_entry(&m.key);
        s.touch(&m.key);
        s.flush().unwrap();
        assert_eq!(read(&s), None, "no access row outlives its entry");
    }

    fn manifest(key: char, outputs: Vec<OutputFile>, log: Digest) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            key: key.to_string().repeat(64),
            task: "p#build".into(),
            outputs,
            log,
            exit_code: 0,
            duration_ms: 0,
            created_at: now_ms(),
        }
    }

    /// A project `p/` beside `elsewhere/x.txt`, and a store.
    fn project_with_outside(d: &Path) -> (Store, PathBuf, PathBuf) {
        let s = store(d);
        let proj = d.join("p");
        let elsewhere = d.join("elsewhere");
        fs::create_dir_all(&proj).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("x.txt"), "OUTSIDE").unwrap();
        (s, proj, elsewhere)
    }

    #[test]
    fn restore_and_wipe_never_write_through_a_symlinked_output_dir() {
        let d = tempfile::tempdir().unwrap();
        let (s, proj, elsewhere) = project_with_outside(d.path());
        // The entry was made with a real dist/.
        fs::create_dir_all(proj.join("dist")).unwrap();
        fs::write(proj.join("dist/x.txt"), "CACHED").unwrap();
        let pats = Patterns::new(&["dist/**"]).unwrap();
        let fence = HashSet::new();
        let files = collect_outputs(&proj, &pats, &fence);
        let m = manifest(
            'a',
            capture(&s, &proj, &files).unwrap(),
            s.put_bytes(b"").unwrap(),
        );
        // Now dist is a link to a directory outside the project.
        fs::remove_dir_all(proj.join("dist")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, proj.join("dist")).unwrap();
        let e = restore(&s, &m, &proj, &pats, &fence).unwrap_err();
        assert!(
            e.to_string()
                .contains("dist is a symlink; vx never writes through symlinks"),
            "{e}"
        );
        let e = wipe_outputs(&proj, &pats, &fence).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(
            fs::read_to_string(elsewhere.join("x.txt")).unwrap(),
            "OUTSIDE"
        );
        assert!(collect_outputs(&proj, &pats, &fence).is_empty());
        // A manifest naming a path through the link (no base to check) is
        // refused at the write.
        let any = Patterns::new(&["**/*.txt"]).unwrap();
        assert!(restore(&s, &m, &proj, &any, &fence).is_err());
        assert_eq!(
            fs::read_to_string(elsewhere.join("x.txt")).unwrap(),
            "OUTSIDE"
        );
    }

    #[test]
    fn non_utf8_output_names_are_refused_by_name_and_never_wiped() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let (s, proj, _elsewhere) = project_with_outside(d.path());
        fs::create_dir_all(proj.join("dist")).unwrap();
        let bad = proj
            .join("dist")
            .join(std::ffi::OsStr::from_bytes(b"\xff.txt"));
        let bad2 = proj
            .join("dist")
            .join(std::ffi::OsStr::from_bytes(b"\xfe.txt"));
        fs::write(&bad, "a").unwrap();
        fs::write(&bad2, "b").unwrap();
        fs::write(proj.join("dist/ok.txt"), "ok").unwrap();
        let pats = Patterns::new(&["dist/**"]).unwrap();
        let fence = HashSet::new();
        let files = collect_outputs(&proj, &pats, &fence);
        // Two such names stay two entries (never merged by a lossy name).
        assert_eq!(files.iter().filter(|f| f.non_utf8).count(), 2);
        let err = capture(&s, &proj, &files).unwrap_err().to_string();
        assert!(
            err.contains("not valid UTF-8") && err.contains("dist/\\x"),
            "{err}"
        );
        wipe_outputs(&proj, &pats, &fence).unwrap();
        assert!(
            bad.exists() && bad2.exists(),
            "vx never touches a name it cannot address"
        );
        assert!(!proj.join("dist/ok.txt").exists());
    }

    #[test]
    fn symlink_outputs_are_stored_and_restored_as_links() {
        let d = tempfile::tempdir().unwrap();
        let (s, proj, _elsewhere) = project_with_outside(d.path());
        fs::create_dir_all(proj.join("dist")).unwrap();
        fs::write(proj.join("dist/real.txt"), "REAL").unwrap();
        std::os::unix::fs::symlink("real.txt", proj.join("dist/link.txt")).unwrap();
        std::os::unix::fs::symlink("../src", proj.join("dist/dirlink")).unwrap();
        let pats = Patterns::new(&["dist/**"]).unwrap();
        let fence = HashSet::new();
        let files = collect_outputs(&proj, &pats, &fence);
        let outputs = capture(&s, &proj, &files).unwrap();
        let link = outputs.iter().find(|o| o.path == "dist/link.txt").unwrap();
        assert_eq!(link.kind, OutputKind::Symlink);
        assert_eq!(link.link.as_deref(), Some("real.txt"));
        assert_eq!(link.digest, digest_of(b"real.txt"));
        // No blob holds the target's bytes twice: only real.txt's.
        assert!(
            outputs
                .iter()
                .any(|o| o.path == "dist/dirlink" && o.is_link())
        );
        let m = manifest('b', outputs, s.put_bytes(b"").unwrap());
        fs::remove_dir_all(proj.join("dist")).unwrap();
        let stamps = restore(&s, &m, &proj, &pats, &fence).unwrap();
        let md = fs::symlink_metadata(proj.join("dist/link.txt")).unwrap();
        assert!(md.file_type().is_symlink());
        assert_eq!(
            fs::read_link(proj.join("dist/link.txt")).unwrap(),
            Path::new("real.txt")
        );
        assert_eq!(
            fs::read_link(proj.join("dist/dirlink")).unwrap(),
            Path::new("../src")
        );
        assert_eq!(
            fs::read_to_string(proj.join("dist/link.txt")).unwrap(),
            "REAL"
        );
        let on_disk = collect_outputs(&proj, &pats, &fence);
        assert!(outputs_up_to_date(&m, &stamps, &on_disk));
    }

    #[test]
    fn symlinks_pointing_outside_are_neither_cached_nor_restored() {
        let d = tempfile::tempdir().unwrap();
        let (s, proj, elsewhere) = project_with_outside(d.path());
        fs::create_dir_all(proj.join("dist")).unwrap();
        for target in ["../../elsewhere/x.txt", "/etc/passwd"] {
            let l = proj.join("dist/leak");
            let _ = fs::remove_file(&l);
            std::os::unix::fs::symlink(target, &l).unwrap();
            let pats = Patterns::new(&["dist/**"]).unwrap();
            let files = collect_outputs(&proj, &pats, &HashSet::new());
            let e = capture(&s, &proj, &files).unwrap_err();
            assert!(matches!(e, CacheError::Refused(_)), "{e}");
            // Nothing of the target got into the store.
            assert!(!has_blob(&s, b"OUTSIDE"));
        }
        // A manifest from elsewhere naming such a link: refused before any write.
        let target = "../../elsewhere/x.txt".to_string();
        let m = manifest(
            'c',
            vec![OutputFile {
                path: "dist/leak".into(),
                mode: 0o777,
                digest: digest_of(target.as_bytes()),
                kind: OutputKind::Symlink,
                link: Some(target),
            }],
            s.put_bytes(b"").unwrap(),
        );
        fs::remove_file(proj.join("dist/leak")).unwrap();
        fs::write(proj.join("dist/keep"), "K").unwrap();
        let pats = Patterns::new(&["dist/**"]).unwrap();
        let e = restore(&s, &m, &proj, &pats, &HashSet::new()).unwrap_err();
        assert!(matches!(e, CacheError::Refused(_)), "{e}");
        assert!(
            proj.join("dist/keep").exists(),
            "a refused restore wipes nothing"
        );
        assert_eq!(
            fs::read_to_string(elsewhere.join("x.txt")).unwrap(),
            "OUTSIDE"
        );
    }

    #[test]
    fn a_same_size_corrupt_blob_is_deleted_on_read_and_replaced_on_save() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        // put_file over a corrupt blob replaces it.
        let src = d.path().join("src.txt");
        fs::write(&src, "hello").unwrap();
        let dg = s.put_file(&src).unwrap();
        fs::write(s.blob_path(&dg.hash), "jello").unwrap();
        assert_eq!(s.put_file(&src).unwrap(), dg);
        assert_eq!(s.read_verified(&dg).unwrap(), b"hello");
        // put_bytes over a corrupt blob replaces it.
        fs::write(s.blob_path(&dg.hash), "jello").unwrap();
        assert_eq!(s.put_bytes(b"hello").unwrap(), dg);
        assert_eq!(s.read_verified(&dg).unwrap(), b"hello");
        // A read that finds it corrupt deletes it.
        fs::write(s.blob_path(&dg.hash), "jello").unwrap();
        assert!(matches!(s.read_verified(&dg), Err(CacheError::Corrupt(_))));
        assert!(!s.blob_path(&dg.hash).exists());
    }

    #[test]
    fn a_damaged_index_is_moved_aside_and_rebuilt_empty_once() {
        for (what, damage) in damages() {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("cache");
            let s = store(d.path());
            let m = put(&s, 'a', &[("o", b"out")], b"log", now_ms());
            s.save_file_index(vec![]);
            s.close().unwrap();
            drop(s);
            // An older moved-aside file is cleaned up: at most one is kept.
            fs::write(dir.join("index.redb.broken-1"), "old").unwrap();
            damage(&dir.join("index.redb"));
            let s = Store::open(&dir, Duration::from_secs(1), &mut || {})
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(s.get(&m.key).unwrap().is_none(), "{what}");
            assert_eq!(s.stats().unwrap().0, 0, "{what}");
            let notices = take_notice(&dir);
            assert_eq!(notices.len(), 1, "{what}: {notices:?}");
            assert!(notices[0].contains("damaged"), "{what}: {}", notices[0]);
            assert!(take_notice(&dir).is_empty());
            let broken: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("index.redb.broken-")
                })
                .collect();
            assert_eq!(broken.len(), 1, "{what}");
            assert!(!dir.join("index.redb.broken-1").exists(), "{what}");
            // The new index works and survives a reopen.
            put(&s, 'b', &[("o", b"out2")], b"log", now_ms());
            let s = reopen(d.path(), s);
            assert_eq!(s.stats().unwrap().0, 1, "{what}");
            assert!(take_notice(&dir).is_empty(), "{what}");
        }
    }

    #[test]
    fn clean_deletes_only_the_store_layout() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        // The user's files, some with names like vx's.
        fs::create_dir_all(dir.join("tmp")).unwrap();
        fs::create_dir_all(dir.join("cas/zz")).unwrap();
        fs::create_dir_all(dir.join("docs")).unwrap();
        let users = [
            "notes.txt",
            "docs/a.md",
            "tmp/draft.txt",
            "cas/zz/mine",
            "index.redb.bak",
        ];
        for f in users {
            fs::write(dir.join(f), f).unwrap();
        }
        let s = store(d.path());
        put(&s, 'a', &[("o", b"out")], b"log", now_ms());
        s.close().unwrap();
        drop(s);
        fs::write(dir.join("tmp/123-4"), "stale vx temp").unwrap();
        let (entries, bytes) = clean(&dir).unwrap();
        assert_eq!(entries, 1);
        assert!(bytes > 0);
        for f in users {
            assert_eq!(fs::read_to_string(dir.join(f)).unwrap(), f, "{f} kept");
        }
        for f in ["index.redb", "tmp/123-4", ".gitignore"] {
            assert!(!dir.join(f).exists(), "{f} removed");
        }
        assert!(blob_files(&dir).is_empty());
        // A cache dir holding only vx's files goes entirely.
        let s = store(d.path());
        s.close().unwrap();
        drop(s);
        let only = d.path().join("only");
        fs::create_dir_all(&only).unwrap();
        let s = Store::open(&only, Duration::from_secs(1), &mut || {}).unwrap();
        put(&s, 'b', &[("o", b"x")], b"l", now_ms());
        s.close().unwrap();
        drop(s);
        clean(&only).unwrap();
        assert!(!only.exists());
    }

    #[test]
    fn prune_never_deletes_files_vx_did_not_name() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let s = store(d.path());
        fs::write(dir.join("tmp/notes.txt"), "mine").unwrap();
        fs::create_dir_all(dir.join("cas/zz")).unwrap();
        fs::write(dir.join("cas/zz/mine"), "mine").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3 * 3600);
        for f in ["tmp/notes.txt", "cas/zz/mine"] {
            fs::File::options()
                .write(true)
                .open(dir.join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        s.prune(Some(0), Some(Duration::ZERO)).unwrap();
        assert!(dir.join("tmp/notes.txt").exists());
        assert!(dir.join("cas/zz/mine").exists());
    }

    #[test]
    fn an_ephemeral_store_keeps_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::ephemeral(&d.path().join("ro")).unwrap();
        assert!(s.is_ephemeral());
        assert!(s.put_bytes(b"x").is_err());
        assert!(s.get(&"a".repeat(64)).unwrap().is_none());
        assert!(!d.path().join("ro").exists());
    }
}
