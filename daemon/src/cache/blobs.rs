//! `cache::blobs` — the content-addressed blobs `cas/<2 hex>/<64 hex>` and
//! the temp files `tmp/<pid>-<n>` they are written through: a blob is
//! written to a temp file and renamed into place (two processes writing the
//! same blob rename identical bytes over each other, which is harmless),
//! and listed as not yet durable; the index writer makes every listed blob
//! durable in one step ([`make_durable`]: one `syncfs` on Linux for a large
//! batch, an fsync per blob for a few) before it
//! commits the entries that name them, so a save costs no fsync of its own
//! and a crash leaves at worst an unreferenced or torn blob, never an entry
//! naming one. Every read is verified against the digest. A blob found
//! present for a save has its mtime refreshed under `gc.lock` (shared), so
//! another process's prune keeps it. Never touches the index.

use super::*;

impl Store {
    pub(super) fn blob_path(&self, hash: &str) -> PathBuf {
        self.dir.join("cas").join(&hash[..2]).join(hash)
    }

    pub(super) fn tmp_path(&self) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    pub(super) fn refuse_ephemeral(&self) -> Result<(), CacheError> {
        if self.ephemeral {
            return Err(CacheError::Db(format!(
                "the cache at {} is not in use for this run",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Stores bytes; returns their digest. They are durable before any
    /// entry naming them is committed (see [`Store::unsynced`]). A blob
    /// already there is kept only when its bytes verify (a corrupt one is
    /// replaced).
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
                // Possibly another process's blob, not yet durable.
                self.note_unsynced(dest);
                return Ok(d);
            }
        }
        let tmp = self.tmp_path();
        let r = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
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
        self.install(&tmp, &dest)?;
        self.mark_pending(&d);
        Ok(d)
    }

    /// Stores a file's bytes (streamed); returns their digest.
    pub fn put_file(&self, src: &Path) -> Result<Digest, CacheError> {
        let mut input = fs::File::open(src).map_err(io(src))?;
        self.put_reader(&mut input, src)
    }

    /// Stores the bytes of `input` (named `what` in errors); returns their
    /// digest. The new bytes replace a blob already there (which may be
    /// corrupt: a save repairs it). Durable before any entry naming them
    /// is committed.
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
        self.install(&tmp, &dest)?;
        self.mark_pending(&d);
        Ok(d)
    }

    /// Guards a blob just put from [`Store::prune`] until an entry naming it
    /// is queued (or [`GRACE`] passes). Called with `gc` held shared.
    pub(super) fn mark_pending(&self, d: &Digest) {
        if let Ok(mut p) = self.pending.lock() {
            let e = p.entry(d.hash.clone()).or_insert((Instant::now(), 0));
            *e = (Instant::now(), e.1 + 1);
        }
    }

    /// Renames a written temp file into place and lists it as not yet
    /// durable (the index writer syncs it before committing an entry).
    pub(super) fn install(&self, tmp: &Path, dest: &Path) -> Result<(), CacheError> {
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
        self.note_unsynced(dest.to_path_buf());
        Ok(())
    }

    /// Lists a blob whose bytes (or whose name) may not be on disk yet.
    pub(super) fn note_unsynced(&self, path: PathBuf) {
        if let Ok(mut u) = self.unsynced.lock() {
            u.push(path);
        }
    }

    /// A task's log: [`Store::read_verified`], except that the empty log
    /// (size 0 and the digest of no bytes, what a quiet task leaves) is
    /// known without reading its blob: its digest names exactly no bytes.
    /// A fully cached run replays one log per task.
    pub fn read_log(&self, d: &Digest) -> Result<Vec<u8>, CacheError> {
        if d.size_bytes == 0 && d.hash == EMPTY_BLOB_HASH {
            return Ok(Vec::new());
        }
        self.read_verified(d)
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
        // The size is known: read it and one byte more (a longer file is
        // read to its end below), with no stat for a size hint. (The reservation is
        // capped: the size comes from a manifest.)
        let mut bytes = Vec::with_capacity((d.size_bytes as usize).saturating_add(1).min(1 << 26));
        (&mut f)
            .take(d.size_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|_| corrupt())?;
        if bytes.len() as u64 > d.size_bytes {
            // Longer than named: read it all, so what is judged below is
            // the whole file, as before.
            f.read_to_end(&mut bytes).map_err(|_| corrupt())?;
        }
        if blake3::hash(&bytes).to_hex().as_str() != d.hash {
            // The name is the hash: these bytes are wrong for every entry.
            let ino = f.metadata().map(|m| m.ino()).ok();
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
}

/// The blobs of the layout under `dir`: (hash, path, size) of each regular
/// file `cas/<2 hex>/<64 hex>` whose directory is its hash's first two
/// characters. Never follows a link.
pub(super) fn blob_files(dir: &Path) -> Vec<(String, PathBuf, u64)> {
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
pub(super) fn is_temp_name(name: &str) -> bool {
    name.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// vx's temp files under `dir/tmp`: (path, size, age). Never follows a link.
pub(super) fn temp_files(dir: &Path) -> Vec<(PathBuf, u64, Duration)> {
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

/// Sets a blob's mtime to now: a blob found present for a save counts as
/// freshly written for [`Store::prune`]'s grace. False when it cannot be
/// done (the caller then writes the blob afresh).
pub(super) fn refresh_mtime(path: &Path) -> bool {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .is_ok()
}

/// Up to this many blobs in one commit are fsynced one by one (with their
/// directories); more take one `syncfs` (Linux). A `syncfs` flushes
/// everything dirty on the file system, other programs' writes included:
/// worth it for a big batch, too costly for a small run's few blobs on a
/// busy machine.
const SYNC_EACH_MAX: usize = 16;

/// blake3 of no bytes: the digest of an empty blob.
pub(super) const EMPTY_BLOB_HASH: &str =
    "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

/// Makes the blobs at `paths` (written under the cache dir `dir`) durable,
/// with the names they were renamed to: a few are fsynced one by one (each
/// blob, then each directory holding one); a large batch, on Linux, by one
/// `syncfs` of the cache dir's file system (one device flush instead of
/// two fsyncs per blob, which cost ~5 ms each).
pub(super) fn make_durable(dir: &Path, paths: &[PathBuf]) -> std::io::Result<()> {
    // The same blob may be listed by several saves (an empty log).
    let files: std::collections::BTreeSet<&PathBuf> = paths.iter().collect();
    if files.is_empty() {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    if files.len() > SYNC_EACH_MAX {
        let d = fs::File::open(dir)?;
        rustix::fs::syncfs(&d)?;
        return Ok(());
    }
    let _ = dir;
    let mut dirs = std::collections::BTreeSet::new();
    for p in files {
        match fs::File::open(p) {
            Ok(f) => f.sync_all()?,
            // Pruned or replaced since: nothing of it to make durable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = p.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    for d in dirs {
        fs::File::open(&d)?.sync_all()?;
    }
    Ok(())
}
