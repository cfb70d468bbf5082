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
//! Invariants: a blob is written to a temp file and renamed into place,
//! and made durable (the index writer syncs every blob put since its last
//! commit, in one step) before any entry naming it is committed; every blob read is verified against its
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
//!
//! Submodules, each owning one concept: [`entry`] (the stored manifest),
//! [`index`] (`index.redb`, the [`Store`] handle, its memo and writer),
//! [`blobs`] (the CAS and temp files), [`capture`] and [`restore`] (bytes
//! between a project and the store), [`outputs`] (a task's outputs on
//! disk), [`prune`] (prune, stats, clean) and [`share`] (the file locks
//! that let several processes — a daemon and foreground runs — use one
//! cache directory at once).

mod blobs;
mod capture;
mod entry;
mod index;
mod outputs;
mod prune;
pub mod remote;
mod restore;
mod share;
#[cfg(test)]
mod tests;

use blobs::*;
pub use capture::*;
pub use entry::*;
pub use index::*;
pub use outputs::*;
pub use prune::*;
pub use restore::*;
pub(crate) use share::{Held, record_lock, unshared, wait_for_records};
pub use share::{RunLease, TaskLock};

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
/// The run history's file in the cache directory: the cache owns the
/// directory's layout (`clean` removes it), `history` owns its contents.
pub const HISTORY_FILE: &str = "history.redb";

/// What vx writes to `<cache dir>/.gitignore`.
const GITIGNORE: &str = "*\n";

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
