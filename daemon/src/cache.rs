//! `cache` — the local content-addressed store, its index, and output
//! ownership (collect, wipe, restore, up-to-date checks).
//!
//! Layout under the cache dir (default `<root>/.vx/cache`):
//! `cas/<2 hex>/<64 hex>` blobs named by the blake3 of their bytes, and
//! `index.redb` with the tables `entries` (task key → manifest), `stamps`
//! (task key → stat of the outputs as last written on this machine),
//! `access` (task key → unix ms it was last served, a hint for
//! [`Store::prune`]) and `files` (the persisted file index of `hash`).
//!
//! Invariants: a blob is written to a temp file, fsynced and renamed before
//! any entry naming it is committed; every blob read is verified against its
//! digest, and a mismatch is reported as [`CacheError::Corrupt`] (the caller
//! treats it as a miss and drops the entry); restore copies bytes, never
//! hard-links a blob into the tree. Only one writer thread commits to the
//! index. Pruning commits the removal of entries before it deletes any
//! blob, so a crash leaves unreferenced blobs, never a dangling entry. This module never spawns a process and never decides what runs.

use crate::globs::Patterns;
use crate::hash::{FileStat, Record};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use vx_proto::Digest;

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const STAMPS: TableDefinition<&str, &[u8]> = TableDefinition::new("stamps");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const ACCESS: TableDefinition<&str, u64> = TableDefinition::new("access");

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

/// Version of the manifest encoding; a manifest of another version is a miss.
const MANIFEST_VERSION: u32 = 1;

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
    #[error("the cache at {0} is in use by another vx process (waited {1} s)")]
    Locked(PathBuf, u64),
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

/// One output file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Project-relative path.
    pub path: String,
    pub mode: u32,
    pub digest: Digest,
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
    /// Entries read or written through this store, kept in memory (this
    /// process is the index's only writer while it holds it open).
    memo: Mutex<std::collections::HashMap<String, Memo>>,
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

impl Store {
    /// Opens (or creates) the store. If another process holds the index,
    /// waits up to `wait` and calls `on_wait` once.
    pub fn open(dir: &Path, wait: Duration, on_wait: &mut dyn FnMut()) -> Result<Self, CacheError> {
        fs::create_dir_all(dir.join("cas")).map_err(io(dir))?;
        fs::create_dir_all(dir.join("tmp")).map_err(io(dir))?;
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            let _ = fs::write(&ignore, "*\n");
        }
        let path = dir.join("index.redb");
        let start = Instant::now();
        let mut warned = false;
        let db = loop {
            match redb::Database::create(&path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    if start.elapsed() > wait {
                        return Err(CacheError::Locked(dir.to_path_buf(), wait.as_secs()));
                    }
                    if !warned {
                        on_wait();
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) => {
                    return Err(CacheError::Io { path, source: e });
                }
                Err(e) => {
                    // A damaged or foreign index: the cache is only a cache.
                    // Move it aside and start empty rather than refusing to run.
                    tracing::warn!(
                        "cache index {} unusable ({e}); starting a new one",
                        path.display()
                    );
                    let aside = dir.join(format!("index.redb.broken-{}", std::process::id()));
                    fs::rename(&path, &aside).map_err(io(&path))?;
                    break redb::Database::create(&path).map_err(dberr)?;
                }
            }
        };
        let db = Arc::new(db);
        // Create the tables once (a write transaction costs an fsync; most
        // opens find them already there).
        let exists = db.begin_read().ok().is_some_and(|r| {
            r.open_table(ENTRIES).is_ok()
                && r.open_table(STAMPS).is_ok()
                && r.open_table(FILES).is_ok()
                && r.open_table(ACCESS).is_ok()
        });
        if !exists {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(ENTRIES).map_err(dberr)?;
            tx.open_table(STAMPS).map_err(dberr)?;
            tx.open_table(FILES).map_err(dberr)?;
            tx.open_table(ACCESS).map_err(dberr)?;
            tx.commit().map_err(dberr)?;
        }
        let (tx, rx) = mpsc::channel::<Op>();
        let wdb = db.clone();
        let thread = std::thread::Builder::new()
            .name("vx-cache-writer".into())
            .spawn(move || writer_loop(wdb, rx))
            .map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            memo: Mutex::new(std::collections::HashMap::new()),
            pending: Mutex::new(std::collections::HashMap::new()),
            gc: RwLock::new(()),
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
        let mut out = Vec::with_capacity(t.len().map_err(dberr)? as usize);
        for row in t.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            if let Some(r) = Record::decode(v.value()) {
                out.push((k.value().to_string(), r));
            }
        }
        Ok(out)
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

    /// Stores bytes durably; returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, CacheError> {
        let d = digest_of(bytes);
        let dest = self.blob_path(&d.hash);
        {
            let _gc = self.gc.read();
            if fs::metadata(&dest).is_ok_and(|m| m.len() == d.size_bytes) {
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
        self.install(&tmp, &dest)?;
        self.mark_pending(&d);
        Ok(d)
    }

    /// Stores a file's bytes durably (streamed); returns their digest.
    pub fn put_file(&self, src: &Path) -> Result<Digest, CacheError> {
        let tmp = self.tmp_path();
        let r = (|| {
            let mut input = fs::File::open(src)?;
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
                    path: src.to_path_buf(),
                    source: e,
                });
            }
        };
        let dest = self.blob_path(&d.hash);
        let _gc = self.gc.read();
        if fs::metadata(&dest).is_ok_and(|m| m.len() == d.size_bytes) {
            let _ = fs::remove_file(&tmp);
            self.mark_pending(&d);
            return Ok(d);
        }
        self.install(&tmp, &dest)?;
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

    fn install(&self, tmp: &Path, dest: &Path) -> Result<(), CacheError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::rename(tmp, dest).map_err(io(dest))?;
        // Make the rename itself durable.
        if let Some(parent) = dest.parent()
            && let Ok(d) = fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads a blob and verifies it against its digest.
    pub fn read_verified(&self, d: &Digest) -> Result<Vec<u8>, CacheError> {
        if !valid_hex(&d.hash) {
            return Err(CacheError::Corrupt(d.hash.clone()));
        }
        let bytes =
            fs::read(self.blob_path(&d.hash)).map_err(|_| CacheError::Corrupt(d.hash.clone()))?;
        if bytes.len() as u64 != d.size_bytes || blake3::hash(&bytes).to_hex().as_str() != d.hash {
            return Err(CacheError::Corrupt(d.hash.clone()));
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
        // Saves wait from here until the blobs are gone (see `gc`).
        let _gc = self
            .gc
            .write()
            .map_err(|_| CacheError::Db("cache gc lock poisoned".into()))?;
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
        let pending: HashSet<String> = match self.pending.lock() {
            Ok(mut p) => {
                p.retain(|_, (t, _)| t.elapsed() < GRACE);
                p.keys().cloned().collect()
            }
            Err(_) => HashSet::new(),
        };
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

    /// Every blob file under `cas/` (named by a valid hash) and its size.
    fn blob_sizes(&self) -> std::collections::HashMap<String, u64> {
        let mut out = std::collections::HashMap::new();
        let Ok(rd) = fs::read_dir(self.dir.join("cas")) else {
            return out;
        };
        for sub in rd.flatten() {
            let Ok(rd2) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in rd2.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if valid_hex(&name)
                    && let Ok(m) = f.metadata()
                    && m.is_file()
                {
                    out.insert(name, m.len());
                }
            }
        }
        out
    }

    /// Files under `tmp/` not modified for an hour: left by a crash.
    fn stale_temp_files(&self) -> Vec<(PathBuf, u64)> {
        let Ok(rd) = fs::read_dir(self.dir.join("tmp")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|f| {
                let m = f.metadata().ok()?;
                let age = m.modified().ok()?.elapsed().unwrap_or_default();
                (m.is_file() && age >= GRACE).then(|| (f.path(), m.len()))
            })
            .collect()
    }

    /// Entry count, blob count and blob bytes.
    pub fn stats(&self) -> Result<(u64, u64, u64), CacheError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let entries = tx
            .open_table(ENTRIES)
            .map_err(dberr)?
            .len()
            .map_err(dberr)?;
        let (mut blobs, mut bytes) = (0, 0);
        if let Ok(rd) = fs::read_dir(self.dir.join("cas")) {
            for sub in rd.flatten() {
                if let Ok(rd2) = fs::read_dir(sub.path()) {
                    for f in rd2.flatten() {
                        if let Ok(m) = f.metadata() {
                            blobs += 1;
                            bytes += m.len();
                        }
                    }
                }
            }
        }
        Ok((entries, blobs, bytes))
    }
}

impl Drop for Store {
    /// The last holder of a store flushes it and releases the index (and
    /// its file lock, so another process can open it).
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn db_err(e: redb::TransactionError) -> CacheError {
    CacheError::Db(e.to_string())
}

fn writer_loop(db: Arc<redb::Database>, rx: mpsc::Receiver<Op>) {
    // Whether a non-durable commit has happened since the last durable one.
    let mut nondurable = false;
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
            let mut tx = db.begin_write().map_err(|e| e.to_string())?;
            // Stamps and file-index records are hints (losing them costs a
            // re-check, never a wrong hit): a batch of only those skips the
            // fsync. Entries always commit durably, and so does a flush,
            // which also makes earlier non-durable commits durable.
            let hints_only = writes
                .iter()
                .all(|o| matches!(o, Op::Stamps { .. } | Op::Touch { .. } | Op::Files(_)))
                && !batch.iter().any(|o| matches!(o, Op::Flush(_)));
            if hints_only {
                let _ = tx.set_durability(redb::Durability::None);
            }
            nondurable = hints_only;
            {
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
            tx.commit().map_err(|e| e.to_string())
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

/// One output file on disk.
#[derive(Debug, Clone)]
pub struct OnDisk {
    /// Project-relative path.
    pub rel: String,
    pub abs: PathBuf,
    pub stat: FileStat,
}

/// Finds the files the output patterns select under `project` (not
/// gitignore-filtered). `fence` holds project-relative directories of
/// nested projects, which are never entered.
pub fn collect_outputs(project: &Path, pats: &Patterns, fence: &HashSet<String>) -> Vec<OnDisk> {
    let mut out = Vec::new();
    if pats.is_empty() {
        return out;
    }
    let bases = pats.base_dirs().unwrap_or_else(|| vec![String::new()]);
    let mut seen = HashSet::new();
    for base in bases {
        let start = if base.is_empty() {
            project.to_path_buf()
        } else {
            project.join(&base)
        };
        let Ok(md) = fs::symlink_metadata(&start) else {
            continue;
        };
        if md.is_dir() {
            walk_outputs(&start, &base, pats, fence, &mut out, &mut seen);
        } else if pats.matches(&base) && seen.insert(base.clone()) {
            push_file(&start, base, &md, &mut out);
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn push_file(abs: &Path, rel: String, md: &fs::Metadata, out: &mut Vec<OnDisk>) {
    if md.file_type().is_symlink() {
        // A link is captured as its target's bytes; a link to a directory or
        // a dangling link is not an output file.
        match fs::metadata(abs) {
            Ok(t) if t.is_file() => out.push(OnDisk {
                rel,
                abs: abs.to_path_buf(),
                stat: FileStat::of(md),
            }),
            _ => {}
        }
    } else if md.is_file() {
        out.push(OnDisk {
            rel,
            abs: abs.to_path_buf(),
            stat: FileStat::of(md),
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
) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
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
            walk_outputs(&e.path(), &rel, pats, fence, out, seen);
        } else if pats.matches(&rel) && seen.insert(rel.clone()) {
            push_file(&e.path(), rel, &md, out);
        }
    }
}

/// Deletes the files the output patterns select, and the directories that
/// became empty because of it. Symlinks are unlinked, never followed.
pub fn wipe_outputs(
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
) -> Result<(), CacheError> {
    let files = collect_outputs(project, pats, fence);
    let mut dirs = HashSet::new();
    for f in &files {
        fs::remove_file(&f.abs)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io(&f.abs))?;
        let mut p = f.abs.parent();
        while let Some(d) = p {
            if d == project {
                break;
            }
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d); // fails (and stays) when not empty
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
/// entry on this machine: same set of files, each with its recorded size,
/// mtime and inode.
pub fn outputs_up_to_date(m: &Manifest, stamps: &Stamps, on_disk: &[OnDisk]) -> bool {
    if on_disk.len() != m.outputs.len() || stamps.len() != m.outputs.len() {
        return false;
    }
    on_disk.iter().zip(&m.outputs).all(|(d, o)| {
        d.rel == o.path
            && d.stat.size == o.digest.size_bytes
            && stamps.get(&d.rel) == Some(&(d.stat.size, d.stat.mtime_ns, d.stat.ino))
    })
}

/// Captures the outputs of a successful run into blobs; returns the manifest
/// files and their on-disk stamps.
pub fn capture(store: &Store, files: &[OnDisk]) -> Result<Vec<OutputFile>, CacheError> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let digest = store.put_file(&f.abs)?;
        let mode = fs::metadata(&f.abs)
            .map(|m| m.mode() & 0o7777)
            .unwrap_or(0o644);
        out.push(OutputFile {
            path: f.rel.clone(),
            mode,
            digest,
        });
    }
    Ok(out)
}

/// Restores an entry's outputs into `project`: wipes the current outputs,
/// then writes each verified blob to a temp sibling and renames it in.
/// Returns the stamps of the written files.
pub fn restore(
    store: &Store,
    m: &Manifest,
    project: &Path,
    pats: &Patterns,
    fence: &HashSet<String>,
) -> Result<Stamps, CacheError> {
    // Verify every blob before touching the tree, so a corrupt entry leaves
    // the outputs as they were (the task then re-runs and wipes them itself).
    let mut blobs = Vec::with_capacity(m.outputs.len());
    for o in &m.outputs {
        if o.path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(CacheError::Corrupt(format!(
                "entry {} names {}",
                m.key, o.path
            )));
        }
        blobs.push(store.read_verified(&o.digest)?);
    }
    wipe_outputs(project, pats, fence)?;
    let mut stamps = Stamps::new();
    for (o, bytes) in m.outputs.iter().zip(blobs) {
        let dest = project.join(&o.path);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dest.with_file_name(format!(".vx-tmp-{}-{name}", std::process::id()));
        let r = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.set_permissions(fs::Permissions::from_mode(o.mode & 0o7777))?;
            drop(f);
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Io {
                path: dest,
                source: e,
            });
        }
        let md = fs::symlink_metadata(&dest).map_err(io(&dest))?;
        let st = FileStat::of(&md);
        stamps.insert(o.path.clone(), (st.size, st.mtime_ns, st.ino));
    }
    Ok(stamps)
}

/// Deletes the whole store; returns the entry count and bytes freed.
pub fn clean(dir: &Path) -> Result<(u64, u64), CacheError> {
    if !dir.exists() {
        return Ok((0, 0));
    }
    let (entries, bytes) = match Store::open(dir, Duration::from_secs(30), &mut || {}) {
        Ok(s) => {
            let (e, _, b) = s.stats()?;
            s.close()?;
            (e, b)
        }
        Err(CacheError::Locked(p, s)) => return Err(CacheError::Locked(p, s)),
        Err(_) => (0, 0),
    };
    fs::remove_dir_all(dir).map_err(io(dir))?;
    Ok((entries, bytes))
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
        fs::remove_file(s.blob_path(&dg.hash)).unwrap();
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
        let outputs = capture(&s, &files).unwrap();
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
        fs::write(tmp.join("old"), b"12345678").unwrap();
        let f = fs::File::options()
            .write(true)
            .open(tmp.join("old"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - GRACE - Duration::from_secs(1))
            .unwrap();
        fs::write(tmp.join("young"), b"123").unwrap();
        let s = reopen(d.path(), s);
        assert!(has_blob(&s, b"AAAA"));
        let p = s.prune(None, None).unwrap();
        assert_eq!((p.removed, p.kept), (0, 1));
        assert_eq!(p.freed_bytes, 4 + 5 + 8);
        assert!(!has_blob(&s, b"AAAA") && !has_blob(&s, b"log-a"));
        assert!(!tmp.join("old").exists() && tmp.join("young").exists());
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
}
