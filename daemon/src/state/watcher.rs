//! `state::watcher` — the daemon's file watcher and its change feed.
//!
//! Owns: the `notify` watcher (non-recursive watches on every non-ignored
//! directory, through linked members' links, and on output directories
//! and link targets), turning its events into dirty paths for the next
//! [`Hot::sync`] (an overflow, a watcher error or a missed cookie marks
//! everything dirty: a rescan, never a guess), the cookie barrier, and the
//! change feed watch loops wait on (a counter and the recent paths).
//! Never: walks or hashes files itself beyond listing directories to
//! watch, and never takes a second lock while holding one (the watcher and
//! its watched set are one lock, [`Watches`]).

use super::Hot;
use crate::hash;
use crate::model::Snapshot;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

/// File names whose change means the workspace model must be reloaded.
pub(super) const CONFIG_NAMES: &[&str] = &[
    "vx.toml",
    "package.json",
    "turbo.json",
    "pnpm-workspace.yaml",
    ".gitignore",
];

/// More changed paths than this between two requests: rescan everything.
pub(super) const MAX_DIRTY_PATHS: usize = 20_000;

/// How long a request waits for its cookie before falling back to a rescan.
pub(super) const COOKIE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct Dirty {
    /// Rescan every file (overflow, watcher error, missed cookie, start).
    pub(super) all: bool,
    /// Reload the workspace model (a config or manifest changed).
    pub(super) model: bool,
    pub(super) paths: HashSet<PathBuf>,
}

/// A project reached through a symlinked directory (see `Hot::linked`).
pub(super) struct LinkedProject {
    pub(super) project: usize,
    pub(super) dir: String,
    pub(super) real: Option<String>,
}

/// `rel` moved from under `from` to under `to` (root-relative, `/`-separated).
pub(super) fn rebase(rel: &str, from: &str, to: &str) -> Option<String> {
    if rel == from {
        return Some(to.to_string());
    }
    let rest = rel.strip_prefix(from)?.strip_prefix('/')?;
    Some(format!("{to}/{rest}"))
}

/// Whether one of two root-relative paths is the other or under it.
pub(super) fn overlaps(a: &str, b: &str) -> bool {
    Path::new(a).starts_with(b) || Path::new(b).starts_with(a)
}

/// `dir` and every path under it in `dirs`: the range that starts at `dir`
/// (paths order by components, so `a/b/c` sorts before `a/b-x` and `a/ba`).
pub(super) fn subtree(dirs: &BTreeSet<PathBuf>, dir: &Path) -> Vec<PathBuf> {
    dirs.range(dir.to_path_buf()..)
        .take_while(|d| d.starts_with(dir))
        .cloned()
        .collect()
}

#[derive(Default)]
pub(super) struct Watches {
    pub(super) watcher: Option<notify::RecommendedWatcher>,
    /// Ordered by components, so a directory's subtree is the range that
    /// starts at it: dropping a tree costs its size, not every watch.
    pub(super) dirs: BTreeSet<PathBuf>,
}

/// How many changed paths [`Hot`] remembers for watch clients.
pub(super) const CHANGE_LOG: usize = 256;

impl Hot {
    pub fn watch_dir(&self, dir: &Path) {
        let failed = {
            let Ok(mut guard) = self.watches_lock.lock() else {
                return;
            };
            let w = &mut *guard;
            let Some(watcher) = w.watcher.as_mut() else {
                return;
            };
            if w.dirs.contains(dir) {
                return;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    w.dirs.insert(dir.to_path_buf());
                    self.watches.store(w.dirs.len(), Ordering::Relaxed);
                    None
                }
                Err(e) => Some(e),
            }
        };
        // Reported with the watch lock released: leaf locks never nest.
        if let Some(e) = failed {
            tracing::warn!(
                "cannot watch {}: {e}; falling back to a rescan",
                dir.display()
            );
            self.mark_dirty(|d| d.all = true);
        }
    }

    /// Drops the watches of `dir` and everything under it.
    pub(super) fn unwatch_tree(&self, dir: &Path) {
        let Ok(mut guard) = self.watches_lock.lock() else {
            return;
        };
        let w = &mut *guard;
        // Every watched tree's root is watched itself: a path that is not
        // (a deleted file) has nothing under it to drop.
        if !w.dirs.contains(dir) {
            return;
        }
        let gone = subtree(&w.dirs, dir);
        // Under a watched parent, the event that brought us here (DELETE or
        // MOVED_FROM in the parent) has already made notify drop the watches
        // of `dir` and everything under it (and the kernel drops a deleted
        // directory's own): unwatching again is a synchronous round trip to
        // notify's event loop per directory that only fails. After
        // `rm -rf packages/*/dist` those round trips held the cookie barrier,
        // and the next run, for about a second. Otherwise (a watched link
        // target whose parent is not watched) nothing has dropped them.
        let notify_dropped = dir.parent().is_some_and(|p| w.dirs.contains(p));
        for g in gone {
            if !notify_dropped && let Some(watcher) = w.watcher.as_mut() {
                let _ = watcher.unwatch(&g);
            }
            w.dirs.remove(&g);
        }
        self.watches.store(w.dirs.len(), Ordering::Relaxed);
    }

    /// Watches every non-ignored directory under `dir` (inclusive). A
    /// directory that is itself ignored (a new `dist/`) is not watched.
    pub(super) fn watch_tree(&self, dir: &Path) {
        if dir != self.root && !hash::is_walked_dir(&self.root, dir) {
            return;
        }
        for d in hash::walk_dirs(&self.root, dir) {
            self.watch_dir(&d);
        }
    }

    pub(super) fn on_event(&self, ev: notify::Result<notify::Event>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("watcher error ({e}); the next request rescans");
                self.mark_dirty(|d| {
                    d.all = true;
                    d.model = true;
                });
                return;
            }
        };
        if ev.need_rescan() {
            tracing::info!("watcher queue overflow; the next request rescans");
            self.mark_dirty(|d| {
                d.all = true;
                d.model = true;
            });
        }
        // Reads (ours included: hashing opens files) change nothing.
        if let EventKind::Access(kind) = ev.kind
            && !matches!(
                kind,
                notify::event::AccessKind::Close(notify::event::AccessMode::Write)
            )
        {
            return;
        }
        let dotvx = self.root.join(".vx");
        let dotgit = self.root.join(".git");
        let mut changed = false;
        for p in &ev.paths {
            if p.starts_with(&dotvx) {
                if let Ok(mut c) = self.cookies.lock()
                    && let Some(tx) = c.remove(p)
                {
                    let _ = tx.send(());
                }
                continue;
            }
            if p.starts_with(&dotgit) {
                continue;
            }
            let seq = *self.changes.borrow() + 1;
            if let Ok(mut log) = self.change_log.lock() {
                if log.len() >= CHANGE_LOG {
                    log.pop_front();
                }
                log.push_back((seq, p.clone()));
                changed = true;
            }
            if p == &self.root && matches!(ev.kind, EventKind::Remove(_)) {
                self.root_gone.store(true, Ordering::Relaxed);
            }
            let structural = matches!(
                ev.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            let mut model_changed = false;
            if structural {
                if p.is_dir() {
                    // A directory appeared (created or moved in): watch it,
                    // and reload the model if it brings a project config.
                    // A symlink to one is not watched through the link here
                    // (that would re-label its target's watches): the next
                    // sync watches link targets and linked members.
                    // Whatever was watched at this path before is another
                    // inode (one deleted and made again before its delete
                    // was handled here, as a restore or `rm -rf dist &&
                    // mkdir dist` does): forgotten first, or `watch_dir`
                    // would take the path for watched and a changed output
                    // there would go unseen.
                    self.unwatch_tree(p);
                    if !std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
                        self.watch_tree(p);
                    }
                    model_changed = hash::walk_files_named(&self.root, p, CONFIG_NAMES);
                } else if !p.exists() {
                    // Something went away (deleted, or moved: its watches now
                    // follow the moved inode and would report wrong paths).
                    self.unwatch_tree(p);
                    if let Ok(dirs) = self.project_dirs.lock() {
                        // If a project lived there, reload.
                        model_changed = dirs.iter().any(|d| d.starts_with(p));
                    }
                }
            }
            self.mark_dirty(|d| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if model_changed || CONFIG_NAMES.contains(&name) {
                    tracing::debug!("config change: {} ({:?})", p.display(), ev.kind);
                    d.model = true;
                }
                if d.paths.len() < MAX_DIRTY_PATHS {
                    d.paths.insert(p.clone());
                } else {
                    d.all = true;
                }
            });
        }
        if !self.root.exists() {
            self.root_gone.store(true, Ordering::Relaxed);
        }
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// A receiver whose value changes whenever the watcher reports changes.
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The changed paths reported after counter value `seen` (oldest first,
    /// deduplicated, workspace-relative, at most `limit`).
    pub fn changes_since(&self, seen: u64, limit: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Ok(log) = self.change_log.lock() {
            for (seq, p) in log.iter() {
                if *seq <= seen {
                    continue;
                }
                let rel = p
                    .strip_prefix(&self.root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| p.to_string_lossy().into_owned());
                if !out.contains(&rel) {
                    out.push(rel);
                }
                if out.len() >= limit {
                    break;
                }
            }
        }
        out
    }

    /// Waits until the watcher has delivered every event caused before now.
    pub(super) fn cookie_barrier(&self) {
        let n = self.cookie_seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(".vx")
            .join("cookies")
            .join(format!("{}-{n}", std::process::id()));
        let (tx, rx) = mpsc::channel();
        if let Ok(mut c) = self.cookies.lock() {
            c.insert(path.clone(), tx);
        }
        let ok = std::fs::write(&path, b"").is_ok() && rx.recv_timeout(COOKIE_TIMEOUT).is_ok();
        if let Ok(mut c) = self.cookies.lock() {
            c.remove(&path);
        }
        let _ = std::fs::remove_file(&path);
        if !ok {
            tracing::warn!("the watcher did not deliver a cookie in time; rescanning");
            self.mark_dirty(|d| {
                // Events may be lost, a config change among them: reload too.
                d.all = true;
                d.model = true;
            });
        }
    }

    /// Root-relative dirs of the members reached through a symlink.
    pub(super) fn linked_dirs(&self) -> Vec<String> {
        self.linked
            .lock()
            .map(|l| l.iter().map(|l| l.dir.clone()).collect())
            .unwrap_or_default()
    }

    pub(super) fn is_watched(&self, dir: &Path) -> bool {
        self.watches_lock.lock().is_ok_and(|w| w.dirs.contains(dir))
    }

    /// Watches what symlinks into the workspace point at (possibly an
    /// ignored directory, not watched otherwise): a file's directory, a
    /// directory's whole tree. An edit of a target then re-walks the
    /// link's owner (see [`Hot::sync`]).
    pub(super) fn watch_link_targets(&self, snap: &Snapshot) {
        for (_, t) in snap.link_targets() {
            let abs = self.root.join(t);
            if abs.is_dir() {
                if !self.is_watched(&abs) {
                    for d in hash::walk_dirs(&self.root, &abs) {
                        self.watch_dir(&d);
                    }
                }
            } else if let Some(parent) = abs.parent()
                && parent.is_dir()
            {
                // (A dangling link's missing parent: its creation is seen
                // by the watch above it, when that is watched.)
                self.watch_dir(parent);
            }
        }
    }

    /// Watches those of `dirs` not watched yet: the ignored directories a
    /// walk for global inputs entered (they select files git ignores too,
    /// in directories not watched otherwise), so that an edit or a new file
    /// there is seen. They come from the walk a rescan or a project's
    /// re-walk makes anyway.
    pub(super) fn watch_new_dirs(&self, dirs: &[PathBuf]) {
        for d in dirs {
            if !self.is_watched(d) {
                self.watch_dir(d);
            }
        }
    }

    /// Watches the directories that hold a task's outputs (they are usually
    /// ignored, so not watched otherwise): every directory from the project
    /// down to each output base, and everything below the bases.
    pub fn watch_outputs(&self, project_dir: &Path, bases: &[String]) {
        for base in bases {
            let mut cur = project_dir.to_path_buf();
            for comp in base.split('/') {
                if !cur.is_dir() {
                    break;
                }
                self.watch_dir(&cur);
                cur.push(comp);
            }
            let mut stack = vec![cur];
            while let Some(d) = stack.pop() {
                if !d.is_dir() {
                    continue;
                }
                self.watch_dir(&d);
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_moves_paths_between_a_link_and_its_target() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                "vendor/b/src/x",
                "vendor/b",
                "packages/b",
                Some("packages/b/src/x"),
            ),
            ("vendor/b", "vendor/b", "packages/b", Some("packages/b")),
            ("vendor/bc/x", "vendor/b", "packages/b", None),
            ("other/x", "vendor/b", "packages/b", None),
        ];
        for (rel, from, to, want) in cases {
            assert_eq!(rebase(rel, from, to).as_deref(), *want, "{rel} {from} {to}");
        }
    }

    #[test]
    fn overlaps_is_component_wise_both_ways() {
        let cases = [
            ("shared/lib/x.txt", "shared/lib", true),
            ("shared", "shared/lib", true),
            ("shared/lib", "shared/lib", true),
            ("shared/library", "shared/lib", false),
            ("other", "shared/lib", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlaps(a, b), want, "{a} {b}");
        }
    }

    // The subtree of a watched directory is found by range, and equals the
    // filter over every watch, siblings that sort around it included.
    #[test]
    fn subtree_is_the_range_under_a_dir() {
        let dirs: BTreeSet<PathBuf> = [
            "/w",
            "/w/a",
            "/w/a/b",
            "/w/a/b/c",
            "/w/a/b/c/d",
            "/w/a/b-x",
            "/w/a/b.c",
            "/w/a/ba",
            "/w/a/b0",
            "/w/a/c",
            "/w/ab",
            "/w/a-",
            "/x",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        let cases = [
            ("/w/a/b", vec!["/w/a/b", "/w/a/b/c", "/w/a/b/c/d"]),
            ("/w/a/b/c/d", vec!["/w/a/b/c/d"]),
            ("/w/a/b-x", vec!["/w/a/b-x"]),
            ("/w/nope", vec![]),
        ];
        for (dir, want) in cases {
            let got = subtree(&dirs, Path::new(dir));
            let by_filter: Vec<PathBuf> = dirs
                .iter()
                .filter(|d| d.starts_with(dir))
                .cloned()
                .collect();
            assert_eq!(got, by_filter, "{dir}");
            assert_eq!(
                got,
                want.iter().map(PathBuf::from).collect::<Vec<_>>(),
                "{dir}"
            );
        }
        assert_eq!(subtree(&dirs, Path::new("/w")).len(), 12);
    }

    /// The watcher and its watched set are one lock: adding and dropping
    /// watches from many threads at once (the daemon's watch thread drops a
    /// removed tree while runs watch output dirs) cannot deadlock.
    #[test]
    fn concurrent_watch_and_unwatch_finish() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        for i in 0..20 {
            std::fs::create_dir_all(root.join(format!("t/d{i}/e"))).unwrap();
        }
        let hot = Hot::start(&root).unwrap();
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let (hot, root, tx) = (hot.clone(), root.clone(), tx.clone());
                std::thread::spawn(move || {
                    for round in 0..50 {
                        for i in 0..20 {
                            let dir = root.join(format!("t/d{i}"));
                            if (round + k) % 2 == 0 {
                                hot.watch_dir(&dir);
                                hot.watch_dir(&dir.join("e"));
                            } else {
                                hot.unwatch_tree(&dir);
                            }
                        }
                    }
                    let _ = tx.send(());
                })
            })
            .collect();
        for _ in 0..4 {
            assert!(
                rx.recv_timeout(Duration::from_secs(60)).is_ok(),
                "watch/unwatch deadlocked"
            );
        }
        for t in threads {
            t.join().unwrap();
        }
    }
}
