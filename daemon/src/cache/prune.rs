//! `cache::prune` — shrinking and emptying the store: LRU/age pruning
//! (entries first, durably, then blobs no entry names), statistics, and
//! `clean`. Safe beside other processes: a prune holds `gc.lock` while it
//! decides and deletes, and keeps unreferenced blobs younger than
//! [`GRACE`] (a save in flight elsewhere); `clean` waits for every run's
//! lease and empties an index another process has open instead of
//! deleting it. Never deletes a name outside the store's layout.

use super::*;

impl Store {
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

    pub(super) fn prune_with(
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
    pub(super) fn blob_sizes(&self) -> std::collections::HashMap<String, u64> {
        blob_files(&self.dir)
            .into_iter()
            .map(|(h, _, n)| (h, n))
            .collect()
    }

    /// Files under `tmp/` named like vx's temp files and not modified for an
    /// hour: left by a crash.
    pub(super) fn stale_temp_files(&self) -> Vec<(PathBuf, u64)> {
        temp_files(&self.dir)
            .into_iter()
            .filter(|(_, _, age)| *age >= GRACE)
            .map(|(p, n, _)| (p, n))
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
        let blobs = self.blob_sizes();
        Ok((entries, blobs.len() as u64, blobs.values().sum()))
    }
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

/// Blobs put but not yet named by a committed entry, and temp files, are
/// left alone by [`Store::prune`] for this long.
pub(super) const GRACE: Duration = Duration::from_secs(60 * 60);

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
    rm(&dir.join(super::HISTORY_FILE))?;
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
            let ours = [
                share::GC_LOCK,
                share::RUNS_LOCK,
                share::TASKS_LOCK,
                share::HISTORY_LOCK,
            ]
            .contains(&name.as_str())
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
